"""nnU-Net's training augmentation (mdx.data.volume.transforms): shapes, dtypes and label sets kept,
each transform checked against numpy/scipy or a hand-computed value with its probability forced to
1, exact identity at probability 0, and the same seed giving the same patch."""

import dataclasses

import grain
import numpy as np
import pytest
from scipy import ndimage

from mdx.data.volume import transforms as vt

SHAPE = (8, 12, 10)


def _record(shape=SHAPE, channels=2, regions=False, seed=0):
  rng = np.random.default_rng(seed)
  label = np.zeros(shape, np.int32)
  label[2:6, 3:9, 2:8] = 1
  label[3:5, 5:7, 4:6] = 2
  if regions:  # nested regions, as BraTS's whole tumour / tumour core
    label = np.stack([label > 0, label > 1], -1).astype(np.uint8)
  image = rng.normal(size=shape + (channels,)).astype(np.float32)
  return {"image": image, "label": label, "index": np.int64(3)}


def _forced(t, p: float):
  """t with every probability field set to p."""
  names = {"p", "p_per_channel", "p_rotation", "p_scaling"}
  return dataclasses.replace(t, **{f.name: p for f in dataclasses.fields(t) if f.name in names})


def _all_transforms():
  return vt.nnunet_augmentations((0, 1, 2)) + vt.nnunet_augmentations((), anisotropic_axis=0)[:1]


@pytest.mark.parametrize("regions", [False, True])
def test_shape_dtype_and_label_set_kept(regions):
  rec = _record(regions=regions)
  before = set(np.unique(rec["label"])) | {0}
  image0 = rec["image"].copy()
  rng = np.random.default_rng(1)
  for t in _all_transforms():
    out = _forced(t, 1.0).random_map(rec, rng)
    assert out["image"].shape == rec["image"].shape and out["image"].dtype == np.float32, t
    assert out["label"].shape == rec["label"].shape and out["label"].dtype == rec["label"].dtype
    assert set(np.unique(out["label"])) <= before, t
    assert np.isfinite(out["image"]).all() and out["index"] == 3
    assert not np.array_equal(out["image"], rec["image"]), t  # it did something
  np.testing.assert_array_equal(rec["image"], image0)  # the input record is never written to


def test_probability_zero_is_exact_identity():
  rec = _record()
  rng = np.random.default_rng(0)
  for t in _all_transforms():
    out = _forced(t, 0.0).random_map(rec, rng)
    np.testing.assert_array_equal(out["image"], rec["image"])
    np.testing.assert_array_equal(out["label"], rec["label"])


def test_same_seed_same_patch_through_grain():
  recs = [_record(seed=s) for s in range(3)]

  def run(seed):
    ds = grain.MapDataset.source(recs)
    for t in vt.nnunet_augmentations((0, 2)):
      ds = ds.random_map(_forced(t, 1.0), seed=seed)
    return [r for r in ds]

  a, b, c = run(5), run(5), run(6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_nnunet_order_and_options():
  names = [type(t).__name__ for t in vt.nnunet_augmentations((1, 2))]
  assert names == [
    "RandomSpatial3D",
    "RandomGaussianNoise",
    "RandomGaussianBlur",
    "RandomBrightness",
    "RandomContrast",
    "RandomLowResolution",
    "RandomGamma",
    "RandomGamma",
    "RandomFlip3D",
  ]
  ts = vt.nnunet_augmentations((1, 2))
  assert ts[-1].axes == (1, 2) and ts[6].invert and ts[6].p == 0.1 and not ts[7].invert
  assert (ts[0].p_rotation, ts[0].p_scaling, ts[0].max_degrees, ts[0].scale) == (
    0.2,
    0.2,
    30.0,
    (0.7, 1.4),
  )
  aniso = vt.nnunet_augmentations((), anisotropic_axis=0, patch_size=(4, 8, 8))
  assert type(aniso[-1]).__name__ == "RandomGamma"  # no mirroring when the source allows none
  assert aniso[0].anisotropic_axis == 0 and aniso[0].max_degrees == 180.0
  assert aniso[0].size == (4, 8, 8) and aniso[5].ignore_axes == (0,)


def test_rotation_by_90_degrees_is_rot90():
  # Square (12 x 12) planes: a 90-degree turn about the centre maps the grid onto itself, so every
  # sample point is a grid node (up to cos(90 deg) ~ 6e-17), where the cubic spline reproduces the
  # data to float32 rounding (1e-4 is ~1000 ulps at these magnitudes) and the one-hot labels are
  # exact. Convention (rotation_matrix): positive about axis 0 == np.rot90(x, 1, axes=(2, 1)).
  for regions in (False, True):
    rec = _record((8, 12, 12), regions=regions)
    out = vt.affine_about_centre(rec, vt.rotation_matrix((90, 0, 0)))
    np.testing.assert_allclose(out["image"], np.rot90(rec["image"], 1, axes=(2, 1)), atol=1e-4)
    np.testing.assert_array_equal(out["label"], np.rot90(rec["label"], 1, axes=(2, 1)))
  rec = _record((12, 8, 12))
  out = vt.affine_about_centre(rec, vt.rotation_matrix((0, -90, 0)))
  np.testing.assert_allclose(out["image"], np.rot90(rec["image"], 1, axes=(0, 2)), atol=1e-4)


def test_random_rotation_turns_about_the_centre():
  # A ball centred in the patch is unchanged by any rotation about the centre: output and input
  # labels may differ only at voxels within one voxel of the sphere (resampling moves a boundary
  # by less than a voxel), so a rotation about any other point would fail.
  n, r = 16, 5.0
  d = np.linalg.norm(np.indices((n, n, n)) - (n - 1) / 2, axis=0)
  label = (d <= r).astype(np.int32)
  rec = {"image": label[..., None].astype(np.float32), "label": label}
  t = vt.RandomSpatial3D(p_rotation=1.0, p_scaling=0.0, max_degrees=30.0)
  for seed in range(3):
    out = t.random_map(rec, np.random.default_rng(seed))
    changed = out["label"] != label
    assert np.all(np.abs(d[changed] - r) < 1.0)
    assert not np.allclose(out["image"], rec["image"], atol=1e-3)  # it turned


@pytest.mark.parametrize("s", [0.75, 1.25, 1.4])
def test_scaling_changes_a_centred_cube_by_the_factor_cubed(s):
  # A cube of side L = 6 voxels about the centre of a 16^3 patch; s is the sampling step, so the
  # cube's side becomes L / s. The labelled (and image > 0.5) voxels form a box whose faces each
  # move by less than one voxel from the continuous ones, so each side has L/s +- 1 voxels.
  n, lo, side = 16, 5, 6
  label = np.zeros((n, n, n), np.int32)
  label[lo : lo + side, lo : lo + side, lo : lo + side] = 1
  rec = {"image": label[..., None].astype(np.float32), "label": label}
  t = vt.RandomSpatial3D(p_rotation=0.0, p_scaling=1.0, scale=(s, s))
  out = t.random_map(rec, np.random.default_rng(0))
  want = side / s
  for count in (out["label"].sum(), (out["image"] > 0.5).sum()):
    assert (want - 1) ** 3 <= count <= (want + 1) ** 3, (count, want**3)
  if s == 0.75:  # side 8 exactly: faces at |o - 7.5| <= 3 / 0.75 = 4, voxels 4..11
    assert out["label"].sum() == 8**3


def test_anisotropic_axis_keeps_each_slice_in_its_slice():
  # Image = slice index along axis 0, constant in-plane: an in-plane rotation and scaling applies
  # the same 2D map to every slice, so slice i of the output is exactly i times slice 1 (the
  # resampling is linear in the data); a label set on whole slices 2..4 stays within them.
  shape = (6, 12, 12)
  image = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None, None], shape + (1,))
  label = np.zeros(shape, np.int32)
  label[2:5] = 1
  rec = {"image": np.ascontiguousarray(image), "label": label}
  t = vt.RandomSpatial3D(p_rotation=1.0, p_scaling=1.0, max_degrees=180.0, anisotropic_axis=0)
  out = t.random_map(rec, np.random.default_rng(1))  # draws -128 degrees, scale 1.36
  for i in range(6):
    np.testing.assert_allclose(out["image"][i], i * out["image"][1], atol=1e-5)
  assert not out["label"][[0, 1, 5]].any() and out["label"][2:5].any()
  assert (out["image"][1] < 0.5).any()  # corners padded: it did rotate or scale in-plane


def test_output_size_cuts_the_centre():
  rec = _record((12, 16, 14))
  want = vt.crop(rec, (2, 2, 2), (8, 12, 10))
  nothing = vt.RandomSpatial3D(p_rotation=0.0, p_scaling=0.0, size=(8, 12, 10))
  out = nothing.random_map(rec, np.random.default_rng(0))
  np.testing.assert_array_equal(out["image"], want["image"])
  # a zero-degree rotation resamples at the grid nodes: the same crop to spline precision
  zero = vt.RandomSpatial3D(p_rotation=1.0, p_scaling=0.0, max_degrees=0.0, size=(8, 12, 10))
  out = zero.random_map(rec, np.random.default_rng(0))
  np.testing.assert_allclose(out["image"], want["image"], atol=1e-4)
  np.testing.assert_array_equal(out["label"], want["label"])


def test_gaussian_noise_has_the_drawn_sigma_on_every_channel():
  rec = _record((16, 16, 16))
  out = vt.RandomGaussianNoise(p=1.0, sigma_range=(0.05, 0.05)).random_map(
    rec, np.random.default_rng(0)
  )
  noise = out["image"] - rec["image"]
  # 4096 samples: the sample std's relative error is ~1/sqrt(2 * 4096) = 1.1%; 10% is 9 sigma
  assert abs(noise.std() / 0.05 - 1) < 0.1 and abs(noise.mean()) < 0.01
  # one field for all channels; (x + n) - x recovers n to float32 rounding of |x + n| < 8: 1e-6
  np.testing.assert_allclose(noise[..., 0], noise[..., 1], atol=1e-6)


def _mirror_blur(x, sigmas):
  """Oracle: separable convolution with a hand-built normalised Gaussian (radius int(4 sigma +
  0.5), scipy's truncate=4), the border mirrored without repeating the edge (numpy 'reflect')."""
  for ax, s in enumerate(sigmas):
    rad = int(4 * s + 0.5)
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / s) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * x.ndim
    pad[ax] = (rad, rad)
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    x = np.apply_along_axis(np.convolve, ax, xp, k, mode="valid")
  return x


def test_gaussian_blur_matches_a_hand_built_kernel():
  rec = _record()
  t = vt.RandomGaussianBlur(p=1.0, p_per_channel=1.0, sigma_range=(0.8, 0.8))
  out = t.random_map(rec, np.random.default_rng(0))
  for c in range(2):  # float32 filtering vs float64 oracle: rounding ~1e-6
    np.testing.assert_allclose(
      out["image"][..., c], _mirror_blur(rec["image"][..., c], [0.8] * 3), atol=1e-5
    )
  none = dataclasses.replace(t, p_per_channel=0.0).random_map(rec, np.random.default_rng(0))
  np.testing.assert_array_equal(none["image"], rec["image"])


def test_bg_contrast_draws_below_and_above_one_equally():
  rng = np.random.default_rng(0)
  draws = np.asarray([vt.bg_contrast(rng, 0.7, 1.5) for _ in range(2000)])
  assert draws.min() >= 0.7 and draws.max() <= 1.5
  # binomial(2000, 1/2): std of the share 1.1%; 5% is over 4 std
  assert abs((draws < 1).mean() - 0.5) < 0.05
  assert vt.bg_contrast(rng, 1.2, 1.2) == 1.2


def test_brightness_multiplies_each_channel():
  rec = _record()
  out = vt.RandomBrightness(p=1.0, multiplier_range=(1.2, 1.2)).random_map(
    rec, np.random.default_rng(0)
  )
  np.testing.assert_array_equal(out["image"], rec["image"] * np.float32(1.2))
  out = vt.RandomBrightness(p=1.0).random_map(rec, np.random.default_rng(1))
  m = out["image"][0, 0, 0] / rec["image"][0, 0, 0]
  np.testing.assert_allclose(out["image"], rec["image"] * m, rtol=1e-5)  # one factor a channel
  assert np.all((0.75 <= m) & (m <= 1.25)) and m[0] != m[1]


def test_contrast_scales_about_the_mean_within_the_range():
  rec = _record()
  out = vt.RandomContrast(p=1.0).random_map(rec, np.random.default_rng(2))
  for c in range(2):
    x, y = rec["image"][..., c].astype(np.float64), out["image"][..., c]
    mean = x.mean()
    inner = np.abs(x - mean) < 0.5  # far from the extremes: never clipped
    f = np.median((y[inner] - mean) / (x[inner] - mean))
    assert 0.75 <= f <= 1.25 and abs(f - 1) > 1e-3
    np.testing.assert_allclose(y, np.clip((x - mean) * f + mean, x.min(), x.max()), atol=1e-5)
  # a factor over 1 pushes the extremes out: they are clipped back to the former range
  up = vt.RandomContrast(p=1.0, contrast_range=(1.2, 1.25))
  up = up.random_map(rec, np.random.default_rng(0))
  for c in range(2):
    x, y = rec["image"][..., c], up["image"][..., c]
    assert y.min() == x.min() and y.max() == x.max()
    assert ((y == x.max()) | (y == x.min())).sum() > 2  # several voxels clipped, not just two


def test_low_resolution():
  rec = _record()
  one = vt.RandomLowResolution(p=1.0, p_per_channel=1.0, zoom_range=(1.0, 1.0))
  np.testing.assert_array_equal(
    one.random_map(rec, np.random.default_rng(0))["image"], rec["image"]
  )
  # A ramp a*i along an axis of 24, zoom 0.5: nearest-exact keeps samples 2j+1 (index floor((j +
  # 0.5) * 2)), i.e. a*(2j+1) at small-grid point j whose centre lies at 2j + 0.5 in the big grid;
  # linear upsampling on voxel centres therefore gives a*(i + 0.5) away from the two clamped ends.
  ramp = np.broadcast_to(3.0 * np.arange(24, dtype=np.float32)[:, None, None], (24, 4, 4))
  lin = vt.low_resolution(ramp, (0.5, 1.0, 1.0), order=1)
  shifted = np.broadcast_to(3.0 * (np.arange(24) + 0.5)[:, None, None], ramp.shape)
  np.testing.assert_allclose(lin[1:-1], shifted[1:-1], atol=1e-4)
  # cubic: the spline of a ramp is the ramp, up to the end effects of the clamped border (~0.35 a
  # at the edge), which decay by 0.27 a small-grid sample (the cubic B-spline filter pole
  # 2 - sqrt(3)): 6 voxels (3 samples) in they are ~0.35 * 0.27**3 a < 1e-2 a
  cub = vt.low_resolution(ramp, (0.5, 1.0, 1.0), order=3)
  np.testing.assert_allclose(cub[6:-6], shifted[6:-6], atol=3e-2)
  # ignore_axes: zoom only where the ramp is constant, so nothing changes (a spline reproduces a
  # constant); ignoring axis 0 keeps the ramp
  t = vt.RandomLowResolution(p=1.0, p_per_channel=1.0, zoom_range=(0.5, 0.5), ignore_axes=(0,))
  out = t.random_map({"image": np.ascontiguousarray(ramp[..., None])}, np.random.default_rng(0))
  np.testing.assert_allclose(out["image"][..., 0], ramp, atol=1e-4)


def test_gamma_by_hand():
  x = np.asarray([0.0, 0.25, 1.0], np.float32)
  np.testing.assert_allclose(vt.gamma_channel(x, 2.0, retain_stats=False), x**2, atol=1e-7)
  # inverted: -x in [-1, 0] -> [1, 0.75, 0] ** 2 - 1 -> negated: [0, 1 - 0.5625, 1]
  np.testing.assert_allclose(
    vt.gamma_channel(x, 2.0, invert=True, retain_stats=False), [0, 0.4375, 1], atol=1e-7
  )
  rec = _record()
  one = vt.RandomGamma(p=1.0, gamma_range=(1.0, 1.0))
  for invert in (False, True):  # gamma 1 with stats retained: identity up to float32 rounding
    out = dataclasses.replace(one, invert=invert).random_map(rec, np.random.default_rng(0))
    np.testing.assert_allclose(out["image"], rec["image"], atol=1e-5)
  for invert in (False, True):
    t = vt.RandomGamma(p=1.0, invert=invert)
    out = t.random_map(rec, np.random.default_rng(3))
    for c in range(2):
      x, y = rec["image"][..., c].ravel(), out["image"][..., c].ravel()
      assert not np.allclose(x, y, atol=1e-3)
      # a gamma is increasing: the order of the voxels is kept; mean and std are restored
      np.testing.assert_array_equal(np.argsort(x, kind="stable"), np.argsort(y, kind="stable"))
      assert abs(y.mean() - x.mean()) < 1e-4 and abs(y.std() / x.std() - 1) < 1e-4


def test_label_resampling_is_per_class_linear_then_argmax():
  # Oracle: scipy's linear interpolation of each one-hot class (background 1 outside) and argmax.
  rec = _record()
  m = vt.rotation_matrix((20, -10, 5)) @ np.diag([0.9, 0.9, 0.9])
  out = vt.affine_about_centre(rec, m)
  off = (np.asarray(SHAPE) - 1) / 2 - m @ ((np.asarray(SHAPE) - 1) / 2)
  probs = [
    ndimage.affine_transform(
      (rec["label"] == c).astype(np.float32), m, off, order=1, cval=float(c == 0)
    )
    for c in range(3)
  ]
  np.testing.assert_array_equal(out["label"], np.argmax(probs, 0))
  # By hand: a 2^3 block of classes [1, 1, 1, 2, 2, 3, 3, 0] read at its centre (an output one
  # voxel smaller puts the output centre half a voxel off on each axis) averages to 3/8, 2/8, 2/8
  # and 1/8: class 1 wins though no class reaches 1/2.
  block = np.asarray([1, 1, 1, 2, 2, 3, 3, 0], np.int32).reshape(2, 2, 2)
  tiny = {"image": np.zeros((2, 2, 2, 1), np.float32), "label": block}
  assert vt.affine_about_centre(tiny, np.eye(3), size=(1, 1, 1))["label"][0, 0, 0] == 1
