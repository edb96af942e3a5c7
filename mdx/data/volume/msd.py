"""Medical Segmentation Decathlon source: imagesTr/, labelsTr/ and (optionally) dataset.json.

Task01 BrainTumour has 4D images [D, H, W, 4]; Task04 Hippocampus has 3D images (one channel).
Segmentation records are
  {'image': float32 [D, H, W, C], 'label': int32 [D, H, W], 'case_id': str,
   'affine': float64 [4, 4], 'spacing': float32 [3]}
and the source offers case_ids() without reading any volume (splits need them).

config.data.on_error: 'raise' (default) or 'skip' cases that cannot be read, whose label is invalid
or whose image holds NaN/Inf (the tasks check every case before training: mdx.data.check).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import numpy as np

from mdx.data.volume import nifti


class MSDSource:
  """Random access to the cases of one MSD task folder."""

  label_mode = "classes"  # MSD labels are exclusive classes (softmax)

  def __init__(
    self,
    root: str,
    class_names: tuple[str, ...] | None = None,
    num_channels: int | None = None,
    cache: bool = False,
  ):
    if not os.path.isdir(root):
      raise FileNotFoundError(
        f"MSD folder {root} does not exist; set --config.data.root to a folder "
        "holding imagesTr/ and labelsTr/"
      )
    self.root = root
    meta_path = os.path.join(root, "dataset.json")
    meta = {}
    if os.path.isfile(meta_path):
      try:
        with open(meta_path) as f:
          meta = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path} is not valid JSON ({e})") from e
    if meta.get("training"):
      pairs = [
        (
          os.path.normpath(os.path.join(root, t["image"])),
          os.path.normpath(os.path.join(root, t["label"])),
        )
        for t in meta["training"]
      ]
    else:
      image_dir = os.path.join(root, "imagesTr")
      if not os.path.isdir(image_dir):
        raise FileNotFoundError(
          f"{image_dir} does not exist; an MSD folder holds imagesTr/ and labelsTr/"
        )
      names = sorted(n for n in os.listdir(image_dir) if nifti.is_nifti(n))
      pairs = [(os.path.join(image_dir, n), os.path.join(root, "labelsTr", n)) for n in names]
    if not pairs:
      raise ValueError(f"no NIfTI cases found under {root}/imagesTr")
    self._images = [p[0] for p in pairs]
    self._labels = [p[1] for p in pairs]
    self._case_ids = [nifti.strip_suffix(p[0]) for p in pairs]
    if "modality" in meta and num_channels is None:
      num_channels = len(meta["modality"])
    self.num_channels = num_channels
    if class_names is None and "labels" in meta:
      labels = meta["labels"]
      class_names = tuple(labels[k] for k in sorted(labels, key=int))
    self.class_names = tuple(class_names) if class_names is not None else None
    self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

  @property
  def label_values(self) -> tuple[int, ...]:
    """A label file holds the class index itself (dataset.json's labels are 0..K-1)."""
    return tuple(range(len(self.class_names or ())))

  def __len__(self) -> int:
    return len(self._images)

  def case_ids(self) -> np.ndarray:
    return np.asarray(self._case_ids)

  def patient_ids(self) -> np.ndarray:
    """One case per patient in MSD: the case id is the patient id for splitting."""
    return self.case_ids()

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if self._cache is not None and index in self._cache:
      return dict(self._cache[index])
    record = self.read_record(index)
    if self._cache is not None:
      self._cache[index] = record
    return dict(record)

  # --- for mdx.data.check (every case verified before training) ---

  def record_files(self, index: int) -> tuple[str, str]:
    return self._images[index], self._labels[index]

  def record_name(self, index: int) -> str:
    return self._case_ids[index]

  def select(self, indices) -> MSDSource:
    """The cases at `indices` (an empty in-memory cache)."""
    out = copy.copy(self)
    indices = [int(i) for i in indices]
    out._images = [self._images[i] for i in indices]
    out._labels = [self._labels[i] for i in indices]
    out._case_ids = [self._case_ids[i] for i in indices]
    out._cache = {} if self._cache is not None else None
    return out

  def read_record(self, index: int) -> dict[str, Any]:
    """Case `index` read from its files (never from or into the in-memory cache)."""
    index = int(index)
    case = self._case_ids[index]
    image = nifti.load_nifti(self._images[index], np.float32, case)
    label = nifti.load_nifti(self._labels[index], np.float32, case)
    if label.data.ndim != 3:
      raise ValueError(
        f"case {case!r}: label {self._labels[index]} has shape {label.data.shape}; "
        "expected a 3D label map [D, H, W]"
      )
    lab = label.data
    if np.any(lab != np.round(lab)) or lab.min() < 0:
      raise ValueError(
        f"case {case!r}: label {self._labels[index]} holds non-integer or negative values"
      )
    lab = lab.astype(np.int32)
    if self.class_names is not None and lab.max() >= len(self.class_names):
      raise ValueError(
        f"case {case!r}: label {self._labels[index]} holds class {int(lab.max())} but the "
        f"dataset has {len(self.class_names)} classes {self.class_names}"
      )
    img = nifti.check_pair(
      case, image.data, lab, self.num_channels, self._images[index], self._labels[index]
    )
    return {
      "image": img,
      "label": lab,
      "case_id": case,
      "affine": image.affine,
      "spacing": image.spacing,
    }
