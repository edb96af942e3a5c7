"""Losses. Each returns a per-example loss [B]; the train step averages over the global batch.

Segmentation: soft Dice (+ cross-entropy) on logits [B, D, H, W, K] against integer classes
[B, D, H, W] (softmax) or binary regions [B, D, H, W, K] (sigmoid); deep_supervision_loss weighs a
U-Net's tuple of outputs at decreasing resolutions (nnU-Net's deep supervision).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def positive_negative_weights(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-class weights that balance positives and negatives (computed on the training split).

  w_p = negatives / total and w_n = positives / total, so that w_p * positives == w_n * negatives:
  each class's positives and negatives contribute equally to the loss. Unknown labels (nan) are
  left out of the counts.
  """
  labels = np.asarray(labels, np.float64)
  known = ~np.isnan(labels)
  total = known.sum(0)
  if np.any(total == 0):
    raise ValueError(
      f"classes {np.flatnonzero(total == 0).tolist()} have no known labels in the "
      "training split; weights cannot be computed"
    )
  pos = np.where(known, labels, 0).sum(0)
  return ((total - pos) / total).astype(np.float32), (pos / total).astype(np.float32)


def weighted_bce(
  logits: jax.Array,
  labels: jax.Array,
  pos_weight: jax.Array,
  neg_weight: jax.Array,
  label_mask: jax.Array | None = None,
) -> jax.Array:
  """Weighted multi-label binary cross-entropy, summed over classes -> [B].

  -(w_p * y * log(p) + w_n * (1 - y) * log(1 - p)) per class, computed from logits stably.
  label_mask (1 known, 0 unknown) removes unknown labels from the loss.
  """
  logits = logits.astype(jnp.float32)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  per_class = -(pos_weight * labels * log_p + neg_weight * (1.0 - labels) * log_not_p)
  if label_mask is not None:
    per_class = per_class * label_mask
  return per_class.sum(-1)


def focal_loss(
  logits: jax.Array,
  labels: jax.Array,
  gamma: float = 2.0,
  alpha: float = 0.25,
  label_mask: jax.Array | None = None,
) -> jax.Array:
  """Focal loss (Lin et al. 2017), multi-label, summed over classes -> [B].

  -alpha_t * (1 - p_t)**gamma * log(p_t) per class, with p_t = p and alpha_t = alpha for a positive
  label, p_t = 1 - p and alpha_t = 1 - alpha for a negative one: easy, confidently right cases
  (mostly the many negatives of a rare finding) weigh little. gamma=0, alpha=0.5 is half the BCE.
  1 - p is computed as sigmoid(-logit), so (1 - p_t)**gamma never meets 0**gamma (nan gradients
  for gamma < 1). label_mask (1 known, 0 unknown) removes unknown labels from the loss.
  """
  logits = logits.astype(jnp.float32)
  p, not_p = jax.nn.sigmoid(logits), jax.nn.sigmoid(-logits)
  pos = -alpha * not_p**gamma * jax.nn.log_sigmoid(logits)
  neg = -(1.0 - alpha) * p**gamma * jax.nn.log_sigmoid(-logits)
  per_class = labels * pos + (1.0 - labels) * neg
  if label_mask is not None:
    per_class = per_class * label_mask
  return per_class.sum(-1)


# --- Segmentation: soft Dice (per class, epsilon in numerator and denominator) ---


def _seg_probs_targets(logits: jax.Array, labels: jax.Array, activation: str):
  """softmax: labels int [B, ...] -> one-hot; sigmoid: labels binary [B, ..., K] (regions)."""
  logits = logits.astype(jnp.float32)
  k = logits.shape[-1]
  if activation == "softmax":
    if labels.shape != logits.shape[:-1]:
      raise ValueError(
        f"softmax Dice needs integer labels of shape {logits.shape[:-1]}, got {labels.shape}"
      )
    return jax.nn.softmax(logits, -1), jax.nn.one_hot(labels, k, dtype=jnp.float32)
  if activation == "sigmoid":
    if labels.shape != logits.shape:
      raise ValueError(
        f"sigmoid Dice needs binary labels of shape {logits.shape}, got {labels.shape}"
      )
    return jax.nn.sigmoid(logits), labels.astype(jnp.float32)
  raise ValueError(f"activation={activation!r}; choose 'softmax' (classes) or 'sigmoid' (regions)")


def soft_dice_per_class(
  logits: jax.Array,
  labels: jax.Array,
  activation: str = "softmax",
  epsilon: float = 1e-5,
  squared: bool = False,
  mask: jax.Array | None = None,
) -> jax.Array:
  """Soft Dice of every example and class -> [B, K].

  (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps) over the voxels of one example, or with
  sum(p**2) + sum(g**2) in the denominator when squared (the course's soft Dice loss). The epsilon
  in both makes a class absent from label and prediction score 1 instead of 0/0.
  mask [B, D, H, W] (1 valid, 0 padding) leaves padded voxels out.
  """
  p, g = _seg_probs_targets(logits, labels, activation)
  if mask is not None:
    m = mask.astype(jnp.float32)[..., None]
    p, g = p * m, g * m
  axes = tuple(range(1, p.ndim - 1))
  inter = (p * g).sum(axes)
  denom = ((p * p).sum(axes) + (g * g).sum(axes)) if squared else (p.sum(axes) + g.sum(axes))
  return (2.0 * inter + epsilon) / (denom + epsilon)


def soft_dice_loss(
  logits: jax.Array,
  labels: jax.Array,
  activation: str = "softmax",
  epsilon: float = 1e-5,
  squared: bool = False,
  include_background: bool = True,
  ce_weight: float = 0.0,
  mask: jax.Array | None = None,
) -> jax.Array:
  """1 - mean over classes of the soft Dice, plus ce_weight * voxel-mean cross-entropy -> [B].

  include_background=False leaves class 0 out of the Dice mean (softmax only).
  """
  dice = soft_dice_per_class(logits, labels, activation, epsilon, squared, mask)
  if not include_background and activation == "softmax":
    dice = dice[:, 1:]
  loss = 1.0 - dice.mean(-1)
  if ce_weight:
    logits = logits.astype(jnp.float32)
    if activation == "softmax":
      ce = -(jax.nn.one_hot(labels, logits.shape[-1]) * jax.nn.log_softmax(logits, -1)).sum(-1)
    else:
      y = labels.astype(jnp.float32)
      ce = -(y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits)).mean(-1)
    axes = tuple(range(1, ce.ndim))
    if mask is not None:
      m = mask.astype(jnp.float32)
      ce = (ce * m).sum(axes) / jnp.maximum(m.sum(axes), 1.0)
    else:
      ce = ce.mean(axes)
    loss = loss + ce_weight * ce
  return loss


# --- Deep supervision (nnU-Net): one loss per decoder resolution, weighted ---


def deep_supervision_weights(n: int) -> np.ndarray:
  """nnU-Net's weights of n outputs (full resolution first): 1 / 2**i, the lowest-resolution one 0,
  normalised to sum 1 -> [n] (one output: [1])."""
  if n < 1:
    raise ValueError(f"deep supervision needs at least one output, got {n}")
  if n == 1:
    return np.ones(1)
  w = 0.5 ** np.arange(n)
  w[-1] = 0.0
  return w / w.sum()


def downsample_target(target: jax.Array, spatial_shape: tuple[int, ...]) -> jax.Array:
  """A label map [B, D, H, W] or region mask [B, D, H, W, K] (or a voxel mask [B, D, H, W]) at an
  output's coarser spatial_shape (d, h, w), each side dividing D, H, W.

  Nearest neighbour by strided subsampling: coarse voxel i takes the fine voxel s * i + s // 2 of
  its s-voxel block, the one nearest the block's centre, as nnU-Net does (torch 'nearest-exact'
  interpolation, which picks exactly that voxel). Not a majority vote: subsampling keeps a label
  some voxel really has (a majority can be ambiguous across several classes and needs a one-hot of
  the whole fine map per output), costs a slice, and regions are binary channels, so the same slice
  serves them channel by channel.
  """
  fine = target.shape[1:4]
  if len(spatial_shape) != 3 or any(c < 1 or f % c for f, c in zip(fine, spatial_shape)):
    raise ValueError(
      f"deep supervision output of spatial shape {tuple(spatial_shape)} does not divide the "
      f"label's {tuple(fine)}; every output must be the label's shape over whole factors"
    )
  factors = [f // c for f, c in zip(fine, spatial_shape)]
  index = tuple(slice(s // 2, None, s) for s in factors)
  return target[(slice(None), *index)]


def deep_supervision_loss(
  outputs,
  labels: jax.Array,
  activation: str = "softmax",
  weights=None,
  **dice_ce_kwargs,
) -> jax.Array:
  """Weighted sum of soft_dice_loss over a U-Net's outputs -> [B].

  outputs: logits [B, D, H, W, K] (passed through as plain soft_dice_loss), or a tuple of them,
  full resolution first, then coarser ones [B, D / f_d, H / f_h, W / f_w, K] (UNet3D with
  deep_supervision and train=True). labels at full resolution ([B, D, H, W] classes or
  [B, D, H, W, K] regions) are subsampled to each output's shape (downsample_target), as is
  dice_ce_kwargs' mask [B, D, H, W] if given. weights: one per output, used as given; None is
  nnU-Net's (deep_supervision_weights). dice_ce_kwargs: soft_dice_loss's epsilon, squared,
  include_background, ce_weight, mask.
  """
  if not isinstance(outputs, (tuple, list)):
    if weights is not None:
      raise ValueError("deep supervision weights given for a single output; drop weights")
    return soft_dice_loss(outputs, labels, activation, **dice_ce_kwargs)
  n = len(outputs)
  weights = deep_supervision_weights(n) if weights is None else tuple(weights)
  if len(weights) != n:
    raise ValueError(f"deep supervision has {n} outputs but {len(weights)} weights; give one each")
  mask = dice_ce_kwargs.pop("mask", None)
  total = None
  for out, w in zip(outputs, weights):
    if isinstance(w, (int, float, np.floating)) and w == 0:
      continue  # nnU-Net's lowest-resolution output: no loss, no compute
    shape = out.shape[1:4]
    loss = w * soft_dice_loss(
      out,
      downsample_target(labels, shape),
      activation,
      mask=None if mask is None else downsample_target(mask, shape),
      **dice_ce_kwargs,
    )
    total = loss if total is None else total + loss
  if total is None:
    raise ValueError("deep supervision weights are all 0; give at least one a weight")
  return total
