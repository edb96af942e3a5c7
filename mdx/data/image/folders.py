"""Folder-per-class datasets (e.g. NORMAL/ and PNEUMONIA/) with the patient id from the file name.

config.data fields (source='folders'):
  root: folder with one subfolder per class (nested subfolders such as train/ test/ are NOT
    merged: point root at the folder that holds the class folders).
  classes: class folder names (default: all subfolders, sorted).
  negative_class: a class that means "no finding" (e.g. 'NORMAL'): its images get all-zero labels
    and the findings are the other classes; without it, findings are all classes (one-hot).
  patient_regex: a regex searched in the file name; its group 'patient' (or group 1, or the whole
    match) is the patient id. Default: the file name without its extension (one image per patient).
  extensions: image file endings (default .png .jpg .jpeg .dcm).
  channels, on_error ('skip' counts and skips files whose name the regex does not match, and the
    tasks files that cannot be decoded: mdx.data.check).
"""

from __future__ import annotations

import os
import re

import numpy as np
from absl import logging

from mdx.data.image import file_source

EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def patient_id(file_name: str, pattern: re.Pattern | None) -> str | None:
  stem = os.path.splitext(file_name)[0]
  if pattern is None:
    return stem
  m = pattern.search(file_name)
  if not m:
    return None
  if "patient" in pattern.groupindex:
    return m.group("patient")
  return m.group(1) if pattern.groups else m.group(0)


def output_names(data_config) -> tuple[str, ...] | None:
  """The findings of config.data.classes without the negative class; None when data.classes is
  not set (the class folders are found by listing data.root: the built source tells)."""
  classes = file_source.config_get(data_config, "classes", [])
  if not classes:
    return None
  negative = file_source.config_get(data_config, "negative_class")
  return tuple(c for c in classes if c != negative)


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  root = file_source.require(data_config, "root", "folders")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config.data.root={root} is not a folder")
  classes = list(
    file_source.config_get(data_config, "classes", [])
    or sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  )
  if not classes:
    raise ValueError(f"{root} has no class subfolders")
  for c in classes:
    if not os.path.isdir(os.path.join(root, c)):
      raise FileNotFoundError(
        f"class folder {os.path.join(root, c)} does not exist (config.data.classes={classes})"
      )
  negative = file_source.config_get(data_config, "negative_class")
  if negative is not None and negative not in classes:
    raise ValueError(f"config.data.negative_class={negative!r} is not one of the classes {classes}")
  findings = [c for c in classes if c != negative]
  regex = file_source.config_get(data_config, "patient_regex")
  pattern = re.compile(regex) if regex else None
  exts = tuple(e.lower() for e in file_source.config_get(data_config, "extensions", EXTENSIONS))
  on_error = file_source.config_get(data_config, "on_error", "raise")
  paths, labels, patients, ids, unmatched = [], [], [], [], []
  for c in classes:
    for name in sorted(os.listdir(os.path.join(root, c))):
      if not name.lower().endswith(exts):
        continue
      pid = patient_id(name, pattern)
      if pid is None:
        unmatched.append(f"{c}/{name}")
        continue
      paths.append(os.path.join(root, c, name))
      row = np.zeros(len(findings), np.float32)
      if c != negative:
        row[findings.index(c)] = 1.0
      labels.append(row)
      patients.append(pid)
      ids.append(f"{c}/{name}")
  if unmatched:
    msg = (
      f"{len(unmatched)} files in {root} do not match config.data.patient_regex={regex!r}, "
      f"e.g. {unmatched[:3]}"
    )
    if on_error != "skip":
      raise ValueError(msg + "; fix the regex or set config.data.on_error='skip'")
    logging.warning("skipped %s", msg)
  return file_source.FileSource(
    paths,
    np.asarray(labels, np.float32).reshape(-1, len(findings)),
    patients,
    ids,
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="folders",
    skipped=len(unmatched),
  )
