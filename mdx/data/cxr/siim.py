"""SIIM-ACR Pneumothorax (2019 challenge) as it comes: train-rle.csv and nested DICOM folders.

config.data fields (source='siim'):
  metadata: train-rle.csv (columns 'ImageId' and ' EncodedPixels' with the leading space, exactly
    as distributed; the stage-2 spelling 'EncodedPixels' is accepted too). One row per pneumothorax
    region, several rows for several regions; '-1' (or ' -1') for an image without pneumothorax.
  images: dicom-images-train/, holding <study>/<series>/<SOPInstanceUID>.dcm: walked once, and a
    file is matched to its row by its name (the SOP instance UID is the ImageId). Walking takes
    about 20 ms per 1000 files with the folders in the OS cache and 0.25 s per 1000 the first
    time (measured on a 12,000-file tree of the same depth on a local SSD; a network file system
    or a cold disk is slower).
  findings: canonical finding names (mdx.data.cxr.findings.CANONICAL) to predict; default
    ('Pneumothorax',), the one finding SIIM labels. Any other is a column of nan (unknown).
  patient_id: where the patient id comes from: 'header' (default) reads PatientID and, with it,
    PatientSex, PatientAge, ViewPosition and StudyInstanceUID from every DICOM header (not the
    pixels) when the source is built, about 0.4 to 0.6 s per 1000 files (measured as above): the
    table has no patient column and patient-level splits need every id before any image is read.
    'image_id' takes each image as its own patient and reads no header (sex, age, view and study
    left unknown).
  channels, on_error: as for NIH ('skip' also drops files whose header cannot be read;
    'unchecked', the table without the films, needs patient_id='image_id'). A film without pixel
    data is named by the record check (mdx.data.check) before training.

The masks stay with the source: source.extra['rle'] holds each image's regions (relative RLE
strings joined by ';', '' without pneumothorax) and mask(source, index) decodes their union,
through select() and splits alike. The RLE is the challenge's relative, column-major encoding
(rle_decode, rle_encode; the challenge's mask_functions.py). Prepared records
(config.data.prepared_dir) keep labels and ids only, not the masks.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from mdx.data.cxr import dicom_headers, label_space, records
from mdx.data.image import file_source

IMAGE = "ImageId"
RLE_COLUMNS = (" EncodedPixels", "EncodedPixels")  # stage 1 (as distributed), stage 2
NEGATIVE = "-1"
SIZE = (1024, 1024)  # every SIIM film is 1024 x 1024; the RLE counts pixels of that grid
PATIENT_POLICIES = ("header", "image_id")

# SIIM's one label: a pneumothorax region drawn on the film (a row with an RLE mask), or '-1'.
TO_CANONICAL: dict[str, str | None] = {
  # The challenge's target is pneumothorax itself (air in the pleural space), NIH's definition.
  "Pneumothorax": "Pneumothorax",
}
DEFAULT_FINDINGS = ("Pneumothorax",)

FACTS = {
  "modality": (
    "frontal chest radiographs (PA and AP) from NIH ChestX-ray14, as 1024x1024 DICOM "
    "(SIIM-ACR Pneumothorax Segmentation 2019)"
  ),
  "label_source": (
    "pneumothorax regions drawn by radiologists for the SIIM-ACR challenge (image label: any "
    "region drawn)"
  ),
  "label_values": (
    "a row with a run-length-encoded mask is a pneumothorax region (Pneumothorax 1); '-1' means "
    "no pneumothorax (0); no other finding is labelled (unknown)"
  ),
}


# ------------------------------------------------------------------------------------------ RLE
# The challenge's encoding (mask_functions.py, rle2mask / mask2rle): pairs 'gap length', where the
# first gap counts pixels from the start of the image and every later one from the end of the
# previous run; pixels are counted down each column, columns left to right (column-major over the
# [height, width] image: pixel (row y, column x) is number x * height + y).


def _rle_values(rle: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(run starts, run ends) as absolute column-major pixel numbers; ValueError saying why."""
  try:
    values = np.array(rle.split(), dtype=np.int64)
  except ValueError:
    raise ValueError(f"not whole numbers: {rle[:40]!r}") from None
  if values.size % 2:
    raise ValueError(f"{values.size} numbers; an RLE is pairs 'gap length'")
  gaps, lengths = values[0::2], values[1::2]
  if (gaps < 0).any() or (lengths <= 0).any():
    raise ValueError("a negative gap or a run length below 1")
  ends = np.cumsum(gaps + lengths)
  starts = ends - lengths
  if ends.size and ends[-1] > height * width:
    raise ValueError(
      f"the runs reach pixel {int(ends[-1])}, past the {height}x{width} image ({height * width} "
      "pixels); the challenge's RLE is relative (each gap counts from the end of the previous "
      "run), not absolute"
    )
  return starts, ends


def rle_decode(rle: str, height: int = SIZE[0], width: int = SIZE[1]) -> np.ndarray:
  """One relative, column-major RLE string -> uint8 mask [height, width] of 0 and 1.

  '-1' and '' are the empty mask. A malformed string is a ValueError saying what is wrong."""
  text = rle.strip()
  if text in ("", NEGATIVE):
    return np.zeros((height, width), np.uint8)
  starts, ends = _rle_values(text, height, width)
  edges = np.zeros(height * width + 1, np.int32)
  np.add.at(edges, starts, 1)
  np.add.at(edges, ends, -1)
  flat = (np.cumsum(edges[:-1]) > 0).astype(np.uint8)
  return flat.reshape((height, width), order="F")


def rle_encode(mask: np.ndarray) -> str:
  """A mask [height, width] (nonzero = region) -> the challenge's relative, column-major RLE;
  '-1' for an empty mask."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"rle_encode takes a 2D mask [height, width], got shape {mask.shape}")
  flat = np.concatenate([[0], (mask != 0).ravel(order="F").astype(np.int8), [0]])
  edges = np.flatnonzero(np.diff(flat))
  if not edges.size:
    return NEGATIVE
  starts, ends = edges[0::2], edges[1::2]
  gaps = starts - np.concatenate([[0], ends[:-1]])
  pairs = np.stack([gaps, ends - starts], axis=1).ravel()
  return " ".join(str(int(v)) for v in pairs)


def mask(source, index: int, shape: tuple[int, int] = SIZE) -> np.ndarray:
  """uint8 [height, width]: the union of the pneumothorax regions of record `index` of a SIIM
  source (or of any selection of one), 1 inside a region, 0 elsewhere and for '-1' images."""
  out = np.zeros(shape, np.uint8)
  for rle in str(source.extra["rle"][int(index)]).split(";"):
    if rle.strip():
      out |= rle_decode(rle, *shape)
  return out


# ------------------------------------------------------------------------------------ the source


def output_names(data_config) -> tuple[str, ...]:
  """The canonical findings config.data asks for (default: Pneumothorax, the one SIIM labels),
  told without reading a file; a name outside the label space is a ValueError listing it."""
  return label_space.requested_findings(data_config, DEFAULT_FINDINGS)


def index_dicoms(folder: str) -> dict[str, str]:
  """SOP instance UID (the file name without .dcm) -> path, for every .dcm below folder."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(
      f"SIIM image folder {folder} does not exist (config.data.images: dicom-images-train/)"
    )
  start = time.perf_counter()
  found: dict[str, str] = {}
  stack = [folder]
  while stack:
    with os.scandir(stack.pop()) as it:
      for entry in it:
        if entry.is_dir(follow_symlinks=False):
          stack.append(entry.path)
        elif entry.name.lower().endswith(".dcm"):
          uid = entry.name[:-4]
          if uid in found:
            raise ValueError(
              f"two DICOM files for image {uid}: {found[uid]} and {entry.path}; keep one "
              "(config.data.images should hold one copy of dicom-images-train/)"
            )
          found[uid] = entry.path
  logging.info(
    "SIIM: indexed %d DICOM files under %s in %.2f s",
    len(found),
    folder,
    time.perf_counter() - start,
  )
  return found


HEADER_TAGS = ("PatientID", "PatientSex", "PatientAge", "ViewPosition", "StudyInstanceUID")


def read_table(metadata: str) -> tuple[list[str], dict[str, list[str]]]:
  """(image ids in the order of first appearance, image id -> its RLE regions) of train-rle.csv;
  every RLE checked (whole numbers in pairs, inside the 1024x1024 image) before any image is
  read."""
  columns, rows = file_source.read_csv(metadata, (IMAGE,))
  rle_column = next((c for c in RLE_COLUMNS if c in columns), None)
  if rle_column is None:
    raise ValueError(
      f"{metadata}: no ' EncodedPixels' column (found {columns}); SIIM's train-rle.csv has "
      "'ImageId, EncodedPixels'"
    )
  records.require_rows(metadata, rows, "SIIM's train-rle.csv")
  order: list[str] = []
  regions: dict[str, list[str]] = {}
  negative: dict[str, int] = {}
  for r, row in enumerate(rows):
    line = r + 2
    image_id = row[IMAGE].strip()
    if not image_id:
      raise ValueError(f"{metadata} line {line}: empty {IMAGE!r}; fill it in or remove the row")
    cell = row[rle_column].strip()
    if image_id not in regions:
      order.append(image_id)
      regions[image_id] = []
    if cell == NEGATIVE:
      negative[image_id] = line
    elif not cell:
      raise ValueError(
        f"{metadata} line {line} ({image_id}): empty {rle_column!r}; write -1 for an image "
        "without pneumothorax"
      )
    else:
      try:
        _rle_values(cell, *SIZE)
      except ValueError as e:
        raise ValueError(
          f"{metadata} line {line} ({image_id}) column {rle_column!r}: not a SIIM run-length "
          f"encoding ({e}); fix or remove the row"
        ) from None
      regions[image_id].append(cell)
    if image_id in negative and regions[image_id]:
      raise ValueError(
        f"{metadata} line {line} ({image_id}): the image has both '-1' (no pneumothorax, line "
        f"{negative[image_id]}) and a pneumothorax mask; remove the wrong row"
      )
  return order, regions


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  metadata = file_source.require(data_config, "metadata", "siim")
  findings = output_names(data_config)
  policy = file_source.config_get(data_config, "patient_id", "header")
  if policy not in PATIENT_POLICIES:
    raise ValueError(f"config.data.patient_id={policy!r}; choose one of {list(PATIENT_POLICIES)}")
  on_error = file_source.config_get(data_config, "on_error", "raise")
  if policy == "header":
    dicom_headers.refuse_unchecked(
      on_error,
      "SIIM",
      "its patients, studies, views, sex and age are in those headers; set "
      "config.data.patient_id='image_id' to take each image as its own patient",
    )
  ids, regions = read_table(metadata)

  folder = file_source.require(data_config, "images", "siim")
  index = index_dicoms(folder)
  paths = [index.get(i, os.path.join(folder, i + ".dcm")) for i in ids]
  keep = file_source.keep_existing(paths, f"SIIM metadata {metadata}", on_error)
  idx = np.flatnonzero(keep)
  skipped = int((~keep).sum())

  n = len(idx)
  patients = [ids[i] for i in idx]
  study, view, sex = [""] * n, [""] * n, [""] * n
  age = np.full(n, np.nan, np.float32)
  if policy == "header":
    headers, bad = dicom_headers.read([paths[i] for i in idx], HEADER_TAGS, on_error, "SIIM")
    for j, head in enumerate(headers):
      if head is None:
        continue
      if not head["PatientID"]:
        raise ValueError(
          f"{paths[idx[j]]}: the DICOM header has no PatientID; set "
          "config.data.patient_id='image_id' to take each image as its own patient"
        )
      patients[j] = head["PatientID"]
      study[j], view[j], sex[j] = head["StudyInstanceUID"], head["ViewPosition"], head["PatientSex"]
      age[j] = dicom_headers.age_years(head["PatientAge"])
    if bad:
      good = np.array([h is not None for h in headers])
      idx, skipped = idx[good], skipped + bad
      patients, study, view, sex = (
        [v[j] for j in np.flatnonzero(good)] for v in (patients, study, view, sex)
      )
      age = age[good]

  drawn = np.array([bool(regions[ids[i]]) for i in idx], np.float32)
  labels = label_space.label_matrix("SIIM", len(idx), findings, {"Pneumothorax": drawn})
  return file_source.FileSource(
    [paths[i] for i in idx],
    labels,
    patients,
    [ids[i] for i in idx],
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="siim",
    skipped=skipped,
    extra=records.extra(
      len(idx),
      study_id=study,
      view=view,
      sex=sex,
      age=age,
      rle=records.objects([";".join(regions[ids[i]]) for i in idx]),
    ),
  )
