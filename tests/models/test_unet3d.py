"""3D U-Net: shapes, dtypes, normalisations, and the registry contract."""

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import pytest

from mdx.models.unet3d import UNet3D


@pytest.mark.parametrize(
  "norm",
  # instance norm is the segmentation default: the fast tier; the other two compile ~8 s each
  [pytest.param("batch", marks=pytest.mark.slow), pytest.param("group", marks=pytest.mark.slow)]
  + ["instance"],
)
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


# --- per-axis strides (nnU-Net's plans), deep supervision, the registry's input multiples ---

STRIDES = ((1, 2, 2), (2, 2, 2), (2, 2, 2))  # D is pooled twice, H and W three times
# XLA:CPU compiles these tiny networks' gradients ~4x faster unoptimised ('native' convolutions:
# the 2D forms are checked against it above); the numbers are the same computation
FAST = {"xla_backend_optimization_level": 0}


def test_per_axis_strides_shapes_multiples_and_errors():
  model = UNet3D(num_classes=3, base_width=2, norm="group", strides=STRIDES)
  assert model.input_multiples() == (4, 8, 8) and model.min_input_size() == 8
  x = jnp.ones((1, 4, 8, 8, 1))
  v = jax.eval_shape(model.init, jax.random.key(0), x)  # shapes only
  p = v["params"]
  # the transposed convolution of a level has kernel = stride: level 0 does not pool D
  assert p["upconv0"]["kernel"].shape == (1, 2, 2, 4, 2)
  assert p["upconv1"]["kernel"].shape == (2, 2, 2, 8, 4)
  assert p["upconv2"]["kernel"].shape == (2, 2, 2, 16, 8)
  assert p["bottom"]["conv0"]["kernel"].shape == (3, 3, 3, 8, 16)
  assert jax.eval_shape(model.apply, v, x).shape == (1, 4, 8, 8, 3)
  # the brief's example: strides ((1, 2, 2), (2, 2, 2)) take a 4 x 8 x 8 patch
  small = UNet3D(num_classes=2, base_width=2, strides=((1, 2, 2), (2, 2, 2)))
  assert small.input_multiples() == (2, 4, 4)
  vs = jax.eval_shape(small.init, jax.random.key(0), x)
  assert jax.eval_shape(small.apply, vs, x).shape == (1, 4, 8, 8, 2)
  with pytest.raises(ValueError, match="axis W has size 6, not divisible by 8"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4, 8, 6, 1)))
  with pytest.raises(ValueError, match="axis D has size 2, not divisible by 4"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 2, 8, 8, 1)))
  with pytest.raises(ValueError, match="config.model.strides"):
    UNet3D(num_classes=2, strides=((1, 2, 3),)).input_multiples()
  with pytest.raises(ValueError, match="config.model.depth=4 disagrees"):
    UNet3D(num_classes=2, depth=4, strides=((2, 2, 2),)).input_multiples()


def test_uniform_strides_are_the_old_model():
  """strides=None pools by 2 everywhere depth - 1 times (depth 3 when unset), with the parameter
  names and shapes existing checkpoints have; explicit (2, 2, 2) strides are the same network."""
  old = UNet3D(num_classes=2, depth=3, base_width=2, conv_impl="native")
  explicit = UNet3D(num_classes=2, base_width=2, conv_impl="native", strides=((2, 2, 2),) * 2)
  assert UNet3D(num_classes=2).level_strides() == ((2, 2, 2), (2, 2, 2))  # depth unset: 3
  x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 8, 8, 8, 1)), jnp.float32)
  v = jitted.init(old, x)
  p = v["params"]
  assert p["upconv0"]["kernel"].shape == (2, 2, 2, 4, 2) and p["upconv0"]["bias"].shape == (2,)
  assert p["upconv1"]["kernel"].shape == (2, 2, 2, 8, 4) and p["upconv1"]["bias"].shape == (4,)
  assert set(p) == {"down0", "down1", "bottom", "upconv1", "up1", "upconv0", "up0", "head"}
  ve = jitted.init(explicit, x)  # same names, same initialiser keys: the same numbers
  assert jax.tree.structure(ve) == jax.tree.structure(v)
  for a, b in zip(jax.tree.leaves(ve), jax.tree.leaves(v)):
    np.testing.assert_array_equal(a, b)

  def outputs(v, x):  # inference, and training with batch statistics
    return [
      (m.apply(v, x), m.apply(v, x, train=True, mutable=["batch_stats"])[0])
      for m in (old, explicit)
    ]

  (old_eval, old_train), (new_eval, new_train) = jax.jit(outputs, compiler_options=FAST)(v, x)
  np.testing.assert_array_equal(new_eval, old_eval)  # the same operations: bit-identical
  np.testing.assert_array_equal(new_train, old_train)


def test_per_axis_pooling_and_upconv_match_flax():
  import flax.linen as nn

  from mdx.models import unet3d

  x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 2, 4, 6, 3)), jnp.float32)
  for s in ((1, 2, 2), (2, 1, 2)):
    np.testing.assert_array_equal(unet3d.max_pool(x, s), nn.max_pool(x, s, strides=s))
    up = unet3d.UpConv(4, strides=s)
    vu = up.init(jax.random.key(1), x)
    assert vu["params"]["kernel"].shape == (*s, 3, 4)
    bias = vu["params"]["bias"] + 0.25
    # == flax ConvTranspose (kernel = stride, VALID) with the kernel flipped spatially
    flipped = {"params": {"kernel": vu["params"]["kernel"][::-1, ::-1, ::-1], "bias": bias}}
    ref = nn.ConvTranspose(4, s, strides=s, padding="VALID").apply(flipped, x)
    mine = up.apply({"params": {**vu["params"], "bias": bias}}, x)
    assert mine.shape == (2, 2 * s[0], 4 * s[1], 6 * s[2], 4)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-5)  # float32 sums of 3 products


def test_deep_supervision_outputs_heads_and_gradients():
  from mdx import losses

  kw = dict(num_classes=3, base_width=2, norm="group", strides=STRIDES, conv_impl="native")
  model = UNet3D(deep_supervision=True, **kw)
  plain = UNet3D(**kw)
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((2, 4, 8, 8, 1)), jnp.float32)
  v = jitted.init(model, x)  # initialised for inference, as the training loop does
  vp = jax.eval_shape(plain.init, jax.random.key(0), x)
  assert set(v["params"]) - set(vp["params"]) == {"head_ds1", "head_ds2"}
  # the extra heads dropped, the variables serve a model without deep supervision
  dropped = {"params": {k: a for k, a in v["params"].items() if not k.startswith("head_ds")}}
  assert jax.tree.structure(dropped) == jax.tree.structure(vp)

  def outputs(v, x):
    return model.apply(v, x, train=True), model.apply(v, x), plain.apply(dropped, x)

  outs, single, without = jax.jit(outputs, compiler_options=FAST)(v, x)
  assert isinstance(outs, tuple)
  # full resolution, then decoder levels 1 and 2 (input / (1, 2, 2), / (2, 4, 4))
  assert [o.shape for o in outs] == [(2, 4, 8, 8, 3), (2, 4, 4, 4, 3), (2, 2, 2, 2, 3)]
  assert all(o.dtype == jnp.float32 for o in outs)
  assert not isinstance(single, tuple) and single.shape == (2, 4, 8, 8, 3)
  np.testing.assert_allclose(single, outs[0], rtol=1e-6, atol=1e-6)  # GroupNorm: train-independent
  np.testing.assert_allclose(without, single, rtol=1e-6, atol=1e-6)

  labels = jnp.asarray(rng.integers(0, 3, (2, 4, 8, 8)), jnp.int32)

  def loss(params, weights):
    o = model.apply({"params": params}, x, train=True)
    return losses.deep_supervision_loss(o, labels, "softmax", weights, ce_weight=1.0).sum()

  grad = jax.jit(jax.grad(loss), compiler_options=FAST)

  def moved(g):
    return {k: sum(float(np.abs(a).sum()) for a in jax.tree.leaves(sub)) for k, sub in g.items()}

  # each head receives the gradient of its own output only, and the path below it
  for i, head in enumerate(("head", "head_ds1", "head_ds2")):
    g = moved(grad(v["params"], jnp.eye(3)[i]))
    assert g[head] > 0 and g["down0"] > 0
    assert all(g[h] == 0 for h in ("head", "head_ds1", "head_ds2") if h != head)
    assert (g["up0"] > 0) == (i == 0) and (g["up1"] > 0) == (i <= 1)


def test_registry_input_multiples_from_a_config():
  from mdx.models import registry

  assert {"strides", "deep_supervision"} <= set(registry.config_fields("unet3d"))
  cfg = {"name": "unet3d", "num_classes": 2, "strides": [[1, 2, 2], [2, 2, 2]]}  # as JSON reads
  assert registry.input_multiples(cfg) == (2, 4, 4)
  assert registry.min_input_size(cfg) == 4
  model = registry.create_from_config(cfg)
  assert model.strides == ((1, 2, 2), (2, 2, 2))
  hash(model)  # nested lists would make the module unhashable
  assert registry.input_multiples({"name": "unet3d", "num_classes": 2, "depth": 4}) == (8, 8, 8)
  assert registry.min_input_size({"name": "unet3d", "num_classes": 2}) == 4
  with pytest.raises(ValueError, match="config.model.strides"):
    registry.input_multiples({"name": "unet3d", "num_classes": 2, "strides": [[1, 2]]})
  with pytest.raises(ValueError, match="not a volumetric model"):
    registry.input_multiples({"name": "densenet_tiny", "num_classes": 2})
