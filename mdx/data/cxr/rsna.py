"""RSNA Pneumonia Detection Challenge (2018, stage 2) as distributed: stage_2_train_labels.csv (one
row per box), stage_2_detailed_class_info.csv (the class of each row) and
stage_2_train_images/<patientId>.dcm.

config.data fields (source='rsna'):
  metadata (file): stage_2_train_labels.csv: patientId, x, y, width, height, Target; one row per
    box (x, y the top-left corner, in pixels of the 1024x1024 film) with Target 1, or one row with
    an empty box and Target 0 for an image without.
  classes (file, optional): stage_2_detailed_class_info.csv: patientId, class ('Lung Opacity',
    'No Lung Opacity / Not Normal', 'Normal'), one row per row of the labels file. It tells a
    normal film from an abnormal one without opacity; without it Lung Opacity and No Finding are
    unknown on the Target 0 images.
  images (folder): stage_2_train_images/, holding <patientId><extension>.
  extension: '.dcm' (default, as distributed), or '.png' / '.jpg' / '.jpeg' for converted copies.
  headers (file, optional): a table of the films' DICOM headers with the columns PatientID,
    PatientSex, PatientAge, ViewPosition (DICOM keywords; torchxrayvision ships one for every
    stage-2 training image, kaggle_stage_2_train_images_dicom_headers.csv.gz): sex, age and view in
    source.extra, read in a moment.
  read_headers: True reads the same fields (and StudyInstanceUID) from every DICOM header instead
    (pixels not read): about 0.3 s per 1000 files from a warm local disk, ~10 s for the 26,684
    films, more from a network file system. Default False: without a headers table, sex, age and
    view stay unknown.
  patients (file, optional): a table mapping patientId to the person (columns 'patientId' and
    'Patient ID'), e.g. the NIH patient of each film: see FACTS['patient_id'].
  findings: canonical finding names (CANONICAL); default ('Pneumonia', 'Lung Opacity',
    'No Finding'), the ones RSNA labels. Any other is a column of nan (unknown), logged at INFO.
  channels, on_error: as for NIH ('skip' also drops films whose header cannot be read when
    read_headers is set; 'unchecked', the tables without the films, refuses read_headers). A film
    without pixel data is named by the record check (mdx.data.check) before training.

One record per film; source.extra holds 'boxes' (a list of ['Lung Opacity', x_min, y_min, x_max,
y_max, ''] in pixels, x_max = x + width), 'class' (the detailed class, '' without the classes file),
'study_id', 'view' ('PA' / 'AP'), 'sex' ('M' / 'F'), 'age' (years; nan unknown).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from mdx.data.cxr import dicom_headers, label_space, records
from mdx.data.cxr import findings as findings_lib
from mdx.data.image import file_source

PATIENT, TARGET = "patientId", "Target"
BOX = ("x", "y", "width", "height")
CLASS = "class"
OPACITY, NOT_NORMAL, NORMAL = "Lung Opacity", "No Lung Opacity / Not Normal", "Normal"
CLASSES = (OPACITY, NOT_NORMAL, NORMAL)

# RSNA's label names (the labels file's 'Target' and the classes file's classes) -> canonical.
TO_CANONICAL: dict[str, str | None] = {
  # The challenge's positive: an opacity the reader judged suggestive of pneumonia ("expert
  # annotations of possible pneumonia", Shih et al. 2019), read from the film alone. NIH's
  # 'Pneumonia' is the same thing mined from the report: the radiologist's impression of
  # (possible) pneumonia from the film, clinically unconfirmed. Target 0 (Normal, and abnormal
  # films without such an opacity) is the reader's "no pneumonia".
  "Target": "Pneumonia",
  # A pneumonia-like opacity is a lung opacity by any definition, and a 'Normal' film has none:
  # Lung Opacity 1 and 0. 'No Lung Opacity / Not Normal' films hold other abnormalities, which
  # include opacities not suggestive of pneumonia (nodules, masses, atelectasis, scarring) that
  # CheXpert's wider 'Lung Opacity' counts: unknown (nan) there, not negative.
  "Lung Opacity": "Lung Opacity",
  # No abnormality on the film; relative to the label set as every 'No Finding'
  # (findings.SET_RELATIVE). The other two classes are 0.
  "Normal": "No Finding",
  "No Lung Opacity / Not Normal": None,  # a negation class: abnormal, kind not recorded
}
LABELLED: tuple[str, ...] = ("Pneumonia", "Lung Opacity", findings_lib.NO_FINDING)
# The canonical values of each detailed class (nan: unknown).
VALUES: dict[str, dict[str, float]] = {
  OPACITY: {"Pneumonia": 1.0, "Lung Opacity": 1.0, findings_lib.NO_FINDING: 0.0},
  NOT_NORMAL: {"Pneumonia": 0.0, "Lung Opacity": math.nan, findings_lib.NO_FINDING: 0.0},
  NORMAL: {"Pneumonia": 0.0, "Lung Opacity": 0.0, findings_lib.NO_FINDING: 1.0},
  "": {"Pneumonia": 0.0, "Lung Opacity": math.nan, findings_lib.NO_FINDING: math.nan},  # Target
}  # 0 without the classes file

FACTS = {
  "modality": (
    "frontal chest radiographs (PA and AP) from NIH ChestX-ray14, 1024x1024 8-bit DICOM (RSNA "
    "Pneumonia Detection Challenge 2018, stage 2 training set)"
  ),
  "label_source": (
    "radiologists of the RSNA and the Society of Thoracic Radiology re-read each film (Shih et "
    "al., Radiology: AI 2019): boxes around opacities suggestive of pneumonia, and one class per "
    "film (Lung Opacity, No Lung Opacity / Not Normal, Normal)"
  ),
  "label_values": (
    "Target 1 (one row per box) = opacity suggestive of pneumonia, 0 = none; mdx: Pneumonia = "
    "Target; Lung Opacity 1 for 'Lung Opacity', 0 for 'Normal', unknown for 'No Lung Opacity / "
    "Not Normal'; No Finding 1 for 'Normal' only"
  ),
  "patient_id": (
    "patientId names one film, not a person: the 26,684 films were drawn from NIH ChestX-ray14 "
    "and torchxrayvision's image matching places them on about 11,400 NIH patients, so splits "
    "by patientId can put one person's films on both sides; config.data.patients maps "
    "patientId to the person"
  ),
}

EXTENSIONS = (".dcm", ".png", ".jpg", ".jpeg")
HEADER_FIELDS = ("PatientSex", "PatientAge", "ViewPosition")
HEADER_TAGS = (*HEADER_FIELDS, "StudyInstanceUID")
MAX_AGE = 120.0  # the headers hold typos (ages 148 to 155): above this an age is unknown


# ------------------------------------------------------------------------------ reading the tables


def _patient(row: dict[str, str], path: str, line: int) -> str:
  value = row[PATIENT].strip()
  if not value:
    raise ValueError(f"{path} line {line}: empty {PATIENT!r}; fill it in or remove the row")
  return value


def read_labels(metadata: str) -> tuple[list[str], dict[str, int], dict[str, list[list]]]:
  """(patientIds in order of first appearance, patientId -> Target, patientId -> boxes) of
  stage_2_train_labels.csv, every row checked; a mistake is a ValueError naming file and line."""
  _, rows = file_source.read_csv(metadata, (PATIENT, *BOX, TARGET))
  target: dict[str, int] = {}
  first: dict[str, int] = {}
  boxes: dict[str, list[list]] = {}
  for n, row in enumerate(rows):
    line = n + 2
    pid = _patient(row, metadata, line)
    cell = row[TARGET].strip()
    if cell not in ("0", "1"):
      raise ValueError(
        f"{metadata} line {line} ({pid}): {TARGET} is {cell!r}; RSNA's Target is 1 (a box of "
        "opacity) or 0 (none): fix the cell"
      )
    value = int(cell)
    cells = [row[c].strip() for c in BOX]
    if value == 0 and any(cells):
      raise ValueError(
        f"{metadata} line {line} ({pid}): Target 0 with a box {dict(zip(BOX, cells))}; a film "
        "without opacity has an empty box (or the Target is wrong)"
      )
    box = None
    if value == 1:
      try:
        x, y, w, h = (float(c) for c in cells)
      except ValueError:
        raise ValueError(
          f"{metadata} line {line} ({pid}): Target 1 needs a box of four numbers x, y, width, "
          f"height; found {dict(zip(BOX, cells))}"
        ) from None
      if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(
          f"{metadata} line {line} ({pid}): box {dict(zip(BOX, cells))} needs a positive width "
          "and height; fix the row"
        )
      box = [OPACITY, x, y, x + w, y + h, ""]
    if pid in target and target[pid] != value:
      raise ValueError(
        f"{metadata} line {line} ({pid}): Target {value}, but line {first[pid]} gives "
        f"{target[pid]} for the same film; a film with opacity has only Target 1 rows"
      )
    if pid in target and value == 0:
      raise ValueError(
        f"{metadata} line {line} ({pid}): a second Target 0 row (first on line {first[pid]}); "
        "keep one"
      )
    target.setdefault(pid, value)
    first.setdefault(pid, line)
    boxes.setdefault(pid, [])
    if box:
      boxes[pid].append(box)
  records.require_rows(metadata, target, "RSNA's stage_2_train_labels.csv")
  return list(target), target, boxes


def read_classes(path: str, target: dict[str, int], metadata: str) -> dict[str, str]:
  """patientId -> detailed class from stage_2_detailed_class_info.csv, checked against the
  Targets: every film has one class, 'Lung Opacity' exactly when its Target is 1."""
  _, rows = file_source.read_csv(path, (PATIENT, CLASS))
  out: dict[str, str] = {}
  first: dict[str, int] = {}
  for n, row in enumerate(rows):
    line = n + 2
    pid = _patient(row, path, line)
    name = row[CLASS].strip()
    if name not in CLASSES:
      raise ValueError(
        f"{path} line {line} ({pid}): class {name!r} is not one of {list(CLASSES)}; fix the row"
      )
    if pid in out and out[pid] != name:
      raise ValueError(
        f"{path} line {line} ({pid}): class {name!r}, but line {first[pid]} gives {out[pid]!r} "
        "for the same film; one film has one class"
      )
    if pid in target and (name == OPACITY) != (target[pid] == 1):
      raise ValueError(
        f"{path} line {line} ({pid}): class {name!r} contradicts Target {target[pid]} in "
        f"{metadata}; 'Lung Opacity' is exactly the Target 1 films (are the files of one stage?)"
      )
    out.setdefault(pid, name)
    first.setdefault(pid, line)
  missing = [p for p in target if p not in out]
  if missing:
    raise ValueError(
      f"{path}: {len(missing)} films of {metadata} have no class, e.g. {missing[:3]}; give the "
      "classes file of the same stage (or leave config.data.classes unset)"
    )
  extra = len(out) - len(target)
  if extra:
    logging.info("RSNA %s: %d classes of films not in %s are not used", path, extra, metadata)
  return out


def _table_map(path: str, key: str, columns: Sequence[str]) -> dict[str, dict[str, str]]:
  """key column -> {column: cell} of a table; a key given twice is an error."""
  _, rows = file_source.read_csv(path, (key, *columns))
  out: dict[str, dict[str, str]] = {}
  first: dict[str, int] = {}
  for n, row in enumerate(rows):
    line = n + 2
    value = row[key].strip()
    if not value:
      raise ValueError(f"{path} line {line}: empty {key!r}; fill it in or remove the row")
    if value in out:
      raise ValueError(
        f"{path} line {line}: {key} {value} again (first on line {first[value]}); keep one row"
      )
    out[value] = {c: row[c].strip() for c in columns}
    first[value] = line
  return out


def age_years(value: str) -> float:
  """DICOM PatientAge ('062Y', '010M'; RSNA writes plain '62') -> years; nan when empty,
  unreadable or above MAX_AGE."""
  return dicom_headers.age_years(value, MAX_AGE)


# ------------------------------------------------------------------------------------ the source


def output_names(data_config) -> tuple[str, ...]:
  """The canonical findings config.data asks for (default LABELLED), told without reading a
  file; a name outside the label space is a ValueError listing the canonical names."""
  return label_space.requested_findings(data_config, LABELLED)


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  metadata = file_source.require(data_config, "metadata", "rsna")
  findings = output_names(data_config)
  ext = records.extension(data_config, ".dcm", EXTENSIONS)
  on_error = file_source.config_get(data_config, "on_error", "raise")
  read_headers = bool(file_source.config_get(data_config, "read_headers", False))
  headers_table = file_source.config_get(data_config, "headers")
  if read_headers and headers_table:
    raise ValueError(
      "config.data.headers and config.data.read_headers both give sex, age and view; set one"
    )
  if read_headers:
    dicom_headers.refuse_unchecked(
      on_error,
      "RSNA",
      "give the headers table instead (config.data.headers) or leave "
      "config.data.read_headers unset",
    )
  if read_headers and ext != ".dcm":
    raise ValueError(
      f"config.data.read_headers needs the DICOM films; config.data.extension is {ext!r}"
    )
  ids, target, boxes = read_labels(metadata)
  classes_file = file_source.config_get(data_config, "classes")
  classes = read_classes(classes_file, target, metadata) if classes_file else {}
  headers = (
    _table_map(headers_table, "PatientID", HEADER_FIELDS) if headers_table else {}
  )  # patientId -> PatientSex, PatientAge, ViewPosition
  patients_file = file_source.config_get(data_config, "patients")
  person = _table_map(patients_file, PATIENT, ("Patient ID",)) if patients_file else {}
  for pid, row in person.items():
    if not row["Patient ID"]:
      raise ValueError(f"{patients_file}: empty 'Patient ID' for {pid}; fill it in")

  root = file_source.require(data_config, "images", "rsna")
  paths = [os.path.join(root, pid + ext) for pid in ids]
  keep = file_source.keep_existing(paths, f"RSNA metadata {metadata}", on_error)
  idx = np.flatnonzero(keep)
  skipped = int((~keep).sum())
  if read_headers:
    read, bad = dicom_headers.read([paths[i] for i in idx], HEADER_TAGS, on_error, "RSNA")
    good = np.array([h is not None for h in read], bool)
    headers = {ids[i]: h for i, h in zip(idx, read) if h is not None}
    idx, skipped = idx[good], skipped + bad

  kept = [ids[i] for i in idx]
  names = [classes.get(pid, OPACITY if target[pid] else "") for pid in kept]
  values = {f: np.array([VALUES[name][f] for name in names], np.float32) for f in LABELLED}
  labels = label_space.label_matrix("RSNA", len(kept), findings, values)

  missing = [p for p in kept if p not in headers] if (headers_table or read_headers) else []
  if missing:
    logging.info("RSNA: %d films have no row in the headers (sex, age, view unknown)", len(missing))
  head = [headers.get(p, {}) for p in kept]
  age = np.array([age_years(h.get("PatientAge", "")) for h in head], np.float32)
  implausible = sum(1 for h, a in zip(head, age) if h.get("PatientAge") and np.isnan(a))
  if implausible:
    logging.warning(
      "RSNA: %d films with an unreadable or implausible PatientAge (over %d years) are of "
      "unknown age",
      implausible,
      int(MAX_AGE),
    )
  unmapped = sum(1 for p in kept if p not in person) if person else 0
  if unmapped:
    logging.info(
      "RSNA: %d films are not in %s: their patientId stays the patient", unmapped, patients_file
    )
  return file_source.FileSource(
    [paths[i] for i in idx],
    labels,
    [person[p]["Patient ID"] if p in person else p for p in kept],
    kept,
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="rsna",
    skipped=skipped,
    extra={
      **records.extra(
        len(kept),
        study_id=[h.get("StudyInstanceUID", "") for h in head],
        view=[h.get("ViewPosition", "") for h in head],
        sex=[h.get("PatientSex", "") for h in head],
        age=age,
        boxes=records.objects([boxes[p] for p in kept]),
      ),
      "class": np.asarray([classes.get(p, "") for p in kept], dtype=str),
    },
  )
