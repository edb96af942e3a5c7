"""Augmentation presets per modality, as grain transforms that keep the label true.

Every transform acts on a record dict whose 'image' is float32 [H, W, C] in [0, 1] (already resized
to the training size) and returns the record with a new 'image' of the same shape and dtype.
Random transforms are grain RandomMaps that draw only from the rng grain hands them, so a pipeline
is deterministic given its seed and each record's position, and resumes exactly at any step.

Geometric changes are folded into ONE affine warp per image (scipy.ndimage.affine_transform,
order=1): a rotation, zoom and translation cost a single interpolation, which keeps the edges sharp
and the cost at about a millisecond per channel at 128 px. Flips and 90-degree rotations are exact
array operations.

  make(name) -> list of transforms for a preset ('chest_xray', 'dermatology', 'fundus',
    'histopathology'; None or 'none' -> []). The presets' sizes are fractions of the image, so they
    fit any training size. 'chest_xray_lr_flip' is the chest preset plus the
    mistake of left-right flips, there to be measured (experiments/ablations/augmentation.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import numpy as np
from absl import logging
from scipy import ndimage


def _image_of(record: dict[str, Any]) -> np.ndarray:
  image = record["image"]
  if not isinstance(image, np.ndarray) or image.ndim != 3:
    raise ValueError(
      f"augmentation expects record['image'] as a float array [H, W, C]; got "
      f"{type(image).__name__} with shape {getattr(image, 'shape', None)} "
      f"(image_id={record.get('image_id')!r}); convert and resize before augmenting"
    )
  return image


def affine_matrix(
  shape: tuple[int, int],
  rotation_deg: float = 0.0,
  scale: float = 1.0,
  translate: tuple[float, float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
  """(matrix, offset) for ndimage.affine_transform: rotate and zoom about the centre, then shift.

  Forward map (input pixel i -> output pixel o): o = scale * R (i - c) + c + t, with c the image
  centre and t the translation in pixels (rows, cols). affine_transform wants the inverse,
  i = M o + offset with M = R^T / scale and offset = c - M (c + t).
  """
  theta = math.radians(rotation_deg)
  rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
  matrix = rot.T / scale
  centre = (np.asarray(shape, np.float64) - 1.0) / 2.0
  offset = centre - matrix @ (centre + np.asarray(translate, np.float64))
  return matrix, offset


def warp(
  image: np.ndarray,
  matrix: np.ndarray,
  offset: np.ndarray,
  mode: str = "constant",
  cval: float = 0.0,
) -> np.ndarray:
  """Applies one 2D affine map to every channel of an [H, W, C] image (bilinear)."""
  out = np.empty_like(image)
  for c in range(image.shape[-1]):
    ndimage.affine_transform(
      image[..., c],
      matrix,
      offset=offset,
      output=out[..., c],
      order=1,
      mode=mode,
      cval=cval,
      prefilter=False,
    )
  return out


@dataclasses.dataclass(frozen=True)
class RandomGeometry(grain.transforms.RandomMap):
  """Random flips, 90-degree turns, then one affine warp (rotation, zoom, translation).

  rotation_deg: angle drawn uniformly from [-rotation_deg, rotation_deg].
  zoom: scale drawn uniformly from [zoom[0], zoom[1]] (> 1 zooms in, which is a random crop that
    is resized back to the full size).
  translate: maximum shift as a fraction of the image size, per axis.
  flip_lr / flip_ud: each applied with probability 1/2. rot90: k quarter turns, k uniform in 0..3
    (square images only).
  mode / cval: how pixels outside the image are filled (scipy.ndimage modes).
  """

  rotation_deg: float = 0.0
  zoom: tuple[float, float] = (1.0, 1.0)
  translate: float = 0.0
  flip_lr: bool = False
  flip_ud: bool = False
  rot90: bool = False
  mode: str = "constant"
  cval: float = 0.0

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = _image_of(record)
    if self.flip_lr and rng.random() < 0.5:
      image = image[:, ::-1]
    if self.flip_ud and rng.random() < 0.5:
      image = image[::-1]
    if self.rot90:
      if image.shape[0] != image.shape[1]:
        raise ValueError(f"rot90 needs square images; got {image.shape[:2]}")
      image = np.rot90(image, int(rng.integers(4)))
    angle = rng.uniform(-self.rotation_deg, self.rotation_deg) if self.rotation_deg else 0.0
    scale = rng.uniform(*self.zoom) if self.zoom[0] != self.zoom[1] else float(self.zoom[0])
    shift = (
      rng.uniform(-self.translate, self.translate, size=2) * np.asarray(image.shape[:2])
      if self.translate
      else np.zeros(2)
    )
    if angle != 0.0 or scale != 1.0 or np.any(shift != 0.0):
      matrix, offset = affine_matrix(image.shape[:2], angle, scale, tuple(shift))
      image = warp(np.ascontiguousarray(image), matrix, offset, self.mode, self.cval)
    return {**record, "image": np.ascontiguousarray(image, dtype=np.float32)}


@dataclasses.dataclass(frozen=True)
class RandomIntensity(grain.transforms.RandomMap):
  """Random brightness (additive) and contrast (scaled about the image mean), clipped to [0, 1].

  Models differences in exposure, detector and windowing between sites; the anatomy and hence the
  label stay the same.
  """

  brightness: float = 0.0
  contrast: tuple[float, float] = (1.0, 1.0)

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = _image_of(record)
    delta = rng.uniform(-self.brightness, self.brightness) if self.brightness else 0.0
    factor = rng.uniform(*self.contrast)
    mean = image.mean()
    out = (image - mean) * factor + mean + delta
    return {**record, "image": np.clip(out, 0.0, 1.0).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class RandomColour(grain.transforms.RandomMap):
  """Random saturation and per-channel gain (white balance) on RGB images, clipped to [0, 1].

  Models camera, lighting and white-balance differences between dermatoscopes and fundus cameras;
  gray (1-channel) images pass through unchanged.
  """

  saturation: tuple[float, float] = (1.0, 1.0)
  channel_gain: float = 0.0

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = _image_of(record)
    if image.shape[-1] != 3:
      return record
    gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
    out = gray[..., None] + (image - gray[..., None]) * rng.uniform(*self.saturation)
    if self.channel_gain:
      out = out * rng.uniform(1 - self.channel_gain, 1 + self.channel_gain, size=3)
    return {**record, "image": np.clip(out, 0.0, 1.0).astype(np.float32)}


# Haematoxylin-eosin-DAB stain vectors (Ruifrok and Johnston, 2001), rows = stains, in RGB optical
# density; the same matrix as skimage.color.rgb_from_hed.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


@dataclasses.dataclass(frozen=True)
class RandomStain(grain.transforms.RandomMap):
  """HED stain jitter (Tellez et al., 2018): per stain, concentration * a + b, a ~ 1 +- sigma.

  Mimics the variation of H&E staining between labs and batches, which changes colour but not the
  tissue. The image is converted to optical density, unmixed into stain concentrations, jittered,
  and mixed back.
  """

  sigma: float = 0.05
  bias: float = 0.05

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = _image_of(record)
    if image.shape[-1] != 3:
      raise ValueError(
        f"stain jitter needs RGB images; got {image.shape[-1]} channels "
        f"(image_id={record.get('image_id')!r})"
      )
    alpha = rng.uniform(1 - self.sigma, 1 + self.sigma, size=3)
    beta = rng.uniform(-self.bias, self.bias, size=3)
    return {**record, "image": stain_mix(image, alpha, beta)}


def stain_mix(image: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
  """Scales and shifts the H, E and DAB concentrations of an RGB image in [0, 1]."""
  od = -np.log(np.maximum(image.astype(np.float64), 1e-6))
  stains = od @ _HED_FROM_RGB
  stains = stains * alpha + beta
  out = np.exp(-(stains @ _RGB_FROM_HED))
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def chest_xray(_flip_lr: bool = False) -> list:
  """Chest X-ray: small rotation (+-10 deg), translation (+-6%), zoom (0.9-1.1), exposure.

  Keeps the label: patient positioning varies by a few degrees and centimetres, and exposure varies
  by device. NEVER a left-right flip: the heart sits on the left, and a mirrored film looks like
  dextrocardia or situs inversus, a different (real) diagnosis; lines and tubes, the aortic knob and
  the gastric bubble are lateralised too. No vertical flip either (anatomy is never upside down).
  """
  return [
    RandomGeometry(
      rotation_deg=10.0, zoom=(0.9, 1.1), translate=0.06, flip_lr=_flip_lr, mode="constant"
    ),
    RandomIntensity(brightness=0.1, contrast=(0.8, 1.2)),
  ]


def chest_xray_lr_flip() -> list:
  """The chest preset PLUS left-right flips: wrong for chest films (a mirrored film shows
  dextrocardia, see chest_xray). It exists so the augmentation ablation can measure what the
  mistake costs; make() warns whenever it is used."""
  return chest_xray(_flip_lr=True)


def dermatology() -> list:
  """Dermatology: flips, 90-degree turns, free rotation, zoom, colour and exposure.

  Keeps the label: a skin lesion photographed from above has no canonical orientation (the
  dermatoscope may be held any way round), so any flip or rotation shows the same lesion; colour
  varies with camera and lighting. Reflect padding keeps skin at the corners after rotation.
  """
  return [
    RandomGeometry(
      rotation_deg=180.0,
      zoom=(1.0, 1.2),
      translate=0.05,
      flip_lr=True,
      flip_ud=True,
      rot90=True,
      mode="reflect",
    ),
    RandomColour(saturation=(0.8, 1.2), channel_gain=0.05),
    RandomIntensity(brightness=0.1, contrast=(0.8, 1.2)),
  ]


def fundus() -> list:
  """Fundus: free rotation and flips, small zoom, mild exposure changes.

  Keeps the label: retinopathy grades depend on lesions (microaneurysms, haemorrhages, exudates),
  not on the orientation of the round fundus image; a left-right flip turns a right eye into a
  left-looking one, which does not change the grade. Black padding matches the black surround.
  """
  return [
    RandomGeometry(
      rotation_deg=180.0, zoom=(0.95, 1.1), flip_lr=True, flip_ud=True, mode="constant"
    ),
    RandomIntensity(brightness=0.05, contrast=(0.9, 1.1)),
  ]


def histopathology() -> list:
  """Histopathology: stain jitter, flips, 90-degree turns and random crops (zoom in up to 25%).

  Keeps the label: a tissue patch under the microscope has no orientation; staining varies between
  labs; a crop of a tumour patch that keeps its centre still shows tumour (zoom >= 1 keeps the
  centre region, translation stays within the zoom margin).
  """
  return [
    RandomStain(sigma=0.05, bias=0.05),
    RandomGeometry(
      zoom=(1.0, 1.25), translate=0.1, flip_lr=True, flip_ud=True, rot90=True, mode="reflect"
    ),
  ]


PRESETS = {
  "chest_xray": chest_xray,
  "chest_xray_lr_flip": chest_xray_lr_flip,
  "dermatology": dermatology,
  "fundus": fundus,
  "histopathology": histopathology,
}

# Presets that break a label on purpose, so an ablation can measure the mistake: mdx.config lets
# them flip where a source forbids it (make() warns instead).
MEASURES_A_MISTAKE = frozenset({"chest_xray_lr_flip"})


def make(name: str | None) -> list:
  """The transforms of a preset by name; None or 'none' means no augmentation."""
  if name is None or name == "none":
    return []
  if name not in PRESETS:
    raise ValueError(
      f"config.data.augment={name!r} is unknown; choose one of {sorted(PRESETS)} or 'none'"
    )
  if name in MEASURES_A_MISTAKE:
    logging.warning(
      "config.data.augment='chest_xray_lr_flip' mirrors chest films (a label-breaking flip: "
      "dextrocardia); use it only to measure the mistake, 'chest_xray' otherwise"
    )
  return PRESETS[name]()
