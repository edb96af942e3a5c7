"""Whole-scan inference with overlapping windows and Gaussian weighting (as in nnU-Net).

Windows are cut on an evenly spaced grid with at least the requested overlap, run through the model
in full batches (the last one padded, never ragged: static shapes), and their outputs are averaged
with a Gaussian importance map that trusts window centres more than borders. A volume smaller than
the window is padded and the output cropped back.

Test-time mirroring (mirror_axes, nnU-Net's default on the axes training flipped): every window is
also predicted flipped along each subset of the mirror axes (2**n passes for n axes, the empty
subset being the plain pass), each output flipped back, and the 2**n outputs averaged before the
Gaussian weighting. A model that is itself symmetric along those axes gives the same output; for
any other the average cancels the asymmetries training taught it not to trust. Every pass is a
full batch of the same shape, so mirroring compiles nothing new.
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


def mirror_flips(mirror_axes) -> list[tuple[int, ...]]:
  """Every subset of the spatial mirror axes as batch axes (+1), the empty one first: 2**n."""
  axes = tuple(int(a) for a in mirror_axes)
  if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
    raise ValueError(
      f"mirror_axes={tuple(mirror_axes)}: expected distinct spatial axes among 0, 1, 2 (D, H, W)"
    )
  subsets = itertools.chain.from_iterable(
    itertools.combinations(axes, n) for n in range(len(axes) + 1)
  )
  return [tuple(a + 1 for a in s) for s in subsets]


def sliding_window_inference(
  predict_fn: Callable[[np.ndarray], np.ndarray],
  image: np.ndarray,
  window,
  overlap: float = 0.5,
  batch_size: int = 4,
  weighting: str = "gaussian",
  sigma_scale: float = 0.125,
  mirror_axes=(),
) -> np.ndarray:
  """image [D, H, W, C] -> averaged outputs [D, H, W, K].

  predict_fn maps a batch [batch_size, *window, C] to [batch_size, *window, K] (probabilities
  or logits; they are averaged as given). mirror_axes: spatial axes of the image (0 = D, 1 = H,
  2 = W) to mirror at test time (module docstring); () predicts each window once.
  """
  if not 0 <= overlap < 1:
    raise ValueError(f"overlap={overlap} must be in [0, 1)")
  if weighting not in ("gaussian", "constant"):
    raise ValueError(f"weighting={weighting!r}; choose 'gaussian' or 'constant'")
  image = np.asarray(image, np.float32)
  if image.ndim != 4:
    raise ValueError(f"sliding_window_inference expects [D, H, W, C], got {image.shape}")
  window = tuple(int(w) for w in window)
  flips = mirror_flips(mirror_axes)
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
    pred = None
    for axes in flips:  # batch axes: the spatial axis + 1
      flipped = np.flip(batch, axes) if axes else batch
      out_flipped = np.asarray(predict_fn(np.ascontiguousarray(flipped)), np.float32)
      back = np.flip(out_flipped, axes) if axes else out_flipped
      pred = back if pred is None else pred + back
    pred = pred / len(flips)
    if out is None:
      out = np.zeros(padded + pred.shape[-1:], np.float32)
    for i, st in enumerate(chunk):
      sl = tuple(slice(s, s + w) for s, w in zip(st, window))
      out[sl] += pred[i] * weight[..., None]
      norm[sl] += weight
  out /= norm[..., None]
  return out[: shape[0], : shape[1], : shape[2]]
