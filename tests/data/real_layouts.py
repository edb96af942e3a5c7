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
