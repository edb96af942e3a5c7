"""Volume standardisation, sub-volume sampling and 3D augmentation as grain transforms."""

import grain
import numpy as np

from mdx.data.standardize import Standardize
from mdx.data.volume import transforms as vt


def _record(shape=(20, 24, 16)):
  label = np.zeros(shape, np.int32)
  label[2:6, 3:7, 2:5] = 1
  label[3:5, 4:6, 3:4] = 2
  image = np.random.default_rng(0).random(shape + (1,)).astype(np.float32)
  return {"image": image, "label": label, "case_id": "c"}


def test_random_subvolume_limits_background():
  rec = _record()
  t = vt.RandomSubVolume(size=(8, 8, 8), max_background=0.95, foreground_rate=0.0, max_tries=1000)
  rng = np.random.default_rng(0)
  for _ in range(20):
    out = t.random_map(rec, rng)
    assert out["image"].shape == (8, 8, 8, 1) and out["label"].shape == (8, 8, 8)
    assert (out["label"] > 0).mean() >= 0.05
  # with no limit, most uniform patches of this volume are pure background
  loose = vt.RandomSubVolume(size=(8, 8, 8), max_background=1.0)
  fracs = [(loose.random_map(rec, rng)["label"] > 0).mean() for _ in range(50)]
  assert np.mean(np.asarray(fracs) < 0.05) > 0.5


def test_random_subvolume_foreground_centred_and_padding():
  rec = _record((6, 6, 6))
  rec["label"][:] = 0
  rec["label"][5, 5, 5] = 1
  t = vt.RandomSubVolume(size=(8, 4, 4), foreground_rate=1.0)
  out = t.random_map(rec, np.random.default_rng(0))
  assert out["image"].shape == (8, 4, 4, 1)  # padded along D
  assert out["label"].sum() == 1


def test_augmentations_keep_label_aligned():
  rec = _record((12, 12, 12))
  rec["image"] = rec["label"][..., None].astype(np.float32)  # image == label: alignment visible
  rng = np.random.default_rng(3)
  for t in (vt.RandomFlip3D(axes=(0, 1, 2), p=1.0), vt.RandomRotate3D(max_degrees=15, p=1.0)):
    out = t.random_map(rec, rng)
    assert out["label"].shape == rec["label"].shape and out["label"].dtype == rec["label"].dtype
    agree = (np.round(out["image"][..., 0]) == out["label"]).mean()
    assert agree > 0.95
  flipped = vt.RandomFlip3D(axes=(0,), p=1.0).random_map(rec, rng)
  np.testing.assert_array_equal(flipped["label"], rec["label"][::-1])
  inten = vt.RandomIntensity(scale=0.2, shift=0.5).random_map(rec, np.random.default_rng(0))
  a = inten["image"][rec["label"] == 1].mean() - inten["image"][rec["label"] == 0].mean()
  assert 0.8 <= a <= 1.2 and not np.allclose(inten["image"], rec["image"])


def test_grain_pipeline_is_deterministic():
  recs = [_record() for _ in range(4)]

  def pipeline():
    ds = grain.MapDataset.source(recs).map(Standardize("nonzero"))
    ds = ds.random_map(vt.RandomSubVolume(size=(8, 8, 8)), seed=7)
    ds = ds.random_map(vt.RandomFlip3D(axes=(0,)), seed=8).batch(2)
    return [b for b in ds]

  a, b = pipeline(), pipeline()
  assert a[0]["image"].shape == (2, 8, 8, 8, 1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
