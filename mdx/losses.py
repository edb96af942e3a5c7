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
    raise ValueError(f"classes {np.flatnonzero(total == 0).tolist()} have no known labels in the "
                     "training split; weights cannot be computed")
  pos = np.where(known, labels, 0).sum(0)
  return ((total - pos) / total).astype(np.float32), (pos / total).astype(np.float32)


def weighted_bce(logits: jax.Array, labels: jax.Array, pos_weight: jax.Array,
                 neg_weight: jax.Array, label_mask: jax.Array | None = None) -> jax.Array:
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
