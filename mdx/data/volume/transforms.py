"""A 3D case as a segmenter reads it, and grain transforms for volumes: sub-volume sampling, 3D
augmentation. LoadCase is the `load` the pipeline takes for 3D tasks (mdx.data.pipeline).

nnunet_augmentations() lists nnU-Net v2's default training augmentation (rotation and scaling in
one resampling, noise, blur, brightness, contrast, low resolution, gamma, mirroring) with nnU-Net's
probabilities and ranges, for segmentation that trains as nnU-Net does; each transform keeps the
patch shape and float32 images, and works on class and region labels alike.

Each works on a record {'image': float32 [D, H, W, C], 'label': int [D, H, W] (classes) or
uint8 [D, H, W, R] (regions), ...}. Random ones are grain RandomMaps, so their randomness comes from
the pipeline's seed and a resumed iterator replays exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np
from scipy import ndimage

from mdx.data import standardize as standardize_lib


@dataclasses.dataclass(frozen=True)
class LoadCase:
  """Case `index` of a 3D source -> {'image' standardised float32 [D, H, W, C], 'label', 'index'}
  (the index names the case in messages, e.g. the training loop's non-finite-step error)."""

  source: Any
  standardize: str | None

  def __call__(self, index) -> dict:
    record = self.source[int(index)]
    return {
      "image": standardize_lib.standardize(record["image"], self.standardize),
      "label": record["label"],
      "index": np.int64(index),
    }


def foreground_mask(label: np.ndarray) -> np.ndarray:
  """Voxels that are not background: class > 0, or any region set. -> bool [D, H, W]."""
  return label.any(-1) if label.ndim == 4 else label > 0


def pad_to(record: dict[str, Any], size, mode: str = "constant") -> dict[str, Any]:
  """Pads image (0) and label (background) at the end of each axis up to at least size."""
  shape = record["image"].shape[:3]
  pad = [(0, max(0, int(s) - d)) for d, s in zip(shape, size)]
  if not any(p[1] for p in pad):
    return record
  out = dict(record)
  out["image"] = np.pad(record["image"], pad + [(0, 0)], mode=mode)
  if "label" in record:
    lab = record["label"]
    out["label"] = np.pad(lab, pad + [(0, 0)] * (lab.ndim - 3))
  return out


def crop(record: dict[str, Any], start, size) -> dict[str, Any]:
  sl = tuple(slice(int(a), int(a) + int(s)) for a, s in zip(start, size))
  out = {"image": np.ascontiguousarray(record["image"][sl])}
  if "label" in record:
    out["label"] = np.ascontiguousarray(record["label"][sl])
  return out


@dataclasses.dataclass
class PadTo(grain.transforms.Map):
  """Pads every volume to a fixed size (static shapes for whole-volume batches)."""

  size: tuple[int, int, int] = (32, 32, 32)

  def map(self, record):
    return pad_to(record, self.size)


@dataclasses.dataclass
class KeepKeys(grain.transforms.Map):
  """Drops fields that cannot be batched or are not needed on device (affine, strings)."""

  keys: tuple[str, ...] = ("image", "label")

  def map(self, record):
    return {k: record[k] for k in self.keys if k in record}


@dataclasses.dataclass
class RandomSubVolume(grain.transforms.RandomMap):
  """A random patch of `size`; rejects patches with more than max_background background voxels.

  With probability foreground_rate the patch is instead centred on a random foreground voxel
  (clipped to the volume). Uniform draws are retried up to max_tries times; if none passes, the
  patch is centred on foreground (or the last draw is kept when the case has no foreground).
  Volumes smaller than size are padded first. Returns {'image', 'label'} only.
  """

  size: tuple[int, int, int] = (32, 32, 32)
  max_background: float = 0.95
  foreground_rate: float = 0.0
  max_tries: int = 100

  def random_map(self, record, rng: np.random.Generator):
    record = pad_to(record, self.size)
    shape = np.asarray(record["image"].shape[:3])
    size = np.asarray(self.size)
    fg = foreground_mask(record["label"])
    hi = shape - size + 1

    def centred():
      idx = np.flatnonzero(fg)
      centre = np.asarray(np.unravel_index(idx[rng.integers(len(idx))], fg.shape))
      return np.clip(centre - size // 2, 0, shape - size)

    if fg.any() and rng.random() < self.foreground_rate:
      return crop(record, centred(), size)
    for _ in range(max(1, self.max_tries)):
      start = np.asarray([rng.integers(h) for h in hi])
      sl = tuple(slice(a, a + s) for a, s in zip(start, size))
      if 1.0 - fg[sl].mean() <= self.max_background:
        return crop(record, start, size)
    return crop(record, centred() if fg.any() else start, size)


@dataclasses.dataclass
class RandomFlip3D(grain.transforms.RandomMap):
  """Flips each listed spatial axis with probability p (only axes where anatomy is symmetric)."""

  axes: tuple[int, ...] = (0,)
  p: float = 0.5

  def random_map(self, record, rng: np.random.Generator):
    out = dict(record)
    for ax in self.axes:
      if rng.random() < self.p:
        out["image"] = np.flip(out["image"], ax)
        out["label"] = np.flip(out["label"], ax)
    out["image"] = np.ascontiguousarray(out["image"])
    out["label"] = np.ascontiguousarray(out["label"])
    return out


@dataclasses.dataclass
class RandomRotate3D(grain.transforms.RandomMap):
  """A small rotation (uniform in +-max_degrees) in one randomly chosen plane, with probability p.

  Linear interpolation for the image, nearest for the label; the shape is kept.
  """

  max_degrees: float = 10.0
  planes: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))
  p: float = 0.3

  def random_map(self, record, rng: np.random.Generator):
    if self.max_degrees <= 0 or rng.random() >= self.p:
      return record
    plane = self.planes[rng.integers(len(self.planes))]
    angle = float(rng.uniform(-self.max_degrees, self.max_degrees))
    out = dict(record)
    out["image"] = ndimage.rotate(
      record["image"], angle, axes=plane, reshape=False, order=1, mode="constant", cval=0.0
    ).astype(np.float32)
    out["label"] = ndimage.rotate(
      record["label"], angle, axes=plane, reshape=False, order=0, mode="constant", cval=0
    ).astype(record["label"].dtype)
    return out


@dataclasses.dataclass
class RandomIntensity(grain.transforms.RandomMap):
  """Per channel x * (1 + a) + b, a ~ U(+-scale), b ~ U(+-shift) (after standardisation)."""

  scale: float = 0.1
  shift: float = 0.1
  p: float = 1.0

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self.p:
      return record
    c = record["image"].shape[-1]
    a = rng.uniform(-self.scale, self.scale, c).astype(np.float32)
    b = rng.uniform(-self.shift, self.shift, c).astype(np.float32)
    out = dict(record)
    out["image"] = (record["image"] * (1 + a) + b).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------------
# nnU-Net's training augmentation (nnunetv2 nnUNetTrainer.get_training_transforms and
# batchgeneratorsv2).
# Each transform fires with nnU-Net's probability and draws its parameters from nnU-Net's ranges;
# every draw comes from grain's per-record rng, so a resumed run replays the same patches.


def bg_contrast(rng: np.random.Generator, low: float, high: float) -> float:
  """nnU-Net's BGContrast draw: with probability 1/2 U(low, 1), else U(max(low, 1), high), so
  factors below and above 1 are equally likely however lopsided the range is about 1."""
  if rng.random() < 0.5 and low < 1:
    return float(rng.uniform(low, 1.0))
  return float(rng.uniform(max(low, 1.0), high))


def rotation_matrix(degrees) -> np.ndarray:
  """(a0, a1, a2) degrees about array axes 0, 1, 2 -> float64 [3, 3], R = R2 @ R1 @ R0.

  R_k rotates in the plane of the other two axes (i < j) by [[cos, -sin], [sin, cos]]. Used as
  the map from output to input coordinates (below), a positive angle about axis 0 turns the content
  as np.rot90(x, 1, axes=(2, 1)) does at 90 degrees.
  """
  out = np.eye(3)
  for k, deg in enumerate(degrees):
    if deg == 0:
      continue
    i, j = [a for a in range(3) if a != k]
    t = np.deg2rad(float(deg))
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    out = r @ out
  return out


def _resample_label(label: np.ndarray, matrix, offset, shape) -> np.ndarray:
  """Per-class (or per-region) linear interpolation of the one-hot label, then argmax (regions:
  >= 0.5), as nnU-Net's mode_seg='bilinear': boundaries move smoothly, unlike nearest, whose
  staircase would shift a thin structure by a voxel. Outside the input is background."""

  def linear(mask, cval):
    return ndimage.affine_transform(
      mask.astype(np.float32),
      matrix,
      offset,
      output_shape=shape,
      order=1,
      mode="constant",
      cval=cval,
    )

  if label.ndim == 4:  # regions: each channel is its own binary mask
    chans = [linear(label[..., r] > 0, 0.0) >= 0.5 for r in range(label.shape[-1])]
    return np.stack(chans, -1).astype(label.dtype)
  classes = np.unique(label)
  out = np.zeros(shape, label.dtype)
  if len(classes) == 1 and classes[0] == 0:
    return out
  # running argmax over classes: background first (1 outside the input), ties keep the lower class
  best = linear(label == 0, 1.0)
  for c in classes[classes != 0]:
    p = linear(label == c, 0.0)
    win = p > best
    out[win] = c
    best = np.where(win, p, best)
  return out


def affine_about_centre(record: dict[str, Any], matrix, size=None, image_order: int = 3) -> dict:
  """Resamples image and label with one scipy affine_transform each: output voxel o reads input
  point matrix @ (o - c_out) + c_in, c the centres ((n - 1) / 2) of the output `size` (default the
  input's) and of the input. Image: spline of image_order (float32, 0 outside: the standardised
  mean); label: per-class linear + argmax (see _resample_label), background outside."""
  matrix = np.asarray(matrix, np.float64)
  in_shape = np.asarray(record["image"].shape[:3])
  shape = tuple(int(s) for s in (size if size is not None else in_shape))
  offset = (in_shape - 1) / 2 - matrix @ ((np.asarray(shape) - 1) / 2)
  image = record["image"]
  out_image = np.empty(shape + image.shape[3:], np.float32)
  for c in range(image.shape[-1]):
    ndimage.affine_transform(
      image[..., c],
      matrix,
      offset,
      output=out_image[..., c],
      order=image_order,
      mode="constant",
      cval=0.0,
    )
  out = dict(record)
  out["image"] = out_image
  if "label" in record:
    out["label"] = _resample_label(record["label"], matrix, offset, shape)
  return out


def centre_crop(record: dict[str, Any], size) -> dict[str, Any]:
  """The central `size` of image and label (padded first where the volume is smaller)."""
  record = pad_to(record, size)
  shape = np.asarray(record["image"].shape[:3])
  start = (shape - np.asarray(size)) // 2
  out = dict(record)
  out.update(crop(record, start, size))
  return out


@dataclasses.dataclass
class RandomSpatial3D(grain.transforms.RandomMap):
  """nnU-Net's SpatialTransform without elastic deformation: rotation and scaling about the
  patch centre, in ONE resampling per array (affine_about_centre).

  Rotation fires with p_rotation (nnU-Net 0.2) and then turns about each axis by U(+-max_degrees)
  (nnU-Net 30 degrees for 3D patches). With anisotropic_axis set (nnU-Net's 'dummy 2D'
  augmentation for patches whose in-plane size is over 3x the slice count) it turns only about
  that axis (in-plane; nnU-Net uses +-180 degrees there) and scales only the in-plane axes.
  Scaling fires with p_scaling (nnU-Net 0.2): one factor s ~ U(scale) (nnU-Net (0.7, 1.4)) for
  all axes; s is the sampling step, so s > 1 shows more of the scene and objects shrink by 1/s
  (volumes by 1/s**3).

  Image: cubic spline (image_order 3, as nnU-Net v1; v2 samples linearly) with 0 outside (the
  mean after standardisation). Label: per-class linear + argmax (regions: per-region linear >=
  0.5), as nnU-Net does, background outside; it costs one linear resampling per class present,
  less than one cubic resampling of an image channel (which needs a spline prefilter), and keeps
  thin structures from jumping a voxel as nearest would.

  size: the output patch, default the input's shape. A larger input (nnU-Net samples a patch large
  enough that rotation brings in no padding) is cut to its centre; when nothing fires that is the
  only work done (and with no size, the record comes back untouched).
  """

  p_rotation: float = 0.2
  max_degrees: float = 30.0
  p_scaling: float = 0.2
  scale: tuple[float, float] = (0.7, 1.4)
  anisotropic_axis: int | None = None
  size: tuple[int, int, int] | None = None
  image_order: int = 3

  def random_map(self, record, rng: np.random.Generator):
    rotate = rng.random() < self.p_rotation
    scale = rng.random() < self.p_scaling
    if not (rotate or scale):
      return record if self.size is None else centre_crop(record, self.size)
    degrees = np.zeros(3)
    if rotate:
      m = self.max_degrees
      if self.anisotropic_axis is None:
        degrees = rng.uniform(-m, m, 3)
      else:
        degrees[self.anisotropic_axis] = rng.uniform(-m, m)
    factors = np.ones(3)
    if scale:
      factors[:] = rng.uniform(*self.scale)
      if self.anisotropic_axis is not None:
        factors[self.anisotropic_axis] = 1.0
    matrix = rotation_matrix(degrees) @ np.diag(factors)
    return affine_about_centre(record, matrix, self.size, self.image_order)


def _with_image(record: dict[str, Any], image: np.ndarray) -> dict[str, Any]:
  out = dict(record)
  out["image"] = image.astype(np.float32, copy=False)
  return out


@dataclasses.dataclass
class RandomGaussianNoise(grain.transforms.RandomMap):
  """With probability p (nnU-Net 0.1) adds N(0, sigma) noise, sigma ~ U(sigma_range), one noise
  field shared by all channels (nnU-Net v2 synchronises channels). nnU-Net names the range
  noise_variance=(0, 0.1) but passes the draw to np.random.normal as the standard deviation;
  this keeps nnU-Net's numbers, so sigma_range=(0, 0.1)."""

  p: float = 0.1
  sigma_range: tuple[float, float] = (0.0, 0.1)

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self.p:
      return record
    sigma = rng.uniform(*self.sigma_range)
    image = record["image"]
    noise = rng.normal(0.0, sigma, image.shape[:3] + (1,)).astype(np.float32)
    return _with_image(record, image + noise)


def _each_channel(record, rng: np.random.Generator, fn, p_per_channel: float | None = None):
  """The record with its image's channels [D, H, W] replaced by fn(channel, rng), in channel
  order; with p_per_channel, each channel only with that probability (one draw per channel before
  fn's own draws, nnU-Net's order)."""
  image = record["image"].copy()
  for c in range(image.shape[-1]):
    if p_per_channel is None or rng.random() < p_per_channel:
      image[..., c] = fn(image[..., c], rng)
  return _with_image(record, image)


@dataclasses.dataclass
class RandomGaussianBlur(grain.transforms.RandomMap):
  """With probability p (nnU-Net 0.2), blurs each channel with probability p_per_channel (0.5) by
  a Gaussian whose sigma is drawn per channel and per axis from sigma_range (U(0.5, 1) voxels),
  mirrored at the borders (torch's 'reflect', scipy's 'mirror')."""

  p: float = 0.2
  p_per_channel: float = 0.5
  sigma_range: tuple[float, float] = (0.5, 1.0)

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self.p:
      return record
    blur = lambda x, rng: ndimage.gaussian_filter(
      x, rng.uniform(*self.sigma_range, 3), mode="mirror"
    )
    return _each_channel(record, rng, blur, self.p_per_channel)


@dataclasses.dataclass
class RandomBrightness(grain.transforms.RandomMap):
  """With probability p (nnU-Net 0.15), multiplies each channel by its own factor drawn by
  bg_contrast from multiplier_range (0.75, 1.25)."""

  p: float = 0.15
  multiplier_range: tuple[float, float] = (0.75, 1.25)

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self.p:
      return record
    image = record["image"]
    m = [bg_contrast(rng, *self.multiplier_range) for _ in range(image.shape[-1])]
    return _with_image(record, image * np.asarray(m, np.float32))


@dataclasses.dataclass
class RandomContrast(grain.transforms.RandomMap):
  """With probability p (nnU-Net 0.15), per channel (x - mean) * f + mean, f by bg_contrast from
  contrast_range (0.75, 1.25), then clipped to the channel's former [min, max] (nnU-Net's
  preserve_range)."""

  p: float = 0.15
  contrast_range: tuple[float, float] = (0.75, 1.25)

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self.p:
      return record

    def contrast(x, rng):
      f = bg_contrast(rng, *self.contrast_range)
      mean, lo, hi = x.mean(), x.min(), x.max()
      return np.clip((x - mean) * f + mean, lo, hi)

    return _each_channel(record, rng, contrast)


def low_resolution(x: np.ndarray, zoom, order: int = 3) -> np.ndarray:
  """float [D, H, W] -> the same shape after nearest downsampling to round(shape * zoom) (torch's
  'nearest-exact': source index floor((i + 0.5) * n / m)) and spline upsampling (order) back, both
  on voxel centres (align_corners=False). A zoom that keeps the shape returns x itself."""
  shape = np.asarray(x.shape)
  small = np.maximum(1, np.round(shape * np.asarray(zoom, np.float64)).astype(int))
  if np.array_equal(small, shape):
    return x
  idx = [
    np.minimum((np.floor((np.arange(m) + 0.5) * n / m)).astype(int), n - 1)
    for n, m in zip(shape, small)
  ]
  down = x[np.ix_(*idx)]
  return ndimage.zoom(down, shape / small, order=order, mode="nearest", grid_mode=True)


@dataclasses.dataclass
class RandomLowResolution(grain.transforms.RandomMap):
  """nnU-Net's SimulateLowResolution: with probability p (0.25), each channel with probability
  p_per_channel (0.5) is downsampled (nearest) by a zoom ~ U(zoom_range) (0.5, 1), the same on
  every axis but ignore_axes (nnU-Net: the anisotropic axis of a 'dummy 2D' patch), and upsampled
  back by a spline of order (3, cubic, as nnU-Net v1; v2 uses linear)."""

  p: float = 0.25
  p_per_channel: float = 0.5
  zoom_range: tuple[float, float] = (0.5, 1.0)
  ignore_axes: tuple[int, ...] = ()
  order: int = 3

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self.p:
      return record

    def lower(x, rng):
      zoom = np.full(3, rng.uniform(*self.zoom_range))
      zoom[list(self.ignore_axes)] = 1.0
      return low_resolution(x, zoom, self.order)

    return _each_channel(record, rng, lower, self.p_per_channel)


def gamma_channel(x: np.ndarray, gamma: float, invert: bool = False, retain_stats: bool = True):
  """nnU-Net's gamma on one channel: (optionally negated) x rescaled to [0, 1], raised to gamma,
  mapped back to its [min, max]; with retain_stats its mean and std are then restored."""
  x = -x if invert else x
  mean, std = x.mean(), x.std()
  lo = x.min()
  rng_ = max(float(x.max() - lo), 1e-7)
  y = np.power((x - lo) / rng_, gamma) * rng_ + lo
  if retain_stats:
    y = (y - y.mean()) * (std / max(float(y.std()), 1e-7)) + mean
  return -y if invert else y


@dataclasses.dataclass
class RandomGamma(grain.transforms.RandomMap):
  """With probability p (nnU-Net 0.3; 0.1 for its invert=True copy), per channel gamma_channel
  with gamma by bg_contrast from gamma_range (0.7, 1.5), mean and std retained as nnU-Net does.
  invert applies it to -x (brightening dark structures instead of bright ones)."""

  p: float = 0.3
  gamma_range: tuple[float, float] = (0.7, 1.5)
  invert: bool = False
  retain_stats: bool = True

  def random_map(self, record, rng: np.random.Generator):
    if rng.random() >= self.p:
      return record
    gamma = lambda x, rng: gamma_channel(
      x, bg_contrast(rng, *self.gamma_range), self.invert, self.retain_stats
    )
    return _each_channel(record, rng, gamma)


def nnunet_augmentations(flip_axes, anisotropic_axis: int | None = None, patch_size=None) -> list:
  """nnU-Net v2's default training augmentation, in its order: spatial (rotation, scaling),
  noise, blur, brightness, contrast, low resolution, inverted gamma, gamma, mirroring along
  flip_axes only (the source decides which axes keep labels true; () none).

  anisotropic_axis: the thick-slice axis of a patch nnU-Net augments 'dummy 2D' (in-plane rotation
  of +-180 degrees and scaling, low resolution not along that axis). patch_size: the output patch
  when the records arrive larger (see RandomSpatial3D.size); None keeps their shape."""
  aniso = anisotropic_axis is not None
  out = [
    RandomSpatial3D(
      max_degrees=180.0 if aniso else 30.0,
      anisotropic_axis=anisotropic_axis,
      size=None if patch_size is None else tuple(int(s) for s in patch_size),
    ),
    RandomGaussianNoise(),
    RandomGaussianBlur(),
    RandomBrightness(),
    RandomContrast(),
    RandomLowResolution(ignore_axes=(anisotropic_axis,) if aniso else ()),
    RandomGamma(p=0.1, invert=True),
    RandomGamma(p=0.3),
  ]
  if flip_axes:
    out.append(RandomFlip3D(tuple(int(a) for a in flip_axes)))
  return out
