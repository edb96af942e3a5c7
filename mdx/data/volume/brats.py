"""BraTS 2018-2021 source: one folder per case with _flair, _t1, _t1ce, _t2 and _seg NIfTI files.

BraTS labels are 0 background, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour.
label_mode decides what the model learns:
  'classes': mutually exclusive classes 0..3 (4 -> 3), label int32 [D, H, W], softmax; a label
             map writes class k as label_values(mode)[k] (3 -> 4 again).
  'regions': the three nested evaluation regions, label uint8 [D, H, W, 3], sigmoid:
             whole tumour (1, 2, 4), tumour core (1, 4), enhancing tumour (4).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np

from mdx.data.volume import nifti

MODALITIES = ("flair", "t1", "t1ce", "t2")
RAW_LABELS = (0, 1, 2, 4)
CLASS_NAMES = ("background", "necrotic_core", "edema", "enhancing")
REGION_NAMES = ("whole_tumour", "tumour_core", "enhancing_tumour")
LABEL_MODES = ("classes", "regions")


def convert_labels(seg: np.ndarray, label_mode: str, case: str = "?") -> np.ndarray:
  """Raw BraTS labels {0, 1, 2, 4} -> classes [D, H, W] int32 or regions [D, H, W, 3] uint8."""
  if label_mode not in LABEL_MODES:
    raise ValueError(f"config.data.label_mode={label_mode!r}; choose one of {LABEL_MODES}")
  seg = np.asarray(seg)
  bad = np.setdiff1d(np.unique(seg), RAW_LABELS)
  if bad.size:
    raise ValueError(
      f"case {case!r}: segmentation holds labels {bad.tolist()}; BraTS 2018-2021 uses {RAW_LABELS}"
    )
  seg = seg.astype(np.int32)
  if label_mode == "classes":
    return np.where(seg == 4, 3, seg).astype(np.int32)
  wt = seg > 0
  tc = (seg == 1) | (seg == 4)
  et = seg == 4
  return np.stack([wt, tc, et], -1).astype(np.uint8)


def output_names(label_mode: str) -> tuple[str, ...]:
  return CLASS_NAMES if label_mode == "classes" else REGION_NAMES


def label_values(label_mode: str) -> tuple[int, ...]:
  """The value a label file holds for each output index: the raw BraTS labels of the classes;
  regions are written by their index (mdx.inference.segmenter.regions_to_labels turns region
  maps into BraTS labels)."""
  return RAW_LABELS if label_mode == "classes" else tuple(range(len(REGION_NAMES)))


def _find(case_dir: str, case: str, suffix: str) -> str:
  for ext in nifti.NIFTI_SUFFIXES:
    path = os.path.join(case_dir, f"{case}_{suffix}{ext}")
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
    f"case {case!r}: no {case}_{suffix}.nii.gz (or .nii) in {case_dir}; a BraTS "
    f"case folder holds _flair, _t1, _t1ce, _t2 and _seg files"
  )


class BraTSSource:
  """Random access to BraTS cases; the channel order is MODALITIES."""

  def __init__(self, root: str, label_mode: str = "regions", require_labels: bool = True):
    if label_mode not in LABEL_MODES:
      raise ValueError(f"config.data.label_mode={label_mode!r}; choose one of {LABEL_MODES}")
    if not os.path.isdir(root):
      raise FileNotFoundError(f"BraTS folder {root} does not exist; set --config.data.root")
    self.root = root
    self.label_mode = label_mode
    self.require_labels = require_labels
    self._case_ids = sorted(
      n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)) and not n.startswith(".")
    )
    if not self._case_ids:
      raise ValueError(f"no case folders under {root}")
    self.class_names = output_names(label_mode)
    self.label_values = label_values(label_mode)
    self.num_channels = len(MODALITIES)

  def __len__(self) -> int:
    return len(self._case_ids)

  def case_ids(self) -> np.ndarray:
    return np.asarray(self._case_ids)

  def patient_ids(self) -> np.ndarray:
    return self.case_ids()

  # --- for mdx.data.check (every case verified before training) ---

  def record_files(self, index: int) -> tuple[str, ...]:
    """Every file of the case folder (a changed or added modality invalidates the check)."""
    case_dir = os.path.join(self.root, self._case_ids[int(index)])
    return tuple(
      os.path.join(case_dir, n) for n in sorted(os.listdir(case_dir)) if not n.startswith(".")
    )

  def record_name(self, index: int) -> str:
    return self._case_ids[int(index)]

  def select(self, indices) -> BraTSSource:
    out = copy.copy(self)
    out._case_ids = [self._case_ids[int(i)] for i in indices]
    return out

  def __getitem__(self, index: int) -> dict[str, Any]:
    case = self._case_ids[int(index)]
    case_dir = os.path.join(self.root, case)
    channels, first = [], None
    for m in MODALITIES:
      path = _find(case_dir, case, m)
      vol = nifti.load_nifti(path, np.float32, case)
      if vol.data.ndim != 3:
        raise ValueError(
          f"case {case!r}: {path} has shape {vol.data.shape}; expected one 3D modality"
        )
      if first is None:
        first = (vol, path)
      elif vol.data.shape != first[0].data.shape:
        raise ValueError(
          f"case {case!r}: {path} has shape {vol.data.shape} but {first[1]} has "
          f"{first[0].data.shape}; all modalities must be co-registered"
        )
      channels.append(vol.data)
    image = np.stack(channels, -1)
    record = {
      "image": image,
      "case_id": case,
      "affine": first[0].affine,
      "spacing": first[0].spacing,
    }
    if self.require_labels:
      seg_path = _find(case_dir, case, "seg")
      seg = nifti.load_nifti(seg_path, np.float32, case).data
      if seg.ndim != 3:
        raise ValueError(f"case {case!r}: {seg_path} has shape {seg.shape}; expected [D, H, W]")
      nifti.check_pair(case, image, seg, len(MODALITIES), first[1], seg_path)
      record["label"] = convert_labels(seg, self.label_mode, case)
    return record
