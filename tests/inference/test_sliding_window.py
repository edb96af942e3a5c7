"""Sliding-window inference equals a direct pass where it must."""

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest
from scipy import ndimage

from mdx.inference import predict as inference_predict
from mdx.inference import sliding_window as sw
from mdx.models.unet3d import UNet3D


def test_window_grid_and_gaussian():
  assert sw.window_starts(10, 4, 0.5) == [0, 2, 4, 6]
  assert sw.window_starts(11, 4, 0.5) == [0, 2, 4, 5, 7]
  assert sw.window_starts(3, 4, 0.5) == [0]
  g = sw.gaussian_importance((5, 7, 4))
  assert g.max() == pytest.approx(1.0) and g.min() > 0
  assert g[2, 3, 1] == g.max() and g[0, 0, 0] < 0.01 + g.min() * 10


def test_overlapping_windows_of_a_pointwise_model_equal_direct_pass():
  # a voxel-wise model gives the same output for a voxel in every window: any weighted average
  # of windows must equal the direct pass exactly (up to float rounding), padding included.
  rng = np.random.default_rng(0)
  w = rng.standard_normal((1, 3)).astype(np.float32)
  image = rng.standard_normal((13, 9, 11, 1)).astype(np.float32)
  fn = lambda b: np.asarray(jax.nn.softmax(jnp.asarray(b) @ w, -1))
  out = sw.sliding_window_inference(fn, image, (8, 8, 8), overlap=0.5, batch_size=3)
  np.testing.assert_allclose(out, fn(image[None])[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a U-Net's compile (~8 s): the full tier
def test_unet_window_covering_the_volume_equals_direct_pass():
  model = UNet3D(num_classes=3, depth=2, base_width=4, norm="batch")
  x = np.random.default_rng(1).standard_normal((8, 12, 8, 2)).astype(np.float32)
  variables = jitted.init(model, jnp.asarray(x[None]))
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  predict = inference_predict.make_predict_fn(model, mesh, "softmax")
  fn = lambda batch: predict(variables, batch)  # noqa: E731
  direct = np.asarray(jax.nn.softmax(model.apply(variables, jnp.asarray(x[None])), -1))[0]
  out = sw.sliding_window_inference(
    fn, x, (8, 12, 8), overlap=0.5, batch_size=2 * jax.device_count()
  )
  np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)
  # many overlapping windows of the real network: close to the direct pass in the interior
  big = np.random.default_rng(2).standard_normal((16, 16, 16, 2)).astype(np.float32)
  direct = np.asarray(jax.nn.softmax(model.apply(variables, jnp.asarray(big[None])), -1))[0]
  out = sw.sliding_window_inference(
    fn, big, (8, 8, 8), overlap=0.5, batch_size=4 * jax.device_count()
  )
  assert out.shape == (16, 16, 16, 3)
  np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
  assert np.abs(out - direct).mean() < 0.1


def _box_model(w):
  """A flip-equivariant model: a symmetric 3x3x3 mean (zero outside the window) then softmax."""

  def fn(batch):
    mean = ndimage.uniform_filter(batch, size=(1, 3, 3, 3, 1), mode="constant")
    return np.asarray(jax.nn.softmax(jnp.asarray(mean @ w), -1))

  return fn


def test_mirroring_a_flip_equivariant_model_changes_nothing():
  rng = np.random.default_rng(3)
  w = rng.standard_normal((2, 3)).astype(np.float32)
  image = rng.standard_normal((11, 9, 10, 2)).astype(np.float32)
  fn = _box_model(w)
  plain = sw.sliding_window_inference(fn, image, (6, 6, 6), overlap=0.5, batch_size=3)
  for axes in [(0,), (2, 1), (0, 1, 2)]:
    mirrored = sw.sliding_window_inference(
      fn, image, (6, 6, 6), overlap=0.5, batch_size=3, mirror_axes=axes
    )
    # the same numbers summed in another order: float32 rounding only
    np.testing.assert_allclose(mirrored, plain, rtol=1e-5, atol=1e-6)


def test_mirroring_averages_the_flipped_predictions_by_hand():
  # f(x) = x * ramp, ramp = d + 2h + 3w: not symmetric. Flipping D and back sees d' = D-1-d; the
  # four flips of (D, W) average d to (D-1)/2 and w to (W-1)/2, and keep 2h.
  d_, h_, w_ = 5, 4, 6
  ramp = (
    np.arange(d_)[:, None, None] + 2 * np.arange(h_)[None, :, None] + 3 * np.arange(w_)[None, None]
  ).astype(np.float32)
  calls = []

  def fn(batch):
    calls.append(batch.shape)
    return batch * ramp[None, ..., None]

  image = np.random.default_rng(4).standard_normal((d_, h_, w_, 1)).astype(np.float32)
  out = sw.sliding_window_inference(
    fn, image, (d_, h_, w_), batch_size=2, weighting="constant", mirror_axes=(0, 2)
  )
  avg = ((d_ - 1) / 2 + 2 * np.arange(h_)[None, :, None] + 3 * (w_ - 1) / 2) * np.ones((d_, h_, w_))
  np.testing.assert_allclose(out[..., 0], image[..., 0] * avg, rtol=1e-5, atol=1e-5)
  # 2**2 passes of one full batch of the static shape each (one window, padded batch)
  assert calls == [(2, d_, h_, w_, 1)] * 4
  # without mirroring the model's own asymmetry stays
  plain = sw.sliding_window_inference(fn, image, (d_, h_, w_), batch_size=2, weighting="constant")
  np.testing.assert_allclose(plain[..., 0], image[..., 0] * ramp, rtol=1e-5, atol=1e-5)


def test_mirroring_over_many_windows_equals_a_hand_mirrored_model():
  # oracle: the same windows through a predict function that averages its own flips explicitly
  rng = np.random.default_rng(5)
  image = rng.standard_normal((13, 10, 9, 1)).astype(np.float32)
  fn = lambda b: np.cumsum(b, axis=1) + 0.5 * np.cumsum(b, axis=2) ** 2  # no symmetry at all
  flips = [(), (1,), (3,), (1, 3)]
  by_hand = lambda b: sum(np.flip(fn(np.flip(b, a)), a) for a in flips) / 4
  got = sw.sliding_window_inference(fn, image, (6, 6, 6), batch_size=4, mirror_axes=(0, 2))
  expect = sw.sliding_window_inference(by_hand, image, (6, 6, 6), batch_size=4)
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
  assert not np.allclose(got, sw.sliding_window_inference(fn, image, (6, 6, 6), batch_size=4))
  with pytest.raises(ValueError, match="mirror_axes"):
    sw.sliding_window_inference(fn, image, (6, 6, 6), mirror_axes=(3,))
  with pytest.raises(ValueError, match="mirror_axes"):
    sw.sliding_window_inference(fn, image, (6, 6, 6), mirror_axes=(1, 1))
