"""NIfTI I/O, MSD and BraTS sources on fixtures written in the real formats."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from mdx.data.volume import brats, msd, nifti


def _save(path, data, affine=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)


AFFINE = np.array([[0.9, 0, 0, -10], [0, 1.1, 0, 5], [0, 0, 2.0, 3], [0, 0, 0, 1]])


def test_load_save_keeps_affine_and_spacing(tmp_path):
  data = np.random.default_rng(0).integers(0, 3, (5, 6, 7)).astype(np.uint8)
  path = str(tmp_path / "a" / "x.nii.gz")
  nifti.save_nifti(path, data, AFFINE)
  vol = nifti.load_nifti(path, np.int32)
  np.testing.assert_array_equal(vol.data, data)
  np.testing.assert_allclose(vol.affine, AFFINE)
  np.testing.assert_allclose(vol.spacing, [0.9, 1.1, 2.0], rtol=1e-6)
  assert nib.load(path).get_data_dtype() == np.uint8


def test_truncated_file_names_the_case(tmp_path):
  path = str(tmp_path / "case_7.nii.gz")
  _save(path, np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
  raw = open(path, "rb").read()
  open(path, "wb").write(raw[: len(raw) // 2])
  with pytest.raises(ValueError, match="case_7.*truncated"):
    nifti.load_nifti(path, case="case_7")
  with pytest.raises(FileNotFoundError, match="missing"):
    nifti.load_nifti(str(tmp_path / "missing.nii.gz"))


def _msd(root, shapes, with_json, channels=1):
  rng = np.random.default_rng(1)
  training = []
  for i, (ishape, lshape) in enumerate(shapes):
    name = f"hippocampus_{i:03d}.nii.gz"
    _save(f"{root}/imagesTr/{name}", rng.random(ishape).astype(np.float32), AFFINE)
    _save(f"{root}/labelsTr/{name}", rng.integers(0, 3, lshape).astype(np.uint8), AFFINE)
    training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
  # macOS resource files shipped in the MSD tarballs must be ignored.
  open(f"{root}/imagesTr/._hippocampus_000.nii.gz", "wb").write(b"junk")
  if with_json:
    json.dump(
      {
        "modality": {str(c): f"m{c}" for c in range(channels)},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "training": training,
      },
      open(f"{root}/dataset.json", "w"),
    )


@pytest.mark.parametrize("with_json", [True, False])
def test_msd_source_3d(tmp_path, with_json):
  _msd(str(tmp_path), [((6, 7, 5), (6, 7, 5)), ((4, 5, 6), (4, 5, 6))], with_json)
  src = msd.MSDSource(str(tmp_path), class_names=None if with_json else ("b", "a", "p"))
  assert len(src) == 2
  assert list(src.case_ids()) == ["hippocampus_000", "hippocampus_001"]
  r = src[1]
  assert r["image"].shape == (4, 5, 6, 1) and r["image"].dtype == np.float32
  assert r["label"].shape == (4, 5, 6) and r["label"].dtype == np.int32
  np.testing.assert_allclose(r["affine"], AFFINE)
  np.testing.assert_allclose(r["spacing"], [0.9, 1.1, 2.0], rtol=1e-6)
  if with_json:
    assert src.class_names == ("background", "Anterior", "Posterior")


def test_msd_source_4d_channels(tmp_path):
  _msd(str(tmp_path), [((6, 7, 5, 4), (6, 7, 5))], True, channels=4)
  assert msd.MSDSource(str(tmp_path))[0]["image"].shape == (6, 7, 5, 4)


def test_msd_mismatched_shapes_and_channels(tmp_path):
  _msd(str(tmp_path / "a"), [((6, 7, 5), (6, 7, 5)), ((6, 7, 5), (6, 7, 4))], True)
  src = msd.MSDSource(str(tmp_path / "a"))
  with pytest.raises(ValueError, match="hippocampus_001.*spatial shape"):
    src[1]
  _msd(str(tmp_path / "b"), [((6, 7, 5, 2), (6, 7, 5))], True, channels=4)
  with pytest.raises(ValueError, match="hippocampus_000.*2 channels.*expects 4"):
    msd.MSDSource(str(tmp_path / "b"))[0]


def _brats_case(root, case, shape=(6, 8, 5), seg_shape=None, t2_shape=None):
  rng = np.random.default_rng(2)
  d = f"{root}/{case}"
  for m in brats.MODALITIES:
    _save(
      f"{d}/{case}_{m}.nii.gz",
      rng.random(t2_shape if (m == "t2" and t2_shape) else shape).astype(np.float32),
      AFFINE,
    )
  seg = rng.choice([0, 1, 2, 4], seg_shape or shape).astype(np.uint8)
  _save(f"{d}/{case}_seg.nii.gz", seg, AFFINE)
  return seg


def test_brats_classes_and_regions(tmp_path):
  seg = _brats_case(str(tmp_path), "BraTS2021_00000")
  src = brats.BraTSSource(str(tmp_path), label_mode="classes")
  r = src[0]
  assert r["image"].shape == (6, 8, 5, 4)
  np.testing.assert_array_equal(r["label"], np.where(seg == 4, 3, seg))
  reg = brats.BraTSSource(str(tmp_path), label_mode="regions")[0]["label"]
  assert reg.shape == (6, 8, 5, 3)
  np.testing.assert_array_equal(reg[..., 0], seg > 0)
  np.testing.assert_array_equal(reg[..., 1], np.isin(seg, [1, 4]))
  np.testing.assert_array_equal(reg[..., 2], seg == 4)
  np.testing.assert_allclose(r["affine"], AFFINE)


def test_brats_errors_name_the_case(tmp_path):
  _brats_case(str(tmp_path / "a"), "Brats18_1", t2_shape=(6, 8, 4))
  with pytest.raises(ValueError, match="Brats18_1.*co-registered"):
    brats.BraTSSource(str(tmp_path / "a"))[0]
  _brats_case(str(tmp_path / "b"), "Brats18_2", seg_shape=(6, 8, 6))
  with pytest.raises(ValueError, match="Brats18_2.*must match"):
    brats.BraTSSource(str(tmp_path / "b"))[0]
  os.remove(f"{tmp_path}/b/Brats18_2/Brats18_2_t1ce.nii.gz")
  with pytest.raises(FileNotFoundError, match="Brats18_2_t1ce"):
    brats.BraTSSource(str(tmp_path / "b"))[0]
  with pytest.raises(ValueError, match=r"\[3\]"):
    brats.convert_labels(np.array([0, 3]), "classes", "c")
