"""Tests of the built-in chest X-ray phantoms (mdx/data/phantoms.py)."""

import hashlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from mdx.data.cxr import phantoms
from mdx.data.cxr.findings import NIH_FINDINGS
from mdx.data.cxr.phantoms import CHRONIC_FINDINGS, DEFAULT_PREVALENCE, ChestXrayPhantoms

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def small():
  return ChestXrayPhantoms(num_patients=40, image_size=64, seed=1)


@pytest.mark.parametrize("size", [64, 128])
def test_record_types_and_shapes(size):
  ds = ChestXrayPhantoms(num_patients=5, image_size=size, seed=0)
  rec = ds[3]
  assert rec["image"].dtype == np.uint8 and rec["image"].shape == (size, size, 1)
  assert rec["labels"].dtype == np.float32 and rec["labels"].shape == (len(NIH_FINDINGS),)
  assert set(np.unique(rec["labels"])) <= {0.0, 1.0}
  assert isinstance(rec["patient_id"], str) and isinstance(rec["image_id"], str)
  assert ds.findings == NIH_FINDINGS
  # A radiograph, not a flat picture: dark lungs/background and bright mediastinum/abdomen.
  img = rec["image"][..., 0]
  assert img.std() > 30 and img.min() < 40 and img.max() > 200


def test_deterministic_across_instances_and_order():
  a = ChestXrayPhantoms(num_patients=20, image_size=64, seed=5)
  b = ChestXrayPhantoms(num_patients=20, image_size=64, seed=5)
  idx = [11, 2, 7, 0, len(a) - 1]
  first = {i: a[i]["image"] for i in idx}
  for i in reversed(idx):
    np.testing.assert_array_equal(b[i]["image"], first[i])
    np.testing.assert_array_equal(a[i]["image"], first[i])  # again, after other records
  np.testing.assert_array_equal(a.labels(), b.labels())
  c = ChestXrayPhantoms(num_patients=20, image_size=64, seed=6)
  assert not np.array_equal(c[0]["image"], a[0]["image"])


def test_deterministic_in_another_process_and_after_pickling():
  ds = ChestXrayPhantoms(num_patients=10, image_size=64, seed=3)
  digest = hashlib.sha256(ds[7]["image"].tobytes()).hexdigest()
  code = (
    "import hashlib; from mdx.data.cxr.phantoms import ChestXrayPhantoms as P; "
    "img = P(num_patients=10, image_size=64, seed=3)[7]['image']; "
    "print(hashlib.sha256(img.tobytes()).hexdigest())"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == digest
  clone = pickle.loads(pickle.dumps(ds))
  assert hashlib.sha256(clone[7]["image"].tobytes()).hexdigest() == digest


def test_labels_ids_agree_with_records(small, monkeypatch):
  labels, pids, iids = small.labels(), small.patient_ids(), small.image_ids()
  assert labels.shape == (len(small), 14) and labels.dtype == np.float32
  assert len(pids) == len(iids) == len(small) and len(set(iids)) == len(small)
  for i in range(0, len(small), 7):
    rec = small[i]
    np.testing.assert_array_equal(rec["labels"], labels[i])
    assert rec["patient_id"] == pids[i] and rec["image_id"] == iids[i]

  def no_render(*args, **kwargs):
    raise AssertionError("labels/ids must not render images")

  monkeypatch.setattr(ChestXrayPhantoms, "render", no_render)
  fresh = ChestXrayPhantoms(num_patients=40, image_size=64, seed=1)
  np.testing.assert_array_equal(fresh.labels(), labels)
  np.testing.assert_array_equal(fresh.patient_ids(), pids)


def test_prevalences_close_to_nih():
  n_pat = 3000
  ds = ChestXrayPhantoms(num_patients=n_pat, image_size=64, seed=0)
  y = ds.labels()
  for k, f in enumerate(NIH_FINDINGS):
    p = DEFAULT_PREVALENCE[f]
    tol = 4 * np.sqrt(p * (1 - p) / n_pat) + 0.002  # studies of a patient are correlated
    assert abs(y[:, k].mean() - p) < tol, (f, y[:, k].mean(), p)
  no_finding = (y.sum(1) == 0).mean()
  assert 0.4 < no_finding < 0.6
  assert (y.sum(1) >= 2).mean() > 0.05  # co-occurrence happens


def test_several_studies_per_patient_and_chronic_findings():
  ds = ChestXrayPhantoms(num_patients=500, image_size=64, seed=2)
  pids, y = ds.patient_ids(), ds.labels()
  uniq, counts = np.unique(pids, return_counts=True)
  assert len(uniq) == 500
  assert counts.min() == 1 and counts.max() == 5 and counts.mean() > 1.5
  varies = {f: False for f in NIH_FINDINGS}
  for p in uniq[counts > 1]:
    rows = y[pids == p]
    for k, f in enumerate(NIH_FINDINGS):
      varies[f] |= bool(rows[:, k].min() != rows[:, k].max())
  for f in CHRONIC_FINDINGS:
    assert not varies[f], f"{f} is chronic: must be constant within a patient"
  assert varies["Infiltration"] and varies["Effusion"]
  one = ChestXrayPhantoms(num_patients=50, image_size=64, seed=2, studies_per_patient=(1, 1))
  assert len(one) == 50 and len(set(one.patient_ids())) == 50


def test_necklace_identical_within_patient_and_different_between(small):
  pids = small.patient_ids()
  uniq, counts = np.unique(pids, return_counts=True)
  p = uniq[counts >= 2][0]
  i, j = np.flatnonzero(pids == p)[:2]
  a = small.render(i, (), acquisition=False)
  b = small.render(j, (), acquisition=False)
  assert a.necklace.sum() > 10
  np.testing.assert_array_equal(a.necklace, b.necklace)
  np.testing.assert_array_equal(a.image[a.necklace], b.image[b.necklace])
  assert a.image[a.necklace].mean() > 200  # metal beads are bright
  other = np.flatnonzero(pids != p)[0]
  c = small.render(other, (), acquisition=False)
  assert not np.array_equal(a.necklace, c.necklace)
  # The bead pattern is unique per patient, and each record's necklace is drawn.
  codes = {tuple(small.necklace_pattern(k)) for k in range(5000)}
  assert len(codes) == 5000
  assert small.render(i).necklace.sum() > 10
  off = ChestXrayPhantoms(num_patients=40, image_size=64, seed=1, necklace=False)
  assert not off.render(i).necklace.any()


@pytest.mark.parametrize("finding", NIH_FINDINGS)
def test_signature_drawn_where_mask_says(small, finding):
  """Adding one finding changes the image inside its mask, and (almost) nowhere else."""
  for i in (3, 17, 30):
    with_f = small.render(i, (finding,))
    without = small.render(i, ())
    diff = np.abs(with_f.image[..., 0].astype(int) - without.image[..., 0])
    mask = with_f.masks[finding]
    assert set(with_f.masks) == {finding} and without.masks == {}
    assert mask.dtype == bool and mask.shape == (64, 64)
    assert 0 < mask.mean() < 0.6
    near = ndimage.binary_dilation(mask, iterations=2)
    assert diff[near].sum() >= 0.97 * diff.sum()
    assert diff[mask].mean() > 6, f"{finding} is too faint: {diff[mask].mean():.1f} grey levels"


def test_findings_keep_the_rest_of_the_picture(small):
  """Each finding has its own random stream: adding Mass does not move the Nodule."""
  both = small.render(5, ("Mass", "Nodule"))
  only = small.render(5, ("Nodule",))
  np.testing.assert_array_equal(both.masks["Nodule"], only.masks["Nodule"])


def test_mass_mask_larger_than_nodule_mask(small):
  mass = [small.render(i, ("Mass",)).masks["Mass"].sum() for i in range(0, 40, 4)]
  nodule = [small.render(i, ("Nodule",)).masks["Nodule"].sum() for i in range(0, 40, 4)]
  assert min(mass) > max(nodule)


def test_lesion_masks_match_labels(small):
  y = small.labels()
  i = int(np.flatnonzero(y.sum(1) >= 1)[0])
  masks = small.lesion_masks(i)
  assert set(masks) == {f for f, v in zip(NIH_FINDINGS, y[i]) if v}
  assert all(m.any() for m in masks.values())


def test_heart_on_image_right_not_symmetric():
  ds = ChestXrayPhantoms(num_patients=10, image_size=64, seed=0)
  img = ds.render(0, (), acquisition=False).image[..., 0].astype(float)
  rows = slice(int(0.5 * 64), int(0.68 * 64))  # heart level
  right = img[rows, 36:48].mean()  # patient's left: heart
  left = img[rows, 16:28].mean()  # patient's right: lung
  assert right > left + 40
  assert np.abs(img - img[:, ::-1]).mean() > 10


def test_geometry_independent_of_resolution():
  lo = ChestXrayPhantoms(num_patients=5, image_size=64, seed=4).render(
    2, ("Mass",), acquisition=False
  )
  hi = ChestXrayPhantoms(num_patients=5, image_size=128, seed=4).render(
    2, ("Mass",), acquisition=False
  )
  down = hi.image[..., 0].astype(float).reshape(64, 2, 64, 2).mean((1, 3))
  assert np.corrcoef(down.ravel(), lo.image[..., 0].ravel().astype(float))[0, 1] > 0.95
  mask_down = hi.masks["Mass"].reshape(64, 2, 64, 2).mean((1, 3)) > 0.5
  iou = (mask_down & lo.masks["Mass"]).sum() / (mask_down | lo.masks["Mass"]).sum()
  assert iou > 0.8


def test_subset_and_prevalence_override():
  ds = ChestXrayPhantoms(
    num_patients=1000, image_size=64, seed=0, findings=("Mass", "Nodule"), prevalence={"Mass": 0.5}
  )
  y = ds.labels()
  assert ds.findings == ("Mass", "Nodule") and y.shape == (len(ds), 2)
  assert abs(y[:, 0].mean() - 0.5) < 0.03 and abs(y[:, 1].mean() - 0.06) < 0.02
  assert ds[0]["labels"].shape == (2,)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(image_size=16), "image_size"),
    (dict(num_patients=0), "num_patients"),
    (dict(seed=-1), "seed"),
    (dict(prevalence={"Tumour": 0.1}), "Tumour"),
    (dict(prevalence={"Mass": 1.5}), "Mass"),
    (dict(findings=("Mass", "Fracture")), "Fracture"),
    (dict(findings=()), "findings"),
    (dict(studies_per_patient=(0, 3)), "studies_per_patient"),
  ],
)
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ChestXrayPhantoms(**kwargs)


def test_bad_render_requests(small):
  with pytest.raises(ValueError, match="Fracture"):
    small.render(0, ("Fracture",))
  with pytest.raises(IndexError):
    small[len(small)]
  assert phantoms.Rendering._fields == ("image", "masks", "necklace")
