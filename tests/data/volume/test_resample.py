"""Resampling to a target spacing: shapes by hand, the grid against analytic functions, labels that
invent no class, nnU-Net's anisotropic rule against a map_coordinates oracle, and the source."""

import pickle

import numpy as np
import pytest
from scipy import ndimage

from mdx.data.volume import resample as rs


def test_new_shape_and_coarse_axis_by_hand():
  # 10*1/2 = 5, 20*1/0.5 = 40, 5*3/1.5 = 10; 7*1/1.5 = 4.67 -> 5; never below one voxel
  assert rs.new_shape((10, 20, 5), (1, 1, 3), (2, 0.5, 1.5)) == (5, 40, 10)
  assert rs.new_shape((7, 7, 7), (1, 1, 1), (1.5, 1, 1)) == (5, 7, 7)
  assert rs.new_shape((1, 4, 4), (1, 1, 1), (5, 1, 1)) == (1, 4, 4)
  assert rs.coarse_axis((1, 1, 4), (1, 1, 1)) == 2  # 4 / 1 > 3: the case is anisotropic
  assert rs.coarse_axis((3.5, 1, 1), (1, 1, 1)) == 0
  assert rs.coarse_axis((1, 1, 1), (1, 4, 1)) == 1  # an isotropic case, an anisotropic target
  assert rs.coarse_axis((1, 1, 3), (1, 1, 1)) is None  # exactly 3 is not above the threshold
  assert rs.coarse_axis((0.24, 1.25, 1.25), (1, 1, 1)) is None  # two coarsest axes: no 'z'
  with pytest.raises(ValueError, match="target_spacing"):
    rs.new_shape((4, 4, 4), (1, 1, 1), (1, 0, 1))
  with pytest.raises(ValueError, match="spacing"):
    rs.resample_image(np.zeros((4, 4, 4, 1)), (1, 1), (1, 1, 1))


L = 16.0  # wavelength in original voxels


def _smooth(a, b, c):
  return np.sin(2 * np.pi * a / L) * np.cos(2 * np.pi * b / L + 0.3) + 0.5 * np.sin(
    2 * np.pi * c / L + 1
  )


def test_smooth_image_up_matches_the_function_and_round_trip_comes_back():
  n = 24
  x = np.arange(n)
  image = _smooth(*np.meshgrid(x, x, x, indexing="ij"))[..., None].astype(np.float32)
  image = np.concatenate([image, 2 * image + 1], -1)  # channels are independent
  up = rs.resample_image(image, (1, 1, 1), (0.5, 0.5, 0.5))
  assert up.shape == (48, 48, 48, 2) and up.dtype == np.float32
  # new voxel i sits at old coordinate (i + 0.5) * 0.5 - 0.5 (the field of view is kept)
  c = (np.arange(48) + 0.5) * 0.5 - 0.5
  expect = _smooth(*np.meshgrid(c, c, c, indexing="ij"))
  # Bound: a cubic interpolating spline errs by <= 5/384 h^4 max|f''''| per axis (h = 1 voxel):
  # (2 pi / 16)^4 * 5/384 = 3.1e-4, times the axes' amplitudes 1 + 1 + 0.5 = 7.7e-4. The edge
  # ('nearest' padding) errs by up to ~0.1, but a cubic spline's influence decays by 2 - sqrt(3)
  # = 0.27 per voxel: 6 original voxels (12 new) inside that is < 0.1 * 0.27^6 = 4e-5. So 1e-3.
  m = slice(12, -12)
  np.testing.assert_allclose(up[m, m, m, 0], expect[m, m, m], atol=1e-3)
  np.testing.assert_allclose(up[m, m, m, 1], 2 * expect[m, m, m] + 1, atol=2e-3)
  down = rs.resample_image(up, (0.5, 0.5, 0.5), (1, 1, 1))
  assert down.shape == image.shape
  # two interpolations, each within the bound above away from the edges: 2 * 1e-3 (channel 0)
  m = slice(6, -6)
  np.testing.assert_allclose(down[m, m, m, 0], image[m, m, m, 0], atol=2e-3)


def test_labels_never_invent_a_class_between_two_others():
  label = np.ones((8, 6, 5), np.int32)
  label[4:] = 3  # a 1|3 boundary between voxels 3 and 4 along D
  for target in [(0.5, 1, 1), (0.3, 0.7, 1.3), (1.7, 1, 0.6)]:
    out = rs.resample_label(label, (1, 1, 1), target)
    assert out.dtype == np.int32 and set(np.unique(out)) == {1, 3}, target
  # the linear interpolation of the integers themselves would produce 2 at the boundary: the test
  # distinguishes one-hot-then-argmax from interpolating label values
  naive = ndimage.zoom(
    label.astype(float), (0.3**-1, 1, 1), order=1, mode="nearest", grid_mode=True
  )
  assert np.any(np.isclose(naive, 2.0, atol=0.3))
  # by hand: doubling along D puts the boundary at old 3.5 = new 7.5: 8 voxels of each class
  out = rs.resample_label(label, (1, 1, 1), (0.5, 1, 1))
  assert out.shape == (16, 6, 5)
  assert (out[:8] == 1).all() and (out[8:] == 3).all()
  # a class present survives among absent ones; background 0 counts as a class like any other
  lab = np.zeros((9, 9, 9), np.int16)
  lab[3:6, 3:6, 3:6] = 2
  lab[0, 0, 0] = 1
  out = rs.resample_label(lab, (1, 1, 1), (0.75, 0.75, 0.75))
  assert out.dtype == np.int16 and set(np.unique(out)) == {0, 1, 2}
  # 3 voxels * 1 / 0.75 = 4 voxels a side for the cube, as the shape rule says
  assert (out == 2).sum() == 4**3


def test_regions_per_channel_binary():
  regions = np.zeros((6, 6, 6, 3), np.uint8)
  regions[1:5, 1:5, 1:5, 0] = 1
  regions[2:4, 2:4, 2:4, 1] = 1  # channel 2 empty
  out = rs.resample_label(regions, (1, 1, 1), (0.5, 0.5, 0.5))
  assert out.shape == (12, 12, 12, 3) and out.dtype == np.uint8
  assert set(np.unique(out)) <= {0, 1}
  # boundaries at old 0.5 and 4.5 -> new 1.5 and 9.5: voxels 2..9 per axis. The outermost of
  # them (new 2 at old 0.75) is 0.75 inside per axis, and trilinear values multiply: 0.75^2 > 0.5
  # keeps edges, 0.75^3 = 0.42 drops the 8 corners; the same for channel 1 (voxels 4..7)
  assert (out[..., 0] == 1).sum() == 8**3 - 8 and (out[3:9, 3:9, 2:10, 0] == 1).all()
  assert out[2, 2, 2, 0] == 0 and out[2, 2, 3, 0] == 1
  assert (out[..., 1] == 1).sum() == 4**3 - 8 and not out[..., 2].any()


def test_anisotropic_case_is_nearest_along_the_coarse_axis_only():
  rng = np.random.default_rng(0)
  image = rng.standard_normal((5, 6, 3, 1)).astype(np.float32)
  spacing, target = (2, 2, 8), (1, 1, 2)  # 8 / 2 = 4 > 3: W is the coarse axis
  out = rs.resample_image(image, spacing, target)
  assert out.shape == (10, 12, 12, 1)
  # oracle: cubic in-plane on each old W slice (map_coordinates at the grid-aligned coordinates),
  # then along W the slice nearest to (k + 0.5) * 3 / 12 - 0.5 (never a tie for these sizes)
  ci = [(np.arange(n) + 0.5) * o / n - 0.5 for n, o in ((10, 5), (12, 6))]
  grid = np.meshgrid(*ci, indexing="ij")
  slices = [
    ndimage.map_coordinates(image[:, :, w, 0], grid, order=3, mode="nearest") for w in (0, 1, 2)
  ]
  nearest = np.clip(np.round((np.arange(12) + 0.5) * 3 / 12 - 0.5), 0, 2).astype(int)
  expect = np.stack([slices[w] for w in nearest], -1)
  np.testing.assert_allclose(out[..., 0], expect, atol=1e-5)  # float32 rounding of the same sums
  # along W alone: every value is one of the input slices' (nearest neighbour)...
  ramp = np.broadcast_to(np.asarray([0.0, 1.0, 5.0], np.float32), (4, 4, 3))[..., None]
  along = rs.resample_image(ramp, (1, 1, 4), (1, 1, 1))
  assert along.shape == (4, 4, 12, 1) and set(np.unique(along)) == {0.0, 1.0, 5.0}
  # ...whereas a case that is not anisotropic (2 / 1 = 2) is cubic along W too
  iso = rs.resample_image(ramp, (1, 1, 2), (1, 1, 1))
  assert len(np.unique(iso)) > 3
  # order 0 along the coarse axis for labels as well: each W slice is one of the input slices
  lab = np.zeros((4, 4, 3), np.int32)
  lab[:, :, 1] = 1
  lab[:2, :, 2] = 2
  out_lab = rs.resample_label(lab, (1, 1, 4), (1, 1, 1))
  for k in range(12):
    assert any((out_lab[:, :, k] == lab[:, :, w]).all() for w in range(3))


def test_probabilities_back_linear_by_hand():
  ramp = np.asarray([0, 1, 2, 3], np.float32) / 3
  probs = np.zeros((4, 2, 2, 2), np.float32)
  probs[..., 0] = ramp[:, None, None]
  probs[..., 1] = 1 - probs[..., 0]
  out = rs.resample_probabilities(probs, (8, 2, 2))
  assert out.shape == (8, 2, 2, 2) and out.dtype == np.float32
  # new voxel i at old (i + 0.5) / 2 - 0.5: -0.25, 0.25, ..., 3.25; linear in between, the edge
  # repeated outside: c / 3 clipped to [0, 1]
  c = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
  np.testing.assert_allclose(out[:, 0, 0, 0], c / 3, atol=1e-6)
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)  # a convex combination keeps sums
  rng = np.random.default_rng(1)
  p = rng.dirichlet(np.ones(3), (5, 7, 6)).astype(np.float32)
  back = rs.resample_probabilities(p, (9, 4, 6))
  np.testing.assert_allclose(back.sum(-1), 1.0, atol=1e-5)
  assert rs.resample_probabilities(p, (5, 7, 6)) is p


class _Source:
  """A tiny file-less volume source with the attributes the tasks and mdx.data.check read."""

  class_names = ("background", "a", "b")
  label_mode = "classes"
  label_values = (0, 1, 2)
  num_channels = 1

  def __init__(self, spacings, shape=(6, 8, 4)):
    self.spacings = [np.asarray(s, np.float32) for s in spacings]
    self.shape = shape
    self.reads = 0
    self.records = {}

  def __len__(self):
    return len(self.spacings)

  def case_ids(self):
    return np.asarray([f"c{i}" for i in range(len(self))])

  def patient_ids(self):
    return self.case_ids()

  def record_files(self, index):
    return (f"/data/c{index}.nii.gz",)

  def record_name(self, index):
    return f"c{index}"

  def select(self, indices):
    return _Source([self.spacings[int(i)] for i in indices], self.shape)

  def __getitem__(self, index):
    self.reads += 1
    if index in self.records:  # the same arrays on every read (so identity can be checked)
      return dict(self.records[index])
    rng = np.random.default_rng(index)
    label = rng.integers(0, 3, self.shape).astype(np.int32)
    self.records[index] = {
      "image": rng.random(self.shape + (1,)).astype(np.float32),
      "label": label,
      "case_id": f"c{index}",
      "affine": np.diag([*self.spacings[index].astype(np.float64), 1.0]),
      "spacing": self.spacings[index],
    }
    return dict(self.records[index])


def test_resampled_source_records_identity_and_interface():
  source = _Source([(1.0005, 0.9995, 2.0), (2.0, 0.5, 1.0)])
  target = (1.0, 1.0, 2.0)
  rs_source = rs.ResampledSource(source, target, cache=True)
  # case 0 is at the target within 1e-3 mm: the very same arrays, no interpolation
  raw, rec = source[0], rs_source[0]
  assert rec["image"] is raw["image"] and rec["label"] is raw["label"]
  np.testing.assert_array_equal(rec["spacing"], np.float32(target))
  np.testing.assert_array_equal(rec["original_spacing"], np.float32((1.0005, 0.9995, 2.0)))
  np.testing.assert_array_equal(rec["original_shape"], (6, 8, 4))
  # case 1: 6*2/1 = 12, 8*0.5/1 = 4, 4*1/2 = 2 (by hand); the label's classes only
  rec = rs_source[1]
  assert rec["image"].shape == (12, 4, 2, 1) and rec["label"].shape == (12, 4, 2)
  assert rec["label"].dtype == np.int32 and set(np.unique(rec["label"])) <= {0, 1, 2}
  np.testing.assert_array_equal(rec["spacing"], np.float32(target))
  np.testing.assert_array_equal(rec["original_shape"], (6, 8, 4))
  # the new affine's columns are the target voxel sizes and it maps the volume's centre to the
  # same scanner point as the old affine did
  np.testing.assert_allclose(np.linalg.norm(rec["affine"][:3, :3], axis=0), target)
  centre_new = rec["affine"] @ np.r_[(np.asarray((12, 4, 2)) - 1) / 2, 1]
  centre_old = rec["original_affine"] @ np.r_[(np.asarray((6, 8, 4)) - 1) / 2, 1]
  np.testing.assert_allclose(centre_new, centre_old, atol=1e-12)
  # the cache returns the resampled record without reading the source again
  reads = source.reads
  again = rs_source[1]
  assert source.reads == reads and again["image"] is rec["image"]
  # the interface: forwarded facts, selection, files for mdx.data.check, pickling for workers
  assert len(rs_source) == 2 and list(rs_source.case_ids()) == ["c0", "c1"]
  assert list(rs_source.patient_ids()) == ["c0", "c1"]
  assert rs_source.class_names == source.class_names and rs_source.label_mode == "classes"
  assert rs_source.label_values == (0, 1, 2) and rs_source.num_channels == 1
  assert rs_source.record_files(1) == ("/data/c1.nii.gz",) and rs_source.record_name(0) == "c0"
  assert not hasattr(rs_source, "fingerprint")  # absent from the source: absent here
  sub = rs_source.select([1])
  assert isinstance(sub, rs.ResampledSource) and len(sub) == 1
  assert sub[0]["image"].shape == (12, 4, 2, 1)
  back = pickle.loads(pickle.dumps(rs_source))
  np.testing.assert_array_equal(back[1]["label"], rec["label"])
  with pytest.raises(ValueError, match="order"):
    rs.ResampledSource(source, target, order=7)
