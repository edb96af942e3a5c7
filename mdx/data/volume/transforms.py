"""A 3D case as a segmenter reads it, and grain transforms for volumes: sub-volume sampling, 3D
augmentation. LoadCase is the `load` the pipeline takes for 3D tasks (mdx.data.pipeline).

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
