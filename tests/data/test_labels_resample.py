"""Reader agreement and consensus (vs sklearn and a hand-computed Fleiss example); resampling."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from mdx.data import consensus as labels
from mdx.data import resample


def test_cohen_kappa_matches_sklearn():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 3, 200)
  b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 3, 200))
  assert labels.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
  a2 = a.astype(float)
  a2[:10] = np.nan
  assert labels.cohen_kappa(a2, b) == pytest.approx(cohen_kappa_score(a[10:], b[10:]), abs=1e-12)


def test_fleiss_kappa_wikipedia_example():
  # Fleiss (1971) / Wikipedia worked example: 10 subjects, 14 raters, 5 categories -> kappa 0.210.
  counts = np.array(
    [
      [0, 0, 0, 0, 14],
      [0, 2, 6, 4, 2],
      [0, 0, 3, 5, 6],
      [0, 3, 9, 2, 0],
      [2, 2, 8, 1, 1],
      [7, 7, 0, 0, 0],
      [3, 2, 6, 3, 0],
      [2, 5, 3, 2, 2],
      [6, 5, 2, 1, 0],
      [0, 2, 2, 3, 7],
    ]
  )
  assert labels.fleiss_kappa(counts) == pytest.approx(0.20993, abs=1e-4)
  reads = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 1], [0, 0, 0]])
  c = labels.reads_to_counts(reads)
  # Hand: P_i = 1, 1, 1/3, 1 -> P_bar = 5/6; p = (7/12, 5/12) -> P_e = 74/144;
  # kappa = (5/6 - P_e) / (1 - P_e)
  pe = (7 / 12) ** 2 + (5 / 12) ** 2
  assert labels.fleiss_kappa(c) == pytest.approx((5 / 6 - pe) / (1 - pe))


def test_majority_vote_tie_rules():
  reads = np.array([[1, 1, 0], [1, 0, np.nan], [0, 0, 1], [np.nan, np.nan, np.nan]])
  np.testing.assert_array_equal(labels.majority_vote(reads, "unknown"), [1, np.nan, 0, np.nan])
  np.testing.assert_array_equal(labels.majority_vote(reads, "positive"), [1, 1, 0, 1])
  np.testing.assert_array_equal(labels.majority_vote(reads, "negative"), [1, 0, 0, 0])
  np.testing.assert_array_equal(labels.majority_vote(reads, "reader:1"), [1, 0, 0, np.nan])
  with pytest.raises(ValueError, match="tie rule"):
    labels.majority_vote(reads, "coin")


def test_oversample_per_finding_fixed_length_and_deterministic():
  y = np.zeros((100, 2), np.float32)
  y[:10, 0] = 1  # finding 0: 10% positive
  y[5:25, 1] = 1  # finding 1: 20% positive
  y[90, 1] = np.nan
  pol = {"mode": "oversample", "ratio": 1.0, "max_repeat": 20}
  f = resample.repeat_factors(y, pol)
  assert f[0] == pytest.approx(9.0) and f[7] == pytest.approx(9.0)  # max over its findings
  assert f[20] == pytest.approx(80 / 20) and f[50] == 1.0 and f[90] == 1.0
  e0 = resample.resampled_indices(y, pol, seed=0, epoch=0)
  e1 = resample.resampled_indices(y, pol, seed=0, epoch=1)
  assert len(e0) == len(e1) == int(round(f.sum()))
  np.testing.assert_array_equal(e0, resample.resampled_indices(y, pol, seed=0, epoch=0))
  assert not np.array_equal(e0, e1) and not np.all(np.diff(e0) >= 0)  # shuffled
  bal = resample.class_balance(y, e0, ["a", "b"], log=False)
  assert bal["a"] > 0.3 and bal["b"] > 0.4
  assert resample.class_balance(y, None, ["a", "b"], log=False)["a"] == pytest.approx(0.1)


def test_undersample_and_errors():
  y = np.zeros((100, 1), np.float32)
  y[:10] = 1
  idx = resample.resampled_indices(y, {"mode": "undersample", "ratio": 1.0}, seed=0, epoch=0)
  assert len(idx) == 20 and set(range(10)) <= set(idx.tolist())
  assert len(np.unique(idx)) == 20
  with pytest.raises(ValueError, match="mode"):
    resample.resampled_indices(y, {"mode": "smote"}, 0, 0)
  with pytest.raises(ValueError, match="findings"):
    resample.resampled_indices(y, {"findings": ["Mass"]}, 0, 0, findings=["A"])
