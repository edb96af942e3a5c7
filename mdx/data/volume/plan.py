"""The plan of a 3D segmentation run, derived from its dataset's fingerprint as nnU-Net derives it.

Why: a 3D U-Net's spacing, patch, batch, pooling and normalisation have to suit the data and the
accelerator's memory, and nnU-Net (Isensee et al. 2021) showed that fixed rules applied to a
fingerprint of the dataset (mdx.data.volume.fingerprint) choose them as well as an expert. This
module holds those rules; the training task applies the plan, and a person reads it (describe).

make_plan(fp, modality=..., memory_gb=...) -> a JSON-ready dict:
  target_spacing [3] (mm, D, H, W): the median spacing per axis; when the coarsest median spacing
    is more than 3x the finest, that axis takes the 10th percentile of its spacings instead (not
    finer than the other axes' coarsest median), so the many thick-slice cases are not
    interpolated into slices they never had.
  resampled_median_shape [3]: the median of each case's shape at the target spacing.
  patch_size [3], batch_size: the patch starts at the resampled median shape (rounded up to the
    multiples its pooling needs) and the axis largest relative to that shape shrinks, one multiple
    at a time, until the training memory estimate (below) of batch 2 fits memory_gb; then the
    batch is as many as fit, at least 2, and at most what covers 5% of the dataset's voxels
    (nnU-Net's cap: a bigger batch only repeats the same cases).
  strides [[sd, sh, sw] per pooling level]: an axis is pooled (factor 2) at a level while its
    feature map stays >= 4 voxels and its spacing is less than 2x the finest spacing of the axes
    still poolable (thick slices wait until pooling has coarsened the others to their spacing);
    at most 5 levels; each patch side is a multiple of the product of its strides.
  base_width, max_width, widths: channels per level, doubling from base_width, capped.
  normalization: a mdx.data.standardize spec: CT {'mode': 'ct', 'clip': [[p0.5, p99.5] per
    channel], 'mean': [...], 'std': [...]} from the fingerprint's foreground intensities
    (Hounsfield units mean the same in every scan); any other modality {'mode': 'zscore'} (per
    image and channel).
  num_channels, num_classes, modality, memory_gb, estimated_gb (the estimate of the chosen patch x
  batch), version, and reasons: {field: why, in a few words}.

The memory estimate (estimate_bytes) counts, in float32 (4 bytes), what a training step of the
U-Net (mdx.models.unet3d: per level two 3x3x3 conv -> norm -> ReLU, transposed-convolution up,
skip concatenation) keeps for the backward pass, per sample and per voxel of each level l
(V_l voxels, w_l channels): 6 w_l V_l in each encoder block (every conv, norm and ReLU output:
three tensors per convolution), in each decoder block 9 w_l V_l (the same six, the upsampled map
and the concatenation of two), the pooled map w_l V_(l+1), and at full resolution the input,
logits, probabilities and one-hot labels ((C + 3 K) V_0, and 3 K V_l per deep-supervision head);
plus 4 copies of the parameters (weights, gradients, two Adam moments). Against XLA:CPU's
compiled memory analysis of mdx's UNet3D train step (batch norm, Adam; temporary buffers plus
arguments) it is 0-3% under, for patches 32^3 to 64x32x32, 2 or 3 pooling levels (anisotropic
ones too), widths 8 to 32, with and without deep supervision (tests/data/volume/test_plan.py, full
tier). An accelerator's compiler and a bfloat16 compute dtype change the real figure, so memory_gb
is a budget for this estimate, as nnU-Net's 8 GB is for its own.

overrides (e.g. {'patch_size': [32, 48, 32], 'batch_size': 2, 'base_width': 16}) replace planned
fields, and what follows from them is derived again (strides from an overridden patch, the patch
from an overridden spacing, ...); a value that cannot work is one ValueError naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mdx import jsonio, outputs
from mdx.data import standardize as standardize_lib
from mdx.data.image.file_source import config_get

PLAN_VERSION = 1
# Default budgets (GB) of the memory estimate: nnU-Net's 8 GB class on an accelerator; on a CPU a
# budget whose patch x batch a 2-core machine trains in minutes rather than hours.
MEMORY_GB = {"cpu": 0.25, "gpu": 8.0, "tpu": 8.0}
# The first level's channels: nnU-Net's 32 on an accelerator; 16 on a CPU, where a 32-wide U-Net
# trains ~2x slower per step (about 3.6 vs 1.7 s for 40x56x40 x 2 on 2 cores) and the budget
# above then holds a whole hippocampus scan per patch.
BASE_WIDTH = {"cpu": 16, "gpu": 32, "tpu": 32}
ANISOTROPY = 3.0  # coarsest / finest median spacing above which the 10th percentile is taken
MAX_LEVELS = 5
MIN_FEATURE_MAP = 4  # voxels per axis a pooled feature map keeps at least
MIN_BATCH = 2
MAX_DATASET_FRACTION = 0.05
OVERRIDABLE = (
  "target_spacing",
  "patch_size",
  "batch_size",
  "base_width",
  "max_width",
  "strides",
  "normalization",
)
FIELDS = (
  "version",
  "modality",
  "memory_gb",
  "num_channels",
  "num_classes",
  "target_spacing",
  "resampled_median_shape",
  "patch_size",
  "batch_size",
  "strides",
  "base_width",
  "max_width",
  "widths",
  "normalization",
  "estimated_gb",
  "reasons",
)
GB = 1024**3


def _backend_kind(backend: str) -> str:
  name = str(backend).lower()
  return "gpu" if name in ("gpu", "cuda", "rocm") else name


def default_base_width(backend: str) -> int:
  """BASE_WIDTH of a backend name (jax.default_backend()); 32 for one it does not know."""
  return BASE_WIDTH.get(_backend_kind(backend), 32)


def default_memory_gb(backend: str) -> float:
  """MEMORY_GB of a backend name ('cpu', 'gpu', 'cuda', 'rocm', 'tpu': jax.default_backend())."""
  kind = _backend_kind(backend)
  if kind not in MEMORY_GB:
    raise ValueError(
      f"backend {backend!r} has no default memory budget; set config.data.plan.memory_gb "
      f"(defaults exist for {sorted(MEMORY_GB)})"
    )
  return MEMORY_GB[kind]


# ----------------------------------------------------------------------------------- the rules
def target_spacing(spacings: np.ndarray, anisotropy: float = ANISOTROPY) -> tuple[list, str]:
  """(target spacing [3], why) from the cases' spacings [N, 3] (module docstring)."""
  spacings = np.asarray(spacings, np.float64)
  target = np.median(spacings, 0)
  coarse = int(np.argmax(target))
  if target[coarse] <= anisotropy * target.min():
    return [float(v) for v in target], "median spacing of the cases"
  others = max(target[a] for a in range(3) if a != coarse)
  tenth = float(np.percentile(spacings[:, coarse], 10))
  target[coarse] = max(tenth, others)  # never finer than the other axes
  why = (
    f"median spacing of the cases, but axis {coarse} is over {anisotropy:g}x coarser than the "
    f"finest: its 10th percentile ({tenth:.3g} mm), so thick-slice cases are not interpolated"
  )
  return [float(v) for v in target], why


def resampled_shapes(cases: Sequence[Mapping], spacing: Sequence[float]) -> np.ndarray:
  """Each case's shape [N, 3] at `spacing` (rounded, at least 1)."""
  shapes = np.asarray([c["shape"] for c in cases], np.float64)
  spacings = np.asarray([c["spacing"] for c in cases], np.float64)
  return np.maximum(np.round(shapes * spacings / np.asarray(spacing, np.float64)), 1).astype(int)


def pool_strides(
  patch: Sequence[int],
  spacing: Sequence[float],
  max_levels: int = MAX_LEVELS,
  min_feature_map: int = MIN_FEATURE_MAP,
  exact: bool = False,
) -> list[list[int]]:
  """[[sd, sh, sw] per pooling level] for a patch at `spacing` (module docstring). exact=True
  pools an axis only while it divides by 2 (a patch that must stay as it is); else the patch is
  to be rounded up to the strides' multiples (round_up)."""
  size = [int(s) for s in patch]
  spacing = [float(s) for s in spacing]
  levels = []
  while len(levels) < max_levels:
    valid = [a for a in range(3) if size[a] >= 2 * min_feature_map and not (exact and size[a] % 2)]
    if not valid:
      break
    finest = min(spacing[a] for a in valid)
    axes = [a for a in valid if spacing[a] < 2 * finest]
    stride = [2 if a in axes else 1 for a in range(3)]
    for a in axes:
      spacing[a] *= 2
      size[a] = -(-size[a] // 2)
    levels.append(stride)
  return levels


def multiples(strides: Sequence[Sequence[int]]) -> list[int]:
  """What each patch side must be a multiple of: the product of its strides."""
  out = [1, 1, 1]
  for level in strides:
    out = [m * int(s) for m, s in zip(out, level)]
  return out


def round_up(patch: Sequence[int], strides: Sequence[Sequence[int]]) -> list[int]:
  return [-(-int(p) // m) * m for p, m in zip(patch, multiples(strides))]


def widths(levels: int, base_width: int, max_width: int) -> list[int]:
  """Channels of each of the levels + 1 resolution levels: doubling, capped at max_width."""
  return [min(base_width * 2**level, max_width) for level in range(levels + 1)]


def estimate_bytes(
  patch: Sequence[int],
  strides: Sequence[Sequence[int]],
  level_widths: Sequence[int],
  in_channels: int,
  num_classes: int,
  batch: int,
) -> int:
  """The training memory estimate (module docstring) of the U-Net on batch x patch, in bytes."""
  voxels, size = [], [int(p) for p in patch]
  voxels.append(math.prod(size))
  for level in strides:
    size = [s // int(f) for s, f in zip(size, level)]
    voxels.append(math.prod(size))
  last = len(strides)
  k, floats, params = num_classes, 0, 0
  for lvl, w in enumerate(level_widths):
    v = voxels[lvl]
    floats += 6 * w * v  # encoder block: conv, norm, ReLU outputs of two convolutions
    cin = in_channels if lvl == 0 else level_widths[lvl - 1]
    params += 27 * cin * w + 27 * w * w + 4 * w
    if lvl < last:
      # pooled map, and the decoder: upsampled map, concatenation (2 w), block (6 w)
      floats += w * voxels[lvl + 1] + 9 * w * v
      params += math.prod(strides[lvl]) * level_widths[lvl + 1] * w + w
      params += 27 * 2 * w * w + 27 * w * w + 4 * w
      if 0 < lvl:  # a deep-supervision head: logits, probabilities, one-hot labels
        floats += 3 * k * v
        params += w * k + k
  floats += (in_channels + 3 * k) * voxels[0]  # input, logits, probabilities, one-hot labels
  params += level_widths[0] * k + k
  return 4 * (int(batch) * floats + 4 * params)


# ------------------------------------------------------------------------------------ the plan
def make_plan(
  fp: Mapping[str, Any],
  *,
  modality: str | None,
  memory_gb: float,
  overrides: Mapping[str, Any] | None = None,
  max_width: int = 320,
  base_width: int = 32,
  max_levels: int = MAX_LEVELS,
  min_feature_map: int = MIN_FEATURE_MAP,
  min_batch: int = MIN_BATCH,
  max_dataset_fraction: float = MAX_DATASET_FRACTION,
  anisotropy: float = ANISOTROPY,
) -> dict[str, Any]:
  """The plan (module docstring) of fingerprint `fp` for a `modality` ('CT' plans CT
  normalisation; None or anything else z-score) within memory_gb of the estimate."""
  cases = _fingerprint_cases(fp)
  if isinstance(memory_gb, bool) or not _positive(memory_gb):
    raise ValueError(f"memory_gb={memory_gb!r} must be a positive number of GB")
  over = _check_overrides(overrides, int(fp["num_channels"]))
  reasons: dict[str, str] = {}
  in_channels, num_classes = int(fp["num_channels"]), int(fp["num_classes"])

  if "target_spacing" in over:
    spacing, reasons["target_spacing"] = over["target_spacing"], "set by override"
  else:
    spacing, reasons["target_spacing"] = target_spacing(
      np.asarray([c["spacing"] for c in cases]), anisotropy
    )
  shapes = resampled_shapes(cases, spacing)
  median = [max(1, int(round(v))) for v in np.median(shapes, 0)]
  reasons["resampled_median_shape"] = "median of the cases' shapes at the target spacing"

  base = over.get("base_width", base_width)
  top = over.get("max_width", max_width)
  if base > top:
    raise ValueError(
      f"plan base_width={base} is above max_width={top}; lower base_width or raise max_width"
    )
  budget = float(memory_gb) * GB
  fit_batch = over.get("batch_size", min_batch)

  def estimate(patch, strides, batch):
    return estimate_bytes(
      patch, strides, widths(len(strides), base, top), in_channels, num_classes, batch
    )

  def strides_for(patch, exact):
    if "strides" in over:
      return over["strides"]
    return pool_strides(patch, spacing, max_levels, min_feature_map, exact)

  if "patch_size" in over:
    patch = over["patch_size"]
    strides = strides_for(patch, exact=True)
    if any(p % m for p, m in zip(patch, multiples(strides))):
      raise ValueError(
        f"plan override patch_size={patch} must be multiples of {multiples(strides)} (the "
        f"product of strides {strides} per axis); choose sides divisible by them"
      )
    reasons["patch_size"] = "set by override"
  else:
    strides = strides_for(median, exact=False)
    patch = round_up(median, strides)
    strides = strides_for(patch, exact=True)  # the rounded patch may pool deeper
    start = list(patch)
    while estimate(patch, strides, fit_batch) > budget:
      step = multiples(strides)
      shrinkable = [a for a in range(3) if patch[a] - step[a] >= 1]
      if not shrinkable:
        raise ValueError(
          f"memory_gb={memory_gb} cannot hold even a {_x(patch)} patch x batch {fit_batch} "
          f"(~{estimate(patch, strides, fit_batch) / GB:.2f} GB by the estimate); raise "
          "memory_gb (config.data.plan.memory_gb) or lower base_width"
        )
      axis = max(shrinkable, key=lambda a: patch[a] / median[a])  # the first on a tie
      patch = list(patch)
      patch[axis] -= step[axis]
      strides = strides_for(patch, exact=True)
    if patch == start:
      reasons["patch_size"] = (
        f"the resampled median shape rounded up to multiples of {multiples(strides)}: "
        f"batch {fit_batch} fits {memory_gb:g} GB"
      )
    else:
      reasons["patch_size"] = (
        f"shrunk from {_x(start)} (the resampled median shape, rounded up) along the axis "
        f"largest relative to it until batch {fit_batch} fits {memory_gb:g} GB"
      )
  reasons["strides"] = (
    "set by override"
    if "strides" in over
    else "pool an axis while its feature map keeps >= "
    f"{min_feature_map} voxels and its spacing is < 2x the finest (at most {max_levels} levels)"
  )

  level_widths = widths(len(strides), base, top)
  reasons["widths"] = f"{base} doubling per level, capped at {top}" + (
    " (set by override)" if {"base_width", "max_width"} & set(over) else ""
  )
  if "batch_size" in over:
    batch, reasons["batch_size"] = over["batch_size"], "set by override"
  else:
    fixed = estimate(patch, strides, 0)  # parameters, gradients, optimiser moments
    per_sample = estimate(patch, strides, 1) - fixed
    fits = int((budget - fixed) // per_sample)
    dataset_voxels = math.prod(median) * len(cases)
    cap = round(max_dataset_fraction * dataset_voxels / math.prod(patch))
    batch = min(fits, cap)
    if fits <= cap:
      reasons["batch_size"] = f"as many as fit {memory_gb:g} GB ({fits})"
    else:
      reasons["batch_size"] = (
        f"{fits} would fit {memory_gb:g} GB, capped at {max_dataset_fraction:.0%} of the "
        f"dataset's voxels ({cap})"
      )
    if batch < min_batch:
      batch = min_batch
      reasons["batch_size"] += f", raised to the minimum {min_batch}"
  used = estimate(patch, strides, batch)
  if used > budget:
    reasons["batch_size"] += f"; over the budget: ~{used / GB:.2f} GB > {memory_gb:g} GB"

  if "normalization" in over:
    norm, reasons["normalization"] = over["normalization"], "set by override"
  else:
    norm, reasons["normalization"] = _normalization(fp, modality)
  return {
    "version": PLAN_VERSION,
    "modality": modality,
    "memory_gb": float(memory_gb),
    "num_channels": in_channels,
    "num_classes": num_classes,
    "target_spacing": [float(s) for s in spacing],
    "resampled_median_shape": median,
    "patch_size": [int(p) for p in patch],
    "batch_size": int(batch),
    "strides": [[int(s) for s in level] for level in strides],
    "base_width": int(base),
    "max_width": int(top),
    "widths": level_widths,
    "normalization": norm,
    "estimated_gb": used / GB,
    "reasons": reasons,
  }


def is_ct(modality: str | None) -> bool:
  return isinstance(modality, str) and modality.strip().upper() == "CT"


def _normalization(fp: Mapping[str, Any], modality: str | None) -> tuple[dict, str]:
  if not is_ct(modality):
    what = f"modality {modality}" if modality else "modality unknown"
    return {"mode": "zscore"}, f"{what}: each image's own mean and std per channel"
  stats = fp["intensity"]
  missing = [c for c, s in enumerate(stats) if s is None]
  if missing:
    raise ValueError(
      f"CT normalisation needs foreground intensities, and channel {missing[0]} has no "
      "foreground voxel in any case: check the labels, or set the modality to plan z-score"
    )
  spec = {
    "mode": "ct",
    "clip": [[s["percentile_00_5"], s["percentile_99_5"]] for s in stats],
    "mean": [s["mean"] for s in stats],
    "std": [s["std"] for s in stats],
  }
  return standardize_lib.check(spec), (
    "CT: Hounsfield units mean the same in every scan, so one map: clip to the foreground's "
    "0.5-99.5 percentiles, then its mean and std"
  )


def _fingerprint_cases(fp: Mapping[str, Any]) -> list[Mapping]:
  for field in ("cases", "num_channels", "num_classes", "intensity"):
    if field not in fp:
      raise ValueError(
        f"the fingerprint lacks field {field!r}; compute it with "
        "mdx.data.volume.fingerprint.fingerprint"
      )
  if not fp["cases"]:
    raise ValueError("the fingerprint has no cases; a plan needs at least one")
  return fp["cases"]


def _positive(value: Any) -> bool:
  return isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0


def _whole(value: Any, least: int = 1) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least


def _triple(value: Any, check) -> bool:
  return isinstance(value, (list, tuple)) and len(value) == 3 and all(check(v) for v in value)


def _check_strides(value: Any) -> bool:
  return isinstance(value, (list, tuple)) and all(
    _triple(level, lambda s: _whole(s) and s in (1, 2)) for level in value
  )


def _check_overrides(overrides: Mapping[str, Any] | None, channels: int) -> dict[str, Any]:
  """The overrides as plain values; a ValueError naming the first that cannot work."""
  out: dict[str, Any] = {}
  for key, value in (overrides or {}).items():
    if key not in OVERRIDABLE:
      raise ValueError(f"plan override {key!r} is unknown; the overridable fields: {OVERRIDABLE}")
    bad = None
    if key == "target_spacing" and not _triple(value, _positive):
      bad = "must be three positive millimetres (D, H, W)"
    elif key == "patch_size" and not _triple(value, _whole):
      bad = "must be three whole sides >= 1 (D, H, W)"
    elif key in ("batch_size", "base_width", "max_width") and not _whole(value):
      bad = "must be a whole number >= 1"
    elif key == "strides" and not _check_strides(value):
      bad = "must be a list of [sd, sh, sw] per pooling level, each factor 1 or 2"
    if bad:
      raise ValueError(f"plan override {key}={value!r} {bad}")
    if key == "normalization":
      value = standardize_lib.check(value)
      if isinstance(value, dict) and value["mode"] == "ct" and len(value["mean"]) != channels:
        raise ValueError(
          f"plan override normalization has statistics of {len(value['mean'])} channel(s) but "
          f"the dataset has {channels}"
        )
    elif key == "target_spacing":
      value = [float(v) for v in value]
    elif key in ("patch_size", "strides"):
      value = (
        [[int(s) for s in level] for level in value]
        if key == "strides"
        else [int(v) for v in value]
      )
    else:
      value = int(value)
    out[key] = value
  return out


def config_overrides(config) -> dict[str, Any]:
  """The plan overrides a run's config sets (the fields left None are the plan's):
  data.spacing (mm; 'native' is no plan field), data.patch_size, train.batch_size,
  model.base_width, model.max_width, model.strides (or model.depth: 2x pooling on every axis
  depth - 1 times) and data.standardize."""
  data, model, train = (config_get(config, k, {}) for k in ("data", "model", "train"))
  out: dict[str, Any] = {}
  spacing = config_get(data, "spacing")
  if spacing is not None and spacing != "native":
    out["target_spacing"] = list(spacing)
  if config_get(data, "patch_size") is not None:
    out["patch_size"] = list(config_get(data, "patch_size"))
  for key, where in (("batch_size", train), ("base_width", model), ("max_width", model)):
    if config_get(where, key) is not None:
      out[key] = config_get(where, key)
  if config_get(model, "strides") is not None:
    out["strides"] = [list(level) for level in config_get(model, "strides")]
  elif config_get(model, "depth") is not None:
    out["strides"] = [[2, 2, 2]] * (int(config_get(model, "depth")) - 1)
  if config_get(data, "standardize") is not None:
    out["normalization"] = config_get(data, "standardize")
  return out


def plan_dataset(config, source, indices, backend: str, progress: bool = False):
  """(fingerprint, plan) of the cases `indices` of a run's volume source, as the run plans them:
  the fingerprint cached (mdx.data.volume.fingerprint.cache_folder), the modality
  config.data.modality's else the source's, the budget data.plan.memory_gb's else the backend's,
  the base width the backend's, and the config's fields as overrides (config_overrides). The
  segmentation task and `python -m mdx fingerprint` both plan through here."""
  from mdx.data.volume import fingerprint as fingerprint_lib

  data = config_get(config, "data", {})
  fp = fingerprint_lib.fingerprint(
    source, indices, cache_dir=fingerprint_lib.cache_folder(), progress=progress
  )
  memory = config_get(config_get(data, "plan", {}), "memory_gb")
  made = make_plan(
    fp,
    modality=config_get(data, "modality") or fp["modality"],
    memory_gb=memory if memory is not None else default_memory_gb(backend),
    overrides=config_overrides(config),
    base_width=default_base_width(backend),
  )
  return fp, made


# ------------------------------------------------------------------------------ reading it
def describe(plan: Mapping[str, Any]) -> list[str]:
  """A few readable lines: spacing, patch x batch, levels and widths, normalisation, with why."""
  why = plan.get("reasons", {})
  strides = plan["strides"]
  pools = ", ".join("x".join(str(s) for s in level) for level in strides) or "none"
  norm = plan["normalization"]
  return [
    f"spacing {_x(plan['target_spacing'], '.3g')} mm: {why.get('target_spacing', '')}",
    f"median shape at that spacing {_x(plan['resampled_median_shape'])}",
    f"patch {_x(plan['patch_size'])} x batch {plan['batch_size']} "
    f"(~{plan['estimated_gb']:.2f} of {plan['memory_gb']:g} GB by the estimate): "
    f"{why.get('patch_size', '')}; batch: {why.get('batch_size', '')}",
    f"network: {len(strides) + 1} levels, pooling {pools}; widths "
    f"{', '.join(str(w) for w in plan['widths'])}: {why.get('strides', '')}",
    f"normalisation: {_norm_text(norm)}: {why.get('normalization', '')}",
  ]


def _norm_text(norm: Any) -> str:
  if isinstance(norm, dict) and norm.get("mode") == "ct":
    parts = [
      f"clip [{lo:.4g}, {hi:.4g}], mean {m:.4g}, std {s:.4g}"
      for (lo, hi), m, s in zip(norm["clip"], norm["mean"], norm["std"])
    ]
    return "CT per channel: " + "; ".join(parts)
  if isinstance(norm, dict) and norm.get("mode") == "zscore":
    return "z-score per image and channel"
  return f"mode {norm!r}"


def _x(values: Sequence, fmt: str = "d") -> str:
  return " x ".join(format(int(v) if fmt == "d" else float(v), fmt) for v in values)


def write(plan: Mapping[str, Any], path: str) -> str:
  """The plan as JSON into `path`, whole or not at all (mdx.outputs); returns path."""
  return outputs.write_json(path, jsonio.jsonable(dict(plan)))


def read(path: str) -> dict[str, Any]:
  """A plan written by write, every field checked: a missing or wrong one is one ValueError
  naming the file and the field."""
  try:
    with open(path, encoding="utf-8") as f:
      plan = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(
      f"{path} is not valid JSON ({e}); plan again (python -m mdx fingerprint)"
    ) from e
  if not isinstance(plan, dict):
    raise ValueError(f"{path} holds no plan (a JSON object); plan again")
  check_plan(plan, path)
  return plan


def check_plan(plan: Mapping[str, Any], where: str = "plan") -> None:
  """ValueError naming `where` and the first missing or wrong field of a plan."""

  def bad(field: str, what: str) -> ValueError:
    return ValueError(f"{where}: field {field!r} {what}; plan again (python -m mdx fingerprint)")

  for field in FIELDS:
    if field not in plan:
      raise bad(field, "is missing")
  if plan["version"] != PLAN_VERSION:
    raise bad("version", f"is {plan['version']!r}, not plan version {PLAN_VERSION}")
  if plan["modality"] is not None and not isinstance(plan["modality"], str):
    raise bad("modality", "must be a name such as 'CT' or 'MRI', or null")
  for field in ("memory_gb", "estimated_gb"):
    if isinstance(plan[field], bool) or not _positive(plan[field]):
      raise bad(field, "must be a positive number")
  if not _triple(plan["target_spacing"], lambda v: not isinstance(v, bool) and _positive(v)):
    raise bad("target_spacing", "must be three positive millimetres")
  for field in ("resampled_median_shape", "patch_size"):
    if not _triple(plan[field], _whole):
      raise bad(field, "must be three whole numbers >= 1")
  for field in ("num_channels", "num_classes", "batch_size", "base_width", "max_width"):
    if not _whole(plan[field]):
      raise bad(field, "must be a whole number >= 1")
  if not _check_strides(plan["strides"]):
    raise bad("strides", "must be a list of [sd, sh, sw] per level, each 1 or 2")
  if any(p % m for p, m in zip(plan["patch_size"], multiples(plan["strides"]))):
    raise bad("patch_size", f"must be multiples of {multiples(plan['strides'])} (its strides)")
  expect = widths(len(plan["strides"]), plan["base_width"], plan["max_width"])
  if plan["widths"] != expect:
    raise bad("widths", f"must be {expect} (base_width doubling per level, capped)")
  try:
    standardize_lib.check(plan["normalization"])
  except ValueError as e:
    raise bad("normalization", f"is not a standardize spec ({e})") from None
  if not isinstance(plan["reasons"], dict):
    raise bad("reasons", "must be an object {field: why}")
