"""Patient-level bootstrap: coverage on simulated data with a known AUROC, DeLong against its
definition."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mdx.evaluate import bootstrap as B
from mdx.evaluate.metrics import roc_auc


def _coverage(rng, reps, n_patients, images_per_patient, d, sigma, n_resamples, by_patient):
  """Share of repetitions whose 95% CI contains the true image-level AUROC of a binormal model.

  Each patient has one label and a latent score u ~ N(d * y, 1); each of their images scores
  u + N(0, sigma^2). True AUROC = Phi(d / sqrt(2 (1 + sigma^2))).
  """
  true_auc = stats.norm.cdf(d / np.sqrt(2 * (1 + sigma**2)))
  covered, widths = 0, []
  for r in range(reps):
    y_pat = np.r_[np.zeros(n_patients // 2), np.ones(n_patients - n_patients // 2)]
    u = rng.normal(d * y_pat, 1.0)
    pid = np.repeat(np.arange(n_patients), images_per_patient)
    y = y_pat[pid]
    s = u[pid] + rng.normal(0, sigma, len(pid))
    samples = B.bootstrap(
      lambda w: {"auc": roc_auc(y, s, w)},  # noqa: B023 (used at once)
      pid if by_patient else None,
      len(y),
      n_resamples,
      seed=r,
    )["auc"]
    lo, hi = B.percentile_ci(samples)
    covered += lo <= true_auc <= hi
    widths.append(hi - lo)
  return covered / reps, np.mean(widths)


def test_ci_covers_true_auroc_about_95_percent():
  rng = np.random.default_rng(0)
  cov, width = _coverage(
    rng,
    reps=200,
    n_patients=80,
    images_per_patient=1,
    d=1.2,
    sigma=0.0,
    n_resamples=300,
    by_patient=True,
  )
  # 200 reps at 95%: sd 1.5 points. A fixed wide interval covers 100%, a fixed narrow one ~0%.
  assert 0.88 <= cov <= 0.985, cov
  assert 0.05 < width < 0.4


def test_patient_resampling_keeps_coverage_where_image_resampling_fails():
  """Four correlated images per patient: resampling images gives too narrow intervals."""
  rng = np.random.default_rng(1)
  kw = dict(reps=120, n_patients=60, images_per_patient=4, d=1.2, sigma=0.3, n_resamples=300)
  cov_patient, w_patient = _coverage(rng, by_patient=True, **kw)
  cov_image, w_image = _coverage(rng, by_patient=False, **kw)
  assert cov_patient >= 0.87, cov_patient
  assert cov_image < 0.85, cov_image
  assert w_image < 0.75 * w_patient


def test_resample_weights_are_per_patient_and_reproducible():
  pid = np.array(["a", "a", "b", "c", "c", "c"])
  w1 = np.concatenate(list(B.resample_weights(pid, 6, 50, seed=3, chunk_elems=60)))
  w2 = np.concatenate(list(B.resample_weights(pid, 6, 50, seed=3)))
  assert w1.shape == (50, 6)
  np.testing.assert_array_equal(w1, w2)  # chunking does not change the resamples
  assert np.all(w1[:, 0] == w1[:, 1]) and np.all(w1[:, 3] == w1[:, 5])  # same patient, same weight
  counts = w1[:, [0, 2, 3]]  # one column per patient
  np.testing.assert_array_equal(counts.sum(1), 3)  # 3 patients drawn per resample
  assert not np.array_equal(w1, np.concatenate(list(B.resample_weights(pid, 6, 50, seed=4))))


def test_percentile_ci_handles_undefined_resamples():
  lo, hi = B.percentile_ci(np.full(10, np.nan))
  assert np.isnan(lo) and np.isnan(hi)
  s = np.r_[np.linspace(0, 1, 101), np.nan, np.nan]
  lo, hi = B.percentile_ci(s)
  assert lo == pytest.approx(0.025) and hi == pytest.approx(0.975)


def _delong_bruteforce(y, a, b):
  """DeLong et al. (1988) from the definition: placement values psi(X_i, Y_j) over all pairs."""
  pos, neg = y == 1, y == 0
  out = []
  for s in (a, b):
    psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
    out.append((psi.mean(), psi.mean(1), psi.mean(0)))
  m, n = pos.sum(), neg.sum()
  s10 = np.cov(np.array([o[1] for o in out]))
  s01 = np.cov(np.array([o[2] for o in out]))
  s = s10 / m + s01 / n
  return out[0][0], out[1][0], np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_definition(seed):
  rng = np.random.default_rng(seed)
  y = (rng.random(70) < 0.4).astype(float)
  a = np.round(rng.normal(y, 1.0), 1)  # ties
  b = np.round(a * 0.5 + rng.normal(0.3 * y, 1.0), 1)
  res = B.delong_test(y, a, b)
  auc_a, auc_b, se = _delong_bruteforce(y, a, b)
  assert res["auroc_a"] == pytest.approx(roc_auc_score(y, a))
  assert res["auroc_b"] == pytest.approx(auc_b)
  assert res["se"] == pytest.approx(se, rel=1e-10)
  assert res["p_value"] == pytest.approx(2 * stats.norm.sf(abs(auc_a - auc_b) / se))
  assert res["ci_low"] < res["diff"] < res["ci_high"]


def test_paired_comparisons_detect_a_real_difference_and_not_a_null_one():
  rng = np.random.default_rng(11)
  y = np.r_[np.zeros(150), np.ones(150)]
  good = rng.normal(1.5 * y, 1.0)
  bad = rng.normal(0.3 * y, 1.0)
  assert B.delong_test(y, good, bad)["p_value"] < 1e-3
  boot = B.paired_bootstrap_auroc(y, good, bad, n_resamples=400, seed=0)
  assert boot["p_value"] < 0.01 and boot["ci_low"] > 0
  same = B.delong_test(y, good, good + 1e-9 * rng.random(300))
  assert same["p_value"] > 0.5
  # DeLong and the bootstrap agree on the size of the uncertainty.
  dl = B.delong_test(y, good, bad)
  assert (boot["ci_high"] - boot["ci_low"]) == pytest.approx(dl["ci_high"] - dl["ci_low"], rel=0.3)
