"""Fine-tuning: partial restore under a new head, and freeze policies that really freeze."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from mdx.models import pretrained, registry
from mdx.train import finetune


def _init(model, x, seed):
  v = jax.jit(lambda x: model.init(jax.random.key(seed), x))(x)  # jit: dict keys come back sorted
  return v["params"], v["batch_stats"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A pretrained densenet_tiny (5 classes) with non-trivial statistics, saved like an import."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
  model = registry.create("densenet_tiny", num_classes=5)
  params, stats = _init(model, x, seed=0)
  _, upd = model.apply(
    {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
  )
  d = str(tmp_path_factory.mktemp("pre") / "tiny")
  pretrained.save(d, {"params": params, "batch_stats": upd["batch_stats"]}, {"model": "tiny"})
  return d, params, upd["batch_stats"]


def _flat(tree):
  return traverse_util.flatten_dict(tree)


@pytest.mark.parametrize(
  "policy,trained",
  [("head", {"head"}), ("from:block2", {"block2", "norm_final", "head"}), ("none", None)],
)
def test_frozen_stay_bit_identical_and_trained_change(source, policy, trained):
  ckpt, ref_params, ref_stats = source
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(2).integers(0, 2, size=(8, 3)), jnp.float32)
  model = registry.create("densenet_tiny", num_classes=3, freeze=policy)
  params, stats = _init(model, x, seed=7)
  params, stats = finetune.restore_backbone(params, stats, ckpt)
  labels = finetune.trainable_labels(params, policy, stages=None)  # order from the names
  assert labels == finetune.trainable_labels(params, policy, stages=model.stages)
  tx = finetune.freeze(optax.adam(1e-2), labels)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state):
    def loss_fn(p):
      logits, upd = model.apply(
        {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
      )
      return optax.sigmoid_binary_cross_entropy(logits, y).mean(), upd["batch_stats"]

    (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  for _ in range(3):
    params, stats, opt_state = step(params, stats, opt_state)
  trained = set(model.stages) if trained is None else trained
  ref = _flat({"params": ref_params, "batch_stats": ref_stats})
  for k, v in _flat({"params": params, "batch_stats": stats}).items():
    if k[1] == "head":
      continue  # new head, not in the checkpoint
    same = np.array_equal(np.asarray(v).view(np.uint32), np.asarray(ref[k]).view(np.uint32))
    assert same == (k[1] not in trained), (policy, k)


def test_restore_errors_list_what_does_not_fit(source, tmp_path):
  ckpt = source[0]
  other = registry.create("densenet_tiny", num_classes=3, growth_rate=4)
  params, stats = _init(other, jnp.zeros((1, 32, 32, 3)), 0)
  with pytest.raises(ValueError, match=r"shape mismatches: .*block1/layer1/conv2/kernel"):
    finetune.restore_backbone(params, stats, ckpt)
  deeper = registry.create("densenet_tiny", num_classes=3, block_sizes=(2, 2, 1))
  params, stats = _init(deeper, jnp.zeros((1, 32, 32, 3)), 0)
  with pytest.raises(ValueError, match=r"missing from the checkpoint: .*block3"):
    finetune.restore_backbone(params, stats, ckpt)
  with pytest.raises(FileNotFoundError, match="init_from"):
    finetune.restore_backbone(params, stats, str(tmp_path / "nowhere"))


def test_stem_adapted_to_one_channel_gives_same_response_to_gray(source):
  ckpt, ref_params, ref_stats = source
  gray = np.random.default_rng(3).normal(size=(2, 32, 32, 1)).astype(np.float32)
  rgb_model = registry.create("densenet_tiny", num_classes=5)
  expected = rgb_model.apply(
    {"params": ref_params, "batch_stats": ref_stats}, np.repeat(gray, 3, -1)
  )
  model = registry.create("densenet_tiny", num_classes=5)
  params, stats = _init(model, jnp.asarray(gray), 1)
  params, stats = finetune.restore_backbone(params, stats, ckpt, exclude=())
  got = model.apply({"params": params, "batch_stats": stats}, gray)
  np.testing.assert_allclose(got, expected, atol=1e-4)


def test_policies_and_order():
  names = ["transition1", "head", "block2", "stem", "norm_final", "block1"]
  assert finetune.stage_order(names) == [
    "stem",
    "block1",
    "transition1",
    "block2",
    "norm_final",
    "head",
  ]
  params = {n: {"w": np.zeros(1)} for n in names}
  labels = finetune.trainable_labels(params, "from:block2")
  assert [n for n in finetune.stage_order(names) if labels[n]["w"] == "train"] == [
    "block2",
    "norm_final",
    "head",
  ]
  with pytest.raises(ValueError, match="block9"):
    finetune.trainable_labels(params, "from:block9")
  with pytest.raises(ValueError, match="unknown"):
    finetune.trainable_labels(params, "last")
