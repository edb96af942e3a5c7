"""Resampling 3D cases to a target voxel spacing and predictions back, as nnU-Net does.

A network sees scans of many spacings; resampling every case to one target spacing (the plan's)
makes a voxel mean the same millimetres in every case, so a patch covers the same anatomy. The
prediction is taken back to the case's own grid before argmax, so a label map is scored and written
voxel for voxel against the case as it came.

Grid: voxel centres are aligned by their extents (scipy's grid_mode, skimage's resize): new voxel
i sits at old voxel coordinate (i + 0.5) * old / new - 0.5, so the volume's field of view is kept;
edges repeat the border voxel (mode 'nearest'). The new shape is round(shape * spacing / target).

The anisotropic rule (nnU-Net's "separate z"): when the case's spacing (or else the target's) has
max / min > ANISOTROPY_THRESHOLD (3) and one axis alone is the coarsest, that axis is resampled with
nearest neighbour (order 0) and the other two with the requested order: interpolating across 5 mm
slices invents anatomy that no slice showed.

  resample_image(image [D, H, W, C], spacing, target) -> float32 [D', H', W', C] (order 3)
  resample_label(label [D, H, W] int or [D, H, W, R] binary, spacing, target) -> same dtype:
    classes one-hot, linear per class, argmax (no class appears between two others: a 1|3 boundary
    never yields 2); regions linear per channel, > 0.5
  resample_probabilities(probs [D, H, W, K], shape) -> float32 [*shape, K] (linear per channel)
  ResampledSource(source, target_spacing): a 3D source whose records come resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0  # nnU-Net's ANISO_THRESHOLD: max / min spacing above it is anisotropic
SPACING_TOLERANCE_MM = 1e-3  # spacings this close are the same: no interpolation at all


def _spacing(spacing, what: str) -> np.ndarray:
  s = np.asarray(spacing, np.float64).reshape(-1)
  if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
    raise ValueError(
      f"{what}={np.asarray(spacing).tolist()}: expected three positive voxel sizes in mm "
      "(along D, H, W)"
    )
  return s


def same_spacing(spacing, target_spacing) -> bool:
  """True when every axis agrees within SPACING_TOLERANCE_MM (the case needs no resampling)."""
  s, t = _spacing(spacing, "spacing"), _spacing(target_spacing, "target_spacing")
  return bool(np.all(np.abs(s - t) <= SPACING_TOLERANCE_MM))


def new_shape(shape, spacing, target_spacing) -> tuple[int, int, int]:
  """round(shape * spacing / target_spacing) per axis (at least 1 voxel)."""
  s, t = _spacing(spacing, "spacing"), _spacing(target_spacing, "target_spacing")
  shape = np.asarray(shape[:3], np.float64)
  return tuple(max(1, int(round(float(n)))) for n in shape * s / t)


def coarse_axis(spacing, target_spacing) -> int | None:
  """The axis resampled with nearest neighbour, or None: nnU-Net's rule (module docstring).

  The case's spacing decides when it is anisotropic, else the target's; no axis when two axes tie
  for the coarsest (e.g. 0.24 x 1.25 x 1.25 mm: which of the two would be 'z'?)."""
  for s in (_spacing(spacing, "spacing"), _spacing(target_spacing, "target_spacing")):
    if s.max() / s.min() > ANISOTROPY_THRESHOLD:
      coarsest = np.flatnonzero(s == s.max())
      return int(coarsest[0]) if len(coarsest) == 1 else None
  return None


def _resize(volume: np.ndarray, shape, order: int, coarse: int | None) -> np.ndarray:
  """One channel [D, H, W] -> float32 `shape`: `order` on every axis, or order 0 along `coarse`."""
  volume = np.asarray(volume, np.float32)
  zoom = np.asarray(shape, np.float64) / np.asarray(volume.shape, np.float64)
  if np.all(zoom == 1):
    return volume

  def zoomed(x, factors, o):
    if np.all(factors == 1):
      return x
    return ndimage.zoom(x, factors, order=o, mode="nearest", grid_mode=True)

  if coarse is None:
    return zoomed(volume, zoom, order)
  in_plane, along = zoom.copy(), np.ones(3)
  in_plane[coarse], along[coarse] = 1.0, zoom[coarse]
  return zoomed(zoomed(volume, in_plane, order), along, 0)


def resample_image(image: np.ndarray, spacing, target_spacing, order: int = 3) -> np.ndarray:
  """image [D, H, W, C] -> float32 [*new_shape, C] at target_spacing, channels independent.

  `order` (spline order, 3 = cubic as nnU-Net) on every axis, except the coarse axis of an
  anisotropic case (coarse_axis), which takes nearest neighbour. The same array (as float32) when
  the spacing already equals the target within SPACING_TOLERANCE_MM."""
  image = np.asarray(image, np.float32)
  if image.ndim != 4:
    raise ValueError(f"resample_image expects an image [D, H, W, C], got shape {image.shape}")
  if same_spacing(spacing, target_spacing):
    return image
  shape = new_shape(image.shape, spacing, target_spacing)
  coarse = coarse_axis(spacing, target_spacing)
  out = np.empty(shape + image.shape[-1:], np.float32)
  for c in range(image.shape[-1]):
    out[..., c] = _resize(image[..., c], shape, order, coarse)
  return out


def resample_label(label: np.ndarray, spacing, target_spacing) -> np.ndarray:
  """label at target_spacing, in its own dtype: classes [D, H, W] or regions [D, H, W, R].

  Classes: each class present is a one-hot mask, interpolated linearly (nearest along the coarse
  axis of an anisotropic case, as the image), and each voxel takes the class of the largest value
  (ties: the lower class). A voxel's value for class k is a weighted mean of its neighbours'
  one-hot values, so a class no neighbour holds has 0 there and is never chosen: no class is
  invented at a boundary of two others. Regions: each channel linear, then > 0.5."""
  label = np.asarray(label)
  if label.ndim not in (3, 4):
    raise ValueError(
      f"resample_label expects classes [D, H, W] or regions [D, H, W, R], got {label.shape}"
    )
  if same_spacing(spacing, target_spacing):
    return label
  shape = new_shape(label.shape, spacing, target_spacing)
  coarse = coarse_axis(spacing, target_spacing)
  if label.ndim == 4:
    out = np.empty(shape + label.shape[-1:], label.dtype)
    for r in range(label.shape[-1]):
      out[..., r] = _resize(label[..., r] > 0, shape, 1, coarse) > 0.5
    return out
  out = np.zeros(shape, label.dtype)
  best = np.full(shape, -np.inf, np.float32)
  for k in np.unique(label):  # ascending: on a tie the lower class keeps the voxel
    value = _resize(label == k, shape, 1, coarse)
    wins = value > best
    out[wins] = k
    best[wins] = value[wins]
  return out


def resample_probabilities(probs: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """probs [D, H, W, K] -> float32 [*shape, K]: linear per channel onto the case's own grid.

  A linear interpolation is a convex combination of neighbours, so softmax outputs still sum to 1
  per voxel and sigmoid outputs stay in [0, 1]; argmax (or > 0.5) then happens on the original
  grid, as nnU-Net exports."""
  probs = np.asarray(probs, np.float32)
  if probs.ndim != 4:
    raise ValueError(f"resample_probabilities expects [D, H, W, K], got shape {probs.shape}")
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3 or min(shape) < 1:
    raise ValueError(f"shape={shape}: expected the case's three positive sizes (D, H, W)")
  if shape == probs.shape[:3]:
    return probs
  out = np.empty(shape + probs.shape[-1:], np.float32)
  for k in range(probs.shape[-1]):
    out[..., k] = _resize(probs[..., k], shape, 1, None)
  return out


def resampled_affine(affine: np.ndarray, old_shape, shape) -> np.ndarray:
  """The voxel-to-scanner affine of the resampled grid: new voxel i is old voxel
  (i + 0.5) * old / new - 0.5 per axis (the grid of module docstring), then the old affine."""
  scale = np.asarray(old_shape[:3], np.float64) / np.asarray(shape[:3], np.float64)
  to_old = np.eye(4)
  to_old[:3, :3] = np.diag(scale)
  to_old[:3, 3] = 0.5 * scale - 0.5
  return np.asarray(affine, np.float64) @ to_old


class ResampledSource:
  """A 3D source whose records come at target_spacing (mdx.data.sources' volume interface).

  record = source[i] with 'image' (resample_image, `order`), 'label' when present
  (resample_label), 'spacing' = target_spacing (float32 [3]), 'affine' of the new grid
  (resampled_affine), and the case's own grid kept: 'original_shape' (int64 [3]),
  'original_spacing' (float32 [3]), 'original_affine' (float64 [4, 4], when the record has one).
  A case already at the target spacing (within SPACING_TOLERANCE_MM) keeps its arrays as they are
  (the same objects, no interpolation); only the added fields differ.

  Every other attribute is the wrapped source's (__getattr__): class_names, label_mode,
  label_values, num_channels, record_files and record_name (mdx.data.check verifies the files, so
  a generated source without them stays unchecked), read_record (the check decodes the files as
  the source reads them: the resampling adds no way to fail), fingerprint, root, ...
  cache=True keeps resampled records in memory (cubic resampling of a whole scan is slow; a
  training run reads every case many times).
  """

  def __init__(self, source, target_spacing, order: int = 3, cache: bool = False):
    self.source = source
    self.target_spacing = _spacing(target_spacing, "target_spacing").astype(np.float32)
    if int(order) not in range(6):
      raise ValueError(f"order={order}: a spline order 0..5 (3 = cubic, as nnU-Net)")
    self.order = int(order)
    self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

  def __getattr__(self, name: str):
    # only called for what this class lacks; dunders (pickle, copy) never reach the source, and
    # `source` itself is looked up in __dict__ so an unpickled shell does not recurse
    source = self.__dict__.get("source")
    if source is None or name.startswith("__"):
      raise AttributeError(name)
    return getattr(source, name)

  def __len__(self) -> int:
    return len(self.source)

  def case_ids(self) -> np.ndarray:
    return self.source.case_ids()

  def patient_ids(self) -> np.ndarray:
    return self.source.patient_ids()

  def select(self, indices) -> ResampledSource:
    """The cases at `indices`, resampled the same way (an empty cache)."""
    return ResampledSource(
      self.source.select(indices), self.target_spacing, self.order, self._cache is not None
    )

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if self._cache is not None and index in self._cache:
      return dict(self._cache[index])
    record = self.resample(self.source[index])
    if self._cache is not None:
      self._cache[index] = record
    return dict(record)

  def resample(self, record: dict[str, Any]) -> dict[str, Any]:
    """One record of the wrapped source -> the record at target_spacing (class docstring)."""
    image = np.asarray(record["image"])
    spacing = _spacing(record["spacing"], f"case {record.get('case_id', '?')!r}: spacing")
    out = dict(record)
    out["original_shape"] = np.asarray(image.shape[:3], np.int64)
    out["original_spacing"] = spacing.astype(np.float32)
    out["spacing"] = self.target_spacing.copy()
    if "affine" in record:
      out["original_affine"] = np.asarray(record["affine"], np.float64)
    if same_spacing(spacing, self.target_spacing):
      return out
    out["image"] = resample_image(image, spacing, self.target_spacing, self.order)
    if "label" in record:
      out["label"] = resample_label(record["label"], spacing, self.target_spacing)
    if "affine" in record:
      out["affine"] = resampled_affine(record["affine"], image.shape, out["image"].shape)
    return out
