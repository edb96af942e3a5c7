"""Metrics against scikit-learn on random cases with ties, degenerate classes, weights and unknown
labels."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mdx.evaluate import metrics as M


def _case(rng, n, ties: bool, prevalence: float):
  y = (rng.random(n) < prevalence).astype(float)
  s = rng.random(n)
  if ties:
    s = np.round(s * 5) / 5  # few distinct scores: many ties, across classes
  return y, s


@pytest.mark.parametrize("seed", range(12))
def test_ranking_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 60))
  y, s = _case(rng, n, ties=seed % 2 == 0, prevalence=rng.uniform(0.1, 0.9))
  if len(np.unique(y)) < 2:
    y[0], y[1] = 0.0, 1.0
  np.testing.assert_allclose(M.roc_auc(y, s), skm.roc_auc_score(y, s), rtol=1e-12)
  np.testing.assert_allclose(
    M.average_precision(y, s), skm.average_precision_score(y, s), rtol=1e-12
  )
  np.testing.assert_allclose(M.brier(y, s), skm.brier_score_loss(y, s), rtol=1e-12)
  fpr, tpr, thr = M.roc_curve(y, s)
  sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  np.testing.assert_allclose(thr[1:], sk_thr[1:])
  prec, rec, pthr = M.pr_curve(y, s)
  sk_prec, sk_rec, sk_pthr = skm.precision_recall_curve(y, s)
  np.testing.assert_allclose(prec, sk_prec)
  np.testing.assert_allclose(rec, sk_rec)
  np.testing.assert_allclose(pthr, sk_pthr)


@pytest.mark.parametrize("seed", range(6))
def test_integer_weights_equal_replicated_data(seed):
  """A bootstrap resample as weights must give the metric of the replicated data set (and
  sklearn's)."""
  rng = np.random.default_rng(100 + seed)
  y, s = _case(rng, 40, ties=True, prevalence=0.4)
  y[:2] = [0, 1]
  w = rng.integers(0, 4, size=(5, 40)).astype(float)
  auc, ap, br = M.roc_auc(y, s, w), M.average_precision(y, s, w), M.brier(y, s, w)
  assert auc.shape == ap.shape == br.shape == (5,)
  for b in range(5):
    rep = np.repeat(np.arange(40), w[b].astype(int))
    yb, sb = y[rep], s[rep]
    if len(np.unique(yb)) == 2:
      np.testing.assert_allclose(auc[b], skm.roc_auc_score(yb, sb), rtol=1e-12)
      np.testing.assert_allclose(auc[b], skm.roc_auc_score(y, s, sample_weight=w[b]), rtol=1e-12)
      np.testing.assert_allclose(ap[b], skm.average_precision_score(yb, sb), rtol=1e-12)
    np.testing.assert_allclose(br[b], skm.brier_score_loss(yb, sb), rtol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_threshold_metrics_match_confusion_matrix(seed):
  rng = np.random.default_rng(200 + seed)
  y, s = _case(rng, 50, ties=True, prevalence=0.3)
  y[:2] = [0, 1]
  t = float(rng.choice(s))
  m = M.threshold_metrics(y, s, t)
  pred = (s >= t).astype(int)
  tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
  assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
  assert m["prevalence"] == pytest.approx(y.mean())
  assert m["sensitivity"] == pytest.approx(
    skm.recall_score(y, pred, zero_division=np.nan), nan_ok=True
  )
  assert m["specificity"] == pytest.approx(tn / (tn + fp) if tn + fp else np.nan, nan_ok=True)
  assert m["ppv"] == pytest.approx(skm.precision_score(y, pred, zero_division=np.nan), nan_ok=True)
  assert m["npv"] == pytest.approx(tn / (tn + fn) if tn + fn else np.nan, nan_ok=True)
  assert m["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=np.nan), nan_ok=True)


def test_degenerate_classes_are_undefined_not_made_up():
  s = np.array([0.1, 0.5, 0.9, 0.5])
  all_neg, all_pos = np.zeros(4), np.ones(4)
  assert np.isnan(M.roc_auc(all_neg, s)) and np.isnan(M.roc_auc(all_pos, s))
  assert np.isnan(M.average_precision(all_neg, s))
  assert M.average_precision(all_pos, s) == pytest.approx(1.0)
  m = M.threshold_metrics(all_neg, s, 0.95)  # nothing predicted positive, no positives
  assert np.isnan(m["sensitivity"]) and np.isnan(m["ppv"]) and np.isnan(m["f1"])
  assert m["specificity"] == 1.0 and m["npv"] == 1.0 and m["prevalence"] == 0.0
  assert M.brier(all_neg, s) == pytest.approx(skm.brier_score_loss(all_neg, s))
  # An empty set (every label unknown) is undefined everywhere.
  unknown = np.full(4, np.nan)
  assert np.isnan(M.roc_auc(unknown, s)) and np.isnan(M.brier(unknown, s))
  # Per resample: a resample that drew no positive is nan, the others are numbers.
  y = np.array([0.0, 0.0, 1.0, 1.0])
  w = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], float)
  auc = M.roc_auc(y, s, w)
  assert np.isnan(auc[0]) and auc[1] == pytest.approx(skm.roc_auc_score(y, s))


def test_unknown_labels_are_ignored():
  rng = np.random.default_rng(7)
  y, s = _case(rng, 30, ties=True, prevalence=0.5)
  y[:2] = [0, 1]
  y_masked = y.copy()
  y_masked[rng.random(30) < 0.3] = np.nan
  known = ~np.isnan(y_masked)
  assert M.roc_auc(y_masked, s) == pytest.approx(skm.roc_auc_score(y[known], s[known]))
  assert M.average_precision(y_masked, s) == pytest.approx(
    skm.average_precision_score(y[known], s[known])
  )
  t = M.threshold_metrics(y_masked, s, 0.5)
  assert t["accuracy"] == pytest.approx(skm.accuracy_score(y[known], s[known] >= 0.5))
  for ours, theirs in [
    (M.roc_curve(y_masked, s), skm.roc_curve(y[known], s[known], drop_intermediate=False)),
    (M.pr_curve(y_masked, s), skm.precision_recall_curve(y[known], s[known])),
  ]:
    for a, b in zip(ours[:2], theirs[:2]):
      np.testing.assert_allclose(a, b)


def test_per_class_and_mean_auroc():
  rng = np.random.default_rng(3)
  labels = (rng.random((40, 3)) < 0.5).astype(float)
  labels[:, 2] = 0.0  # no positives: undefined, left out of the mean
  probs = rng.random((40, 3))
  per = M.roc_auc_per_class(labels, probs)
  assert np.isnan(per[2])
  np.testing.assert_allclose(
    per[:2], [skm.roc_auc_score(labels[:, c], probs[:, c]) for c in range(2)]
  )
  assert M.mean_roc_auc(labels, probs) == pytest.approx(per[:2].mean())


def test_ppv_npv_at_prevalence_by_bayes():
  # sens .9, spec .8, prevalence .1: PPV = .09 / (.09 + .18) = 1/3; NPV = .72 / (.72 + .01)
  ppv, npv = M.ppv_npv_at_prevalence(0.9, 0.8, 0.1)
  assert ppv == pytest.approx(1 / 3) and npv == pytest.approx(0.72 / 0.73)
  # At the sample's own prevalence it equals the sample's PPV/NPV.
  rng = np.random.default_rng(5)
  y, s = _case(rng, 200, ties=False, prevalence=0.3)
  m = M.threshold_metrics(y, s, 0.5)
  ppv, npv = M.ppv_npv_at_prevalence(m["sensitivity"], m["specificity"], m["prevalence"])
  assert ppv == pytest.approx(m["ppv"]) and npv == pytest.approx(m["npv"])
  with pytest.raises(ValueError, match="prevalence"):
    M.ppv_npv_at_prevalence(0.9, 0.8, 0.0)


def test_bad_labels_raise():
  with pytest.raises(ValueError, match=r"y_true\[1\]"):
    M.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="1-D"):
    M.roc_auc(np.zeros((3, 2)), np.zeros((3, 2)))
  for ranking in (M.roc_auc, M.average_precision, M.roc_curve, M.pr_curve):
    with pytest.raises(ValueError, match="y_score shape"):
      ranking([0, 1, 1], [0.1, 0.2])
