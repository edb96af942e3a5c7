"""VinDr-CXR as distributed: Kaggle's train.csv (one row per box per reader) or PhysioNet 1.0.0's
annotations/image_labels_{train,test}.csv (one row per reader per image; the test file one
consensus row per image), with DICOM images named <image_id>.dicom.

config.data fields (source='vindr'):
  metadata (file): one of
    - the VinBigData Kaggle competition's train.csv: image_id, class_name, class_id, rad_id (R1 ..
      R17), x_min, y_min, x_max, y_max; a reader who found nothing has one 'No finding' row
      (class_id 14) with an empty box. Its 14 classes are the 14 box findings only.
    - PhysioNet's annotations/image_labels_train.csv: image_id, rad_id, then one 0/1 column per
      label (22 box findings, then COPD, Lung tumor, Pneumonia, Tuberculosis, Other diseases, No
      finding), one row per reader (3 per image).
    - PhysioNet's annotations/image_labels_test.csv: the same without rad_id (one row per image:
      the consensus of 5 radiologists) and 'Other disease' for the train file's 'Other diseases'.
    The layout is told by the columns.
  images (folder): holds <image_id><extension> (PhysioNet: train/ or test/).
  extension: '.dicom' (default, as distributed), '.dcm', or '.png' / '.jpg' / '.jpeg' for converted
    copies.
  readers: how the readers' reads become one label: 'majority' (default for the per-reader tables:
    positive when more than half of the readers of the image marked it, an even split unknown),
    'any' (positive when any reader marked it; 'No finding' only when every reader found nothing) or
    'consensus' (the test file's consensus labels; its default and the only policy it allows).
  boxes (file, optional): PhysioNet's annotations/annotations_{train,test}.csv (image_id, rad_id,
    class_name, x_min, y_min, x_max, y_max) to keep the boxes of a PhysioNet label table; Kaggle's
    train.csv holds its own.
  findings: canonical finding names (CANONICAL); default DEFAULT_FINDINGS, every canonical finding
    VinDr labels in either layout. A finding the table does not label (the four image-level ones in
    Kaggle's train.csv) is a column of nan (unknown), logged at INFO.
  channels, on_error: as for NIH.

source.extra holds per record: 'readers' (the readers joined by '|', 'consensus' for the test
file), 'boxes' (a list of [class_name, x_min, y_min, x_max, y_max, reader] in pixels of the
original film), and 'study_id', 'view', 'sex', 'age' ('' and nan: not in the tables).
reader_agreement(config.data) gives the readers' kappa per finding without reading an image.

Patient ids: VinDr's images are de-identified without a patient or study id, so the image id is the
patient id and a patient-level split is an image-level one (FACTS['patient_id']).

DICOM: mdx.data.image.images decodes VinDr's 12-16 bit MONOCHROME1/2 films (modality LUT, VOI LUT
or window, MONOCHROME1 inverted). Films stored uncompressed, as JPEG baseline/extended or as JPEG
2000 decode with pydicom's numpy and Pillow plugins; JPEG Lossless and JPEG-LS need
pylibjpeg-libjpeg or python-gdcm, which are not dependencies of mdx.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from mdx.data import consensus
from mdx.data.cxr import findings as findings_lib
from mdx.data.cxr import label_space, records
from mdx.data.image import file_source

NO_FINDING = "No finding"  # VinDr's spelling
# Kaggle's train.csv: class_id is the index in this tuple (14 box findings, then 'No finding').
KAGGLE_CLASSES: tuple[str, ...] = (
  "Aortic enlargement",
  "Atelectasis",
  "Calcification",
  "Cardiomegaly",
  "Consolidation",
  "ILD",
  "Infiltration",
  "Lung Opacity",
  "Nodule/Mass",
  "Other lesion",
  "Pleural effusion",
  "Pleural thickening",
  "Pneumothorax",
  "Pulmonary fibrosis",
  NO_FINDING,
)
# PhysioNet's image_labels_*.csv: the 22 local labels (findings, each marked with a box) in the
# files' column order, then the 6 global labels (diagnoses, the impression of the report).
LOCAL_LABELS: tuple[str, ...] = (
  "Aortic enlargement",
  "Atelectasis",
  "Calcification",
  "Cardiomegaly",
  "Clavicle fracture",
  "Consolidation",
  "Edema",
  "Emphysema",
  "Enlarged PA",
  "ILD",
  "Infiltration",
  "Lung Opacity",
  "Lung cavity",
  "Lung cyst",
  "Mediastinal shift",
  "Nodule/Mass",
  "Pleural effusion",
  "Pleural thickening",
  "Pneumothorax",
  "Pulmonary fibrosis",
  "Rib fracture",
  "Other lesion",
)
GLOBAL_LABELS: tuple[str, ...] = (
  "COPD",
  "Lung tumor",
  "Pneumonia",
  "Tuberculosis",
  "Other diseases",  # image_labels_test.csv spells it 'Other disease'
  NO_FINDING,
)

# VinDr's label names (exactly as the files spell them) -> canonical finding, None where no
# canonical finding has the same definition. VinDr's labels are siblings in one flat list: a
# reader marks the most specific label, so a VinDr negative means "not this label", which for a
# wider canonical finding is not a negative.
TO_CANONICAL: dict[str, str | None] = {
  # Part of an enlarged cardiomediastinal silhouette (CheXpert), which also takes the heart and
  # other mediastinal widening: not the same finding.
  "Aortic enlargement": None,
  "Atelectasis": "Atelectasis",
  # Calcification anywhere in the chest (nodules, nodes, aorta, pleura); no canonical finding.
  "Calcification": None,
  "Cardiomegaly": "Cardiomegaly",
  # One kind of fracture: a film without one may have another, so it is no Fracture negative.
  "Clavicle fracture": None,
  "Consolidation": "Consolidation",
  "Edema": "Edema",
  "Emphysema": "Emphysema",
  "Enlarged PA": None,  # enlarged pulmonary artery: no canonical finding
  # Interstitial lung disease is a group of diseases and an interstitial pattern (reticular,
  # nodular, ground glass); NIH Fibrosis is its fibrotic end stage, which VinDr labels apart
  # ('Pulmonary fibrosis'), so ILD is not Fibrosis.
  "ILD": None,
  # Same term, same use in both sets (an ill-defined parenchymal opacity).
  "Infiltration": "Infiltration",
  # CheXpert's 'Lung Opacity' is any parenchymal opacity (consolidation, edema, atelectasis,
  # lesions ...); VinDr's is the opacity that none of its sibling labels (Consolidation,
  # Infiltration, Atelectasis, Nodule/Mass, ...) describes, so a VinDr negative may hold an
  # opacity under another name.
  "Lung Opacity": None,
  "Lung cavity": None,
  "Lung cyst": None,
  "Mediastinal shift": None,
  # One label for two NIH findings that NIH splits at 3 cm (Nodule < 3 cm <= Mass): neither of
  # them. CheXpert's 'Lung Lesion' is wider (it also takes cavities, cysts and other lesions, which
  # VinDr labels apart as 'Lung cavity', 'Lung cyst', 'Other lesion'), so a VinDr negative is no
  # Lung Lesion negative.
  "Nodule/Mass": None,
  "Other lesion": None,
  "Pleural effusion": "Effusion",  # NIH 'Effusion' is pleural effusion (chexpert.TO_CANONICAL)
  # NIH's name for pleural thickening; CheXpert's 'Pleural Other' is wider (plaques, calcification).
  "Pleural thickening": "Pleural_Thickening",
  "Pneumothorax": "Pneumothorax",
  "Pulmonary fibrosis": "Fibrosis",  # NIH 'Fibrosis' is pulmonary fibrosis
  "Rib fracture": None,  # one kind of fracture, as 'Clavicle fracture'
  # A clinical diagnosis; NIH Emphysema is one of its image findings, not the same.
  "COPD": None,
  # A diagnosis of malignancy; CheXpert's 'Lung Lesion' is an image finding, benign ones included.
  "Lung tumor": None,
  # The global label is the radiologist's impression of pneumonia from the film, as NIH's
  # 'Pneumonia' is the impression mined from the report (neither is clinically confirmed).
  "Pneumonia": "Pneumonia",
  "Tuberculosis": "Tuberculosis",
  "Other diseases": None,
  "Other disease": None,  # image_labels_test.csv's spelling of 'Other diseases'
  # None of VinDr's labels (Kaggle: none of its 14 box findings). 'No Finding' is always relative
  # to its label set (findings.SET_RELATIVE): the canonical column says "none of this dataset's
  # labels", and matching across datasets still needs a finding_map.
  NO_FINDING: findings_lib.NO_FINDING,
}
DEFAULT_FINDINGS: tuple[str, ...] = tuple(
  f for f in findings_lib.CANONICAL if f in {c for c in TO_CANONICAL.values() if c}
)

FACTS = {
  "modality": (
    "frontal (PA) adult chest radiographs, DICOM at 12-16 bits (MONOCHROME1 or 2), from two "
    "hospitals in Hanoi, Vietnam (VinDr-CXR)"
  ),
  "label_source": (
    "radiologists: each training image read independently by 3 of 17 radiologists (boxes around "
    "22 findings, image-level labels for 6 diagnoses), each test image by the consensus of 5; "
    "config.data.readers combines the training reads (majority by default)"
  ),
  "label_values": (
    "per reader 1 = marked (a box drawn or the label ticked), 0 = read and not marked; combined "
    "by majority (more than half of the image's readers; an even split unknown) or any reader; "
    "the test file's 0/1 are consensus labels; a finding VinDr does not label is unknown"
  ),
  "patient_id": (
    "none: the images are de-identified without a patient id, so the image id is the patient id "
    "and patient-level splits are image-level (one person's films may fall on both sides)"
  ),
}

ID, RAD, RAD_SPELLINGS = "image_id", "rad_id", ("rad_id", "rad_ID")
CLASS, CLASS_ID = "class_name", "class_id"
BOX = ("x_min", "y_min", "x_max", "y_max")
KAGGLE, PHYSIONET, CONSENSUS = "kaggle", "physionet", "consensus"
POLICIES = ("majority", "any", "consensus")
EXTENSIONS = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")
ONE, ZERO = {"1", "1.0"}, {"0", "0.0"}


@dataclasses.dataclass
class Table:
  """Every read of a VinDr label table, before any policy."""

  path: str
  layout: str  # KAGGLE | PHYSIONET | CONSENSUS
  ids: list[str]  # [N] image ids in the order of first appearance
  labels: tuple[str, ...]  # [L] VinDr label names, as the file spells them
  readers: list[str]  # [R] reader ids (R1 ...); ['consensus'] for the test file
  reads: np.ndarray  # [N, R, L] float32: 1 marked, 0 read and not marked, nan no read
  boxes: dict[str, list[list]]  # image id -> [[class, x_min, y_min, x_max, y_max, reader], ...]


# ------------------------------------------------------------------------------ reading the tables


def _cell(value: str, path: str, line: int, column: str) -> float:
  value = value.strip()
  if value in ONE:
    return 1.0
  if value in ZERO:
    return 0.0
  if value == "":
    return math.nan
  raise ValueError(
    f"{path} line {line} column {column!r} has {value!r}; VinDr's image labels are 1 (marked) or "
    "0 (not marked): fix the cell"
  )


def _box(row: dict[str, str], name: str, path: str, line: int, image_id: str) -> list[float] | None:
  """The four box cells of a row of class `name` as floats, None when all four are empty (as they
  are exactly on 'No finding' rows); ValueError otherwise."""
  cells = [row[c].strip() for c in BOX]
  if (name == NO_FINDING) == any(cells):
    raise ValueError(
      f"{path} line {line} ({image_id}): a {name!r} row "
      + ("has a box; 'No finding' rows have none" if any(cells) else "has no box; fill it in")
    )
  if not any(cells):
    return None
  try:
    x0, y0, x1, y1 = (float(c) for c in cells)
  except ValueError:
    raise ValueError(
      f"{path} line {line}: box {dict(zip(BOX, cells))} is not four numbers; fill in x_min, "
      "y_min, x_max, y_max (pixels) or remove the row"
    ) from None
  if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x0 > x1 or y0 > y1:
    raise ValueError(
      f"{path} line {line}: box {dict(zip(BOX, cells))} is not a box (x_min <= x_max and y_min "
      "<= y_max, finite); fix the row"
    )
  return [x0, y0, x1, y1]


def _image_id(row: dict[str, str], path: str, line: int) -> str:
  image_id = row[ID].strip()
  if not image_id:
    raise ValueError(f"{path} line {line}: empty {ID!r}; fill it in or remove the row")
  return image_id


def _read_kaggle(path: str, rows: Sequence[dict[str, str]]) -> Table:
  ids: dict[str, int] = {}
  readers: dict[str, int] = {}
  marked: list[tuple[int, int, int]] = []
  seen: dict[tuple[int, int], tuple[str, int]] = {}  # (image, reader) -> (a class, its line)
  boxes: dict[str, list[list]] = {}
  for n, row in enumerate(rows):
    line = n + 2
    image_id = _image_id(row, path, line)
    reader = row[RAD].strip()
    if not reader:
      raise ValueError(f"{path} line {line} ({image_id}): empty {RAD!r}; fill in the reader")
    name = row[CLASS].strip()
    if name not in KAGGLE_CLASSES:
      raise ValueError(
        f"{path} line {line} ({image_id}): class_name {name!r} is not one of Kaggle's 15 classes "
        f"{list(KAGGLE_CLASSES)} (PhysioNet's annotations_*.csv go in config.data.boxes, with "
        "image_labels_*.csv as config.data.metadata)"
      )
    if CLASS_ID in row and row[CLASS_ID].strip() != str(KAGGLE_CLASSES.index(name)):
      raise ValueError(
        f"{path} line {line} ({image_id}): class_id {row[CLASS_ID]!r} does not match class_name "
        f"{name!r} (class_id {KAGGLE_CLASSES.index(name)}); fix the row"
      )
    box = _box(row, name, path, line, image_id)
    i = ids.setdefault(image_id, len(ids))
    r = readers.setdefault(reader, len(readers))
    other = seen.setdefault((i, r), (name, line))
    if NO_FINDING in (name, other[0]) and name != other[0]:
      raise ValueError(
        f"{path} line {line}: reader {reader} marked both 'No finding' and a finding on image "
        f"{image_id} (lines {other[1]} and {line}); remove the wrong row"
      )
    marked.append((i, r, KAGGLE_CLASSES.index(name)))
    boxes.setdefault(image_id, [])
    if box:
      boxes[image_id].append([name, *box, reader])
  reads = np.full((len(ids), len(readers), len(KAGGLE_CLASSES)), np.nan, np.float32)
  for i, r in seen:
    reads[i, r] = 0.0  # the reader read the whole image: what they did not mark is negative
  for i, r, c in marked:
    reads[i, r, c] = 1.0
  return Table(path, KAGGLE, list(ids), KAGGLE_CLASSES, list(readers), reads, boxes)


def _label_columns(path: str, columns: Sequence[str], skip: Sequence[str]) -> tuple[str, ...]:
  labels = tuple(c for c in columns if c not in skip)
  unknown = [c for c in labels if c not in TO_CANONICAL]
  if unknown or not labels:
    raise ValueError(
      f"{path}: column(s) {unknown or '(none)'} are not VinDr-CXR labels; PhysioNet's "
      f"image_labels_*.csv have {ID}[, {RAD}] and the labels {[*LOCAL_LABELS, *GLOBAL_LABELS]}"
    )
  return labels


def _read_physionet(path: str, columns: list[str], rows: Sequence[dict[str, str]]) -> Table:
  rad = next((c for c in RAD_SPELLINGS if c in columns), None)
  labels = _label_columns(path, columns, (ID, rad) if rad else (ID,))
  ids: dict[str, int] = {}
  readers: dict[str, int] = {}
  lines: dict[tuple[int, int], int] = {}
  cells: list[tuple[int, int, list[float]]] = []
  for n, row in enumerate(rows):
    line = n + 2
    image_id = _image_id(row, path, line)
    reader = row[rad].strip() if rad else CONSENSUS
    if not reader:
      raise ValueError(f"{path} line {line} ({image_id}): empty {rad!r}; fill in the reader")
    i = ids.setdefault(image_id, len(ids))
    r = readers.setdefault(reader, len(readers))
    first = lines.setdefault((i, r), line)
    if first != line:
      who = f"reader {reader}" if rad else "the consensus"
      raise ValueError(
        f"{path} line {line}: a second row of {who} for image {image_id} (first on line "
        f"{first}); keep one"
      )
    cells.append((i, r, [_cell(row[c], path, line, c) for c in labels]))
  reads = np.full((len(ids), len(readers), len(labels)), np.nan, np.float32)
  for i, r, values in cells:
    reads[i, r] = values
  blank = int(sum(math.isnan(v) for *_, values in cells for v in values))
  if blank:
    logging.info("VinDr %s: %d empty cells read as unknown (no read)", path, blank)
  layout = PHYSIONET if rad else CONSENSUS
  return Table(path, layout, list(ids), labels, list(readers), reads, {k: [] for k in ids})


def read_table(metadata: str) -> Table:
  """Every read of a VinDr label table (Kaggle's train.csv or PhysioNet's image_labels_*.csv),
  checked cell by cell; a mistake is a ValueError naming the file, line and column."""
  columns, rows = file_source.read_csv(metadata, (ID,))
  if {CLASS, RAD, *BOX} <= set(columns):
    table = _read_kaggle(metadata, rows)
  elif {CLASS, *BOX} & set(columns):
    raise ValueError(
      f"{metadata}: a box table without {RAD!r} (found {columns}); give Kaggle's train.csv, or "
      "PhysioNet's image_labels_*.csv with its annotations_*.csv as config.data.boxes"
    )
  else:
    table = _read_physionet(metadata, columns, rows)
  records.require_rows(metadata, table.ids, "VinDr-CXR's label table")
  return table


def read_boxes(path: str, table: Table) -> None:
  """Adds the boxes of PhysioNet's annotations_{train,test}.csv to table.boxes ('No finding' rows
  have none); a box on an image the label table does not hold is an error (files of two splits)."""
  columns, rows = file_source.read_csv(path, (ID, CLASS, *BOX))
  rad = next((c for c in RAD_SPELLINGS if c in columns), None)
  for n, row in enumerate(rows):
    line = n + 2
    image_id = _image_id(row, path, line)
    if image_id not in table.boxes:
      raise ValueError(
        f"{path} line {line}: image {image_id} is not in {table.path}; config.data.boxes and "
        "config.data.metadata must be files of the same split (train or test)"
      )
    name = row[CLASS].strip()
    if name not in (*LOCAL_LABELS, NO_FINDING):
      raise ValueError(
        f"{path} line {line} ({image_id}): class_name {name!r} is not one of VinDr's box labels "
        f"{list(LOCAL_LABELS)} or {NO_FINDING!r}; fix the row"
      )
    box = _box(row, name, path, line, image_id)
    if box:
      table.boxes[image_id].append([name, *box, row[rad].strip() if rad else ""])


# ------------------------------------------------------------------------------------ the labels


def output_names(data_config) -> tuple[str, ...]:
  """The canonical findings config.data asks for (default DEFAULT_FINDINGS), told without reading
  a file; a name outside the label space is a ValueError listing the canonical names."""
  return label_space.requested_findings(data_config, DEFAULT_FINDINGS)


def _policy(data_config, table: Table) -> str:
  default = CONSENSUS if table.layout == CONSENSUS else "majority"
  policy = file_source.config_get(data_config, "readers", default)
  if policy not in POLICIES:
    raise ValueError(f"config.data.readers={policy!r}; choose one of {list(POLICIES)}")
  if table.layout == CONSENSUS and policy != CONSENSUS:
    raise ValueError(
      f"config.data.readers={policy!r}, but {table.path} holds one consensus row per image (the "
      "readers are not given); use readers='consensus' or leave it unset"
    )
  if table.layout != CONSENSUS and policy == CONSENSUS:
    raise ValueError(
      f"config.data.readers='consensus', but {table.path} holds one row per reader; the "
      "consensus labels are PhysioNet's annotations/image_labels_test.csv (or choose 'majority' "
      "or 'any')"
    )
  return policy


def combine(table: Table, policy: str) -> np.ndarray:
  """float32 [N, L]: the readers' reads of each image and label, combined by `policy`."""
  reads = table.reads
  if policy == CONSENSUS:
    return reads[:, 0].copy()
  if policy == "majority":
    return consensus.majority_vote(reads, tie="unknown")
  known = ~np.isnan(reads)
  count = known.sum(1)
  marked = (reads == 1).sum(1)
  out = np.where(marked > 0, 1.0, 0.0)  # 'any': one reader's mark is enough
  if NO_FINDING in table.labels:  # ... but 'No finding' needs every reader to find nothing
    c = table.labels.index(NO_FINDING)
    out[:, c] = marked[:, c] == count[:, c]
  return np.where(count > 0, out, np.nan).astype(np.float32)


def _source_label(finding: str, labels: Sequence[str]) -> str | None:
  hits = [name for name in labels if TO_CANONICAL.get(name) == finding]
  return hits[0] if hits else None


def canonical_labels(
  values: np.ndarray, labels: Sequence[str], findings: Sequence[str], where: str
) -> np.ndarray:
  """[N, L] values of VinDr labels -> float32 [N, F] of canonical findings (nan: not labelled)."""
  columns = {}
  for finding in findings:
    name = _source_label(finding, labels)
    if name is not None:
      columns[finding] = values[:, list(labels).index(name)]
  return label_space.label_matrix(f"VinDr {where}", values.shape[0], findings, columns)


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  metadata = file_source.require(data_config, "metadata", "vindr")
  findings = output_names(data_config)
  ext = records.extension(data_config, ".dicom", EXTENSIONS)
  table = read_table(metadata)
  policy = _policy(data_config, table)
  boxes = file_source.config_get(data_config, "boxes")
  if boxes and table.layout == KAGGLE:
    raise ValueError(
      f"config.data.boxes is for PhysioNet's annotations_*.csv; {metadata} (Kaggle's train.csv) "
      "holds its own boxes: leave config.data.boxes unset"
    )
  if boxes:
    read_boxes(boxes, table)
  labels = canonical_labels(combine(table, policy), table.labels, findings, metadata)

  root = file_source.require(data_config, "images", "vindr")
  paths = [os.path.join(root, i + ext) for i in table.ids]
  on_error = file_source.config_get(data_config, "on_error", "raise")
  keep = file_source.keep_existing(paths, f"VinDr metadata {metadata}", on_error)
  idx = np.flatnonzero(keep)
  ids = [table.ids[i] for i in idx]
  readers = np.asarray(table.readers)
  read_by = ["|".join(readers[~np.isnan(table.reads[i]).all(1)]) for i in idx]
  return file_source.FileSource(
    [paths[i] for i in idx],
    labels[idx],
    ids,  # no patient id in VinDr: each image is its own patient (FACTS['patient_id'])
    ids,
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="vindr",
    skipped=int((~keep).sum()),
    extra=records.extra(
      len(idx),
      readers=np.asarray(read_by, dtype=str),
      boxes=records.objects([table.boxes[i] for i in ids]),
    ),
  )


# ----------------------------------------------------------------------------- reader agreement


def kappa(reads: np.ndarray) -> float | None:
  """Chance-corrected agreement of the reads [N, R] (1, 0, nan = not read) of one label.

  Two readers in all (whoever read what): Cohen's kappa on the images both read. More readers:
  Fleiss' kappa, which lets a different set of readers read each image (VinDr: 3 of 17), over the
  images read by the most common number (>= 2) of readers. None when no image has two reads."""
  reads = np.asarray(reads, np.float64)
  known = ~np.isnan(reads)
  used = np.flatnonzero(known.any(0))
  if len(used) == 2:
    both = known[:, used].all(1)
    if not both.any():
      return None
    return consensus.cohen_kappa(reads[both, used[0]], reads[both, used[1]])
  count = known.sum(1)
  eligible = count[count >= 2]
  if not eligible.size:
    return None
  values, freq = np.unique(eligible, return_counts=True)
  n = values[np.flatnonzero(freq == freq.max())[-1]]  # the most common count (ties: the larger)
  rows = reads[count == n]
  counts = np.stack([(rows == 0).sum(1), (rows == 1).sum(1)], axis=1)
  return consensus.fleiss_kappa(counts)


def reader_agreement(data_config) -> dict[str, float | None]:
  """{canonical finding: kappa between VinDr's readers} for config.data's findings (None where
  VinDr does not label the finding or no image has two reads), from the label table alone (no
  image is read). The test file holds consensus labels only: a ValueError."""
  metadata = file_source.require(data_config, "metadata", "vindr")
  findings = output_names(data_config)
  table = read_table(metadata)
  if table.layout == CONSENSUS:
    raise ValueError(
      f"{metadata} holds one consensus row per image: there are no readers to compare; give "
      "the per-reader table (Kaggle's train.csv or PhysioNet's image_labels_train.csv)"
    )
  out: dict[str, float | None] = {}
  for finding in findings:
    name = _source_label(finding, table.labels)
    column = table.labels.index(name) if name else None
    out[finding] = None if column is None else kappa(table.reads[:, :, column])
  known = ~np.isnan(table.reads).all(2)
  logging.info(
    "VinDr %s: reader agreement over %d images, %d readers (%s readers per image)",
    metadata,
    len(table.ids),
    len(table.readers),
    sorted(set(known.sum(1).tolist())),
  )
  return out
