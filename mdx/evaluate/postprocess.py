"""Largest-connected-component post-processing, decided on validation as nnU-Net does.

A network that segments one organ per scan sometimes also marks a few stray islands far from it;
keeping only the largest component of the class removes them. Whether it helps is an empirical
question per class (a structure that is really two pieces, such as both kidneys, loses one), so it
is decided on the validation cases and then applied as decided:

  keep_largest_component(labels, classes) -> labels: classes [D, H, W] int (class indices) or
    regions [D, H, W, R] binary (channel indices); for each listed class only its largest
    26-connected component stays (voxels touching by a face, an edge or a corner are connected),
    the rest of it becomes background 0. Components of equal size: the first in C (raster) order
    of scipy.ndimage.label stays.
  decide(cases, class_names) -> {'largest_component': [names], 'dice_before': {name: mean Dice},
    'dice_after': {name: mean Dice with the class's largest component only}}: a foreground class is
    kept when its mean Dice over the cases with the step >= without it (a tie keeps it: nnU-Net
    applies a step that does not hurt, and a prediction that is already one piece ties).
  apply(labels, decision, class_names) -> labels with the decided classes post-processed.

Foreground classes: 1..K-1 for classes (class 0 is background), every channel for regions. Dice
follows mdx.evaluate.segmentation: 1 when a class is absent from both prediction and truth. A
class's step only moves its own voxels to background, so each class is decided independently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

CONNECTIVITY = ndimage.generate_binary_structure(3, 3)  # 26-connectivity in 3D


def largest_component(mask: np.ndarray) -> np.ndarray:
  """bool [D, H, W]: the largest 26-connected component of mask (all False when mask is empty)."""
  mask = np.asarray(mask, bool)
  components, n = ndimage.label(mask, structure=CONNECTIVITY)
  if n <= 1:
    return mask
  sizes = np.bincount(components.ravel())[1:]
  return components == int(np.argmax(sizes)) + 1  # argmax: the first of equal sizes


def _is_regions(labels: np.ndarray) -> bool:
  if labels.ndim not in (3, 4):
    raise ValueError(
      f"labels have shape {labels.shape}; expected classes [D, H, W] or regions [D, H, W, R]"
    )
  return labels.ndim == 4


def keep_largest_component(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  """labels with only the largest component of each listed class (module docstring); a copy."""
  labels = np.asarray(labels)
  regions = _is_regions(labels)
  count = labels.shape[-1] if regions else None
  out = labels.copy()
  for c in classes:
    c = int(c)
    if regions:
      if not 0 <= c < count:
        raise ValueError(f"region {c} does not exist: the labels have {count} regions")
      out[..., c] = largest_component(labels[..., c]).astype(labels.dtype)
    else:
      if c <= 0:
        raise ValueError(f"class {c}: only foreground classes (>= 1) keep a largest component")
      mask = labels == c
      out[mask & ~largest_component(mask)] = 0
  return out


def _foreground(regions: bool, num_classes: int) -> list[int]:
  return list(range(num_classes)) if regions else list(range(1, num_classes))


def _mask(labels: np.ndarray, c: int, regions: bool) -> np.ndarray:
  return labels[..., c].astype(bool) if regions else labels == c


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
  tp = int((pred & truth).sum())
  total = int(pred.sum()) + int(truth.sum())
  return 1.0 if total == 0 else 2 * tp / total


def decide(
  cases: Sequence[tuple[np.ndarray, np.ndarray]], class_names: Sequence[str]
) -> dict[str, Any]:
  """cases: (prediction, truth) label maps of the validation cases, classes or regions as the
  model outputs them -> {'largest_component', 'dice_before', 'dice_after'} (module docstring)."""
  if not cases:
    raise ValueError("decide needs at least one validation case (prediction, truth)")
  names = list(class_names)
  first = np.asarray(cases[0][0])
  regions = _is_regions(first)
  if regions and first.shape[-1] != len(names):
    raise ValueError(f"class_names has {len(names)} names but the labels have {first.shape[-1]}")
  fg = _foreground(regions, len(names))
  before = {names[c]: [] for c in fg}
  after = {names[c]: [] for c in fg}
  for n, (pred, truth) in enumerate(cases):
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.shape[3:] != first.shape[3:]:
      raise ValueError(
        f"validation case {n}: prediction {pred.shape} and truth {truth.shape} must have the "
        f"same shape, and the layout of the first case {first.shape}"
      )
    for c in fg:
      p, t = _mask(pred, c, regions), _mask(truth, c, regions)
      before[names[c]].append(_dice(p, t))
      after[names[c]].append(_dice(largest_component(p), t))
  dice_before = {k: float(np.mean(v)) for k, v in before.items()}
  dice_after = {k: float(np.mean(v)) for k, v in after.items()}
  return {
    "largest_component": [k for k in dice_before if dice_after[k] >= dice_before[k]],
    "dice_before": dice_before,
    "dice_after": dice_after,
  }


def apply(
  labels: np.ndarray, decision: Mapping[str, Any], class_names: Sequence[str]
) -> np.ndarray:
  """labels (classes or regions) with the largest component kept for decision's classes."""
  names = list(class_names)
  chosen = decision.get("largest_component")
  if chosen is None:
    raise ValueError("the post-processing decision has no 'largest_component' list (see decide)")
  unknown = [n for n in chosen if n not in names]
  if unknown:
    raise ValueError(
      f"post-processing largest_component names {unknown}, not among the classes {names}: "
      "decide it again for these classes"
    )
  return keep_largest_component(labels, [names.index(n) for n in chosen])
