"""3D U-Net: shapes, dtypes, normalisations, and the registry contract."""

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest

from mdx.models.unet3d import UNet3D


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_shapes_and_float32_logits(norm):
  model = UNet3D(num_classes=3, depth=3, base_width=4, norm=norm)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 12, 8, 2)), jnp.float32)
  variables = jitted.init(model, x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert ("batch_stats" in variables) == (norm == "batch")
  y = model.apply(variables, x, train=False)
  assert y.shape == (2, 8, 12, 8, 3) and y.dtype == jnp.float32
  if norm == "batch":
    y2, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    assert not np.allclose(y, y2)  # batch statistics differ from the (initial) running ones


def test_bfloat16_compute_float32_params():
  model = UNet3D(num_classes=2, dtype="bfloat16", depth=2, base_width=4)
  x = jnp.ones((1, 4, 4, 4, 1))
  variables = jitted.init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  assert jitted.apply(model, variables, x).dtype == jnp.float32


def test_widths_and_translation_equivariance_of_depth1():
  model = UNet3D(num_classes=2, depth=3, base_width=4, norm="none")
  v = jax.eval_shape(model.init, jax.random.key(1), jnp.ones((1, 8, 8, 8, 1)))  # shapes only
  p = v["params"]
  assert p["down0"]["conv0"]["kernel"].shape == (3, 3, 3, 1, 4)
  assert p["bottom"]["conv1"]["kernel"].shape == (3, 3, 3, 16, 16)
  assert p["up0"]["conv0"]["kernel"].shape == (3, 3, 3, 8, 4)  # skip (4) + upsampled (4)
  # a one-level network is a plain convolution stack: shifting the input shifts the output
  m1 = UNet3D(num_classes=2, depth=1, base_width=4, norm="none")
  v1 = jitted.init(m1, jnp.ones((1, 10, 10, 10, 1)), seed=2)
  x = jnp.zeros((1, 10, 10, 10, 1)).at[0, 4, 4, 4, 0].set(1.0)
  y = m1.apply(v1, x)
  ys = m1.apply(v1, jnp.roll(x, 1, axis=1))
  np.testing.assert_allclose(ys[0, 5, 4, 4], y[0, 4, 4, 4], rtol=1e-5, atol=1e-6)


def test_indivisible_shape_is_a_clear_error():
  model = UNet3D(num_classes=2, depth=3, base_width=4)
  with pytest.raises(ValueError, match="divisible by 4"):
    model.init(jax.random.key(0), jnp.ones((1, 6, 8, 8, 1)))


def test_conv_implementations_agree_and_upconv_is_a_transposed_conv():
  import flax.linen as nn

  from mdx.models import unet3d

  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 5, 6, 4, 3)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 3, 3, 4)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((2, 5, 6, 4, 4)), jnp.float32)
  value_and_grads = lambda impl: jax.value_and_grad(
    lambda x, k: (unet3d.conv3x3x3(x, k, impl) * g).sum(), argnums=(0, 1)
  )(x, k)
  want = value_and_grads("native")
  for impl in ("slices", "stacked"):  # same output, input and kernel gradients
    for a, b in zip(jax.tree.leaves(value_and_grads(impl)), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  model = UNet3D(num_classes=2, depth=2, base_width=4, norm="group", conv_impl="native")
  v = jitted.init(model, x[:, :4, :6, :4])
  other = UNet3D(num_classes=2, depth=2, base_width=4, norm="group", conv_impl="slices")
  np.testing.assert_allclose(
    jitted.apply(model, v, x[:, :4, :6, :4]),
    jitted.apply(other, v, x[:, :4, :6, :4]),
    rtol=1e-4,
    atol=1e-4,
  )
  # UpConv == flax ConvTranspose (kernel 2, stride 2, VALID) with the kernel flipped spatially
  up = unet3d.UpConv(5)
  vu = up.init(jax.random.key(1), x)
  flipped = {
    "params": {
      "kernel": vu["params"]["kernel"][::-1, ::-1, ::-1],
      "bias": vu["params"]["bias"] + 0.5,
    }
  }
  ref = nn.ConvTranspose(5, (2, 2, 2), strides=(2, 2, 2), padding="VALID").apply(flipped, x)
  mine = up.apply({"params": {**vu["params"], "bias": vu["params"]["bias"] + 0.5}}, x)
  assert mine.shape == (2, 10, 12, 8, 5)
  np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-5)
  pooled = unet3d.max_pool2(x[:, :4, :6, :4])
  np.testing.assert_allclose(pooled, nn.max_pool(x[:, :4, :6, :4], (2, 2, 2), strides=(2, 2, 2)))
