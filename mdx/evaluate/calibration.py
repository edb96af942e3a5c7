"""Calibration: reliability curve, expected calibration error, and Platt / isotonic recalibration.

A calibrated model's 0.8 means 8 in 10 such patients have the finding. Recalibration maps are
fitted on validation predictions and applied to test predictions, never fitted on test.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  from sklearn.isotonic import IsotonicRegression


def _known(y, p) -> tuple[np.ndarray, np.ndarray]:
  y = np.asarray(y, np.float64)
  p = np.asarray(p, np.float64)
  if y.shape != p.shape or y.ndim != 1:
    raise ValueError(
      f"labels {y.shape} and probabilities {p.shape} must both be 1-D of equal length"
    )
  keep = ~np.isnan(y)
  return y[keep], p[keep]


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
  # Bins [0, 1/n], (1/n, 2/n], ..., ((n-1)/n, 1]: the edges of sklearn's calibration_curve.
  return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)


def reliability_curve(y_true, y_prob, n_bins: int = 10) -> dict[str, np.ndarray]:
  """Per equal-width bin: mean predicted probability, observed fraction positive, count.

  Empty bins are left out (same points as sklearn.calibration.calibration_curve,
  strategy='uniform').
  """
  y, p = _known(y_true, y_prob)
  b = _bin_index(p, n_bins)
  count = np.bincount(b, minlength=n_bins).astype(np.float64)
  sum_p = np.bincount(b, weights=p, minlength=n_bins)
  sum_y = np.bincount(b, weights=y, minlength=n_bins)
  nz = count > 0
  return {
    "mean_predicted": sum_p[nz] / count[nz],
    "fraction_positive": sum_y[nz] / count[nz],
    "count": count[nz],
    "bin_lower": np.arange(n_bins)[nz] / n_bins,
  }


def expected_calibration_error(y_true, y_prob, n_bins: int = 10, sample_weight=None):
  """ECE = sum over equal-width bins of (share of cases) x |fraction positive - mean probability|.

  With weights [B, N] returns [B] (bootstrap); nan when there are no known labels.
  """
  y = np.asarray(y_true, np.float64)
  p = np.asarray(y_prob, np.float64)
  keep = ~np.isnan(y)
  y, p = y[keep], p[keep]
  w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, np.float64)[..., keep]
  onehot = np.eye(n_bins)[_bin_index(p, n_bins)]  # [N, n_bins]
  count, sum_p, sum_y = w @ onehot, (w * p) @ onehot, (w * y) @ onehot
  total = count.sum(-1)
  gap = np.abs(sum_y - sum_p).sum(-1)  # = sum_b count_b * |mean_y_b - mean_p_b|
  out = np.where(total > 0, gap / np.where(total > 0, total, 1.0), np.nan)
  return float(out) if out.ndim == 0 else out


def _logit(p: np.ndarray) -> np.ndarray:
  p = np.clip(p, 1e-7, 1 - 1e-7)
  return np.log(p) - np.log1p(-p)


def _sigmoid(z) -> np.ndarray:
  """1 / (1 + exp(-z)) without overflow for any z (scipy.special.expit within 3e-16; numpy
  alone, so predict applying a fitted map imports no scipy, ~0.25 s)."""
  return np.exp(-np.logaddexp(0.0, -np.asarray(z, np.float64)))


@dataclasses.dataclass(frozen=True)
class Platt:
  """p' = sigmoid(a * logit(p) + b), fitted as Platt (1999) did (see fit_platt)."""

  a: float
  b: float

  def __call__(self, p) -> np.ndarray:
    z = self.a * _logit(np.asarray(p, np.float64)) + self.b
    return _sigmoid(z)


def _cross_entropy(theta: np.ndarray, x: np.ndarray, t: np.ndarray) -> float:
  z = x @ theta
  return float(np.sum(np.logaddexp(0.0, z) - t * z))


def fit_platt(y_true, y_prob, max_iter: int = 100) -> Platt:
  """Logistic regression of the label on logit(p) with Platt's targets: positives count as
  (N+ + 1) / (N+ + 2) and negatives as 1 / (N- + 2), not 1 and 0.

  Why the targets: with 0/1 targets the maximum likelihood is infinite whenever the validation
  scores separate the classes (or saturate at the logit clip), and the map becomes a step that calls
  a film 1.00 or 0.00 (seen on the demo's phantoms: a = 4e10). Platt's targets keep a and b finite
  and cost little on large sets (scikit-learn's CalibratedClassifierCV 'sigmoid' fits the same).
  Newton's method with step halving on the convex objective.
  """
  y, p = _known(y_true, y_prob)
  if len(np.unique(y)) < 2:
    raise ValueError("Platt scaling needs positives and negatives in the validation labels")
  n_pos, n_neg = float((y == 1).sum()), float((y == 0).sum())
  t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
  x = np.stack([_logit(p), np.ones_like(p)], 1)
  theta = np.array([1.0, 0.0])
  loss = _cross_entropy(theta, x, t)
  for _ in range(max_iter):
    q = _sigmoid(x @ theta)
    grad = x.T @ (q - t)
    hess = (x * (q * (1 - q))[:, None]).T @ x + 1e-12 * np.eye(2)
    step = np.linalg.solve(hess, grad)
    scale = 1.0
    while scale > 1e-10:  # backtrack until the objective does not rise
      new = theta - scale * step
      new_loss = _cross_entropy(new, x, t)
      if new_loss <= loss + 1e-12:
        break
      scale /= 2
    theta, loss = new, new_loss
    if np.abs(scale * step).max() < 1e-10:
      break
  return Platt(float(theta[0]), float(theta[1]))


@dataclasses.dataclass(frozen=True)
class Isotonic:
  """Monotone step map from probability to observed frequency (pool adjacent violators)."""

  model: IsotonicRegression

  def __call__(self, p) -> np.ndarray:
    return np.asarray(self.model.predict(np.asarray(p, np.float64)), np.float64)


def fit_isotonic(y_true, y_prob) -> Isotonic:
  """Isotonic regression of the label on p, clipped to [0, 1] outside the validation range."""
  y, p = _known(y_true, y_prob)
  if len(y) == 0:
    raise ValueError("isotonic recalibration needs known validation labels")
  # imported here: predict applies fitted maps without sklearn, whose import alone takes ~1.5 s
  # of a one-study predict's start-up
  from sklearn.isotonic import IsotonicRegression

  model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
  model.fit(p, y)
  return Isotonic(model)


# Calibration maps as JSON (a bundle's 'calibration' section): fitted once on validation, applied
# to new cases by predict and by external evaluation.
CALIBRATION_METHODS = ("platt", "isotonic", "none")


def map_to_spec(fitted: Platt | Isotonic | None, reason: str = "") -> dict:
  """-> {'kind': 'platt', 'a', 'b'}, {'kind': 'isotonic', 'x', 'y'} or {'kind': 'identity',
  'reason'}."""
  if isinstance(fitted, Platt):
    return {"kind": "platt", "a": fitted.a, "b": fitted.b}
  if isinstance(fitted, Isotonic):
    return {
      "kind": "isotonic",
      "x": [float(v) for v in fitted.model.X_thresholds_],
      "y": [float(v) for v in fitted.model.y_thresholds_],
    }
  return {"kind": "identity", "reason": reason}


def map_from_spec(spec: dict):
  """The callable p -> p' of a map_to_spec dict (identity: p unchanged)."""
  kind = spec.get("kind")
  if kind == "platt":
    return Platt(float(spec["a"]), float(spec["b"]))
  if kind == "isotonic":
    x, y = np.asarray(spec["x"], np.float64), np.asarray(spec["y"], np.float64)
    # sklearn's IsotonicRegression.predict with out_of_bounds='clip' is this interpolation
    return lambda p: np.interp(np.asarray(p, np.float64), x, y)
  if kind == "identity":
    return lambda p: np.asarray(p, np.float64)
  raise ValueError(f"calibration map kind {kind!r}; expected platt, isotonic or identity")


def fit_map(y_true, y_prob, method: str) -> dict:
  """Fits `method` (CALIBRATION_METHODS) on validation labels and scores of one finding -> spec.

  A finding whose validation labels lack positives or negatives gets the identity, with the
  reason."""
  if method not in CALIBRATION_METHODS:
    raise ValueError(f"calibration {method!r} is unknown; choose one of {CALIBRATION_METHODS}")
  if method == "none":
    return map_to_spec(None, "no calibration asked for (config.eval.calibration='none')")
  y, _ = _known(y_true, y_prob)
  if len(np.unique(y)) < 2:
    return map_to_spec(None, "validation labels lack positives or negatives: nothing to fit")
  fitted = fit_platt(y_true, y_prob) if method == "platt" else fit_isotonic(y_true, y_prob)
  return map_to_spec(fitted)
