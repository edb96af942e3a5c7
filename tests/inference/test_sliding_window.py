"""Sliding-window inference equals a direct pass where it must."""

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest

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
