"""Threshold policies by hand and brute force; calibration against hand computations and sklearn."""

import numpy as np
import pytest
from sklearn.calibration import (
  _sigmoid_calibration,  # Platt's fit: an independent oracle
  calibration_curve,
)
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from mdx.evaluate import calibration as C
from mdx.evaluate import metrics as M
from mdx.evaluate import thresholds as T


def _brute(y, p, score):
  """Best candidate threshold by exhaustive search; ties go to the highest threshold."""
  best, best_t = -np.inf, None
  for t in sorted(np.unique(p), reverse=True):
    v = score(M.threshold_metrics(y, p, t))
    if v > best + 1e-12:
      best, best_t = v, t
  return best_t


@pytest.mark.parametrize("seed", range(6))
def test_youden_and_f1_are_the_best_thresholds(seed):
  rng = np.random.default_rng(seed)
  y = (rng.random(60) < 0.4).astype(float)
  p = np.round(np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1), 2)
  assert T.choose_threshold(y, p, "youden") == _brute(
    y, p, lambda m: m["sensitivity"] + m["specificity"] - 1
  )
  assert T.choose_threshold(y, p, "f1") == _brute(y, p, lambda m: m["f1"])


def test_target_sensitivity_and_specificity_by_hand():
  y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1], float)
  p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
  # sensitivity >= 0.8 needs 4 of 5 positives: the highest such threshold is 0.7.
  assert T.choose_threshold(y, p, "sensitivity=0.8") == 0.7
  assert M.threshold_metrics(y, p, 0.7)["sensitivity"] == 0.8
  # specificity >= 0.8 needs 4 of 5 negatives below: the lowest such threshold is 0.5.
  assert T.choose_threshold(y, p, "specificity=0.8") == 0.5
  assert T.choose_threshold(y, p, "sensitivity=1") == 0.5
  assert T.choose_threshold(y, p, 0.3) == 0.3 and T.choose_threshold(y, p, "0.25") == 0.25
  assert np.isnan(T.choose_threshold(np.zeros(10), p, "youden"))


@pytest.mark.parametrize(
  "bad", ["yuden", "sensitivity=1.5", "specificity=abc", "1.2", "recall=0.9"]
)
def test_bad_policy_raises(bad):
  with pytest.raises(ValueError, match="threshold"):
    T.choose_threshold([0, 1], [0.2, 0.8], bad)


def test_ece_by_hand_and_reliability_matches_sklearn():
  # 2 bins: [0, .5] holds p = .2, .2, .4 with labels 0, 1, 0 -> mean p .2667, frac .3333
  #         (.5, 1] holds p = .9, .9 with labels 1, 1 -> mean p .9, frac 1.
  y = np.array([0, 1, 0, 1, 1], float)
  p = np.array([0.2, 0.2, 0.4, 0.9, 0.9])
  expected = 3 / 5 * abs(1 / 3 - 0.8 / 3) + 2 / 5 * abs(1 - 0.9)
  assert C.expected_calibration_error(y, p, n_bins=2) == pytest.approx(expected)
  rng = np.random.default_rng(0)
  y = (rng.random(300) < 0.3).astype(float)
  p = np.round(rng.random(300), 1)  # values on bin edges
  curve = C.reliability_curve(y, p, n_bins=10)
  frac, mean = calibration_curve(y, p, n_bins=10)
  np.testing.assert_allclose(curve["fraction_positive"], frac)
  np.testing.assert_allclose(curve["mean_predicted"], mean)
  ece = np.sum(curve["count"] / 300 * np.abs(frac - mean))
  assert C.expected_calibration_error(y, p, n_bins=10) == pytest.approx(ece)
  w = rng.integers(0, 3, (4, 300)).astype(float)
  eces = C.expected_calibration_error(y, p, 10, w)
  rep = np.repeat(np.arange(300), w[2].astype(int))
  assert eces[2] == pytest.approx(C.expected_calibration_error(y[rep], p[rep], 10))


def test_platt_matches_sklearn_sigmoid_calibration_and_improves_calibration():
  rng = np.random.default_rng(1)
  z = rng.normal(0, 1.5, 2000)
  y = (rng.random(2000) < 1 / (1 + np.exp(-z))).astype(float)
  p_bad = 1 / (1 + np.exp(-(0.4 * z + 1.0)))  # under-confident and shifted
  platt = C.fit_platt(y[:1000], p_bad[:1000])
  # scikit-learn's Platt fit (same targets), written p' = 1 / (1 + exp(a f + b))
  a_sk, b_sk = _sigmoid_calibration(np.log(p_bad[:1000] / (1 - p_bad[:1000])), y[:1000])
  assert platt.a == pytest.approx(-a_sk, rel=1e-4)
  assert platt.b == pytest.approx(-b_sk, abs=1e-4)
  # with many cases Platt's targets barely move the fit from plain logistic regression
  lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(
    np.log(p_bad[:1000] / (1 - p_bad[:1000]))[:, None], y[:1000]
  )
  assert platt.a == pytest.approx(lr.coef_[0, 0], rel=0.02)
  test_y, test_p = y[1000:], p_bad[1000:]
  assert C.expected_calibration_error(test_y, platt(test_p)) < 0.5 * C.expected_calibration_error(
    test_y, test_p
  )
  assert brier_score_loss(test_y, platt(test_p)) < brier_score_loss(test_y, test_p)
  iso = C.fit_isotonic(y[:1000], p_bad[:1000])
  ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p_bad[:1000], y[:1000])
  np.testing.assert_allclose(iso(test_p), ref.predict(test_p))
  assert C.expected_calibration_error(test_y, iso(test_p)) < C.expected_calibration_error(
    test_y, test_p
  )
  assert np.all(np.diff(iso(np.linspace(0, 1, 50))) >= 0)
  with pytest.raises(ValueError, match="positives and negatives"):
    C.fit_platt(np.zeros(5), np.linspace(0.1, 0.5, 5))


def test_platt_stays_finite_on_separable_and_saturated_scores():
  """Validation scores that separate the classes (or sit at the clip) once gave a = 4e10: a step
  that called every film 1.00 or 0.00. Platt's targets keep the map a gentle sigmoid."""
  y = np.array([0, 0, 0, 0, 1, 1, 1.0])
  for p in (
    np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8]),  # separable
    np.array([0.2, 0.3, 1.0, 1.0, 1.0, 1.0, 1.0]),  # saturated at 1 for both classes
  ):
    platt = C.fit_platt(y, p)
    assert abs(platt.a) < 50 and abs(platt.b) < 50
    q = platt(p)
    assert np.all((q > 0.05) & (q < 0.95))  # no certainty from 7 cases
    f = np.log(np.clip(p, 1e-7, 1 - 1e-7) / (1 - np.clip(p, 1e-7, 1 - 1e-7)))
    a_sk, b_sk = _sigmoid_calibration(f, y)
    assert platt.a == pytest.approx(-a_sk, rel=1e-3, abs=1e-4)
