"""NIfTI in and out with errors that name the case.

Arrays keep nibabel's voxel order (i, j, k[, channel]); mdx calls these axes (D, H, W[, C]). The
affine and the voxel spacing travel with every volume so that a predicted label map can be written
back in the scanner space of its input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Volume:
  data: np.ndarray  # [D, H, W] or [D, H, W, C]
  affine: np.ndarray  # float64 [4, 4]
  spacing: np.ndarray  # float32 [3], millimetres along D, H, W


def is_nifti(path: str) -> bool:
  name = os.path.basename(path)
  return name.endswith(NIFTI_SUFFIXES) and not name.startswith(".")


def strip_suffix(name: str) -> str:
  """'case_001.nii.gz' -> 'case_001'."""
  name = os.path.basename(name)
  for suffix in NIFTI_SUFFIXES:
    if name.endswith(suffix):
      return name[: -len(suffix)]
  return name


def load_nifti(path: str, dtype=np.float32, case: str | None = None) -> Volume:
  """Reads a NIfTI file fully (so truncation is caught here, not deep in a worker)."""
  what = f"case {case!r}: " if case else ""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}NIfTI file {path} does not exist")
  try:
    img = nib.load(path)
    data = np.asarray(img.dataobj)
  except Exception as e:  # nibabel raises many types for damaged files (EOFError, zlib, OSError)
    raise ValueError(
      f"{what}cannot read NIfTI file {path} ({type(e).__name__}: {e}); the file is "
      "truncated or damaged: download or convert it again"
    ) from e
  if data.ndim not in (3, 4):
    raise ValueError(
      f"{what}NIfTI file {path} has shape {data.shape}; expected a 3D volume "
      "[D, H, W] or a 4D multi-channel volume [D, H, W, C]"
    )
  zooms = np.asarray(img.header.get_zooms()[:3], np.float32)
  return Volume(data.astype(dtype, copy=False), np.asarray(img.affine, np.float64), zooms)


def save_nifti(path: str, data: np.ndarray, affine: np.ndarray, dtype=np.uint8) -> None:
  """Writes data with the given affine (a label map: uint8 by default)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img = nib.Nifti1Image(np.asarray(data).astype(dtype), np.asarray(affine, np.float64))
  img.header.set_data_dtype(dtype)
  nib.save(img, path)


def check_pair(
  case: str,
  image: np.ndarray,
  label: np.ndarray,
  num_channels: int | None,
  image_path: str,
  label_path: str,
) -> np.ndarray:
  """Image [D, H, W(, C)] and label [D, H, W] of one case must agree; returns image as [D,H,W,C]."""
  if image.ndim == 3:
    image = image[..., None]
  if num_channels is not None and image.shape[-1] != num_channels:
    raise ValueError(
      f"case {case!r}: image {image_path} has {image.shape[-1]} channels, the dataset "
      f"expects {num_channels} (check dataset.json 'modality' or the file)"
    )
  if label is not None and label.shape != image.shape[:3]:
    raise ValueError(
      f"case {case!r}: image {image_path} has spatial shape {image.shape[:3]} but "
      f"label {label_path} has shape {label.shape}; they must match voxel for voxel"
    )
  return image
