"""NIH ChestX-ray14 as it comes: Data_Entry_2017(.csv | _v2020.csv.gz) and images_*/ folders.

config.data fields (source='nih'):
  metadata: path of Data_Entry_2017.csv / Data_Entry_2017_v2020.csv.gz (or any CSV with the columns
    'Image Index', 'Finding Labels', 'Patient ID'; 'Follow-up #' and 'View Position' optional).
  images: folder holding the PNGs directly, or images_001..images_012 (each optionally with an
    images/ subfolder, as in the Kaggle copy).
  findings: names to predict (default: the 14 NIH findings in the paper's order).
  view_positions: e.g. ['PA'] keeps only those rows (default: all).
  channels: 1 (default) or 3.
  on_error: 'raise' (default) or 'skip' rows whose image file is missing (the count is logged and
    kept as source.skipped); the tasks also drop files that cannot be decoded (mdx.data.check).
The official split lists (train_val_list.txt, test_list.txt) are read by official_split.

extra per record (mdx.data.cxr.records.extra): 'study_id' (patient and 'Follow-up #': each
follow-up is one visit), 'view' ('View Position': PA / AP), 'sex' ('Patient Gender': 'M', 'F' or
''), 'age' ('Patient Age' in years: 58 or, in some releases of the 2017 table, '058Y'; nan when
blank or above MAX_AGE). '' and nan where the table lacks the column.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence

import numpy as np

from mdx.data.cxr import dicom_headers, records
from mdx.data.cxr import findings as findings_lib
from mdx.data.image import file_source

# NIH's label names -> canonical: the canonical list starts with NIH's 14 in NIH's spelling, so
# each is itself. 'No Finding' (none of the 14) is the canonical No Finding, relative to NIH's 14
# as every dataset's is to its own labels (findings.SET_RELATIVE).
TO_CANONICAL: dict[str, str | None] = {
  **{f: f for f in findings_lib.NIH_FINDINGS},
  findings_lib.NO_FINDING: findings_lib.NO_FINDING,
}

IMAGE = "Image Index"
LABELS = "Finding Labels"
PATIENT = "Patient ID"
REQUIRED = (IMAGE, LABELS, PATIENT)
FOLLOW_UP = "Follow-up #"
VIEW = "View Position"
SEX = "Patient Gender"
AGE = "Patient Age"
# The 2017 table holds 16 typed-in ages of 148 to 414 years: above this an age is unknown.
MAX_AGE = 120.0


def parse_labels(
  rows: Sequence[dict[str, str]],
  findings: Sequence[str] = findings_lib.NIH_FINDINGS,
  where: str = "metadata",
  column: str = LABELS,
) -> np.ndarray:
  """'A|B' / 'No Finding' strings -> multi-hot float32 [N, len(findings)].

  Every name must be one of the 14 NIH findings or 'No Finding'; names outside `findings` (when a
  subset is asked for) are ignored. An unknown name is an error naming the row.
  """
  known = set(findings_lib.NIH_FINDINGS)
  col = {f: i for i, f in enumerate(findings)}
  for f in findings:
    if f not in known:
      raise ValueError(
        f"config.data.findings has {f!r}, which is not an NIH finding; choose from "
        f"{list(findings_lib.NIH_FINDINGS)}"
      )
  out = np.zeros((len(rows), len(findings)), np.float32)
  for r, row in enumerate(rows):
    text = (row.get(column) or "").strip()
    if not text:
      raise ValueError(
        f"{where}: row {r + 2} ({row.get(IMAGE)}) has an empty {column!r}; "
        f"write '{findings_lib.NO_FINDING}' for normal images"
      )
    for name in text.split("|"):
      name = name.strip()
      if name == findings_lib.NO_FINDING:
        continue
      if name not in known:
        raise ValueError(
          f"{where}: row {r + 2} ({row.get(IMAGE)}) has unknown label {name!r} in "
          f"{column!r}; known labels are {sorted(known)} and "
          f"{findings_lib.NO_FINDING!r}"
        )
      if name in col:
        out[r, col[name]] = 1.0
  return out


def age_of(cell: str | None, where: str) -> float:
  """An age cell in years ('58', '058Y', '58.0'; CheXpert's '58' too) -> float; nan when blank or
  above MAX_AGE. Any other text is a ValueError naming `where` (file, record and column)."""
  text = (cell or "").strip()
  if not text:
    return math.nan
  years = dicom_headers.age_years(text)
  if math.isnan(years):  # '58.0': a table saved again through pandas with some ages blank
    try:
      years = float(text)
    except ValueError:
      pass
  if not years >= 0:  # nan or negative
    raise ValueError(
      f"{where} is {cell!r}, not an age in years (58 or 058Y); fix the cell or leave it empty"
    )
  return years if years <= MAX_AGE else math.nan


def extra_of(rows: Sequence[dict[str, str]], where: str) -> dict[str, np.ndarray]:
  """FileSource.extra of rows in NIH's layout (Data_Entry_2017 and the expert labels): study,
  view, sex and age per row, '' and nan where a column is absent or blank."""
  study, view, sex, age = [], [], [], []
  for row in rows:
    follow_up = (row.get(FOLLOW_UP) or "").strip()
    study.append(f"{row[PATIENT].strip()}_{follow_up}" if follow_up else "")
    view.append((row.get(VIEW) or "").strip())
    sex.append(records.sex_of(row.get(SEX)))
    age.append(age_of(row.get(AGE), f"{where}: {row.get(IMAGE)} column {AGE!r}"))
  return records.extra(len(rows), study_id=study, view=view, sex=sex, age=age)


def index_images(folder: str) -> dict[str, str]:
  """File name -> path for PNGs in folder, folder/images_*/ and folder/images_*/images/."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"NIH image folder {folder} does not exist (config.data.images)")
  return records.index_files(
    [
      folder,
      *sorted(glob.glob(os.path.join(folder, "images_*"))),
      *sorted(glob.glob(os.path.join(folder, "images_*", "images"))),
      os.path.join(folder, "images"),
    ]
  )


def official_split(image_ids: Sequence[str], folder: str) -> dict[str, np.ndarray]:
  """{'train_val': idx, 'test': idx} from the official train_val_list.txt and test_list.txt."""
  lists = {}
  for name, fname in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
    path = os.path.join(folder, fname)
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"official NIH split list {path} is missing; put train_val_list.txt "
        "and test_list.txt next to the metadata or use another split"
      )
    with open(path) as f:
      lists[name] = {line.strip() for line in f if line.strip()}
  ids = np.asarray(image_ids).astype(str)
  out = {name: np.flatnonzero(np.isin(ids, sorted(names))) for name, names in lists.items()}
  unlisted = len(ids) - sum(len(v) for v in out.values())
  if unlisted:
    raise ValueError(
      f"{unlisted} images are in neither train_val_list.txt nor test_list.txt in {folder}"
    )
  return out


def output_names(data_config) -> tuple[str, ...]:
  """The findings a source of config.data labels (data.findings, default the 14 of ChestX-ray14),
  told without reading the metadata (mdx.config counts them for model.num_classes)."""
  return tuple(file_source.config_get(data_config, "findings", findings_lib.NIH_FINDINGS))


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  metadata = file_source.require(data_config, "metadata", "nih")
  findings = output_names(data_config)
  _, rows = file_source.read_csv(metadata, REQUIRED)
  views = file_source.config_get(data_config, "view_positions")
  if views:
    rows = [r for r in rows if r.get("View Position") in set(views)]
  labels = parse_labels(rows, findings, where=metadata)
  extra = extra_of(rows, metadata)
  names = [r[IMAGE] for r in rows]
  folder = file_source.require(data_config, "images", "nih")
  index = index_images(folder)
  paths = [index.get(n, os.path.join(folder, n)) for n in names]
  on_error = file_source.config_get(data_config, "on_error", "raise")
  keep = file_source.keep_existing(paths, f"NIH metadata {metadata}", on_error)
  idx = np.flatnonzero(keep)
  return file_source.FileSource(
    [paths[i] for i in idx],
    labels[idx],
    [rows[i][PATIENT] for i in idx],
    [names[i] for i in idx],
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="nih",
    skipped=int((~keep).sum()),
    extra={k: v[idx] for k, v in extra.items()},
  )
