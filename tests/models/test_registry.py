"""Registry contract: names, kwargs checks, shapes and dtypes of the tiny models."""

import jax
import jax.numpy as jnp
import jitted
import ml_collections
import numpy as np
import pytest

from mdx.models import registry


def test_unknown_name_and_field_are_clear_errors():
  with pytest.raises(ValueError, match="densenet_tiny"):
    registry.create("densenet_nope", num_classes=2)
  with pytest.raises(ValueError, match="growth"):
    registry.create("densenet_tiny", num_classes=2, growht_rate=4)
  cfg = ml_collections.ConfigDict(
    dict(name="densenet_tiny", num_classes=2, dtype="float32", bogus=1)
  )
  with pytest.raises(ValueError, match="config.model.*bogus"):
    registry.create_from_config(cfg)


def test_densenet_tiny_contract():
  cfg = ml_collections.ConfigDict(
    dict(name="densenet_tiny", num_classes=3, dtype="bfloat16", growth_rate=4, init_from=None)
  )
  model = registry.create_from_config(cfg, bn_axis_name=None)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 1)), jnp.float32)
  variables = jitted.init(model, x, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
  logits, updates = jitted.apply(model, variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 3) and logits.dtype == jnp.float32
  # Training mode moves the running statistics; eval mode uses them.
  before = variables["batch_stats"]["stem"]["bn"]["mean"]
  assert not np.allclose(updates["batch_stats"]["stem"]["bn"]["mean"], before)
  # growth 4 in block1 of 2 layers on 16 stem channels: layer2 norm sees 16 + 4 channels.
  assert variables["params"]["block1"]["layer2"]["bn1"]["scale"].shape == (20,)
  assert (
    model.gradcam_layer in variables["params"] or model.gradcam_layer in variables["batch_stats"]
  )
  assert model.stages[-1] == "head" and set(variables["params"]) == set(model.stages)


def test_densenet121_parameter_count_matches_torchvision():
  # torchvision densenet121: 7,978,856 parameters with 1000 classes.
  model = registry.create("densenet121", num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["params"])) == 7_978_856


@pytest.mark.slow  # two DenseNet gradients each: the full tier (the fast one stays under 3 min)
@pytest.mark.parametrize("kwargs", [dict(remat=True), dict(concat="buffer")])
def test_remat_and_buffer_concat_give_same_outputs_and_gradients(kwargs):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  plain = registry.create("densenet_tiny", num_classes=2)
  remat = registry.create("densenet_tiny", num_classes=2, **kwargs)
  variables = jitted.init(plain, x)

  def grad(model):
    def loss(params):
      y, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(y**2)

    return jax.jit(jax.grad(loss))(variables["params"])

  g1, g2 = grad(plain), grad(remat)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "name,count",
  [
    ("densenet169", 14_149_480),
    ("densenet201", 20_013_928),
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnext50_32x4d", 25_028_904),
    ("efficientnet_b0", 5_288_548),
    ("efficientnet_b3", 12_233_232),
    ("inception_v3", 23_834_568),
  ],
)  # torchvision's counts, 1000 classes (Inception without aux)
def test_parameter_counts_match_torchvision(name, count):
  model = registry.create(name, num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["params"])) == count


@pytest.mark.parametrize(
  "name",
  # EfficientNet's train step compiles for ~8 s: the full tier (the fast tier keeps ResNet's)
  ["resnet_tiny", pytest.param("efficientnet_tiny", marks=pytest.mark.slow)],
)
def test_tiny_models_train_mode_and_freeze(name):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 2)), jnp.float32)
  model = registry.create(name, num_classes=3, freeze="head")
  variables = jitted.init(model, x)
  logits, upd = jitted.apply(model, variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
  # freeze='head': every BatchNorm runs on running statistics, which stay as they were.
  for a, b in zip(jax.tree.leaves(upd["batch_stats"]), jax.tree.leaves(variables["batch_stats"])):
    np.testing.assert_array_equal(a, b)
  assert set(variables["params"]) <= set(model.stages) and model.gradcam_layer in model.stages
