"""Reference standards from several readers: majority vote with a tie rule, and agreement
statistics.

A reference standard is only as good as the readers behind it: consensus voting reduces single-
reader error, and kappa tells how much the readers agree beyond chance (Cohen's for two readers,
Fleiss' for any fixed number of readers per image).

A reading study's files (reference_standard, `python -m mdx consensus`): one CSV (or CSV.GZ) per
reader, each with an image-id column (default: the file's first column) and one column per finding
holding 1, 0 or blank (no read; 1.0 / 0.0 as pandas writes them are accepted too). Every file has
the same findings; readers may have read different images: the union of ids is used and a missing
row counts as no read. Readers are named by their file names and numbered from 0 in the order
given. The tie rule says what an equal split gives: 'unknown' (blank, e.g. send the image to
adjudication), 'positive', 'negative', or 'reader:<k>' (reader k's read, e.g. the most senior
reader; k is the 0-based position or a reader's name). An image that no reader read for a finding
stays blank whatever the rule: a label with no read behind it would be invented. Output:
  OUT/labels.csv      the id column and one column per finding: 1, 0, or blank (unknown)
  OUT/agreement.json  per finding: images read, consensus positives / negatives, ties, unknowns,
                      Cohen's kappa of every pair of readers (on the images both read) and Fleiss'
                      kappa over the images every reader read (with their number)
A mistake in the files is an InputError (a ValueError) naming the file, the line and the column.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import numpy as np

from mdx import outputs
from mdx.data.image import file_source

TIE_RULES = ("positive", "negative", "unknown", "reader:<k>")


def majority_vote(reads: np.ndarray, tie: str = "unknown") -> np.ndarray:
  """Binary consensus over readers.

  Args:
    reads: [N, R] or [N, R, C] of 0/1 with nan where a reader gave no read.
    tie: what an equal split (or no read at all) gives: 'positive' (1), 'negative' (0), 'unknown'
      (nan, e.g. to send the image to adjudication), or 'reader:k' (the read of reader k, e.g.
      the most senior; nan if that reader gave none).
  Returns:
    float32 [N] or [N, C] labels.
  """
  reads = np.asarray(reads, np.float64)
  if reads.ndim not in (2, 3):
    raise ValueError(
      f"reads must be [N, readers] or [N, readers, classes]; got shape {reads.shape}"
    )
  known = ~np.isnan(reads)
  if np.any((reads[known] != 0) & (reads[known] != 1)):
    raise ValueError("reads must be 0, 1 or nan (binary reads per reader)")
  pos = np.where(known, reads, 0).sum(1)
  neg = known.sum(1) - pos
  out = np.where(pos > neg, 1.0, np.where(neg > pos, 0.0, np.nan))
  ties = pos == neg
  if tie == "positive":
    out[ties] = 1.0
  elif tie == "negative":
    out[ties] = 0.0
  elif tie == "unknown":
    pass
  elif tie.startswith("reader:"):
    try:
      k = int(tie.split(":", 1)[1])
    except ValueError:
      raise ValueError(f"tie rule {tie!r}: write 'reader:<index>'") from None
    if not 0 <= k < reads.shape[1]:
      raise ValueError(f"tie rule {tie!r}: only {reads.shape[1]} readers")
    out[ties] = reads[:, k][ties]
  else:
    raise ValueError(f"tie rule {tie!r} is unknown; choose one of {TIE_RULES}")
  return out.astype(np.float32)


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
  """Cohen's kappa of two readers' categorical labels (pairs with a nan are left out)."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"cohen_kappa: readers have {a.size} and {b.size} labels")
  both = ~(np.isnan(a) | np.isnan(b))
  a, b = a[both], b[both]
  if a.size == 0:
    raise ValueError("cohen_kappa: no image has labels from both readers")
  cats = np.union1d(a, b)
  ia, ib = np.searchsorted(cats, a), np.searchsorted(cats, b)
  table = np.zeros((len(cats), len(cats)))
  np.add.at(table, (ia, ib), 1)
  table /= table.sum()
  observed = np.trace(table)
  expected = float(table.sum(1) @ table.sum(0))
  if expected == 1.0:
    return 1.0 if observed == 1.0 else 0.0
  return float((observed - expected) / (1.0 - expected))


def fleiss_kappa(counts: np.ndarray) -> float:
  """Fleiss' kappa from counts [N, K]: how many readers put image i in category k (same n per
  image)."""
  counts = np.asarray(counts, np.float64)
  n = counts.sum(1)
  if counts.ndim != 2 or np.any(n != n[0]) or n[0] < 2:
    raise ValueError(
      "fleiss_kappa needs counts [N, categories] with the same number (>= 2) of "
      "readers for every image"
    )
  n = n[0]
  p_j = counts.sum(0) / counts.sum()
  p_i = ((counts * (counts - 1)).sum(1)) / (n * (n - 1))
  p_bar, p_e = p_i.mean(), float((p_j**2).sum())
  if p_e == 1.0:
    return 1.0
  return float((p_bar - p_e) / (1.0 - p_e))


def reads_to_counts(reads: np.ndarray) -> np.ndarray:
  """[N, R] categorical reads (no nan) -> Fleiss counts [N, categories]."""
  reads = np.asarray(reads)
  cats = np.unique(reads)
  return np.stack([(reads == c).sum(1) for c in cats], axis=1)


# ------------------------------------------------------------------------ a reading study's files
class InputError(ValueError):
  """A mistake in the user's files or flags: reported in one line, exit status 2 (mdx.cli)."""


@dataclass
class Reads:
  """Every reader's reads of every image in the union of the files."""

  ids: list[str]  # [N] image ids, in order of first appearance over the files
  id_column: str  # the first file's id column name, used in labels.csv
  findings: list[str]  # [C] the first file's finding order
  readers: list[str]  # [R] reader names (file names)
  files: list[str]  # [R] paths
  reads: np.ndarray  # [N, R, C] float64: 1, 0, or nan (no read)


def _reader_names(paths: list[str]) -> list[str]:
  stems = [os.path.basename(p).removesuffix(".gz").rsplit(".", 1)[0] or p for p in paths]
  # Two readers' files may share a name in different folders: then the paths tell them apart.
  return stems if len(set(stems)) == len(stems) else list(paths)


def _cell(value: str | None, path: str, line: int, image_id: str, column: str) -> float:
  text = (value or "").strip()
  if text == "":
    return np.nan
  try:
    number = float(text)
  except ValueError:
    number = np.nan
  if number in (0.0, 1.0):
    return number
  raise InputError(
    f"{path} line {line} (id {image_id!r}), column {column!r}: {text!r} is not 1, 0 or blank; "
    "map other codes (e.g. -1 for uncertain) to one of these first"
  )


def _read_one(path: str, id_column: str | None) -> tuple[str, list[str], dict[str, dict]]:
  """(id column, findings, {id: {finding: 1.0 / 0.0 / nan}}) of one reader's file."""
  if not os.path.isfile(path):
    what = "is not a file" if os.path.exists(path) else "does not exist"
    raise InputError(f"reads file {path} {what}")
  try:
    columns, rows = file_source.read_csv(path, [id_column] if id_column else ())
  except (OSError, ValueError) as e:  # unreadable, not UTF-8, no id_column, a ragged row
    raise InputError(f"{path}: {e}" if path not in str(e) else str(e)) from None
  if not columns:
    raise InputError(f"{path} is empty: expected a header row (id column, then findings)")
  id_column = id_column or columns[0]
  findings = [c for c in columns if c != id_column]
  if not findings:
    raise InputError(f"{path} has no finding columns besides the id column {id_column!r}")
  reads: dict[str, dict] = {}
  first_line: dict[str, int] = {}
  for i, row in enumerate(rows):
    # Line numbers assume one record per line (no blank lines or quoted line breaks); the id
    # in each message points at the row regardless.
    line = i + 2
    image_id = (row.get(id_column) or "").strip()
    if not image_id:
      raise InputError(f"{path} line {line}: the id column {id_column!r} is blank")
    if image_id in reads:
      raise InputError(
        f"{path} line {line}: id {image_id!r} already read on line {first_line[image_id]}; "
        "give each image one row per reader"
      )
    first_line[image_id] = line
    reads[image_id] = {f: _cell(row[f], path, line, image_id, f) for f in findings}
  return id_column, findings, reads


def load_reads(paths: list[str], id_column: str | None = None) -> Reads:
  """Reads every reader's file and aligns them on the union of image ids."""
  if len(paths) < 2:
    raise InputError(f"a consensus needs at least two readers; got {len(paths)} reader file(s)")
  loaded = [_read_one(p, id_column) for p in paths]
  first_id, findings, _ = loaded[0]
  for path, (_, other, _) in zip(paths[1:], loaded[1:]):
    if set(other) != set(findings):
      missing = [f for f in findings if f not in other]
      extra = [f for f in other if f not in findings]
      raise InputError(
        f"{path}: findings differ from {paths[0]}: missing {missing}, extra {extra}; "
        "every reader's file needs the same finding columns"
      )
  ids = list(dict.fromkeys(i for _, _, r in loaded for i in r))
  if not ids:
    raise InputError(f"no image rows in any of {list(paths)}: each file has only a header")
  row = {image_id: n for n, image_id in enumerate(ids)}
  reads = np.full((len(ids), len(paths), len(findings)), np.nan)
  for k, (_, _, per_image) in enumerate(loaded):
    for image_id, cells in per_image.items():
      reads[row[image_id], k] = [cells[f] for f in findings]
  return Reads(ids, first_id, findings, _reader_names(paths), list(paths), reads)


def parse_tie(tie: str, readers: list[str]) -> str:
  """The tie rule in majority_vote's terms; 'reader:<name>' becomes 'reader:<index>'."""
  if tie in ("positive", "negative", "unknown"):
    return tie
  if tie.startswith("reader:"):
    which = tie.split(":", 1)[1]
    k = int(which) if which.lstrip("-").isdigit() else None
    if k is None and which in readers:
      k = readers.index(which)
    if k is not None and 0 <= k < len(readers):
      return f"reader:{k}"
    raise InputError(
      f"--tie={tie}: give reader:<k> with k in 0..{len(readers) - 1} (the position among the "
      "reader files) "
      f"or a reader's name {readers}"
    )
  raise InputError(f"--tie={tie}: choose positive, negative, unknown or reader:<k>")


def vote(data: Reads, tie: str) -> np.ndarray:
  """[N, C] consensus: 1, 0 or nan; nan also where no reader read the finding, whatever the rule
  (majority_vote would apply the tie rule there, inventing a label with no read behind it)."""
  labels = majority_vote(data.reads, tie)
  labels[np.isnan(data.reads).all(1)] = np.nan
  return labels


def _kappa(fn, *args) -> float | None:
  value = fn(*args)
  return None if np.isnan(value) else round(float(value), 6)


def agreement(data: Reads, labels: np.ndarray, tie: str) -> dict:
  """Per finding: counts of the consensus and the readers' agreement (see the module doc)."""
  findings = {}
  for c, name in enumerate(data.findings):
    reads = data.reads[:, :, c]  # [N, R]
    known = ~np.isnan(reads)
    read = known.any(1)
    pos = np.where(known, reads, 0).sum(1)
    ties = read & (pos * 2 == known.sum(1))
    pairs = []
    for a, b in itertools.combinations(range(len(data.readers)), 2):
      both = int((known[:, a] & known[:, b]).sum())
      pairs.append(
        {
          "readers": [data.readers[a], data.readers[b]],
          "images": both,
          "kappa": _kappa(cohen_kappa, reads[:, a], reads[:, b]) if both else None,
        }
      )
    everyone = known.all(1)
    fleiss = None
    if everyone.any():
      fleiss = _kappa(fleiss_kappa, reads_to_counts(reads[everyone]))
    findings[name] = {
      "images": int(read.sum()),
      "positives": int((labels[:, c] == 1).sum()),
      "negatives": int((labels[:, c] == 0).sum()),
      "ties": int(ties.sum()),
      "unknown": int((read & np.isnan(labels[:, c])).sum()),
      "unread": int((~read).sum()),
      "reads_per_reader": {r: int(known[:, k].sum()) for k, r in enumerate(data.readers)},
      "cohen_kappa": pairs,
      "fleiss_kappa": fleiss,
      "fleiss_images": int(everyone.sum()),
    }
  return {
    "readers": data.readers,
    "files": data.files,
    "tie": tie,
    "images": len(data.ids),
    "findings": findings,
    "notes": {
      "images": "images with at least one read of the finding",
      "ties": "images whose reads split equally; the tie rule decided them",
      "unknown": "images read but blank in labels.csv (ties under 'unknown', or the tie "
      "reader gave no read)",
      "unread": "ids in labels.csv (read by someone for another finding) with no read of this one",
      "cohen_kappa": "every pair of readers, on the images both read",
      "fleiss_kappa": "over the fleiss_images images that every reader read",
    },
  }


def write_labels(path: str, data: Reads, labels: np.ndarray) -> None:
  text = {1.0: "1", 0.0: "0"}
  rows = [
    {data.id_column: image_id, **{f: text.get(v, "") for f, v in zip(data.findings, row)}}
    for image_id, row in zip(data.ids, labels.tolist())
  ]
  file_source.write_csv(path, [data.id_column, *data.findings], rows)


def reference_standard(
  paths: list[str], out: str, tie: str = "unknown", id_column: str | None = None
) -> dict:
  """Reads every reader's file, votes, writes OUT/labels.csv and OUT/agreement.json; returns the
  agreement report."""
  tie = parse_tie(tie, _reader_names(paths))  # before reading: a typo costs nothing
  data = load_reads(paths, id_column)
  labels = vote(data, tie)
  report = agreement(data, labels, tie)
  try:
    write_labels(os.path.join(out, "labels.csv"), data, labels)
    outputs.write_json(os.path.join(out, "agreement.json"), report)  # whole or not at all
  except OSError as e:
    raise InputError(f"cannot write into {out}: {e}") from None
  return report
