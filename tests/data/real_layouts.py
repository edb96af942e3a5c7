"""Writers of fixtures in the real layouts: NIH Data_Entry + images_00x/, CheXpert train.csv, class
folders."""

import csv
import os

import numpy as np
from PIL import Image


def write_png(path, size=(20, 24), value=None, seed=0, bits=8):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  if bits == 16:
    arr = (
      rng.integers(0, 65536, size, dtype=np.uint16)
      if value is None
      else np.full(size, value, np.uint16)
    )
    Image.fromarray(arr).save(path)
  else:
    arr = (
      rng.integers(0, 256, size, dtype=np.uint8)
      if value is None
      else np.full(size, value, np.uint8)
    )
    Image.fromarray(arr).save(path)
  return arr


def write_csv(path, columns, rows):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(columns)
    w.writerows(rows)


NIH_COLUMNS = [
  "Image Index",
  "Finding Labels",
  "Follow-up #",
  "Patient ID",
  "Patient Age",
  "Patient Gender",
  "View Position",
]


def make_nih_dir(tmp_path):
  """6 images of 3 patients split over images_001/images and images_002/images (Kaggle layout)."""
  rows = [
    ("00000001_000.png", "Cardiomegaly", 0, 1, 50, "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Effusion", 1, 1, 51, "M", "AP"),
    ("00000002_000.png", "No Finding", 0, 2, 40, "F", "PA"),
    ("00000003_000.png", "Mass", 0, 3, 30, "F", "PA"),
    ("00000003_001.png", "No Finding", 1, 3, 31, "F", "PA"),
    ("00000003_002.png", "Hernia|Mass", 2, 3, 32, "F", "AP"),
  ]
  for i, r in enumerate(rows):
    sub = "images_001" if i < 3 else "images_002"
    write_png(str(tmp_path / sub / "images" / r[0]), value=10 * i)
  write_csv(str(tmp_path / "Data_Entry_2017.csv"), NIH_COLUMNS, rows)
  return tmp_path


# --- many patients in the real layouts, for a patient-level split (tests/train/test_multi_dataset)


def _noise(rng, size=(16, 16)):
  return rng.integers(0, 4096, size).astype(np.uint16)


def write_nih_patients(root, n_patients=30, seed=0):
  """NIH Data_Entry_2017.csv and images_001/images/ PNGs: n_patients patients of 1-2 films each,
  Effusion and Cardiomegaly common (each ~half the films), one more of the 14 on some films.
  Returns (metadata, images folder)."""
  from mdx.data.cxr.findings import NIH_FINDINGS

  rng = np.random.default_rng(seed)
  rows = []
  for p in range(1, n_patients + 1):
    for k in range(1 + p % 2):
      found = [f for f in ("Effusion", "Cardiomegaly") if rng.random() < 0.5]
      if rng.random() < 0.3:
        found.append(str(rng.choice(NIH_FINDINGS)))
      labels = "|".join(dict.fromkeys(found)) or "No Finding"
      rows.append((f"{p:08d}_{k:03d}.png", labels, k, p, 40 + p, "MF"[p % 2], "PA"))
  for i, r in enumerate(rows):
    write_png(os.path.join(str(root), "images_001", "images", r[0]), size=(16, 16), seed=seed + i)
  write_csv(os.path.join(str(root), "Data_Entry_2017.csv"), NIH_COLUMNS, rows)
  return os.path.join(str(root), "Data_Entry_2017.csv"), str(root)


def write_rsna_films(root, n_films=30, seed=0):
  """RSNA stage_2_train_labels.csv (one row per box; Target 0 rows without a box),
  stage_2_detailed_class_info.csv (a class per row) and stage_2_train_images/<patientId>.dcm:
  films cycle through Lung Opacity (1-2 boxes), Normal and No Lung Opacity / Not Normal.
  patientId is per film. Returns {'metadata', 'classes', 'images'}."""
  from fixture_files import write_dicom

  rng = np.random.default_rng(seed)
  images = os.path.join(str(root), "stage_2_train_images")
  os.makedirs(images, exist_ok=True)
  labels, classes = [], []
  kinds = ("Lung Opacity", "Normal", "No Lung Opacity / Not Normal")
  for i in range(n_films):
    pid = f"{seed:04x}{i:04x}-0000-4000-8000-{i:012x}"
    kind = kinds[i % 3]
    boxes = [(100 + 10 * b, 200, 150, 180) for b in range(1 + i % 2)] if i % 3 == 0 else [None]
    for box in boxes:
      labels.append((pid, *(box or ("", "", "", "")), 1 if box else 0))
      classes.append((pid, kind))
    write_dicom(os.path.join(images, pid + ".dcm"), _noise(rng))
  write_csv(
    os.path.join(str(root), "stage_2_train_labels.csv"),
    ["patientId", "x", "y", "width", "height", "Target"],
    labels,
  )
  write_csv(
    os.path.join(str(root), "stage_2_detailed_class_info.csv"), ["patientId", "class"], classes
  )
  return {
    "metadata": os.path.join(str(root), "stage_2_train_labels.csv"),
    "classes": os.path.join(str(root), "stage_2_detailed_class_info.csv"),
    "images": images,
  }


def write_siim_images(root, n_patients=20, seed=0):
  """SIIM train-rle.csv ('ImageId, EncodedPixels', '-1' for none, one row per region) and
  dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm whose headers carry PatientID
  (every third patient has two films): pneumothorax on about half the films. Returns
  {'metadata', 'images'}."""
  import pydicom
  from fixture_files import write_dicom

  rng = np.random.default_rng(seed)
  images = os.path.join(str(root), "dicom-images-train")
  rows = []
  settings = pydicom.config.settings
  modes = settings.reading_validation_mode, settings.writing_validation_mode
  settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
  try:
    n = 0
    for p in range(n_patients):
      for _ in range(2 if p % 3 == 0 else 1):
        uid = f"1.2.276.0.7230010.3.1.4.{seed}.{n}.1517875201.{p}"
        study, series = f"1.2.276.0.7230010.3.1.2.{seed}.{n}", f"1.2.276.0.7230010.3.1.3.{seed}.{n}"
        path = os.path.join(images, study, series, uid + ".dcm")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_dicom(path, _noise(rng))
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientSex, ds.PatientAge = f"siim-{p:03d}", "MF"[p % 2], str(30 + p)
        ds.ViewPosition, ds.StudyInstanceUID = "PA", study
        ds.save_as(path)
        if rng.random() < 0.5:
          rows += [(uid, f" {1000 + 3000 * r} {20 + r}") for r in range(1 + n % 2)]
        else:
          rows.append((uid, " -1"))
        n += 1
  finally:
    settings.reading_validation_mode, settings.writing_validation_mode = modes
  write_csv(os.path.join(str(root), "train-rle.csv"), ["ImageId", " EncodedPixels"], rows)
  return {"metadata": os.path.join(str(root), "train-rle.csv"), "images": images}
