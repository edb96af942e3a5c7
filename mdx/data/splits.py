"""Patient-level splits: no patient ever has images in two sets.

One dispatcher, split_records, turns a split policy (the fields of config.data.split) and records
into sets, for training (make_split: a source; mdx.data.prepare) and for the split command (python
-m mdx split: a metadata table), so a policy means the same split wherever it is asked for; and a
run can train on the sets the command wrote (by='lists': each record in the set whose CSV lists it).

The one exception is split.by='image' (images dealt out at random, whoever their patient): the
mistake the leakage ablation measures (experiments/ablations/leakage.py). It runs only inside
`image_split_allowed`, which an ablation file switches on with ALLOW_IMAGE_SPLIT = True (mdx.train.
sweep); a normal config asking for it is an error, and the leakage audit reports the overlap.
"""

from __future__ import annotations

import collections
import contextlib
import os
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


# Every field of config.data.split that some policy reads (see split_records).
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
POLICIES = ("patient", "test_first", "official", "lists", "kfold")  # 'image': the ablation's only
# Names a config may use for a split (config.eval.split) -> the split's key.
SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
# The files of a split written as lists (python -m mdx split --out=DIR), read back by by='lists'.
LIST_FILES = {"train": "train.csv", "validation": "validation.csv", "test": "test.csv"}


def split_key(name: str, what: str = "config.eval.split") -> str:
  if name not in SPLIT_NAMES:
    raise ValueError(f"{what}={name!r} is unknown; choose one of {sorted(SPLIT_NAMES)}")
  return SPLIT_NAMES[name]


class ArrayRecords:
  """Records given as arrays (a metadata table without images), read by split_records as a
  source is: patient_ids(), image_ids(), labels() and findings; `whose` names their owner in
  messages."""

  def __init__(self, patient_ids, image_ids=None, labels=None, findings=(), whose="the source"):
    self._pids, self._ids, self._labels = patient_ids, image_ids, labels
    self.findings, self.whose = tuple(findings), whose

  def patient_ids(self) -> np.ndarray:
    return np.asarray(self._pids).astype(str)

  def image_ids(self) -> np.ndarray:
    return np.asarray(self._ids).astype(str)

  def labels(self) -> np.ndarray:
    return np.asarray(self._labels)


def _config_field(name: str) -> str:
  return f"config.data.split.{name}" if name else "config.data.split"


def make_split(data_config, source, seed: int) -> dict[str, np.ndarray]:
  """split_records of config.data.split over a source (what mdx.data.prepare calls). A mixture of
  datasets (mdx.data.mixture) is split dataset by dataset, each by its entry's split (default
  config.data.split), so every dataset has its own train, validation and test patients."""
  if not hasattr(source, "part_indices"):
    return split_records(data_config.split, source, seed)
  out: dict[str, list[np.ndarray]] = {}
  for k, (part, entry) in enumerate(zip(source.parts, source.entries)):
    name = entry["name"]
    policy = entry.get("split") or data_config.split

    def field(key, name=name):
      return f"config.data.sources[{name!r}].split" + (f".{key}" if key else "")

    sets = split_records(policy, part, seed, field if entry.get("split") else _config_field)
    if out and set(sets) != set(out):
      raise ValueError(
        f"dataset {name!r} is split into {sorted(sets)} but the datasets before it into "
        f"{sorted(out)}; give every dataset a split with the same sets"
      )
    for key, idx in sets.items():
      out.setdefault(key, []).append(np.asarray(idx, np.int64) + source.offsets[k])
  return {key: np.sort(np.concatenate(parts)) for key, parts in out.items()}


def split_records(policy, records, seed: int, field=_config_field) -> dict[str, np.ndarray]:
  """The one split dispatcher, for training (a source and config.data.split) and for the split
  command (a metadata table as ArrayRecords and its flags): {'train', 'validation', 'test'} (or a
  k-fold's 'train'/'validation') record indices by `policy` (a mapping or ConfigDict of
  SPLIT_FIELDS). records: anything with patient_ids(), and image_ids() (a volume source's
  case_ids()), labels() and findings where the policy reads them. field(name): how a message
  names a policy field (config.data.split.<name>, or the command's flag).

  policy fields, by `by`:
    'patient': test, val (shares of patients; a share of 0 makes no such split).
    'test_first': test_size, val_size (image counts, or shares when < 1), min_positive_share,
      findings (names; default all of records.findings).
    'official': lists_dir (folder of train_val_list.txt, test_list.txt), val (share of the
      train_val patients). NIH only.
    'lists': lists_dir (folder of train.csv, validation.csv and optionally test.csv, as
      python -m mdx split writes them): each record goes to the list naming its image id.
    'kfold': k, fold (which fold is 'validation'; there is no test set).
    'image': test, val (shares of images, patients ignored): only inside image_split_allowed.
  """
  get = policy.get if hasattr(policy, "get") else (lambda k, d=None: getattr(policy, k, d))
  by = get("by", "patient")
  pids = records.patient_ids()
  if by == "patient":
    shares = {"test": get("test", 0.15), "validation": get("val", 0.15)}
    out = patient_split(pids, {k: v for k, v in shares.items() if v}, seed)
  elif by == "test_first":
    findings = tuple(records.findings)
    names = get("findings") or findings
    missing = [f for f in names if f not in findings]
    if missing:
      whose = getattr(records, "whose", "the source")
      raise ValueError(f"{field('findings')} {missing} not in {whose}'s findings {list(findings)}")
    positive = positives_any(records.labels(), [findings.index(f) for f in names])
    out = test_first_split(
      pids,
      positive,
      get("test_size", 0.15),
      get("val_size", 0.15),
      get("min_positive_share", 0.0),
      seed,
    )
  elif by == "official" and "official_split" in getattr(records, "extra", {}):
    out = official_source_split(records, field)
  elif by in ("official", "lists"):
    folder = get("lists_dir")
    if not folder and by == "official":
      whose = getattr(records, "name", None) or getattr(records, "whose", "the source")
      raise ValueError(
        f"{field('by')}='official': {whose} carries no official split (MIMIC-CXR's split table "
        f"does; NIH's lists need {field('lists_dir')}); split by 'patient'"
      )
    if not folder:
      raise ValueError(
        f"{field('by')}={by!r} needs {field('lists_dir')}: the folder of train.csv, ..."
      )
    if by == "official":
      out = official_nih_split(records.image_ids(), pids, folder, get("val", 0.1), seed)
    else:
      out = lists_split(_record_ids(records), pids, folder, field)
  elif by == "image":
    shares = {"test": get("test", 0.15), "validation": get("val", 0.15)}
    out = image_split(len(pids), {k: v for k, v in shares.items() if v}, seed)
  elif by == "kfold":
    k, fold = int(get("k", 5)), int(get("fold", 0))
    if not 0 <= fold < k:
      raise ValueError(f"{field('fold')}={fold} must be in [0, {k})")
    train, held = patient_kfold(pids, k, seed)[fold]
    out = {"train": train, "validation": held}
  else:
    choices = ", ".join(repr(p) for p in POLICIES[:-1]) + f" or {POLICIES[-1]!r}"
    raise ValueError(f"{field('by')}={by!r} is unknown; choose {choices}")
  for name, idx in out.items():
    if len(idx) == 0:
      raise ValueError(f"split '{name}' is empty ({len(pids)} records); change {field('')}")
  return out


# A source's official set names (extra['official_split']) -> mdx's split keys.
OFFICIAL_NAMES = {
  "train": "train",
  "validate": "validation",
  "validation": "validation",
  "val": "validation",
  "test": "test",
}


def official_source_split(records, field=_config_field) -> dict[str, np.ndarray]:
  """{'train', 'validation', 'test'} as the source's publisher split it: the set each record's
  extra['official_split'] names (MIMIC-CXR: 'train' | 'validate' | 'test'). A record in no set
  (''), a set of another name, or a patient in two sets is a ValueError naming them."""
  sets = np.asarray(records.extra["official_split"]).astype(str)
  unknown = sorted(set(np.unique(sets).tolist()) - set(OFFICIAL_NAMES))
  whose = getattr(records, "name", None) or "the source"
  if unknown:
    raise ValueError(
      f"{field('by')}='official': {whose} has records in official set {unknown[0]!r}; known "
      f"sets are {sorted(OFFICIAL_NAMES)}"
    )
  keys = np.asarray([OFFICIAL_NAMES[s] for s in sets], dtype=object)
  out = {k: np.flatnonzero(keys == k) for k in ("train", "validation", "test")}
  pids = records.patient_ids()
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    shared = np.intersect1d(pids[out[a]], pids[out[b]])
    if len(shared):
      raise ValueError(
        f"{field('by')}='official': {whose}'s official split puts patient {shared[0]} in both "
        f"{a} and {b} ({len(shared)} patients); split by 'patient'"
      )
  return out


def _record_ids(records) -> np.ndarray:
  """Image ids of 2D records, case ids of a volume source's."""
  ids = records.image_ids() if hasattr(records, "image_ids") else records.case_ids()
  return np.asarray(ids).astype(str)


def _suffixes(listed: str):
  """'a/b/c.png', 'b/c.png', 'c.png': a list may name an image by a longer path than the source
  (CheXpert's CSV Path holds the dataset folder, the source's image id starts below it)."""
  parts = listed.split("/")
  return ("/".join(parts[i:]) for i in range(len(parts)))


def lists_split(image_ids, patient_ids, folder: str, field=_config_field) -> dict[str, np.ndarray]:
  """{'train', 'validation'[, 'test']}: each record in the set whose list (folder/train.csv,
  validation.csv, test.csv: python -m mdx split's output, any layout with an image column of
  mdx.data.cxr.metadata.IMAGE_COLUMNS) names its image id. test.csv may be absent (no test set).
  Listed images the records lack (dropped by a source's filters or on_error) are counted in the
  log; a record in no list, or in two, and a patient in two sets are errors naming them."""
  from mdx.data.cxr import metadata
  from mdx.data.image import file_source

  ids = np.asarray(image_ids).astype(str)
  index = {image: i for i, image in enumerate(ids)}
  set_of = np.full(len(ids), -1)
  names, absent = [], 0
  for name, file_name in LIST_FILES.items():
    path = os.path.join(folder, file_name)
    if not os.path.exists(path) and name == "test":
      continue
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"{field('lists_dir')}={folder} has no {file_name}; python -m mdx split --out={folder} "
        f"writes {', '.join(LIST_FILES.values())}"
      )
    columns, rows = file_source.read_csv(path)
    column = next((c for c in metadata.IMAGE_COLUMNS if c in columns), None)
    if column is None:
      raise ValueError(
        f"{path}: no image column; expected one of {metadata.IMAGE_COLUMNS}, found {columns}"
      )
    k = len(names)
    names.append(name)
    for row in rows:
      i = next((index[s] for s in _suffixes(row[column]) if s in index), None)
      if i is None:
        absent += 1
      elif set_of[i] >= 0:
        raise ValueError(
          f"{path}: image {ids[i]} is also in {LIST_FILES[names[set_of[i]]]}: a record may be in "
          "one list only"
        )
      else:
        set_of[i] = k
  if absent:
    logging.info(
      "split lists %s: %d listed images are not among the %d records (dropped by the source's "
      "filters or on_error)",
      folder,
      absent,
      len(ids),
    )
  unlisted = np.flatnonzero(set_of < 0)
  if len(unlisted):
    raise ValueError(
      f"{len(unlisted)} of {len(ids)} records are in none of the lists in {folder} (e.g. "
      f"{ids[unlisted[:3]].tolist()}): split the metadata the source reads"
    )
  patients, inverse = np.unique(np.asarray(patient_ids).astype(str), return_inverse=True)
  pairs = np.unique(np.stack([inverse.ravel(), set_of]), axis=1)  # distinct (patient, set)
  shared = np.flatnonzero(np.bincount(pairs[0], minlength=len(patients)) > 1)
  if len(shared):
    sets = pairs[1][pairs[0] == shared[0]]
    raise ValueError(
      f"patient {patients[shared[0]]} has images in "
      f"{' and '.join(LIST_FILES[names[k]] for k in sets)} of {folder} ({len(shared)} patients "
      "are in two sets): the lists must split by patient (python -m mdx split does)"
    )
  return {name: np.flatnonzero(set_of == k) for k, name in enumerate(names)}


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
