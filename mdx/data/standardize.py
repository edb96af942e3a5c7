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

A 3D plan (mdx.data.volume.plan, nnU-Net's normalisations) gives a spec, a dict, through the same
entry points (standardize, transforms, Standardize):
  {'mode': 'zscore'}  per image and channel: the 'per_channel' mode above (MRI and any modality
                      whose intensities have no physical unit).
  {'mode': 'ct', 'clip': [[lo, hi] per channel], 'mean': [per channel], 'std': [per channel]}
                      Hounsfield units mean the same in every scan, so every scan gets the same
                      map: each channel clipped to [lo, hi] (the dataset's foreground 0.5 and 99.5
                      percentiles), then (x - mean) / max(std, 1e-8) with the foreground's mean and
                      std (of the unclipped samples, as nnU-Net's CTNormalization).
check(mode) validates either form (a string or a spec) before a worker meets it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MODES = ("per_image", "per_channel", "nonzero", "per_slice", "dataset", "none")
SPEC_MODES = ("zscore", "ct")  # the modes of a plan's spec (a dict)


def check(mode: Any) -> str | dict | None:
  """`mode` validated: a name of MODES or None as it is; a spec (a dict, or a mapping such as a
  ConfigDict) as a plain dict {'mode': 'zscore'} or {'mode': 'ct', 'clip': [[lo, hi], ...],
  'mean': [...], 'std': [...]} with float lists. Anything else is a ValueError naming the field."""
  if mode is None or isinstance(mode, str):
    if mode is not None and mode not in MODES:
      raise ValueError(f"config.data.standardize={mode!r} is unknown; choose one of {MODES}")
    return mode
  if not isinstance(mode, Mapping) and not hasattr(mode, "keys"):
    raise ValueError(
      f"config.data.standardize={mode!r} must be a mode name {MODES} or a spec such as "
      "{'mode': 'zscore'}"
    )
  spec = {k: mode[k] for k in mode.keys()}
  kind = spec.get("mode")
  if kind not in SPEC_MODES:
    raise ValueError(
      f"config.data.standardize={spec!r}: 'mode' must be one of {SPEC_MODES} in a spec"
    )
  if kind == "zscore":
    if set(spec) != {"mode"}:
      raise ValueError(
        f"config.data.standardize={spec!r}: a 'zscore' spec takes no other key (it uses each "
        "image's own statistics)"
      )
    return {"mode": "zscore"}
  extra = set(spec) - {"mode", "clip", "mean", "std"}
  if extra or not {"clip", "mean", "std"} <= set(spec):
    raise ValueError(
      f"config.data.standardize={spec!r}: a 'ct' spec has exactly the keys mode, clip "
      "([[lo, hi] per channel]), mean and std (per channel)"
    )
  try:
    clip = np.asarray(spec["clip"], np.float64)
    mean = np.asarray(spec["mean"], np.float64)
    std = np.asarray(spec["std"], np.float64)
  except (TypeError, ValueError):
    clip = mean = std = np.zeros(0)
  channels = len(mean) if mean.ndim == 1 else 0
  if (
    channels == 0
    or clip.shape != (channels, 2)
    or std.shape != (channels,)
    or not (np.isfinite(clip).all() and np.isfinite(mean).all() and np.isfinite(std).all())
    or (clip[:, 0] > clip[:, 1]).any()
    or (std <= 0).any()
  ):
    raise ValueError(
      f"config.data.standardize={spec!r}: a 'ct' spec needs, for each of C channels, clip "
      "[lo, hi] with lo <= hi, a mean and a std > 0, all finite (clip [[lo, hi]] * C, mean [C], "
      "std [C])"
    )
  return {"mode": "ct", "clip": clip.tolist(), "mean": mean.tolist(), "std": std.tolist()}


def standardize(image: np.ndarray, mode: Any, mean: Any = None, std: Any = None) -> np.ndarray:
  """float32 image [..., C] standardised by `mode`, a name or a plan's spec (module docstring)."""
  mode = check(mode)
  x = np.asarray(image, np.float32)
  if isinstance(mode, dict):
    return _by_spec(x, mode)
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


def _by_spec(x: np.ndarray, spec: dict) -> np.ndarray:
  """x [..., C] by a checked spec (check)."""
  if spec["mode"] == "zscore":  # nnU-Net's ZScoreNormalization is the per-channel mode
    return standardize(x, "per_channel")
  channels = len(spec["mean"])
  if x.shape[-1] != channels:
    raise ValueError(
      f"standardize spec 'ct' has statistics of {channels} channel(s) but the image has "
      f"{x.shape[-1]} (shape {x.shape}); plan again from this dataset's fingerprint"
    )
  clip = np.asarray(spec["clip"], np.float32)
  mean = np.asarray(spec["mean"], np.float32)
  std = np.maximum(np.asarray(spec["std"], np.float32), 1e-8)
  return ((np.clip(x, clip[:, 0], clip[:, 1]) - mean) / std).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Standardize:
  """record['image'] standardised (mean/std only for mode 'dataset'; mode a name or a checked
  spec). A grain map transform as a plain callable: grain's dataset.map takes any callable, and
  predict, which standardises through this module, then never imports grain (~0.4 s)."""

  mode: Any = "per_image"
  mean: Any = None
  std: Any = None

  def map(self, record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "image": standardize(record["image"], self.mode, self.mean, self.std)}

  __call__ = map


def transforms(
  mode: Any,
  mean: float | Sequence[float] | None = None,
  std: float | Sequence[float] | None = None,
) -> list:
  """[Standardize] for a mode name or a plan's spec, checked now rather than in a worker; None or
  'none' -> []."""
  mode = check(mode)
  if mode is None or mode == "none":
    return []
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
