"""One standardisation core for 2D films and 3D scans, checked against the definitions."""

import numpy as np
import pytest

from mdx.data import standardize
from mdx.data.standardize import standardize as standardize_array


def _record(size=32, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": rng.random((size, size, channels), dtype=np.float32),
    "image_id": "x",
    "labels": np.zeros(3, np.float32),
  }


def test_standardize():
  rec = _record(channels=3)
  (t,) = standardize.transforms("per_image")
  out = t.map(rec)["image"]
  assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-3
  mean, std = standardize.dataset_mean_std([rec["image"], rec["image"] * 0.5])
  both = np.concatenate([rec["image"], rec["image"] * 0.5]).reshape(-1, 3)
  np.testing.assert_allclose(mean, both.mean(0), rtol=1e-5)
  np.testing.assert_allclose(std, both.std(0), rtol=1e-4)
  (t,) = standardize.transforms("dataset", mean, std)
  np.testing.assert_allclose(t.map(rec)["image"], (rec["image"] - mean) / (std + 1e-6), rtol=1e-5)
  assert standardize.transforms(None) == []
  with pytest.raises(ValueError, match="mean and std"):
    standardize.transforms("dataset")
  with pytest.raises(ValueError, match="unknown"):
    standardize.transforms("global")


def test_standardize_nonzero_matches_hand_computation():
  rng = np.random.default_rng(0)
  x = np.zeros((6, 6, 6, 2), np.float32)
  x[1:5, 1:5, 1:5] = rng.random((4, 4, 4, 2)) * 100 + 5
  out = standardize_array(x, "nonzero")
  for c in range(2):
    v = x[1:5, 1:5, 1:5, c]
    np.testing.assert_allclose(
      out[1:5, 1:5, 1:5, c], (v - v.mean()) / v.std(), rtol=1e-4, atol=1e-5
    )
  assert (out[0] == 0).all()


def test_standardize_per_slice_course_variant():
  rng = np.random.default_rng(1)
  x = rng.random((5, 4, 3, 2)).astype(np.float32)
  x[..., 1, 0] = 7.0  # a constant slice: only centred
  out = standardize_array(x, "per_slice")
  for c in range(2):
    for z in range(3):
      s = x[:, :, z, c]
      centred = s - s.mean()
      expect = centred / centred.std() if centred.std() != 0 else centred
      np.testing.assert_allclose(out[:, :, z, c], expect, rtol=1e-4, atol=1e-5)
  assert (out[:, :, 1, 0] == 0).all()
  with pytest.raises(ValueError, match="standardize"):
    standardize_array(x, "bad")


def test_per_channel_and_per_image_on_films_and_scans():
  rng = np.random.default_rng(3)
  for shape in ((9, 7, 2), (5, 6, 4, 2)):  # a film [H, W, C] and a scan [D, H, W, C]
    x = (rng.random(shape) * [10.0, 300.0]).astype(np.float32)
    spatial = tuple(range(x.ndim - 1))
    out = standardize_array(x, "per_channel")
    expect = (x - x.mean(spatial, keepdims=True)) / x.std(spatial, keepdims=True)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
    pooled = standardize_array(x, "per_image")
    np.testing.assert_allclose(pooled, (x - x.mean()) / (x.std() + 1e-6), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(standardize_array(x, "none"), x)
  with pytest.raises(ValueError, match="per_slice"):
    standardize_array(np.ones((4, 4, 1), np.float32), "per_slice")


def test_plan_specs_ct_and_zscore_by_hand():
  x = np.array(
    [[[[-1200.0, 5.0], [40.0, 90.0]], [[3000.0, -7.0], [100.0, 30.0]]]], np.float32
  )  # [1, 2, 2, 2]: a scan of two channels
  spec = {"mode": "ct", "clip": [[-100, 200], [0, 50]], "mean": [10, 20], "std": [50, 5]}
  out = standardize_array(x, spec)
  lo, hi = np.array([-100.0, 0.0]), np.array([200.0, 50.0])
  expect = (np.minimum(np.maximum(x, lo), hi) - [10.0, 20.0]) / [50.0, 5.0]
  np.testing.assert_allclose(out, expect, rtol=1e-6)
  assert out[0, 1, 0, 0] == (200 - 10) / 50 and out[0, 0, 0, 0] == (-100 - 10) / 50
  # zscore: per image and channel, the 'per_channel' mode
  z = standardize_array(x, {"mode": "zscore"})
  flat = x.reshape(-1, 2).astype(np.float64)
  np.testing.assert_allclose(
    z.reshape(-1, 2), (flat - flat.mean(0)) / flat.std(0), rtol=1e-5, atol=1e-6
  )
  # the same spec through the grain transform, also as a ConfigDict (config.data.standardize)
  import ml_collections

  (t,) = standardize.transforms(ml_collections.ConfigDict(spec))
  np.testing.assert_allclose(t.map({"image": x})["image"], expect, rtol=1e-6)
  assert standardize.check(spec) == {
    "mode": "ct",
    "clip": [[-100.0, 200.0], [0.0, 50.0]],
    "mean": [10.0, 20.0],
    "std": [50.0, 5.0],
  }
  # string modes are unchanged
  assert standardize.check("nonzero") == "nonzero" and standardize.check(None) is None


def test_bad_plan_specs_are_one_line_errors():
  good = {"mode": "ct", "clip": [[-100, 200]], "mean": [10], "std": [50]}
  bad = [
    {"mode": "minmax"},
    {"mode": "zscore", "mean": [1]},
    {k: v for k, v in good.items() if k != "std"},
    {**good, "clip": [[300, 200]]},
    {**good, "std": [0]},
    {**good, "mean": [10, 11]},
    {**good, "clip": [[-100, float("nan")]]},
    ("ct",),
  ]
  for spec in bad:
    with pytest.raises(ValueError, match="config.data.standardize") as e:
      standardize.transforms(spec)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="1 channel.*has 2"):
    standardize_array(np.zeros((2, 2, 2, 2), np.float32), good)
