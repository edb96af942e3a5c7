"""Augmentation presets: shapes, determinism, exact geometry, label-keeping choices."""

import grain
import numpy as np
import pytest

from mdx.data import augment


def _record(size=32, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "image": rng.random((size, size, channels), dtype=np.float32),
    "image_id": "x",
    "labels": np.zeros(3, np.float32),
  }


def _apply(transforms, record, seed):
  rng = np.random.default_rng(seed)
  for t in transforms:
    record = (
      t.random_map(record, rng) if isinstance(t, grain.transforms.RandomMap) else t.map(record)
    )
  return record


@pytest.mark.parametrize(
  "name,channels", [("chest_xray", 1), ("dermatology", 3), ("fundus", 3), ("histopathology", 3)]
)
def test_presets_keep_shape_dtype_range_and_are_deterministic(name, channels):
  transforms = augment.make(name)
  assert transforms and all(
    isinstance(t, (grain.transforms.RandomMap, grain.transforms.Map)) for t in transforms
  )
  rec = _record(channels=channels)
  a, b, c = (_apply(transforms, rec, s)["image"] for s in (1, 1, 2))
  assert a.shape == rec["image"].shape and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 1.0
  np.testing.assert_array_equal(a, b)  # same rng seed -> same image
  assert not np.array_equal(a, c)  # another seed -> another image
  assert not np.array_equal(a, rec["image"])  # it changed something
  assert _apply(transforms, rec, 1)["labels"] is rec["labels"]  # labels untouched


def test_none_and_unknown():
  assert augment.make(None) == [] and augment.make("none") == []
  with pytest.raises(ValueError, match="chest_xray"):
    augment.make("chest")


def test_chest_preset_never_flips():
  geom = [t for t in augment.make("chest_xray") if isinstance(t, augment.RandomGeometry)]
  assert geom and not any(t.flip_lr or t.flip_ud or t.rot90 for t in geom)
  assert all(t.rotation_deg <= 15 for t in geom)
  # An image with a bright left half stays bright on the left under every draw.
  img = np.zeros((32, 32, 1), np.float32)
  img[:, :16] = 1.0
  for seed in range(20):
    out = _apply(augment.make("chest_xray"), {"image": img}, seed)["image"]
    assert out[:, :12].mean() > out[:, 20:].mean()


def test_affine_matches_exact_array_operations():
  img = np.random.default_rng(0).random((9, 9, 2)).astype(np.float32)
  m, off = augment.affine_matrix((9, 9), rotation_deg=90.0)
  # Counter-clockwise in (row, col) = rotation in the array plane; compare to np.rot90 either way.
  out = augment.warp(img, m, off)
  assert np.allclose(out, np.rot90(img, 1), atol=1e-5) or np.allclose(
    out, np.rot90(img, -1), atol=1e-5
  )
  m, off = augment.affine_matrix((9, 9), translate=(2.0, -1.0))
  out = augment.warp(img, m, off)
  np.testing.assert_allclose(out[2:, :-1], img[:-2, 1:], atol=1e-6)  # o = i + t
  assert np.all(out[:2] == 0)
  m, off = augment.affine_matrix((9, 9), scale=2.0)
  out = augment.warp(img, m, off)
  np.testing.assert_allclose(out[4, 4], img[4, 4], atol=1e-6)  # centre is fixed under zoom
  np.testing.assert_allclose(out[6, 4], img[5, 4], atol=1e-6)  # 2 px out = 1 px in


def test_stain_mix_identity_and_change():
  img = np.random.default_rng(1).uniform(0.2, 0.9, (8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(augment.stain_mix(img, np.ones(3), np.zeros(3)), img, atol=1e-5)
  assert not np.allclose(augment.stain_mix(img, np.array([1.1, 1, 1]), np.zeros(3)), img, atol=1e-3)


def test_works_in_a_grain_dataset():
  recs = [_record(16, 1, s) for s in range(4)]
  ds = grain.MapDataset.source(recs).seed(3)
  for t in augment.make("chest_xray"):
    ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else ds.map(t)
  first = [ds[i]["image"] for i in range(4)]
  again = [ds[i]["image"] for i in range(4)]
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 16, 1)
