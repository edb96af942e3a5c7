"""Several image sources read as one: training across datasets (config.data.source='mixture').

config.data.sources lists the datasets, each a config.data of its own (its `source` and that
source's fields), plus optionally:
  name    what reports, ids and provenance call it (default: its source; two entries of one source
          need names);
  weight  its share of the training stream (sampling proportions: weights 2 and 1 draw two thirds
          of every epoch from the first); set on every entry or on none (none: every training
          record once per epoch, as one source);
  split   its own config.data.split (default: config.data's), e.g. MIMIC's by='official'.
config.data.image_size reaches every entry; config.data.findings (canonical names) chooses the
findings, default the union of the entries' findings in canonical order (mdx.data.cxr.findings
.CANONICAL, then any other name in the order first met); names are compared in the label space, so
CheXpert's 'Pleural Effusion' and NIH's 'Effusion' are one column.

Records keep their dataset: patient and image ids are prefixed with its name ('nih:p1'), so two
datasets' patient 'p1' are two patients, and source.datasets() names each record's dataset. A
finding a dataset does not label is nan (unknown: masked out of loss and metrics, never negative).
Splits are made by patient within each dataset (mdx.data.splits.make_split), so every dataset has
its own validation and test patients; the task reports each dataset and the pool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from mdx.data.image.file_source import config_get

# Fields of an entry of config.data.sources besides its source's own.
ENTRY_FIELDS = ("source", "name", "weight", "split")
SEPARATOR = ":"  # between a dataset's name and its patient or image id


def entries(data_config) -> list[dict]:
  """config.data.sources as plain dicts, each with its name; a ValueError naming the entry for a
  list that is missing, empty, nests a mixture, repeats a name or gives weights to only some."""
  listed = config_get(data_config, "sources")
  if not listed or isinstance(listed, (str, dict)) or not hasattr(listed, "__len__"):
    raise ValueError(
      "config.data.source='mixture' needs config.data.sources: a list of source configs, e.g. "
      "[dict(source='nih', metadata=..., images=..., weight=1), dict(source='rsna', ...)]"
    )
  out = []
  for i, entry in enumerate(listed):
    entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
    where = f"config.data.sources[{i}]"
    if not entry.get("source"):
      raise ValueError(f"{where} has no 'source'; name one of mdx.data.sources.SOURCES")
    if entry["source"] == "mixture":
      raise ValueError(f"{where}.source='mixture': a mixture cannot hold a mixture; list its parts")
    entry["name"] = str(entry.get("name") or entry["source"])
    if SEPARATOR in entry["name"]:
      raise ValueError(f"{where}.name={entry['name']!r} must not hold {SEPARATOR!r}")
    weight = entry.get("weight")
    if weight is not None and (
      isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0
    ):
      raise ValueError(f"{where}.weight={weight!r} must be a number > 0 (a sampling proportion)")
    out.append(entry)
  names = [e["name"] for e in out]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(
      f"config.data.sources names {repeated[0]!r} twice; give each entry a distinct 'name'"
    )
  weighted = [e.get("weight") is not None for e in out]
  if any(weighted) and not all(weighted):
    missing = names[weighted.index(False)]
    raise ValueError(
      f"config.data.sources: {missing!r} has no weight while others have; set a weight on every "
      "entry, or on none (every training record once per epoch)"
    )
  return out


def entry_config(data_config, entry: dict) -> ml_collections.ConfigDict:
  """The config.data of one entry: its own fields (not name/weight/split) and the mixture's
  image_size."""
  own = {k: v for k, v in entry.items() if k not in ("name", "weight", "split")}
  image_size = config_get(data_config, "image_size")
  if image_size is not None:
    own["image_size"] = image_size
  return ml_collections.ConfigDict(own)


def canonical_name(name: str) -> str:
  """A dataset's finding name in the label space (mdx.data.cxr.findings.canonical_of: CheXpert's
  'Pleural Effusion' is 'Effusion'), else the name itself: two datasets' names of one finding
  become one column of the mixture."""
  from mdx.data.cxr.findings import canonical_of

  return canonical_of(name) or name


def canonical_union(names: Sequence[Sequence[str]]) -> tuple[str, ...]:
  """The findings of several datasets as one list: canonical ones in canonical order, then any
  other name in the order first met."""
  from mdx.data.cxr.findings import CANONICAL

  seen = [canonical_name(n) for group in names for n in group]
  others = list(dict.fromkeys(n for n in seen if n not in CANONICAL))
  return tuple(n for n in CANONICAL if n in seen) + tuple(others)


def output_names(data_config, names_of: Callable[[Any], tuple[str, ...] | None]):
  """The mixture's findings as the config tells them (names_of: an entry's config.data -> its
  findings, mdx.data.sources.output_names); None when an entry can only tell once built."""
  asked = config_get(data_config, "findings")
  if asked:
    return tuple(asked)
  each = [names_of(entry_config(data_config, e)) for e in entries(data_config)]
  return None if any(n is None for n in each) else canonical_union(each)


def part_seed(seed: int, k: int) -> int:
  """The seed of entry k: two generated datasets (phantoms) of one config differ."""
  return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def make_source(data_config, seed: int, build: Callable[[Any, int], Any]) -> MixtureSource:
  """config.data (source='mixture') -> MixtureSource; build: (an entry's config.data, seed) -> its
  source (mdx.data.sources.make_source, so an entry may read prepared records)."""
  listed = entries(data_config)
  parts = [build(entry_config(data_config, e), part_seed(seed, k)) for k, e in enumerate(listed)]
  asked = config_get(data_config, "findings")
  findings = tuple(asked) if asked else canonical_union([p.findings for p in parts])
  return MixtureSource(parts, listed, findings, seed)


class MixtureSource:
  """Records of several sources, one after another (dataset k's records are [offsets[k],
  offsets[k+1])), labels mapped onto one finding list (nan where a dataset does not label a
  finding), ids prefixed with the dataset's name."""

  def __init__(self, parts: Sequence, entries_: Sequence[dict], findings: Sequence[str], seed=0):
    self.parts = list(parts)
    self.entries = [dict(e) for e in entries_]
    self.names = tuple(e["name"] for e in self.entries)
    self.findings = tuple(findings)
    self.seed = seed
    self.name = f"mixture({', '.join(self.names)})"
    sizes = [len(p) for p in self.parts]
    self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    # column j of part k's labels feeds column columns[k][j] of the mixture's (-1: not asked for)
    # names compared in the label space: CheXpert's 'Pleural Effusion' fills 'Effusion'
    mine = [canonical_name(f) for f in self.findings]
    own = [[canonical_name(f) for f in p.findings] for p in self.parts]
    self._columns = [
      np.asarray([mine.index(f) if f in mine else -1 for f in names], int) for names in own
    ]
    unlabelled = [
      (n, [f for f, c in zip(self.findings, mine) if c not in names])
      for n, names in zip(self.names, own)
    ]
    self.unlabelled = {n: tuple(fs) for n, fs in unlabelled}  # unknown (nan) in that dataset
    self._labels = np.concatenate([self._map(k, p.labels()) for k, p in enumerate(self.parts)])
    self._patients = self._prefixed(lambda p: p.patient_ids())
    self._image_ids = self._prefixed(lambda p: p.image_ids())
    self._dataset = np.repeat(np.asarray(self.names, dtype=str), sizes)
    self.extra = {"dataset": self._dataset}
    self.skipped = sum(int(getattr(p, "skipped", 0)) for p in self.parts)
    self.channels = tuple(getattr(p, "channels", None) for p in self.parts)

  def _map(self, k: int, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, np.float32).reshape(-1, len(self._columns[k]))
    out = np.full((len(labels), len(self.findings)), np.nan, np.float32)
    keep = self._columns[k] >= 0
    out[:, self._columns[k][keep]] = labels[:, keep]
    return out

  def _prefixed(self, ids_of) -> np.ndarray:
    return np.concatenate(
      [
        np.char.add(f"{n}{SEPARATOR}", np.asarray(ids_of(p)).astype(str))
        for n, p in zip(self.names, self.parts)
      ]
    )

  def locate(self, index: int) -> tuple[int, int]:
    """(dataset k, its record) of record `index`."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} of {len(self)}")
    k = int(np.searchsorted(self.offsets, index, side="right") - 1)
    return k, index - int(self.offsets[k])

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getitem__(self, index: int) -> dict[str, Any]:
    k, local = self.locate(index)
    record = dict(self.parts[k][local])
    record["labels"] = self._labels[int(index)].copy()
    record["patient_id"] = self._patients[int(index)]
    record["image_id"] = self._image_ids[int(index)]
    return record

  def labels(self) -> np.ndarray:
    return self._labels

  def patient_ids(self) -> np.ndarray:
    return self._patients

  def image_ids(self) -> np.ndarray:
    return self._image_ids

  def datasets(self) -> np.ndarray:
    """str [N]: the name of each record's dataset."""
    return self._dataset

  def part_indices(self) -> dict[str, np.ndarray]:
    """{dataset name: its record indices}, in the order of config.data.sources."""
    return {n: np.arange(self.offsets[k], self.offsets[k + 1]) for k, n in enumerate(self.names)}

  # --- for mdx.data.check: a dataset's files, or none for a generated one (decoded all the same;
  # the context below states what generated it) ---

  def record_files(self, index: int) -> tuple[str, ...]:
    k, local = self.locate(index)
    part = self.parts[k]
    return tuple(part.record_files(local)) if hasattr(part, "record_files") else ()

  def record_name(self, index: int) -> str:
    return self._image_ids[int(index)]

  def fingerprint(self) -> str:
    """What decides the records besides their files: every entry's config and seed, and a
    prepared part's stored files."""
    parts = []
    for k, (entry, part) in enumerate(zip(self.entries, self.parts)):
      stored = part.fingerprint() if hasattr(part, "fingerprint") else ""
      parts.append([entry, part_seed(self.seed, k), type(part).__name__, len(part), stored])
    blob = json.dumps([list(self.findings), parts], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()

  def select(self, indices) -> MixtureSource:
    """The records at `indices` (ascending, as mdx.data.check keeps them), dataset by dataset."""
    indices = np.asarray(indices, np.int64)
    if len(indices) > 1 and np.any(np.diff(indices) <= 0):
      raise ValueError("MixtureSource.select needs ascending, distinct record indices")
    parts = []
    for k, part in enumerate(self.parts):
      mine = indices[(indices >= self.offsets[k]) & (indices < self.offsets[k + 1])]
      local = mine - self.offsets[k]
      if len(local) == len(part):
        parts.append(part)
      elif not len(local):
        raise ValueError(f"{self.name}: every record of dataset {self.names[k]!r} was left out")
      elif hasattr(part, "select"):
        parts.append(part.select(local))
      else:
        raise ValueError(f"{self.name}: dataset {self.names[k]!r} cannot leave records out")
    return MixtureSource(parts, self.entries, self.findings, self.seed)

  def __repr__(self) -> str:
    return f"{self.name}({len(self)} images, findings={list(self.findings)})"
