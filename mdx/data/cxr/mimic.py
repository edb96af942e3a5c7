"""MIMIC-CXR-JPG 2.x as PhysioNet distributes it: tables next to files/, one label row per study.

The tables (each .csv or .csv.gz) in config.data.root:
  mimic-cxr-2.0.0-chexpert.csv or mimic-cxr-2.0.0-negbio.csv: subject_id, study_id, then the 14
    CheXpert observations with 1.0, 0.0, -1.0 (uncertain) or blank (not mentioned), one row per
    study, mined from its report by the CheXpert labeler or NegBio;
  mimic-cxr-2.0.0-metadata.csv: one row per image (dicom_id, subject_id, study_id, ViewPosition,
    ...);
  mimic-cxr-2.0.0-split.csv: dicom_id, study_id, subject_id, split (train / validate / test).
Images: files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg (XX: the first two digits of the subject id).

Every image of a study carries the study's labels. The patient is subject_id; extra holds per record
'study_id', 'view' (ViewPosition, '' where the DICOM had none), 'sex' and 'age' (always '' and nan:
these tables have neither; they are in MIMIC-IV) and 'official_split' ('train' | 'validate' |
'test', from the split table, for split.by='official'). Images of a study without a label row
(MIMIC-CXR-JPG 2.0.0 labels 227,827 of 227,835 studies) are left out, counted in source.skipped and
source.excluded['unlabelled'] and logged; source.excluded also counts the images of other views
('views', not in skipped, as NIH's views) and those whose file is missing ('missing_file', with
on_error='skip'). Every table is checked (rows under its header, numeric ids, one label row per
study, one split row per image, the split's values, a study's subject the same in both tables, and
an image in the metadata for every labelled study) before any image is read: a mistake is a one-line
ValueError naming the file, row and column. A labelled study without an image is such a mistake,
not a row to leave out: the published tables have none, so the label and metadata tables come
from different releases or one was cut short.

config.data fields (source='mimic'):
  root: the folder holding the tables and files/ (a path).
  labeler: 'chexpert' (default) or 'negbio': which label table to read.
  findings: canonical finding names (CANONICAL) to predict, default every one MIMIC labels
    (DEFAULT_FINDINGS); one MIMIC does not label is a column of nan (unknown), logged.
  uncertain: policy for -1: 'ones', 'zeros' or 'ignore' (nan, the default), or a dict {finding:
    policy} keyed by canonical or MIMIC column names (as for CheXpert).
  blank: policy for empty cells (not mentioned): 'zeros' (default) or 'ignore'.
  views: ViewPosition values to keep, e.g. ['PA', 'AP'] (default: every image).
  channels, on_error: as for NIH ('raise' or 'skip' images whose file is missing).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from absl import logging

from mdx.data.cxr import chexpert, label_space, records
from mdx.data.cxr import findings as findings_lib
from mdx.data.image import file_source

# MIMIC-CXR's label columns are CheXpert's 14 observations, spelled as in its tables and read from
# the reports by the same labelers with the same definitions: CheXpert's mapping (chexpert.py).
TO_CANONICAL: dict[str, str | None] = chexpert.TO_CANONICAL
FROM_CANONICAL: dict[str, str] = {c: m for m, c in TO_CANONICAL.items() if c}
DEFAULT_FINDINGS: tuple[str, ...] = tuple(c for c in findings_lib.CANONICAL if c in FROM_CANONICAL)

FACTS = {
  "modality": (
    "chest radiographs, frontal and lateral (MIMIC-CXR-JPG: JPEGs made from the DICOMs of the "
    "Beth Israel Deaconess Medical Center emergency department, Boston, 2011-2016)"
  ),
  "label_source": (
    "mined from each study's free-text radiology report by a rule-based labeler (the CheXpert "
    "labeler or NegBio, config.data.labeler); every image of a study carries the study's labels; "
    "sex and age are not in these tables (they are in MIMIC-IV) and are left unknown"
  ),
  "label_values": (
    "1.0 positive, 0.0 negative, -1.0 uncertain (config.data.uncertain: ones, zeros or unknown), "
    "blank not mentioned (config.data.blank: zeros or unknown); No Finding is 1.0 or blank"
  ),
}

LABEL_TABLES = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv", "negbio": "mimic-cxr-2.0.0-negbio.csv"}
METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
SPLITS = ("train", "validate", "test")


def table_path(root: str, name: str) -> str:
  """root/name.gz or root/name (as PhysioNet ships them, gzipped, or unpacked)."""
  for candidate in (os.path.join(root, name + ".gz"), os.path.join(root, name)):
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(
    f"MIMIC-CXR table {name}(.gz) is not in {root} (config.data.root); put the tables of "
    "MIMIC-CXR-JPG next to its files/ folder, as PhysioNet distributes them"
  )


def output_names(data_config) -> tuple[str, ...]:
  """The canonical findings a source of config.data labels (data.findings, default
  DEFAULT_FINDINGS), told without reading a file; a name outside CANONICAL is an error."""
  return label_space.requested_findings(data_config, DEFAULT_FINDINGS)


def _uncertain_policy(value, columns: Mapping[str, str]) -> str | dict[str, str]:
  """config.data.uncertain keyed by canonical or MIMIC names -> keyed by MIMIC column names."""
  if isinstance(value, str):
    return value
  out = {}
  for key, policy in dict(value).items():
    column = columns.get(key, key)
    if column not in columns.values():
      raise ValueError(
        f"config.data.uncertain names {key!r}, which is not among the findings MIMIC-CXR labels "
        f"here {list(columns)}"
      )
    out[column] = policy
  return out


def _id(row: dict[str, str], column: str, path: str, line: int) -> str:
  value = row[column].strip()
  if not value.isdigit():
    raise ValueError(
      f"{path} row {line}: column {column!r} is {row[column]!r}, not a number; the MIMIC-CXR "
      "tables hold numeric subject and study ids: fix the row or download the table again"
    )
  return value


def _read_labels(
  path: str, columns: Mapping[str, str], uncertain, blank: str
) -> tuple[dict[str, tuple[int, str]], np.ndarray]:
  """({study_id: (row, subject_id)}, float32 [rows, len(columns)]) of a label table."""
  _, rows = file_source.read_csv(path, ("subject_id", "study_id", *columns.values()))
  records.require_rows(path, rows, "MIMIC-CXR-JPG's label table")
  studies: dict[str, tuple[int, str]] = {}
  for r, row in enumerate(rows):
    study = _id(row, "study_id", path, r + 2)
    subject = _id(row, "subject_id", path, r + 2)
    if study in studies:
      raise ValueError(
        f"{path} row {r + 2}: study {study} already has a label row (row "
        f"{studies[study][0] + 2}); a label table holds one row per study: remove the duplicate"
      )
    studies[study] = (r, subject)
  named = [dict(row, Path=f"subject {row['subject_id']} study {row['study_id']}") for row in rows]
  labels = chexpert.parse_labels(named, list(columns.values()), uncertain, blank, where=path)
  return studies, labels


def _read_splits(path: str) -> dict[str, str]:
  _, rows = file_source.read_csv(path, ("dicom_id", "split"))
  records.require_rows(path, rows, "MIMIC-CXR-JPG's split table")
  out, first_row = {}, {}
  for r, row in enumerate(rows):
    if row["split"] not in SPLITS:
      raise ValueError(
        f"{path} row {r + 2}: column 'split' is {row['split']!r}; MIMIC-CXR's official split is "
        f"one of {list(SPLITS)}: fix the row or download the table again"
      )
    dicom = row["dicom_id"].strip()
    if dicom in first_row:
      raise ValueError(
        f"{path} row {r + 2}: image {dicom} already has a split row (row {first_row[dicom]}); "
        "the split table holds one row per image: remove the duplicate"
      )
    first_row[dicom] = r + 2
    out[dicom] = row["split"]
  return out


def _require_images(
  studies: Mapping[str, tuple[int, str]], imaged: set[str], label_path: str, meta_path: str
) -> None:
  """A ValueError naming the first labelled study (by row) that no metadata row gives an image."""
  without = [s for s in studies if s not in imaged]
  if without:
    row, subject = studies[without[0]]
    raise ValueError(
      f"{label_path} row {row + 2}: study {without[0]} (subject {subject}) has no image in "
      f"{meta_path} ({len(without)} labelled studies have none); use the label and metadata "
      "tables of one MIMIC-CXR-JPG release, as PhysioNet distributes them"
    )


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  root = os.fspath(file_source.require(data_config, "root", "mimic"))
  findings = output_names(data_config)
  labeler = file_source.config_get(data_config, "labeler", "chexpert")
  if labeler not in LABEL_TABLES:
    raise ValueError(f"config.data.labeler={labeler!r}; choose one of {sorted(LABEL_TABLES)}")
  label_path = table_path(root, LABEL_TABLES[labeler])
  meta_path = table_path(root, METADATA)
  split_path = table_path(root, SPLIT)

  columns = {f: FROM_CANONICAL[f] for f in findings if f in FROM_CANONICAL}
  uncertain = _uncertain_policy(file_source.config_get(data_config, "uncertain", "ignore"), columns)
  blank = file_source.config_get(data_config, "blank", "zeros")
  studies, study_labels = _read_labels(label_path, columns, uncertain, blank)
  splits = _read_splits(split_path)

  _, meta = file_source.read_csv(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
  records.require_rows(meta_path, meta, "MIMIC-CXR-JPG's metadata table")
  views = file_source.config_get(data_config, "views")
  wanted = None if not views else {views} if isinstance(views, str) else set(views)
  seen: dict[str, int] = {}
  imaged: set[str] = set()  # studies with an image in the metadata, whatever its view
  kept, label_rows, dropped_views, unlabelled = [], [], 0, 0
  for r, row in enumerate(meta):
    dicom = row["dicom_id"].strip()
    subject = _id(row, "subject_id", meta_path, r + 2)
    study = _id(row, "study_id", meta_path, r + 2)
    if not dicom:
      raise ValueError(f"{meta_path} row {r + 2}: column 'dicom_id' is empty; fix the row")
    if dicom in seen:
      raise ValueError(
        f"{meta_path} row {r + 2}: image {dicom} is listed twice (row {seen[dicom] + 2}); "
        "remove the duplicate row"
      )
    seen[dicom] = r
    if dicom not in splits:
      raise ValueError(
        f"{meta_path} row {r + 2}: image {dicom} has no row in {split_path}; use the tables of "
        "one MIMIC-CXR-JPG release"
      )
    imaged.add(study)
    view = row["ViewPosition"].strip()
    if wanted is not None and view not in wanted:
      dropped_views += 1
      continue
    if study not in studies:
      unlabelled += 1
      continue
    if studies[study][1] != subject:
      raise ValueError(
        f"{meta_path} row {r + 2}: study {study} belongs to subject {subject} here but to "
        f"subject {studies[study][1]} in {label_path}; use the tables of one MIMIC-CXR-JPG release"
      )
    kept.append((dicom, subject, study, view))
    label_rows.append(studies[study][0])
  _require_images(studies, imaged, label_path, meta_path)
  if dropped_views:
    logging.info(
      "MIMIC-CXR metadata %s: kept views %s, left out %d images of other views",
      meta_path,
      sorted(wanted),
      dropped_views,
    )
  if unlabelled:
    logging.warning(
      "MIMIC-CXR: left out %d images whose study has no row in %s (nothing is known of them)",
      unlabelled,
      label_path,
    )

  rows = study_labels[label_rows].reshape(len(kept), len(columns))
  labels = label_space.label_matrix(
    "MIMIC-CXR", len(kept), findings, {f: rows[:, c] for c, f in enumerate(columns)}
  )
  paths = [
    os.path.join(root, "files", f"p{subject[:2]}", f"p{subject}", f"s{study}", f"{dicom}.jpg")
    for dicom, subject, study, _ in kept
  ]
  on_error = file_source.config_get(data_config, "on_error", "raise")
  keep = file_source.keep_existing(paths, f"MIMIC-CXR metadata {meta_path}", on_error)
  idx = np.flatnonzero(keep)
  rec = [kept[i] for i in idx]
  extra = records.extra(
    len(rec),
    study_id=[s for _, _, s, _ in rec],
    view=[v for _, _, _, v in rec],
    official_split=np.asarray([splits[d] for d, _, _, _ in rec], dtype=str),
  )
  source = file_source.FileSource(
    [paths[i] for i in idx],
    labels[idx],
    [subject for _, subject, _, _ in rec],
    [dicom for dicom, _, _, _ in rec],
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="mimic",
    skipped=unlabelled + int((~keep).sum()),
    extra=extra,
  )
  source.excluded = {
    "views": dropped_views,
    "unlabelled": unlabelled,
    "missing_file": int((~keep).sum()),
  }
  return source


def official_split(source: file_source.FileSource) -> dict[str, np.ndarray]:
  """{'train' | 'validate' | 'test': record indices} from extra['official_split']."""
  split = np.asarray(source.extra["official_split"])
  return {name: np.flatnonzero(split == name) for name in SPLITS}
