"""Binary diagnostic metrics, weighted so that one code path gives point estimates and bootstraps.

Every metric here is a function of labels y [N] (0/1), scores s [N] and weights w [N] or [B, N].
Weights of ones give the ordinary metric; a bootstrap resample is the same metric with integer
weights (how often each image was drawn), so B resamples are computed at once as a [B, N] matrix
without copying data. A metric that is undefined on a (re)sample (no positives, no negatives, no
predicted positives) is nan, never a made-up number. Unknown labels are removed by the caller
(`known_mask`) before these functions see them.
"""

from __future__ import annotations

import numpy as np

# Names of the metrics the tables report, in display order.
THRESHOLD_METRICS: tuple[str, ...] = (
  "accuracy",
  "prevalence",
  "sensitivity",
  "specificity",
  "ppv",
  "npv",
  "f1",
)
RANKING_METRICS: tuple[str, ...] = ("auroc", "average_precision", "brier")


def _as_binary(y_true, name: str = "y_true") -> np.ndarray:
  y = np.asarray(y_true, np.float64)
  if y.ndim != 1:
    raise ValueError(f"{name} must be 1-D [N], got shape {y.shape}; call per finding")
  bad = ~np.isnan(y) & (y != 0) & (y != 1)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{name}[{i}] = {y[i]!r}: labels must be 0, 1 or nan (unknown)")
  return y


def _weights(w, n: int) -> np.ndarray:
  if w is None:
    return np.ones((n,), np.float64)
  w = np.asarray(w, np.float64)
  if w.shape[-1] != n:
    raise ValueError(f"weights have {w.shape[-1]} columns but there are {n} samples")
  return w


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
  out = np.full(num.shape, np.nan)
  np.divide(num, den, out=out, where=den > 0)
  return out if out.ndim else float(out)


def _tie_groups(s_sorted: np.ndarray) -> np.ndarray:
  """Start index of every run of equal scores in a sorted score vector."""
  if len(s_sorted) == 0:
    return np.zeros((0,), np.int64)
  return np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])


def _group_sums(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
  """Sums of x along its last axis over the runs that begin at `starts`."""
  if x.shape[-1] == 0:
    return np.zeros(x.shape[:-1] + (0,))
  return np.add.reduceat(x, starts, axis=-1)


def _counts_by_score(
  y_true, y_score, sample_weight=None, descending: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(positives, negatives, score) per distinct score, highest score first (lowest first with
  descending=False): what every ranking metric and curve starts from. Unknown (nan) labels are
  dropped; the counts are weighted, [G] for no or [N] weights, [B, G] for [B, N] weights."""
  y = _as_binary(y_true)
  s = np.asarray(y_score, np.float64)
  if s.shape != y.shape:
    raise ValueError(f"y_score shape {s.shape} != y_true shape {y.shape}")
  w = _weights(sample_weight, len(y))
  keep = ~np.isnan(y)
  y, s, w = y[keep], s[keep], w[..., keep]
  order = np.argsort(-s if descending else s, kind="stable")
  y, s, w = y[order], s[order], w[..., order]
  starts = _tie_groups(s)
  return _group_sums(w * y, starts), _group_sums(w * (1.0 - y), starts), s[starts]


def roc_auc(y_true, y_score, sample_weight=None) -> float | np.ndarray:
  """AUROC = P(score of a positive > score of a negative) + 1/2 P(tie); nan when undefined.

  Labels that are nan (unknown) are ignored. With weights [B, N] returns [B] (one per resample).
  Equals sklearn.metrics.roc_auc_score (trapezoidal ROC) including ties.
  """
  pos, neg, _ = _counts_by_score(y_true, y_score, sample_weight, descending=False)
  neg_below = np.cumsum(neg, axis=-1) - neg
  num = (pos * (neg_below + 0.5 * neg)).sum(-1)
  return _safe_div(num, pos.sum(-1) * neg.sum(-1))


def average_precision(y_true, y_score, sample_weight=None) -> float | np.ndarray:
  """Average precision: sum over distinct thresholds of (recall step) x precision, as sklearn.

  nan when there are no positives. Labels that are nan are ignored; weights [B, N] give [B].
  """
  pos, neg, _ = _counts_by_score(y_true, y_score, sample_weight)
  tp, fp = np.cumsum(pos, -1), np.cumsum(neg, -1)
  precision = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
  return _safe_div((pos * precision).sum(-1), pos.sum(-1))


def brier(y_true, y_prob, sample_weight=None) -> float | np.ndarray:
  """Mean squared error of probabilities (sklearn.metrics.brier_score_loss); nan if empty."""
  y = _as_binary(y_true)
  p = np.asarray(y_prob, np.float64)
  w = _weights(sample_weight, len(y))
  keep = ~np.isnan(y)
  y, p, w = y[keep], p[keep], w[..., keep]
  return _safe_div((w * (p - y) ** 2).sum(-1), w.sum(-1))


def confusion_counts(y_true, y_prob, threshold: float, sample_weight=None) -> dict[str, np.ndarray]:
  """Weighted TP, FP, TN, FN with 'positive' meaning y_prob >= threshold; nan labels ignored."""
  y = _as_binary(y_true)
  p = np.asarray(y_prob, np.float64)
  w = _weights(sample_weight, len(y))
  keep = ~np.isnan(y)
  y, p, w = y[keep], p[keep], w[..., keep]
  pred = (p >= threshold).astype(np.float64)
  return {
    "tp": w @ (y * pred),
    "fp": w @ ((1 - y) * pred),
    "tn": w @ ((1 - y) * (1 - pred)),
    "fn": w @ (y * (1 - pred)),
  }


def from_counts(tp, fp, tn, fn) -> dict[str, np.ndarray | float]:
  """Accuracy, prevalence, sensitivity, specificity, PPV, NPV, F1 from confusion counts (nan when
  undefined)."""
  n = tp + fp + tn + fn
  return {
    "accuracy": _safe_div(tp + tn, n),
    "prevalence": _safe_div(tp + fn, n),
    "sensitivity": _safe_div(tp, tp + fn),
    "specificity": _safe_div(tn, tn + fp),
    "ppv": _safe_div(tp, tp + fp),
    "npv": _safe_div(tn, tn + fn),
    "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
  }


def threshold_metrics(y_true, y_prob, threshold: float, sample_weight=None) -> dict:
  """The confusion-matrix metrics at one threshold (see from_counts)."""
  c = confusion_counts(y_true, y_prob, threshold, sample_weight)
  return from_counts(c["tp"], c["fp"], c["tn"], c["fn"])


def ppv_npv_at_prevalence(sensitivity, specificity, prevalence: float) -> tuple:
  """PPV and NPV that sensitivity and specificity imply at a stated prevalence (Bayes' rule).

  Use it when the test set's prevalence differs from the population the model will serve.
  """
  if not 0.0 < prevalence < 1.0:
    raise ValueError(f"prevalence {prevalence} must lie strictly between 0 and 1")
  se, sp = np.asarray(sensitivity, np.float64), np.asarray(specificity, np.float64)
  ppv = _safe_div(se * prevalence, se * prevalence + (1 - sp) * (1 - prevalence))
  npv = _safe_div(sp * (1 - prevalence), sp * (1 - prevalence) + (1 - se) * prevalence)
  return ppv, npv


def roc_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds) at every distinct score, descending, starting at (0, 0) with +inf.

  Same points as sklearn.metrics.roc_curve(drop_intermediate=False); nan rates when undefined.
  """
  pos, neg, scores = _counts_by_score(y_true, y_score)
  tp, fp = np.r_[0.0, np.cumsum(pos)], np.r_[0.0, np.cumsum(neg)]
  thresholds = np.r_[np.inf, scores]
  return (
    _safe_div(fp, np.full_like(fp, fp[-1])),
    _safe_div(tp, np.full_like(tp, tp[-1])),
    thresholds,
  )


def pr_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(precision, recall, thresholds) at every distinct score, thresholds ascending, as sklearn.

  Ends with the (precision 1, recall 0) point like sklearn.metrics.precision_recall_curve.
  """
  pos, neg, scores = _counts_by_score(y_true, y_score)
  tp, fp = np.cumsum(pos), np.cumsum(neg)
  precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
  recall = _safe_div(tp, np.full_like(tp, tp[-1] if len(tp) else 0.0))
  return (np.r_[precision[::-1], 1.0], np.r_[np.atleast_1d(recall)[::-1], 0.0], scores[::-1])


def known_mask(labels: np.ndarray) -> np.ndarray:
  """True where a label is known (not nan)."""
  return ~np.isnan(np.asarray(labels, np.float64))


def roc_auc_per_class(labels, probs) -> np.ndarray:
  """AUROC of each column of labels/probs [N, C] (nan labels ignored) -> [C], nan where
  undefined."""
  labels, probs = np.asarray(labels, np.float64), np.asarray(probs, np.float64)
  if labels.ndim != 2 or labels.shape != probs.shape:
    raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be [N, C]")
  return np.array([roc_auc(labels[:, c], probs[:, c]) for c in range(labels.shape[1])])


def mean_roc_auc(labels, probs) -> float:
  """Macro AUROC over the classes where it is defined (nan if none) - the validation score."""
  per = roc_auc_per_class(labels, probs)
  return float(np.nanmean(per)) if np.isfinite(per).any() else float("nan")


def finding_metrics(
  y, p, w=None, *, threshold: float | None = None, prevalence: float | None = None
) -> dict[str, np.ndarray | float]:
  """Every reported metric of one finding at once; with weights [B, N] each value is [B].

  y: labels [N] (nan = unknown, ignored); p: probabilities [N]; threshold fixed beforehand
  (None skips the confusion-matrix metrics); prevalence: also report PPV/NPV at that prevalence.
  """
  out = {
    "auroc": roc_auc(y, p, w),
    "average_precision": average_precision(y, p, w),
    "brier": brier(y, p, w),
  }
  if threshold is not None:
    out.update(threshold_metrics(y, p, threshold, w))
    if prevalence is not None:
      out["ppv_at_prevalence"], out["npv_at_prevalence"] = ppv_npv_at_prevalence(
        out["sensitivity"], out["specificity"], prevalence
      )
  return out
