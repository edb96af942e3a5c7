"""Intensity standardisation for 2D films and 3D scans: one array function, one grain wrapper.

config.data.standardize names the mode for either task; an image is [..., C] with any number of
spatial axes ([H, W, C] films, [D, H, W, C] scans):
  'per_image'    (x - mean) / (std + 1e-6) over all pixels and channels of the image: removes the
                 exposure differences between films (the classification default).
  'per_channel'  per channel over all voxels, divided by max(std, 1e-8): MRI crops (nnU-Net's
                 choice).
  'nonzero'      per channel over the non-zero voxels only (skull-stripped brain scans are 0 outside
                 the brain); outside stays 0.
  'per_slice'    per channel of each slice along the last spatial axis (the course's 3D variant);
                 a slice with zero spread is only centred. Scans [D, H, W, C] only.
  'dataset'      (x - mean) / (std + 1e-6) with per-channel statistics of the training split
                 (dataset_mean_std): keeps exposure differences but centres the inputs.
  'none' / None  unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import numpy as np

MODES = ("per_image", "per_channel", "nonzero", "per_slice", "dataset", "none")


def standardize(
  image: np.ndarray, mode: str | None, mean: Any = None, std: Any = None
) -> np.ndarray:
  """float32 image [..., C] standardised by `mode` (see the module docstring)."""
  if mode not in MODES and mode is not None:
    raise ValueError(f"config.data.standardize={mode!r} is unknown; choose one of {MODES}")
  x = np.asarray(image, np.float32)
  if mode in (None, "none"):
    return x
  spatial = tuple(range(x.ndim - 1))
  if mode == "per_image":
    return ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)
  if mode == "dataset":
    if mean is None or std is None:
      raise ValueError(
        "standardize='dataset' needs mean and std (compute them on the training "
        "split with mdx.data.standardize.dataset_mean_std)"
      )
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((x - mean) / (std + 1e-6)).astype(np.float32)
  if mode == "per_channel":
    mu = x.mean(spatial, keepdims=True)
    sd = x.std(spatial, keepdims=True)
    return ((x - mu) / np.maximum(sd, 1e-8)).astype(np.float32)
  if mode == "per_slice":
    if x.ndim != 4:
      raise ValueError(f"standardize='per_slice' is for scans [D, H, W, C]; got shape {x.shape}")
    centred = x - x.mean((0, 1), keepdims=True)
    sd = centred.std((0, 1), keepdims=True)
    return np.where(sd > 0, centred / np.where(sd > 0, sd, 1), centred).astype(np.float32)
  out = np.zeros_like(x)  # nonzero
  for c in range(x.shape[-1]):
    ch = x[..., c]
    inside = ch != 0
    if inside.any():
      vals = ch[inside]
      out[..., c] = np.where(inside, (ch - vals.mean()) / max(float(vals.std()), 1e-8), 0.0)
  return out


@dataclasses.dataclass(frozen=True)
class Standardize(grain.transforms.Map):
  """record['image'] standardised (a grain Map; mean/std only for mode 'dataset')."""

  mode: str = "per_image"
  mean: Any = None
  std: Any = None

  def map(self, record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "image": standardize(record["image"], self.mode, self.mean, self.std)}


def transforms(
  mode: str | None,
  mean: float | Sequence[float] | None = None,
  std: float | Sequence[float] | None = None,
) -> list:
  """[Standardize] for a mode, checked now rather than in a worker; None or 'none' -> []."""
  if mode is None or mode == "none":
    return []
  if mode not in MODES:
    raise ValueError(f"config.data.standardize={mode!r} is unknown; choose one of {MODES}")
  if mode != "dataset":
    return [Standardize(mode)]
  if mean is None or std is None:
    raise ValueError(
      "standardize='dataset' needs mean and std (compute them on the training "
      "split with mdx.data.standardize.dataset_mean_std)"
    )
  if np.any(np.asarray(std, np.float64) <= 0):
    raise ValueError(f"standardize='dataset' needs std > 0; got {std}")
  return [
    Standardize("dataset", tuple(np.atleast_1d(mean).tolist()), tuple(np.atleast_1d(std).tolist()))
  ]


def dataset_mean_std(images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std over float images [..., C] (one pass, float64)."""
  total = total_sq = None
  count = 0
  for image in images:
    x = np.asarray(image, np.float64).reshape(-1, np.shape(image)[-1])
    s, sq = x.sum(0), (x * x).sum(0)
    total = s if total is None else total + s
    total_sq = sq if total_sq is None else total_sq + sq
    count += x.shape[0]
  if count == 0:
    raise ValueError("dataset_mean_std got no images; the training split is empty")
  mean = total / count
  var = np.maximum(total_sq / count - mean**2, 0)
  return mean.astype(np.float32), np.sqrt(var).astype(np.float32)
