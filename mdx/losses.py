"""Losses. Each returns a per-example loss [B]; the train step averages over the global batch."""

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
