"""Reading and writing prediction files: a labels CSV and a probabilities CSV matched by id.

Both CSVs have an id column and one column per finding; labels are 0/1 (blank = unknown),
probabilities lie in [0, 1]. The labels CSV may carry a patient column for patient-level
bootstrap. Every problem is reported with the file, the line (the header is line 1) and the column.
mdx writes its CSVs spreadsheet-safe (an id '=1+2.png' as "'=1+2.png", mdx.outputs.csv_writer)
and reads ids and patient ids back as a spreadsheet shows them, so its own files pair with a
user's.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from mdx import outputs

_UNKNOWN = {"", "nan", "NaN", "NA"}


@dataclasses.dataclass(frozen=True)
class Predictions:
  """Labels and probabilities of the same cases, rows aligned."""

  ids: np.ndarray  # [N] str
  findings: tuple[str, ...]
  labels: np.ndarray  # [N, C] float, nan = unknown
  probs: np.ndarray  # [N, C] float in [0, 1]
  patient_ids: np.ndarray | None  # [N] str or None


def _read(path: str) -> tuple[list[str], list[list[str]]]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file")
  with open(path, newline="", encoding="utf-8-sig") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise ValueError(
      f"{path}: the file is empty; expected a header row with an id column and "
      "one column per finding"
    )
  header = [h.strip() for h in rows[0]]
  dup = sorted({h for h in header if header.count(h) > 1})
  if dup:
    raise ValueError(f"{path}: line 1: column names {dup} appear more than once")
  body = [r for r in rows[1:] if any(c.strip() for c in r)]
  line_of = [i + 2 for i, r in enumerate(rows[1:]) if any(c.strip() for c in r)]
  for r, line in zip(body, line_of):
    if len(r) != len(header):
      raise ValueError(f"{path}: line {line}: {len(r)} fields but the header has {len(header)}")
  return header, [r + [str(line)] for r, line in zip(body, line_of)]


def _column(header: list[str], name: str | None, path: str, what: str) -> int:
  if name is None:
    return 0
  if name not in header:
    raise ValueError(f"{path}: no {what} column {name!r}; the columns are {header}")
  return header.index(name)


def _ids(rows: list[list[str]], col: int, path: str, header: list[str]) -> np.ndarray:
  ids, seen = [], {}
  for r in rows:
    v, line = outputs.original_cell(r[col].strip()), r[-1]
    if not v:
      raise ValueError(f"{path}: line {line}, column {header[col]!r}: the id is missing")
    if v in seen:
      raise ValueError(
        f"{path}: line {line}, column {header[col]!r}: id {v!r} already appeared "
        f"on line {seen[v]}; ids must be unique"
      )
    seen[v] = line
    ids.append(v)
  return np.array(ids, dtype=str)


def _numbers(rows, cols: Sequence[int], header, path: str, kind: str) -> np.ndarray:
  out = np.empty((len(rows), len(cols)))
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      raw = r[c].strip()
      where = f"{path}: line {r[-1]}, column {header[c]!r}"
      if raw in _UNKNOWN:
        if kind == "probability":
          raise ValueError(f"{where}: the probability is missing; every case needs a probability")
        out[i, j] = np.nan
        continue
      try:
        v = float(raw)
      except ValueError:
        raise ValueError(f"{where}: {raw!r} is not a number") from None
      if kind == "label" and v not in (0.0, 1.0):
        raise ValueError(
          f"{where}: label {raw!r} must be 0, 1 or blank (unknown); map uncertain "
          "labels (e.g. CheXpert -1) to 0, 1 or blank first"
        )
      if kind == "probability" and not 0.0 <= v <= 1.0:
        raise ValueError(
          f"{where}: probability {raw!r} lies outside [0, 1]; write sigmoid(logit), not the logit"
        )
      out[i, j] = v
  return out


def read_predictions(
  labels_csv: str,
  probs_csv: str,
  *,
  id_column: str | None = None,
  patient_column: str | None = None,
) -> Predictions:
  """Reads and matches the two CSVs; rows follow the labels file.

  id_column: name of the id column in both files (default: each file's first column).
  patient_column: a column of the labels CSV with the patient id (default: none, every case
  is its own patient). The findings are the other columns of the labels CSV; the
  probabilities CSV must have exactly those (order free), besides the '<finding> raw' and
  '<finding> call' columns of the predict command's predictions.csv, which are left aside.
  """
  lh, lrows = _read(labels_csv)
  ph, prows = _read(probs_csv)
  lid = _column(lh, id_column, labels_csv, "id")
  pid = _column(ph, id_column, probs_csv, "id")
  pcol = _column(lh, patient_column, labels_csv, "patient") if patient_column else None
  skip = {lh[lid]} | ({lh[pcol]} if pcol is not None else set())
  findings = tuple(h for h in lh if h not in skip)
  if not findings:
    raise ValueError(f"{labels_csv}: no finding columns besides the id (and patient) column")
  p_findings = [h for h in ph if h != ph[pid] and h not in skip]
  missing = [f for f in findings if f not in p_findings]
  # predict's predictions.csv also holds '<finding> raw' and '<finding> call' columns
  side = {f"{f} {kind}" for f in findings for kind in ("raw", "call")}
  extra = [f for f in p_findings if f not in findings and f not in side]
  if missing or extra:
    raise ValueError(
      f"{probs_csv}: the finding columns differ from {labels_csv}: missing "
      f"{missing}, unexpected {extra}; both files need one column per finding (a labels "
      "column that is not a finding, like a patient id, goes to --patient_column)"
    )
  if not lrows:
    raise ValueError(f"{labels_csv}: no data rows")
  l_ids, p_ids = _ids(lrows, lid, labels_csv, lh), _ids(prows, pid, probs_csv, ph)
  l_set, p_set = set(l_ids.tolist()), set(p_ids.tolist())
  only_l = [i for i in l_ids.tolist() if i not in p_set]
  only_p = [i for i in p_ids.tolist() if i not in l_set]
  if only_l or only_p:
    raise ValueError(
      f"the ids do not match: {len(only_l)} ids of {labels_csv} have no row in {probs_csv} "
      f"(first: {only_l[:5]}), {len(only_p)} ids of {probs_csv} have no row in {labels_csv} "
      f"(first: {only_p[:5]}); check the id column (--id_column)"
    )
  labels = _numbers(lrows, [lh.index(f) for f in findings], lh, labels_csv, "label")
  probs = _numbers(prows, [ph.index(f) for f in findings], ph, probs_csv, "probability")
  row_of = {v: i for i, v in enumerate(p_ids)}
  probs = probs[[row_of[v] for v in l_ids]]
  patients = None
  if pcol is not None:
    patients = np.array([outputs.original_cell(r[pcol].strip()) for r in lrows], dtype=str)
    blank = [r[-1] for r in lrows if not r[pcol].strip()]
    if blank:
      raise ValueError(
        f"{labels_csv}: line {blank[0]}, column {lh[pcol]!r}: the patient id is missing"
      )
  return Predictions(l_ids, findings, labels, probs, patients)


def write_csv(
  path: str,
  ids: Sequence[str],
  values,
  findings: Sequence[str],
  *,
  id_column: str = "id",
  patient_ids: Sequence[str] | None = None,
  patient_column: str = "patient_id",
  digits: int | None = None,
) -> str:
  """Writes ids (+ patients) and one column per finding; nan is written blank (unknown label).

  The file is written whole or not at all (mdx.outputs.atomic_path), its text cells
  spreadsheet-safe (mdx.outputs.csv_writer); read_predictions reads the ids back as they were.
  digits: decimals per value (a run's predictions use 6: readable, and finer than any model's
  calibration); None writes each float exactly (repr), so a re-read gives the same numbers.
  """
  values = np.asarray(values, np.float64)
  if values.shape != (len(ids), len(findings)):
    raise ValueError(
      f"values {values.shape} must be [len(ids)={len(ids)}, len(findings)={len(findings)}]"
    )
  with outputs.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
    w = outputs.csv_writer(f)
    w.writerow([id_column] + ([patient_column] if patient_ids is not None else []) + list(findings))
    for i, row in enumerate(values):
      cells = [
        "" if np.isnan(v) else repr(float(v)) if digits is None else f"{v:.{digits}f}" for v in row
      ]
      w.writerow([ids[i]] + ([patient_ids[i]] if patient_ids is not None else []) + cells)
  return path
