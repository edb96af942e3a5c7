"""Whole-scan inference with overlapping windows and Gaussian weighting (as in nnU-Net).

Windows are cut on an evenly spaced grid with at least the requested overlap, run through the model
in full batches (the last one padded, never ragged: static shapes), and their outputs are averaged
with a Gaussian importance map that trusts window centres more than borders. A volume smaller than
the window is padded and the output cropped back.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np


def gaussian_importance(window, sigma_scale: float = 0.125) -> np.ndarray:
  """float32 [D, H, W], 1 at the centre, sigma = sigma_scale * window per axis, no zeros."""
  axes = []
  for w in window:
    x = np.arange(w, dtype=np.float64) - (w - 1) / 2
    sigma = max(sigma_scale * w, 1e-6)
    axes.append(np.exp(-0.5 * (x / sigma) ** 2))
  g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
  g = g / g.max()
  return np.maximum(g, 1e-3).astype(np.float32)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
  """Evenly spaced starts covering [0, size) with step <= window * (1 - overlap)."""
  if size <= window:
    return [0]
  step = max(1, int(window * (1 - overlap)))
  n = int(np.ceil((size - window) / step)) + 1
  return sorted({int(round(s)) for s in np.linspace(0, size - window, n)})


def sliding_window_inference(
  predict_fn: Callable[[np.ndarray], np.ndarray],
  image: np.ndarray,
  window,
  overlap: float = 0.5,
  batch_size: int = 4,
  weighting: str = "gaussian",
  sigma_scale: float = 0.125,
) -> np.ndarray:
  """image [D, H, W, C] -> averaged outputs [D, H, W, K].

  predict_fn maps a batch [batch_size, *window, C] to [batch_size, *window, K] (probabilities
  or logits; they are averaged as given).
  """
  if not 0 <= overlap < 1:
    raise ValueError(f"overlap={overlap} must be in [0, 1)")
  if weighting not in ("gaussian", "constant"):
    raise ValueError(f"weighting={weighting!r}; choose 'gaussian' or 'constant'")
  image = np.asarray(image, np.float32)
  if image.ndim != 4:
    raise ValueError(f"sliding_window_inference expects [D, H, W, C], got {image.shape}")
  window = tuple(int(w) for w in window)
  shape = image.shape[:3]
  padded = tuple(max(s, w) for s, w in zip(shape, window))
  if padded != shape:
    image = np.pad(image, [(0, p - s) for p, s in zip(padded, shape)] + [(0, 0)])
  weight = (
    gaussian_importance(window, sigma_scale)
    if weighting == "gaussian"
    else np.ones(window, np.float32)
  )
  starts = list(itertools.product(*[window_starts(p, w, overlap) for p, w in zip(padded, window)]))
  out = None
  norm = np.zeros(padded, np.float32)
  for b in range(0, len(starts), batch_size):
    chunk = starts[b : b + batch_size]
    batch = np.zeros((batch_size,) + window + image.shape[-1:], np.float32)
    for i, st in enumerate(chunk):
      batch[i] = image[tuple(slice(s, s + w) for s, w in zip(st, window))]
    pred = np.asarray(predict_fn(batch), np.float32)
    if out is None:
      out = np.zeros(padded + pred.shape[-1:], np.float32)
    for i, st in enumerate(chunk):
      sl = tuple(slice(s, s + w) for s, w in zip(st, window))
      out[sl] += pred[i] * weight[..., None]
      norm[sl] += weight
  out /= norm[..., None]
  return out[: shape[0], : shape[1], : shape[2]]
