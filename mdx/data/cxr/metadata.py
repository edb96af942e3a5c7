"""Metadata tables without images: the rows, patients, image ids and labels the split tools need.

Kinds of table:
  'nih'      Data_Entry layout: 'Image Index', 'Finding Labels' ("A|B", "No Finding"), 'Patient ID'.
  'chexpert' train.csv / valid.csv: 'Path' (patient from the path), one column per observation
             (1, 0, -1, blank; for splitting, uncertain and blank count as not positive).
  'columns'  one 0/1 column per finding, e.g. the course CSVs ('Image', 'PatientId', findings).
  'auto'     guesses from the columns.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from mdx.data.cxr import chexpert, nih
from mdx.data.cxr import findings as findings_lib
from mdx.data.image import file_source

PATIENT_COLUMNS = ("Patient ID", "PatientId", "patient_id", "Patient", "patient")
IMAGE_COLUMNS = ("Image Index", "Image", "Path", "image_id", "image")


@dataclasses.dataclass
class Table:
  path: str
  columns: list[str]
  rows: list[dict[str, str]]
  patient_ids: np.ndarray
  image_ids: np.ndarray
  labels: np.ndarray | None
  findings: tuple[str, ...]


def _guess(columns: Sequence[str]) -> str:
  if nih.LABELS in columns:
    return "nih"
  if "Path" in columns and any(c in columns for c in chexpert.OBSERVATIONS):
    return "chexpert"
  return "columns"


def load(
  path: str | os.PathLike,
  kind: str = "auto",
  findings: Sequence[str] | None = None,
  patient_column: str | None = None,
) -> Table:
  """Reads a metadata CSV of any supported kind (see the module docstring)."""
  path = os.fspath(path)
  columns, rows = file_source.read_csv(path)
  if kind == "auto":
    kind = _guess(columns)
  if kind == "nih":
    missing = [c for c in nih.REQUIRED if c not in columns and c != nih.PATIENT]
    if missing:
      raise ValueError(f"{path}: missing column(s) {missing}; found {columns}")
    findings = tuple(findings or findings_lib.NIH_FINDINGS)
    labels = nih.parse_labels(rows, findings, where=path)
    image_col = nih.IMAGE
  elif kind == "chexpert":
    findings = tuple(findings or [c for c in chexpert.OBSERVATIONS if c in columns])
    missing = [c for c in ("Path", *findings) if c not in columns]
    if missing:
      raise ValueError(f"{path}: missing column(s) {missing}; found {columns}")
    labels = chexpert.parse_labels(rows, findings, "zeros", "zeros", where=path)
    image_col = "Path"
  elif kind == "columns":
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_col is None:
      raise ValueError(f"{path}: no image column; expected one of {IMAGE_COLUMNS}, found {columns}")
    if findings is None:
      findings = [
        c for c in columns if c in findings_lib.NIH_FINDINGS or c in chexpert.OBSERVATIONS
      ]
    findings = tuple(findings)
    missing = [f for f in findings if f not in columns]
    if missing:
      raise ValueError(f"{path}: missing finding column(s) {missing}; found {columns}")
    labels = np.zeros((len(rows), len(findings)), np.float32)
    for r, row in enumerate(rows):
      for c, f in enumerate(findings):
        try:
          labels[r, c] = float(row[f]) if row[f] != "" else np.nan
        except ValueError:
          raise ValueError(
            f"{path}: row {r + 2} column {f!r} has {row[f]!r}; expected 0 or 1"
          ) from None
  else:
    raise ValueError(
      f"metadata kind {kind!r} is unknown; choose 'nih', 'chexpert', 'columns' or 'auto'"
    )
  if patient_column is None:
    patient_column = next((c for c in PATIENT_COLUMNS if c in columns), None)
  if patient_column is not None:
    if patient_column not in columns:
      raise ValueError(f"{path}: missing patient column {patient_column!r}; found {columns}")
    pids = [row[patient_column] for row in rows]
  elif kind == "chexpert" or "Path" in columns:
    pids = [chexpert.patient_of(row["Path"], path) for row in rows]
  else:
    raise ValueError(
      f"{path}: no patient column; expected one of {PATIENT_COLUMNS} (or pass --patient_column)"
    )
  for r, p in enumerate(pids):
    if not str(p).strip():
      raise ValueError(f"{path}: row {r + 2} has an empty patient id in column {patient_column!r}")
  return Table(
    path,
    columns,
    rows,
    np.asarray(pids).astype(str),
    np.asarray([row[image_col] for row in rows]).astype(str),
    labels,
    findings,
  )
