"""3D brain phantoms: deterministic, BraTS-shaped, tumour sub-regions distinct per modality."""

import numpy as np
import pytest

from mdx.data.volume import brain_phantoms, brats


def test_phantoms_shape_determinism_and_regions():
  src = brain_phantoms.BrainPhantoms(3, (24, 32, 24), seed=5, label_mode="regions")
  r = src[1]
  assert r["image"].shape == (24, 32, 24, 4) and r["image"].dtype == np.float32
  assert r["label"].shape == (24, 32, 24, 3)
  np.testing.assert_array_equal(r["image"], src[1]["image"])
  assert not np.array_equal(r["image"], src[2]["image"])
  assert not np.array_equal(
    r["image"], brain_phantoms.BrainPhantoms(3, (24, 32, 24), seed=6)[1]["image"]
  )
  wt, tc, et = (r["label"][..., i].astype(bool) for i in range(3))
  assert et.any() and (tc >= et).all() and (wt >= tc).all()  # nested regions
  # skull-stripped: zero outside the brain, tumour inside it
  assert (r["image"][~wt].min() == 0) and (r["image"][wt] > 0).all()


def test_subregions_look_different_per_modality():
  image, raw = brain_phantoms.BrainPhantoms(4, (32, 32, 32), seed=0).raw(0)
  assert set(np.unique(raw)) == {0, 1, 2, 4}
  flair, t1, t1ce, t2 = range(4)
  mean = {k: image[raw == k].mean(0) for k in (1, 2, 4)}
  brain = image[(raw == 0) & (image[..., 0] > 0)].mean(0)
  assert mean[2][flair] > 1.4 * brain[flair]  # oedema bright on FLAIR
  assert mean[4][t1ce] > 1.5 * brain[t1ce]  # enhancing rim bright on T1ce
  assert mean[1][t1ce] < 0.6 * brain[t1ce]  # necrosis dark on T1ce
  assert mean[1][t2] > 1.2 * brain[t2]  # necrosis bright on T2


def test_classes_mode_matches_brats_conversion():
  src = brain_phantoms.BrainPhantoms(2, (24, 24, 24), label_mode="classes")
  _, raw = src.raw(0)
  np.testing.assert_array_equal(src[0]["label"], brats.convert_labels(raw, "classes"))
  with pytest.raises(ValueError, match="label_mode"):
    brain_phantoms.BrainPhantoms(2, label_mode="bad")
