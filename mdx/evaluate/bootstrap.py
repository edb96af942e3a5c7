"""Bootstrap confidence intervals that resample patients, and paired comparisons of two models'
AUROC.

Several studies of one patient are correlated; resampling images would treat them as independent
and make intervals too narrow. A resample here draws patients with replacement and gives each image
the weight "how many times its patient was drawn"; the weighted metrics of metrics.py then compute
all resamples at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
from scipy import stats

from mdx.evaluate.metrics import roc_auc


def patient_index(patient_ids, n: int) -> tuple[np.ndarray, int]:
  """Index of each image's patient in 0..P-1 and P; without patient ids every image is its own
  patient."""
  if patient_ids is None:
    return np.arange(n), n
  pids = np.asarray(patient_ids).astype(str)
  if pids.shape != (n,):
    raise ValueError(f"patient_ids has shape {pids.shape}, expected ({n},): one id per image")
  uniq, idx = np.unique(pids, return_inverse=True)
  return idx, len(uniq)


def resample_weights(
  patient_ids, n: int, n_resamples: int, seed: int, chunk_elems: int = 4_000_000
) -> Iterator[np.ndarray]:
  """Yields image weights [b, n] for n_resamples patient-level resamples, in chunks of b rows.

  Chunks keep memory bounded (b * n <= chunk_elems); the sequence of resamples depends only on the
  seed and the patients, not on the chunk size.
  """
  idx, n_patients = patient_index(patient_ids, n)
  rng = np.random.default_rng(seed)
  per_chunk = max(1, min(n_resamples, chunk_elems // max(n, 1)))
  done = 0
  while done < n_resamples:
    b = min(per_chunk, n_resamples - done)
    counts = rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=b)
    yield counts[:, idx].astype(np.float64)
    done += b


def bootstrap(
  fn: Callable[[np.ndarray], Mapping[str, np.ndarray]],
  patient_ids,
  n: int,
  n_resamples: int,
  seed: int,
  chunk_elems: int = 4_000_000,
) -> dict[str, np.ndarray]:
  """Runs fn(weights [b, n]) -> {name: [b]} over all resamples -> {name: [n_resamples]}."""
  parts: dict[str, list[np.ndarray]] = {}
  for w in resample_weights(patient_ids, n, n_resamples, seed, chunk_elems):
    for k, v in fn(w).items():
      parts.setdefault(k, []).append(np.broadcast_to(np.asarray(v, np.float64), (len(w),)))
  return {k: np.concatenate(v) for k, v in parts.items()}


def percentile_ci(samples, level: float = 0.95) -> tuple[float, float]:
  """Percentile interval of the resamples where the metric is defined; (nan, nan) if fewer than
  half are."""
  s = np.asarray(samples, np.float64)
  ok = s[np.isfinite(s)]
  if len(ok) == 0 or len(ok) < 0.5 * len(s):
    return float("nan"), float("nan")
  alpha = (1.0 - level) / 2.0
  lo, hi = np.quantile(ok, [alpha, 1.0 - alpha])
  return float(lo), float(hi)


def _midrank(x: np.ndarray) -> np.ndarray:
  return stats.rankdata(x, method="average")


def delong_test(y_true, score_a, score_b) -> dict[str, float]:
  """DeLong's test for two correlated AUROCs on the same cases (fast algorithm of Sun & Xu 2014).

  Returns auroc_a, auroc_b, diff (a - b), se, z, p_value (two-sided) and the 95% CI of diff.
  Assumes independent cases (one image per patient); with several images per patient use
  paired_bootstrap_auroc. Unknown labels (nan) are ignored.
  """
  y = np.asarray(y_true, np.float64)
  a, b = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
  keep = ~np.isnan(y)
  y, a, b = y[keep], a[keep], b[keep]
  pos, neg = y == 1, y == 0
  m, n = int(pos.sum()), int(neg.sum())
  nan = float("nan")
  if m < 2 or n < 2:
    return dict(
      auroc_a=nan, auroc_b=nan, diff=nan, se=nan, z=nan, p_value=nan, ci_low=nan, ci_high=nan
    )
  v10, v01, auc = [], [], []
  for s in (a, b):
    tz = _midrank(np.r_[s[pos], s[neg]])
    tx, ty = _midrank(s[pos]), _midrank(s[neg])
    auc.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
    v10.append((tz[:m] - tx) / n)
    v01.append(1.0 - (tz[m:] - ty) / m)
  cov = np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n
  var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
  diff = auc[0] - auc[1]
  se = float(np.sqrt(max(var, 0.0)))
  if se > 0:
    z = diff / se
    p = float(2 * stats.norm.sf(abs(z)))
  else:
    z, p = (0.0, 1.0) if diff == 0 else (float(np.sign(diff) * np.inf), 0.0)
  q = stats.norm.ppf(0.975)
  return dict(
    auroc_a=float(auc[0]),
    auroc_b=float(auc[1]),
    diff=float(diff),
    se=se,
    z=float(z),
    p_value=p,
    ci_low=float(diff - q * se),
    ci_high=float(diff + q * se),
  )


def _mean_auroc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, w) -> np.ndarray:
  """Mean over the columns (findings) where it is defined of AUROC(a) - AUROC(b); nan if none."""
  d = np.stack(
    [
      np.asarray(roc_auc(y[:, j], a[:, j], w) - roc_auc(y[:, j], b[:, j], w))
      for j in range(y.shape[1])
    ]
  )
  ok = np.isfinite(d)
  return np.where(ok.any(0), np.where(ok, d, 0.0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)


def paired_auroc_difference(
  y_true, score_a, score_b, patient_ids=None, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, np.ndarray]:
  """(point, [n_resamples] bootstrap samples) of AUROC(a) - AUROC(b) on the same cases, both models
  seeing the same patient resamples. [N] arrays give one finding's difference, [N, C] the mean over
  the findings where it is defined (the macro AUROC difference)."""
  y = np.asarray(y_true, np.float64)
  a, b = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
  if y.ndim == 1:
    y, a, b = y[:, None], a[:, None], b[:, None]
  if not y.shape == a.shape == b.shape:
    raise ValueError(f"labels {y.shape} and the two scores {a.shape}, {b.shape} must match")
  samples = bootstrap(
    lambda w: {"d": _mean_auroc_difference(y, a, b, w)}, patient_ids, len(y), n_resamples, seed
  )["d"]
  return float(_mean_auroc_difference(y, a, b, None)), samples


def difference_interval(samples, level: float = 0.95) -> tuple[float, float, float]:
  """(ci_low, ci_high, two-sided p) of bootstrap samples of a difference: p is twice the smaller
  share of samples on either side of zero, floored at 1 / len(samples)."""
  s = np.asarray(samples, np.float64)
  lo, hi = percentile_ci(s, level)
  ok = s[np.isfinite(s)]
  if not len(ok):
    return lo, hi, float("nan")
  p = float(min(1.0, 2 * min((ok <= 0).mean(), (ok >= 0).mean())))
  return lo, hi, max(p, 1.0 / len(s))


def paired_bootstrap_auroc(
  y_true,
  score_a,
  score_b,
  patient_ids=None,
  n_resamples: int = 1000,
  seed: int = 0,
  level: float = 0.95,
) -> dict[str, float]:
  """Paired patient-level bootstrap of AUROC(a) - AUROC(b): both models see the same resamples.

  p_value is two-sided: twice the smaller share of resamples on either side of zero (floored at
  1 / n_resamples).
  """
  y = np.asarray(y_true, np.float64)
  diff, samples = paired_auroc_difference(y, score_a, score_b, patient_ids, n_resamples, seed)
  lo, hi, p = difference_interval(samples, level)
  return dict(
    auroc_a=roc_auc(y, score_a),
    auroc_b=roc_auc(y, score_b),
    diff=diff,
    ci_low=lo,
    ci_high=hi,
    p_value=p,
    n_resamples=n_resamples,
  )
