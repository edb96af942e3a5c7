"""Patient-level splits: no patient ever has images in two sets.

The one exception is split.by='image' (images dealt out at random, whoever their patient): the
mistake the leakage ablation measures (experiments/ablations/leakage.py). It runs only inside
`image_split_allowed`, which an ablation file switches on with ALLOW_IMAGE_SPLIT = True (mdx.train.
sweep); a normal config asking for it is an error, and the leakage audit reports the overlap.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

# Why split.by='image' is allowed right now (the reasons of the enclosing image_split_allowed).
_IMAGE_SPLIT_REASONS: list[str] = []


def patient_split(
  patient_ids: Sequence[str] | np.ndarray,
  fractions: Mapping[str, float],
  seed: int,
) -> dict[str, np.ndarray]:
  """Splits record indices into named sets by patient.

  Args:
    patient_ids: the patient id of every record.
    fractions: share of *patients* per named set, e.g. {'test': .15, 'validation': .15};
      the remaining patients form 'train'.
    seed: decides the assignment.

  Returns:
    {name: sorted record indices} including 'train'.
  """
  pids = np.asarray(patient_ids).astype(str)
  total = float(sum(fractions.values()))
  if not 0.0 <= total < 1.0 or any(f < 0 for f in fractions.values()):
    raise ValueError(
      f"split fractions {dict(fractions)} must be >= 0 and sum to < 1 "
      "(the rest of the patients go to 'train')"
    )
  unique = np.unique(pids)
  order = np.random.default_rng(seed).permutation(len(unique))
  assignment = np.full(len(unique), "train", dtype=object)
  start = 0
  for name, frac in fractions.items():
    n = int(round(frac * len(unique)))
    assignment[order[start : start + n]] = name
    start += n
  set_of_record = assignment[np.searchsorted(unique, pids)]
  out = {name: np.flatnonzero(set_of_record == name) for name in ["train", *fractions]}
  for name, idx in out.items():
    if len(idx) == 0:
      raise ValueError(
        f"split '{name}' is empty: {len(unique)} patients are too few for "
        f"fractions {dict(fractions)}; use more data or larger fractions"
      )
  return out


@contextlib.contextmanager
def image_split_allowed(reason: str):
  """Lets config.data.split.by='image' run inside the block, with a loud warning: only the leakage
  ablation needs it, to show what patient overlap between sets does to test results."""
  logging.warning(
    "\n%s\nLEAKAGE SWITCH ON (%s): split.by='image' may put one patient's images in train and\n"
    "test. Its results are inflated on purpose; never report them as a model's performance.\n%s",
    "!" * 78,
    reason,
    "!" * 78,
  )
  _IMAGE_SPLIT_REASONS.append(reason)
  try:
    yield
  finally:
    _IMAGE_SPLIT_REASONS.pop()


def check_split_by(by: str) -> None:
  """Refuses split.by='image' outside image_split_allowed (the other policies are checked by
  make_split)."""
  if by == "image" and not _IMAGE_SPLIT_REASONS:
    raise ValueError(
      "config.data.split.by='image' puts one patient's images in several sets (leakage); it runs "
      "only inside an ablation with ALLOW_IMAGE_SPLIT = True (experiments/ablations/leakage.py); "
      "split by 'patient'"
    )


def image_split(n: int, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
  """Record indices dealt out at random by *image* (the leakage ablation's mistake): share
  `fractions[name]` of the images per named set, the rest 'train'. Needs image_split_allowed."""
  check_split_by("image")
  total = float(sum(fractions.values()))
  if not 0.0 <= total < 1.0 or any(f < 0 for f in fractions.values()):
    raise ValueError(f"split fractions {dict(fractions)} must be >= 0 and sum to < 1")
  order = np.random.default_rng([seed, 0x1EA4]).permutation(n)
  out, start = {}, 0
  for name, frac in fractions.items():
    k = int(round(frac * n))
    out[name] = np.sort(order[start : start + k])
    start += k
  out["train"] = np.sort(order[start:])
  logging.warning("split.by='image' (leakage switch on): %s", {k: len(v) for k, v in out.items()})
  return {name: out[name] for name in ["train", *fractions]}


def _as_int_size(size: float, total: int, what: str) -> int:
  """A size given as a count (>= 1) or a share of `total` (< 1)."""
  if size < 0:
    raise ValueError(f"{what}={size} must be >= 0")
  return int(round(size * total)) if size < 1 else int(size)


def positives_any(labels: np.ndarray, finding_index: Sequence[int] | None = None) -> np.ndarray:
  """bool [N]: positive for at least one of the chosen findings (nan counts as not positive)."""
  labels = np.asarray(labels, np.float64)
  if labels.ndim == 1:
    labels = labels[:, None]
  if finding_index is not None:
    labels = labels[:, list(finding_index)]
  return (
    np.nan_to_num(labels, nan=0.0).max(axis=1) > 0.5
    if labels.shape[1]
    else np.zeros(len(labels), bool)
  )


def test_first_split(
  patient_ids: Sequence[str] | np.ndarray,
  positive: np.ndarray,
  test_size: float,
  val_size: float,
  min_positive_share: float,
  seed: int,
) -> dict[str, np.ndarray]:
  """The course's sampling order: test first, then validation, the rest of the patients to train.

  Each of test and validation gets whole patients, drawn in a seeded random order, until it holds at
  least `size` images (a count, or a share of all images when < 1) AND at least
  `min_positive_share` of its images are positive: while the share is below the target a patient
  with positive images is added (first those whose own images meet the share), otherwise one
  without. Training gets every remaining patient, so
  no patient is in two sets.

  Args:
    patient_ids: [N] patient of every image.
    positive: bool [N], e.g. positives_any(labels, findings asked for).
  Returns:
    {'train', 'validation', 'test'}: sorted image indices.
  """
  pids = np.asarray(patient_ids).astype(str)
  positive = np.asarray(positive, bool)
  if positive.shape != pids.shape:
    raise ValueError(f"positive has shape {positive.shape}, patient_ids {pids.shape}")
  if not 0.0 <= min_positive_share <= 1.0:
    raise ValueError(f"min_positive_share={min_positive_share} must be in [0, 1]")
  unique, inverse = np.unique(pids, return_inverse=True)
  n_img = np.bincount(inverse, minlength=len(unique))
  n_pos = np.bincount(inverse, weights=positive, minlength=len(unique)).astype(int)
  order = np.random.default_rng(seed).permutation(len(unique))
  # Positive patients whose own positive share meets the target come first (adding one never
  # lowers the set's share; follow-up films of a positive patient are often negative), each group
  # in the seeded random order.
  rich = n_pos >= min_positive_share * n_img
  pos_queue = collections.deque(
    [p for p in order if n_pos[p] > 0 and rich[p]]
    + [p for p in order if n_pos[p] > 0 and not rich[p]]
  )
  neg_queue = collections.deque(p for p in order if n_pos[p] == 0)
  taken = np.zeros(len(unique), bool)
  assignment = np.full(len(unique), "train", dtype=object)
  for name, size in (("test", test_size), ("validation", val_size)):
    target = _as_int_size(size, len(pids), f"{name} size")
    if target == 0:
      raise ValueError(f"split '{name}' would be empty: size {size}")
    total = pos = 0
    while total < target or pos < min_positive_share * total:
      want_pos = pos < min_positive_share * max(total, 1) or (pos < min_positive_share * target)
      queue = pos_queue if want_pos else neg_queue
      while queue and taken[queue[0]]:
        queue.popleft()
      if not queue:
        other = neg_queue if want_pos else pos_queue
        while other and taken[other[0]]:
          other.popleft()
        if want_pos or not other:
          raise ValueError(
            f"cannot sample the {name} set: {total} images with {pos} positives so far and no "
            f"{'positive ' if want_pos else ''}patients left for size {target} with a positive "
            f"share >= {min_positive_share}; lower --{name[:3] if name == 'validation' else name}"
            "_size or --min_positive_share"
          )
        queue = other
      p = queue.popleft()
      taken[p] = True
      assignment[p] = name
      total += n_img[p]
      pos += n_pos[p]
  set_of_record = assignment[inverse]
  out = {name: np.flatnonzero(set_of_record == name) for name in ("train", "validation", "test")}
  if len(out["train"]) == 0:
    raise ValueError("no patients left for the training set; lower the test and validation sizes")
  return out


def patient_kfold(
  patient_ids: Sequence[str] | np.ndarray, k: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
  """k (train, held-out) index pairs; every patient is held out in exactly one fold.

  Patients are shuffled by seed, then given largest first to the fold with the fewest images, so
  folds have about the same number of images even when some patients have many.
  """
  pids = np.asarray(patient_ids).astype(str)
  unique, inverse = np.unique(pids, return_inverse=True)
  if not 2 <= k <= len(unique):
    raise ValueError(f"k={k} folds need 2 <= k <= number of patients ({len(unique)})")
  counts = np.bincount(inverse)
  order = np.random.default_rng(seed).permutation(len(unique))
  order = order[np.argsort(-counts[order], kind="stable")]
  fold_of = np.empty(len(unique), int)
  load = np.zeros(k, int)
  for p in order:
    f = int(np.argmin(load))
    fold_of[p] = f
    load[f] += counts[p]
  folds = fold_of[inverse]
  return [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in range(k)]


def official_nih_split(
  image_ids: Sequence[str],
  patient_ids: Sequence[str],
  lists_dir: str,
  val_fraction: float,
  seed: int,
) -> dict[str, np.ndarray]:
  """The official NIH test list as 'test'; train_val_list.txt split by patient into
  train/validation."""
  from mdx.data.cxr import nih

  official = nih.official_split(image_ids, lists_dir)
  tv = official["train_val"]
  inner = patient_split(np.asarray(patient_ids).astype(str)[tv], {"validation": val_fraction}, seed)
  return {
    "train": tv[inner["train"]],
    "validation": tv[inner["validation"]],
    "test": official["test"],
  }


# Every field of config.data.split that some policy reads (see make_split).
SPLIT_FIELDS = (
  "by",
  "test",
  "val",
  "test_size",
  "val_size",
  "min_positive_share",
  "findings",
  "lists_dir",
  "k",
  "fold",
)
# Names a config may use for a split (config.eval.split) -> the split's key.
SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def split_key(name: str, what: str = "config.eval.split") -> str:
  if name not in SPLIT_NAMES:
    raise ValueError(f"{what}={name!r} is unknown; choose one of {sorted(SPLIT_NAMES)}")
  return SPLIT_NAMES[name]


def make_split(data_config, source, seed: int) -> dict[str, np.ndarray]:
  """{'train', 'validation', 'test'} (or a k-fold's 'train'/'validation') from config.data.split.

  config.data.split fields, by `by`:
    'patient': test, val (shares of patients; a share of 0 makes no such split).
    'test_first': test_size, val_size (image counts, or shares when < 1), min_positive_share,
      findings (names; default all of source.findings).
    'official': lists_dir (folder of train_val_list.txt, test_list.txt), val (share of the
      train_val patients). NIH only.
    'kfold': k, fold (which fold is 'validation'; there is no test set).
    'image': test, val (shares of images, patients ignored): only inside image_split_allowed.
  """
  split = data_config.split
  get = split.get if hasattr(split, "get") else (lambda k, d=None: getattr(split, k, d))
  by = get("by", "patient")
  pids = source.patient_ids()
  if by == "patient":
    shares = {"test": get("test", 0.15), "validation": get("val", 0.15)}
    out = patient_split(pids, {k: v for k, v in shares.items() if v}, seed)
  elif by == "test_first":
    names = get("findings") or source.findings
    missing = [f for f in names if f not in source.findings]
    if missing:
      raise ValueError(
        f"config.data.split.findings {missing} not in the source's findings {list(source.findings)}"
      )
    positive = positives_any(source.labels(), [source.findings.index(f) for f in names])
    out = test_first_split(
      pids,
      positive,
      get("test_size", 0.15),
      get("val_size", 0.15),
      get("min_positive_share", 0.0),
      seed,
    )
  elif by == "official":
    out = official_nih_split(source.image_ids(), pids, get("lists_dir"), get("val", 0.1), seed)
  elif by == "image":
    shares = {"test": get("test", 0.15), "validation": get("val", 0.15)}
    out = image_split(len(pids), {k: v for k, v in shares.items() if v}, seed)
  elif by == "kfold":
    k, fold = int(get("k", 5)), int(get("fold", 0))
    if not 0 <= fold < k:
      raise ValueError(f"config.data.split.fold={fold} must be in [0, {k})")
    train, held = patient_kfold(pids, k, seed)[fold]
    out = {"train": train, "validation": held}
  else:
    raise ValueError(
      f"config.data.split.by={by!r} is unknown; choose 'patient', 'test_first', "
      "'official' or 'kfold'"
    )
  for name, idx in out.items():
    if len(idx) == 0:
      raise ValueError(f"split '{name}' is empty ({len(pids)} records); change config.data.split")
  return out


def audit(
  sets: Mapping[str, Mapping[str, np.ndarray]], findings: Sequence[str] | None = None
) -> dict:
  """What named sets share: patients, images and findings, pair by pair.

  Args:
    sets: {name: {'patient_ids': [n], 'image_ids': [n], optional 'labels': [n, C]}}.
  Returns:
    {'sets': {name: {'images', 'patients', 'positives' (per finding)}},
     'pairs': {(a, b): {'patients': shared patient ids, 'images': shared image ids,
                        'findings_only_in_one': findings positive in one set but not the other}},
     'leak': True when any patient is in two sets (shared images are reported too; an image in two
             sets always means its patient is)}
  """
  summary, pairs = {}, {}
  names = list(sets)
  for name in names:
    s = sets[name]
    entry = {"images": int(len(s["image_ids"])), "patients": int(len(np.unique(s["patient_ids"])))}
    if s.get("labels") is not None and findings is not None:
      entry["positives"] = dict(
        zip(findings, np.nansum(np.asarray(s["labels"], float), 0).astype(int).tolist())
      )
    summary[name] = entry
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      shared_p = np.intersect1d(
        np.asarray(sets[a]["patient_ids"]).astype(str),
        np.asarray(sets[b]["patient_ids"]).astype(str),
      )
      shared_i = np.intersect1d(
        np.asarray(sets[a]["image_ids"]).astype(str), np.asarray(sets[b]["image_ids"]).astype(str)
      )
      pair = {"patients": shared_p, "images": shared_i}
      if "positives" in summary[a] and "positives" in summary[b]:
        pa, pb = summary[a]["positives"], summary[b]["positives"]
        pair["findings_only_in_one"] = [f for f in findings if (pa[f] > 0) != (pb[f] > 0)]
      pairs[(a, b)] = pair
  return {
    "sets": summary,
    "pairs": pairs,
    "leak": any(len(p["patients"]) > 0 for p in pairs.values()),
  }


def audit_json(report: dict) -> dict:
  """An audit as JSON: per pair 'a&b' the counts of shared patients and images and up to 5 of the
  shared patients."""
  return {
    "sets": report["sets"],
    "pairs": {
      f"{a}&{b}": {
        "patients": int(len(p["patients"])),
        "images": int(len(p["images"])),
        "example_patients": [str(x) for x in p["patients"][:5]],
      }
      for (a, b), p in report["pairs"].items()
    },
    "leak": bool(report["leak"]),
  }


def format_audit(report: dict) -> str:
  """A human-readable audit: one line per set, one per pair, and the verdict."""
  lines = []
  for name, s in report["sets"].items():
    line = f"{name}: {s['images']} images, {s['patients']} patients"
    if "positives" in s:
      pos = ", ".join(f"{f} {n} ({n / max(s['images'], 1):.1%})" for f, n in s["positives"].items())
      line += f"; positives: {pos}"
    lines.append(line)
  for (a, b), p in report["pairs"].items():
    line = f"{a} & {b}: {len(p['patients'])} shared patients, {len(p['images'])} shared images"
    if len(p["patients"]):
      line += f" (e.g. patients {p['patients'][:5].tolist()})"
    if p.get("findings_only_in_one"):
      line += f"; findings positive in only one of them: {p['findings_only_in_one']}"
    lines.append(line)
  lines.append(
    "LEAK: some patients are in two sets" if report["leak"] else "OK: no patient is in two sets"
  )
  return "\n".join(lines)
