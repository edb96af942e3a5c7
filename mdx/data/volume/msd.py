"""Medical Segmentation Decathlon source: imagesTr/, labelsTr/ and (optionally) dataset.json.

Task01 BrainTumour has 4D images [D, H, W, 4]; Task04 Hippocampus has 3D images (one channel).
Segmentation records are
  {'image': float32 [D, H, W, C], 'label': int32 [D, H, W], 'case_id': str,
   'affine': float64 [4, 4], 'spacing': float32 [3]}
and the source offers case_ids() without reading any volume (splits need them).

config.data.on_error: 'raise' (default) or 'skip' cases that cannot be read, whose label is invalid
or whose image holds NaN/Inf (the tasks check every case before training: mdx.data.check).

The source states the facts a planner and a mirror need (TASKS): each Decathlon task's modality
(dataset.json's, else the table's) and whether a left-right mirror keeps its labels true; the
mirror axes are then the voxel axes that run left-right in the first case's affine.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from typing import Any

import numpy as np

from mdx.data.volume import nifti


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  modality: str  # 'CT' or 'MRI': what the planner normalises by (mdx.data.volume.plan)
  # A left-right mirror shows a plausible patient with true labels: a structure or lesion that
  # occurs on either side (a hippocampus crop holds one side's; brain tumours, prostate, lung
  # tumours). Not for organs with a side (liver, spleen, pancreas, heart's left atrium, colon):
  # a mirrored liver is situs inversus. Never another axis: anterior/posterior and up/down carry
  # meaning (the hippocampus' anterior and posterior classes are defined along one).
  mirror_left_right: bool
  labels: tuple[str, ...]  # dataset.json's labels 0..K-1, for a folder that lacks the file


# The Decathlon's ten tasks (Antonelli et al. 2022, Table 1; labels as their dataset.json files
# name them), by the number in their folder name.
TASKS = {
  1: Task("BrainTumour", "MRI", True, ("background", "edema", "non-enhancing tumor", "enhancing")),
  2: Task("Heart", "MRI", False, ("background", "left atrium")),
  3: Task("Liver", "CT", False, ("background", "liver", "cancer")),
  4: Task("Hippocampus", "MRI", True, ("background", "anterior", "posterior")),
  5: Task("Prostate", "MRI", True, ("background", "PZ", "TZ")),
  6: Task("Lung", "CT", True, ("background", "cancer")),
  7: Task("Pancreas", "CT", False, ("background", "pancreas", "cancer")),
  8: Task("HepaticVessel", "CT", False, ("background", "vessel", "tumour")),
  9: Task("Spleen", "CT", False, ("background", "spleen")),
  10: Task("Colon", "CT", False, ("background", "colon cancer primaries")),
}


def task_of(root: str, meta: dict) -> Task | None:
  """The Decathlon task a folder holds: dataset.json's name ('Hippocampus'), else a folder name
  such as Task04_Hippocampus or msd_task04_hippocampus; None when neither tells."""
  names = {t.name.lower(): t for t in TASKS.values()}
  if str(meta.get("name", "")).lower() in names:
    return names[str(meta["name"]).lower()]
  folder = os.path.basename(os.path.normpath(root)).lower()
  match = re.search(r"task0*(\d+)", folder)
  if match and int(match.group(1)) in TASKS:
    return TASKS[int(match.group(1))]
  return next((t for name, t in names.items() if name in folder), None)


def left_right_axes(affine: np.ndarray) -> tuple[int, ...]:
  """The voxel axes of [D, H, W] that run left-right under `affine` (nibabel's orientation)."""
  import nibabel as nib

  return tuple(i for i, code in enumerate(nib.aff2axcodes(affine)) if code in ("L", "R"))


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
    self.task = task_of(root, meta)
    if class_names is None and self.task is not None:  # a folder without dataset.json
      class_names = self.task.labels
    self.class_names = tuple(class_names) if class_names is not None else None
    modality = meta.get("modality") or {}
    self._modality = [str(modality[k]) for k in sorted(modality, key=int)] if modality else None
    self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

  @property
  def label_values(self) -> tuple[int, ...]:
    """A label file holds the class index itself (dataset.json's labels are 0..K-1)."""
    return tuple(range(len(self.class_names or ())))

  @property
  def modality(self) -> str | None:
    """'CT', 'MRI' or another name of the first channel (dataset.json's, else the task table's);
    None when neither tells (config.data.modality must then say)."""
    if self._modality:
      return "CT" if self._modality[0].upper() == "CT" else self._modality[0]
    return self.task.modality if self.task else None

  def mirror_axes(self) -> tuple[int, ...] | None:
    """The axes a mirror may flip (training and test-time mirroring): the left-right axes of the
    first case when the task allows a left-right mirror, () when it does not, None when the task
    is unknown (config.data.flip_axes must then say)."""
    if self.task is None:
      return None
    if not self.task.mirror_left_right:
      return ()
    return left_right_axes(nifti.load_nifti(self._images[0], np.float32).affine)

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
