"""The fingerprint of a 3D segmentation dataset: what nnU-Net measures before it plans anything.

Why: spacing, patch, network and normalisation of a 3D U-Net follow from the data (nnU-Net,
Isensee et al. 2021), so the planner (mdx.data.volume.plan) needs a few facts of every case, read
once: its voxel spacing and shape, how many voxels each class has, and the intensities of its
foreground. fingerprint(source) reads every case of a volume source (records {'image': float32
[D, H, W, C], 'label': int [D, H, W] classes or [D, H, W, R] regions, 'spacing': float32 [3] in the
array's axis order, 'case_id'}) and returns a JSON-ready dict:

  version, num_cases, num_channels, num_classes, class_names, label_mode, modality (the source's,
  e.g. 'CT' or 'MRI', or None), foreground_samples, seed,
  spacing / shape: {'median', 'min', 'max'}: [3] over the cases (mm, voxels; D, H, W),
  intensity: per channel {'mean', 'std', 'median', 'percentile_00_5', 'percentile_99_5', 'min',
    'max', 'samples'} over foreground voxels sampled from every case,
  classes: {class index: {'name', 'cases' (cases where it occurs), 'volume_ml': {'mean',
    'median', 'min', 'max'} over those cases (voxels x voxel volume)}}, background left out,
  cases: per case {'case_id', 'spacing' [3], 'shape' [3], 'class_voxels' {class index: voxels}
    (background included; for regions one count per region), 'foreground_voxels', 'intensity'
    (per channel {'mean', 'std', 'min', 'max', 'percentile_00_5', 'percentile_99_5'} over all of
    the case's foreground voxels; None without foreground)}.

Foreground is label > 0 (or any region set). The dataset's intensity statistics come from the
same number of foreground voxels of every case (foreground_samples, drawn with replacement by a
generator seeded with the seed and the case id, as nnU-Net does), so a large scan does not
outweigh a small one and a case draws the same samples whatever other cases are fingerprinted.

Reading a large dataset takes minutes, so each case's result is cached in cache_dir (one .npz per
dataset: a JSON header with each case's summary, and its samples float32 [C, foreground_samples]),
keyed by its record files (source.record_files(i)) as mdx.data.check keys them
(check.file_fingerprint: size, modification and status-change times, inode, a hash of the ends)
and by the fingerprint's own parameters: a second call reads nothing but the cache, a changed file
is read again. Sources that read no files (phantoms) are computed every time.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import sys
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from mdx import jsonio, outputs
from mdx.data import check
from mdx.data.volume.transforms import foreground_mask

FINGERPRINT_VERSION = 1  # bump when what a case's entry holds changes: older caches are ignored
PERCENTILES = (0.5, 50.0, 99.5)
CACHE_PREFIX = "fingerprint-"


def cache_folder() -> str | None:
  """The fingerprint cache: a folder inside the record check's cache (mdx.data.check; None when
  MDX_CHECK_CACHE turns that off)."""
  folder = check.cache_folder(None)
  return os.path.join(folder, "fingerprints") if folder else None


def fingerprint(
  source,
  indices: Sequence[int] | None = None,
  cache_dir: str | None = None,
  foreground_samples: int = 10000,
  seed: int = 0,
  threads: int | None = None,
  progress: bool = False,
) -> dict[str, Any]:
  """The fingerprint (module docstring) of the cases `indices` of a volume source (None: all),
  each case read from its files or found in cache_dir (None: no cache)."""
  if isinstance(foreground_samples, bool) or not isinstance(foreground_samples, int):
    raise ValueError(f"foreground_samples={foreground_samples!r} must be a whole number >= 1")
  if foreground_samples < 1:
    raise ValueError(f"foreground_samples={foreground_samples} must be >= 1")
  indices = list(range(len(source))) if indices is None else [int(i) for i in indices]
  if not indices:
    raise ValueError("fingerprint got no cases: the source (or the chosen indices) is empty")
  start = time.perf_counter()
  cache = _Cache.open(cache_dir, source, foreground_samples, seed) if cache_dir else None
  keys: dict[int, tuple[str, Any]] = {}
  results: dict[int, tuple[dict, np.ndarray]] = {}
  for i in indices:
    if cache is None:
      continue
    key, stats = cache.key(source, i)
    keys[i] = (key, stats)
    hit = cache.get(key, stats)
    if hit is not None:
      results[i] = hit
  todo = [i for i in indices if i not in results]
  if todo:
    read = lambda i: case_fingerprint(_read(source, i), foreground_samples, seed, i)
    bar = _progress(len(todo), progress)
    workers = threads or min(4, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      for i, result in zip(todo, pool.map(read, todo)):
        results[i] = result
        if cache is not None and keys[i][1] is not None:
          cache.put(keys[i][0], keys[i][1], *result)
        bar.update(1)
    bar.close()
    if cache is not None:
      cache.save()
  cases = [results[i][0] for i in indices]
  samples = [results[i][1] for i in indices]
  out = summarize(source, cases, samples, foreground_samples, seed)
  logging.info(
    "Fingerprint of %d cases in %.1f s (%d read, %d from the cache %s)",
    len(indices),
    time.perf_counter() - start,
    len(todo),
    len(indices) - len(todo),
    cache.file if cache else "(off)",
  )
  return out


def _read(source, index: int) -> dict[str, Any]:
  read = getattr(source, "read_record", None)  # bypasses a source's in-memory cache
  return read(index) if read is not None else source[index]


def case_fingerprint(
  record: dict[str, Any], foreground_samples: int, seed: int, index: int = 0
) -> tuple[dict[str, Any], np.ndarray]:
  """(the case's entry, its foreground samples float32 [C, foreground_samples]) of one record
  (module docstring); a case without foreground gives samples [C, 0]."""
  case_id = str(record.get("case_id", f"case {index}"))
  if record.get("label") is None:
    raise ValueError(f"case {case_id!r} has no label: a fingerprint needs labelled cases")
  image = np.asarray(record["image"], np.float32)
  image = image[..., None] if image.ndim == 3 else image
  label = np.asarray(record["label"])
  if image.ndim != 4 or image.shape[:3] != label.shape[:3]:
    raise ValueError(
      f"case {case_id!r}: image {image.shape} and label {label.shape} are not one scan "
      "[D, H, W, C] and its label [D, H, W]"
    )
  spacing = np.asarray(record.get("spacing", np.ones(3)), np.float64).reshape(-1)
  if spacing.shape != (3,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
    raise ValueError(
      f"case {case_id!r}: spacing {spacing.tolist()} is not three positive millimetres; fix the "
      "file's header (pixdim)"
    )
  if label.ndim == 4:  # regions: one (overlapping) count per region
    counts = label.reshape(-1, label.shape[-1]).astype(bool).sum(0)
  else:
    counts = np.bincount(label.reshape(-1).astype(np.int64))
  mask = foreground_mask(label)
  values = image[mask]  # [n, C]
  channels = image.shape[-1]
  stats = []
  for c in range(channels):
    v = values[:, c].astype(np.float64)
    if not len(v):
      stats.append(None)
      continue
    low, high = np.percentile(v, (PERCENTILES[0], PERCENTILES[2]))
    stats.append(
      {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
      }
    )
  if len(values):
    # with replacement, as nnU-Net: a case with little foreground is not under-represented
    rng = np.random.default_rng([seed, zlib.crc32(case_id.encode())])
    samples = values[rng.integers(0, len(values), foreground_samples)].T
  else:
    samples = np.zeros((channels, 0), np.float32)
  case = {
    "case_id": case_id,
    "spacing": [float(s) for s in spacing],
    "shape": [int(s) for s in image.shape[:3]],
    "class_voxels": {str(k): int(n) for k, n in enumerate(counts)},
    "foreground_voxels": int(mask.sum()),
    "intensity": stats,
  }
  return case, np.ascontiguousarray(samples, np.float32)


def summarize(
  source, cases: list[dict], samples: list[np.ndarray], foreground_samples: int, seed: int
) -> dict[str, Any]:
  """The dataset's fingerprint from its cases' entries and foreground samples [C, n] each."""
  channels = {s.shape[0] for s in samples}
  if len(channels) != 1:
    raise ValueError(
      f"the cases have different channel counts {sorted(channels)}; a dataset's scans must all "
      "hold the same modalities"
    )
  num_channels = channels.pop()
  label_mode = getattr(source, "label_mode", "classes")
  names = getattr(source, "class_names", None)
  names = list(names) if names else None
  if label_mode == "regions":
    num_classes = max(len(c["class_voxels"]) for c in cases)
  else:
    present = max(len(c["class_voxels"]) for c in cases)
    num_classes = max(present, len(names or ()))
  spacings = np.asarray([c["spacing"] for c in cases], np.float64)
  shapes = np.asarray([c["shape"] for c in cases], np.float64)
  pooled = np.concatenate(samples, 1).astype(np.float64)  # [C, cases x n]
  intensity = []
  for c in range(num_channels):
    v = pooled[c]
    if not len(v):  # no case has foreground: nothing to say
      intensity.append(None)
      continue
    low, median, high = np.percentile(v, PERCENTILES)
    intensity.append(
      {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(median),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
        "min": float(v.min()),
        "max": float(v.max()),
        "samples": int(len(v)),
      }
    )
  first = 0 if label_mode == "regions" else 1  # class 0 is background
  classes = {}
  for k in range(first, num_classes):
    ml = np.asarray(
      [
        c["class_voxels"].get(str(k), 0) * float(np.prod(c["spacing"])) / 1000.0
        for c in cases  # 1 mL = 1000 mm^3
      ]
    )
    ml = ml[ml > 0]
    summary = None
    if len(ml):
      summary = {
        "mean": float(ml.mean()),
        "median": float(np.median(ml)),
        "min": float(ml.min()),
        "max": float(ml.max()),
      }
    name = names[k] if names and k < len(names) else None
    classes[str(k)] = {"name": name, "cases": int(len(ml)), "volume_ml": summary}
  return {
    "version": FINGERPRINT_VERSION,
    "num_cases": len(cases),
    "num_channels": int(num_channels),
    "num_classes": int(num_classes),
    "class_names": names,
    "label_mode": label_mode,
    "modality": getattr(source, "modality", None),
    "foreground_samples": int(foreground_samples),
    "seed": int(seed),
    "spacing": _spread(spacings, float),
    "shape": _spread(shapes, float),
    "intensity": intensity,
    "classes": classes,
    "cases": cases,
  }


def _spread(rows: np.ndarray, kind) -> dict[str, list]:
  return {
    "median": [kind(v) for v in np.median(rows, 0)],
    "min": [kind(v) for v in rows.min(0)],
    "max": [kind(v) for v in rows.max(0)],
  }


def write(fp: dict[str, Any], path: str) -> str:
  """The fingerprint as JSON into `path`, whole or not at all (mdx.outputs); returns path."""
  return outputs.write_json(path, jsonio.jsonable(fp))


def read(path: str) -> dict[str, Any]:
  """A fingerprint written by write; ValueError naming the file when it is not one of this
  version."""
  try:
    with open(path, encoding="utf-8") as f:
      fp = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); compute the fingerprint again") from e
  if not isinstance(fp, dict) or fp.get("version") != FINGERPRINT_VERSION:
    got = fp.get("version") if isinstance(fp, dict) else None
    raise ValueError(
      f"{path}: field 'version' is {got!r}, not fingerprint version {FINGERPRINT_VERSION}; "
      "compute the fingerprint again (python -m mdx fingerprint)"
    )
  for field in ("cases", "spacing", "shape", "intensity", "num_channels", "num_classes"):
    if field not in fp:
      raise ValueError(
        f"{path}: field {field!r} is missing; compute the fingerprint again "
        "(python -m mdx fingerprint)"
      )
  return fp


def summary(fp: dict[str, Any]) -> list[str]:
  """A few readable lines: cases, channels, classes, spacing, shape, intensities, class volumes."""
  names = fp.get("class_names") or []
  what = f"{fp['num_classes']} {'regions' if fp.get('label_mode') == 'regions' else 'classes'}"
  if names:
    what += f" ({', '.join(names)})"
  lines = [
    f"{fp['num_cases']} cases, {fp['num_channels']} channel(s) "
    f"({fp.get('modality') or 'modality unknown'}), {what}",
    "spacing mm (D, H, W): " + _spread_text(fp["spacing"], ".3g"),
    "shape voxels (D, H, W): " + _spread_text(fp["shape"], ".0f"),
  ]
  for c, s in enumerate(fp["intensity"]):
    if s is None:
      lines.append(f"channel {c}: no foreground voxel in any case")
      continue
    lines.append(
      f"channel {c} foreground: mean {s['mean']:.4g}, std {s['std']:.4g}, 0.5-99.5% "
      f"[{s['percentile_00_5']:.4g}, {s['percentile_99_5']:.4g}], min {s['min']:.4g}, "
      f"max {s['max']:.4g} ({s['samples']} samples)"
    )
  for k, c in fp["classes"].items():
    label = f"class {k}" + (f" {c['name']}" if c.get("name") else "")
    v = c["volume_ml"]
    if v is None:
      lines.append(f"{label}: in no case")
    else:
      lines.append(
        f"{label}: in {c['cases']} of {fp['num_cases']} cases, median {v['median']:.3g} mL "
        f"({v['min']:.3g} to {v['max']:.3g})"
      )
  return lines


def _spread_text(spread: dict[str, list], fmt: str) -> str:
  return ", ".join(
    f"{k} " + " x ".join(format(v, fmt) for v in spread[k]) for k in ("median", "min", "max")
  )


def _progress(total: int, enabled: bool):
  from tqdm import tqdm

  return tqdm(total=total, unit="case", desc="fingerprint", file=sys.stderr, disable=not enabled)


class _Cache:
  """The cached cases of one dataset and parameter set: an .npz holding 'header' (JSON: root,
  context, and per case key {'stats': [file_fingerprint per file], 'case': entry, 'array': name})
  and one float32 array [C, n] of samples per case. Keys are the record's files relative to the
  common folder of the source's files, as mdx.data.check keys its cache."""

  def __init__(self, file: str, root: str, context: str):
    self.file, self.root, self.context = file, root, context
    self.entries: dict[str, dict] = {}
    self.arrays: dict[str, np.ndarray] = {}
    self.changed = False
    try:
      with np.load(file, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
        if header.get("root") == root and header.get("context") == context:
          for key, entry in header["entries"].items():
            self.entries[key] = entry
            self.arrays[key] = np.asarray(z[entry["array"]], np.float32)
    except (OSError, ValueError, KeyError, TypeError, zlib.error):
      self.entries, self.arrays = {}, {}  # none yet, or damaged: read again

  @classmethod
  def open(cls, folder: str, source, foreground_samples: int, seed: int) -> _Cache | None:
    if not check.is_checkable(source):
      return None  # generated in memory: nothing to key a case by
    files = [os.path.abspath(f) for i in range(len(source)) for f in source.record_files(i)]
    folders = sorted({os.path.dirname(f) for f in files})
    root = os.path.commonpath(folders) if folders else ""
    # the check's context: what besides the files decides a record (channels, classes, ...)
    context = (
      f"{check.context(source)};fingerprint={FINGERPRINT_VERSION};"
      f"samples={foreground_samples};seed={seed}"
    )
    digest = hashlib.sha1(f"{root}\0{context}".encode()).hexdigest()[:20]
    return cls(os.path.join(folder, f"{CACHE_PREFIX}{digest}.npz"), root, context)

  def key(self, source, index: int) -> tuple[str, list | None]:
    """(the case's key, its files' fingerprints; None when one is unreadable: never cached)."""
    files = [os.path.abspath(f) for f in source.record_files(index)]
    cut = len(self.root.rstrip(os.sep)) + 1
    try:
      stats = [list(check.file_fingerprint(f)) for f in files]
    except OSError:
      stats = None
    return "\0".join(f[cut:] for f in files), stats

  def get(self, key: str, stats) -> tuple[dict, np.ndarray] | None:
    entry = self.entries.get(key)
    if entry is None or stats is None or entry["stats"] != stats:
      return None
    return entry["case"], self.arrays[key]

  def put(self, key: str, stats, case: dict, samples: np.ndarray) -> None:
    self.entries[key] = {"stats": stats, "case": case, "array": ""}
    self.arrays[key] = samples
    self.changed = True

  def save(self) -> None:
    if not self.changed:
      return
    arrays = {}
    for n, key in enumerate(sorted(self.entries)):
      self.entries[key]["array"] = f"a{n}"
      arrays[f"a{n}"] = self.arrays[key]
    header = {"root": self.root, "context": self.context, "entries": self.entries}
    buffer = io.BytesIO()
    np.savez(buffer, header=np.asarray(json.dumps(header)), **arrays)
    try:
      os.makedirs(os.path.dirname(self.file), exist_ok=True)
      _prune(os.path.dirname(self.file), keep=self.file)
      with outputs.atomic_path(self.file) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getvalue())  # a concurrent run reads the old or the new file
      self.changed = False
    except (OSError, outputs.OutputError) as e:  # a read-only home must not stop the planning
      logging.warning("could not write the fingerprint cache %s (%s)", self.file, e)


def _prune(folder: str, keep: str, min_age_s: float = 3600.0) -> None:
  """Removes cache files whose data folder no longer exists (temporary datasets, tests); files
  younger than min_age_s are left to runs that may be using them."""
  now = time.time()
  for entry in os.scandir(folder):
    if not (entry.name.startswith(CACHE_PREFIX) and entry.name.endswith(".npz")):
      continue
    if entry.path == keep:
      continue
    try:
      if now - entry.stat().st_mtime < min_age_s:
        continue
      with np.load(entry.path, allow_pickle=False) as z:
        root = json.loads(str(z["header"])).get("root", "")
      if root and not os.path.exists(root):
        os.remove(entry.path)
    except (OSError, ValueError, KeyError, zlib.error):
      continue
