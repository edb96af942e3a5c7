"""A 2D source's record as a classifier reads it: a float image at the model's size, labels with a
mask of the known ones. These are the `load` and last transform the pipeline takes for 2D tasks.

Plain picklable callables: grain runs them in worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from mdx.data.image import images


def to_float_image(image: np.ndarray, image_size: int | None) -> np.ndarray:
  """uint8/uint16/float [H, W] or [H, W, C] -> float32 [S, S, C] in [0, 1].

  Integer films are resized by area averaging (mdx.data.image.images.resize) before conversion;
  float images bilinearly.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {image.shape}")
  resize = bool(image_size) and image.shape[:2] != (image_size, image_size)
  if resize and image.dtype in (np.uint8, np.uint16):
    image, resize = images.resize(image, image_size), False
  image = images.to_float(image)
  if resize:
    channels = [
      np.asarray(
        Image.fromarray(image[..., c], mode="F").resize((image_size, image_size), Image.BILINEAR)
      )
      for c in range(image.shape[-1])
    ]
    image = np.stack(channels, -1)
  return image


@dataclasses.dataclass(frozen=True)
class LoadImageRecord:
  """Record `index` of a 2D source -> {'image' float32 [S, S, C], 'labels' [F], 'index'}."""

  source: Any
  image_size: int

  def __call__(self, index) -> dict:
    record = self.source[int(index)]
    return {
      "image": to_float_image(record["image"], self.image_size),
      "labels": np.asarray(record["labels"], np.float32),
      "index": np.int64(index),
    }


def mask_unknown_labels(record: dict) -> dict:
  """Unknown labels (nan) become 0 with label_mask 0, so the loss can leave them out."""
  labels = record["labels"]
  known = ~np.isnan(labels)
  out = dict(record)
  out["labels"] = np.where(known, labels, 0.0).astype(np.float32)
  out["label_mask"] = known.astype(np.float32)
  return out
