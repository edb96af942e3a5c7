"""The hand-tuned operations in mdx.models.common give Flax's numbers, and the XLA options fall
back.

Oracles: nn.BatchNorm followed by nn.relu, and nn.max_pool, differentiated by JAX.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import optax
import pytest
from flax import linen as nn

from mdx import runtime
from mdx.models import common, registry


class FlaxBnRelu(nn.Module):
  train: bool
  frozen: bool = False

  @nn.compact
  def __call__(self, x):
    return nn.relu(common.batch_norm(self.train, self.frozen, None, 1e-5, jnp.float32, "bn")(x))


class TunedBnRelu(nn.Module):
  train: bool
  frozen: bool = False

  @nn.compact
  def __call__(self, x):
    return common.BatchNormReLU(self.train, self.frozen, None, 1e-5, jnp.float32, name="bn")(x)


def _random_variables(x):
  v = FlaxBnRelu(True).init(jax.random.key(0), x)
  rng = np.random.default_rng(1)  # non-trivial scale, bias and running statistics
  return jax.tree.map(lambda a: a + jnp.asarray(rng.uniform(0.1, 0.5, a.shape), jnp.float32), v)


def _loss_grads_stats(module, variables, x, g):
  def loss(params, x):
    y, upd = module.apply(
      {"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"]
    )
    return (y * g).sum(), (y, upd["batch_stats"])

  (_, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
    variables["params"], x
  )
  return y, grads, stats


@pytest.mark.parametrize("train,frozen", [(True, False), (True, True), (False, False)])
def test_batch_norm_relu_matches_flax(train, frozen):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(6, 5, 4, 7)) * 3 + 2, jnp.float32)  # mean far from 0
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  variables = _random_variables(x)
  want = _loss_grads_stats(FlaxBnRelu(train, frozen), variables, x, g)
  got = _loss_grads_stats(TunedBnRelu(train, frozen), variables, x, g)
  assert jax.tree.structure(got) == jax.tree.structure(want)  # same parameter and stat names
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)
  if train and not frozen:  # the running statistics moved, as Flax's did
    assert not np.allclose(got[2]["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])


def test_batch_norm_relu_plain_ops_switch_gives_the_same_gradients():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(4, 3, 3, 5)), jnp.float32)
  g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  variables = _random_variables(x)
  tuned = _loss_grads_stats(TunedBnRelu(True), variables, x, g)
  with common.plain_flax_ops("bn_relu_vjp"):
    plain = _loss_grads_stats(TunedBnRelu(True), variables, x, g)
  for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)
  with pytest.raises(ValueError, match="unknown tuned operations"):
    with common.plain_flax_ops("bn_relu_vpj"):
      pass


@pytest.mark.parametrize(
  "shape,window,stride,pad",
  [
    ((2, 9, 8, 3), 3, 2, 1),
    ((1, 7, 7, 2), 3, 1, 1),
    ((2, 8, 8, 1), 2, 2, 0),
    ((2, 13, 12, 2), 3, 3, 1),
    ((1, 11, 10, 2), 3, 2, 0),
  ],
)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_flax(shape, window, stride, pad, ties):
  x = np.random.default_rng(3).normal(size=shape)
  if ties:  # zeros after a ReLU, and equal values: the first maximum in the window takes it
    x = np.maximum(np.round(x), 0)
  x = jnp.asarray(x, jnp.float32)
  want = nn.max_pool(x, (window, window), (stride, stride), ((pad, pad), (pad, pad)))
  got = common.max_pool(x, window, stride, pad)
  np.testing.assert_array_equal(got, want)
  g = jnp.asarray(np.random.default_rng(4).normal(size=want.shape), jnp.float32)
  grad = lambda f: jax.grad(lambda x: (f(x) * g).sum())(x)
  np.testing.assert_allclose(
    grad(lambda x: common.max_pool(x, window, stride, pad)),
    grad(lambda x: nn.max_pool(x, (window, window), (stride, stride), ((pad, pad), (pad, pad)))),
    rtol=1e-6,
    atol=1e-6,
  )


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_conv1x1_matches_flax_conv(dtype, tol):
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(3, 5, 4, 7)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
  flax_conv = nn.Conv(6, (1, 1), use_bias=False, dtype=dtype, kernel_init=common.conv_init)
  tuned = common.Conv1x1(6, dtype)
  params = flax_conv.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, tuned.init(jax.random.key(0), x)) == jax.tree.map(
    jnp.shape, params
  )  # the same parameter: weights import and checkpoints are unchanged

  def value_and_grads(module):
    def loss(p, x):
      y = module.apply(p, x)
      return (y.astype(jnp.float32) * g).sum(), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return y, grads

  got, want = value_and_grads(tuned), value_and_grads(flax_conv)
  assert got[0].dtype == want[0].dtype == dtype
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol
    )


def test_gradient_materialized_is_the_identity():
  x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 3, 3, 5)), jnp.float32)
  g = jnp.asarray(np.random.default_rng(8).normal(size=x.shape), jnp.float32)
  f = lambda x: (jnp.sin(common.gradient_materialized(jnp.cos(x))) * g).sum()
  np.testing.assert_array_equal(common.gradient_materialized(x), x)
  np.testing.assert_array_equal(
    jax.jit(jax.grad(f))(x), jax.jit(jax.grad(lambda x: (jnp.sin(jnp.cos(x)) * g).sum()))(x)
  )


def test_densenet_trains_the_same_with_tuned_and_plain_ops():
  """Three SGD steps of a small DenseNet: same loss, parameters and BatchNorm statistics."""
  model = registry.create("densenet_tiny", num_classes=3)
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(4, 32, 32, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 2, (4, 3)), jnp.float32)
  variables = jitted.init(model, x)
  tx = optax.sgd(0.1)

  def run():
    # traced (and compiled) inside run(), so plain_flax_ops() below decides which ops it uses
    @jax.jit
    def step(params, stats, opt):
      def loss_fn(p):
        logits, upd = model.apply(
          {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.sigmoid_binary_cross_entropy(logits, y).mean(), upd["batch_stats"]

      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(grads, opt, params)
      return loss, optax.apply_updates(params, updates), stats, opt

    params, stats, opt = variables["params"], variables["batch_stats"], tx.init(variables["params"])
    for _ in range(3):
      loss, params, stats, opt = step(params, stats, opt)
    return loss, params, stats

  tuned = run()
  with common.plain_flax_ops():
    plain = run()
  for a, b in zip(jax.tree.leaves(tuned), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_compiler_options_apply_on_cpu_and_fall_back_when_unknown(monkeypatch):
  runtime.compiler_options.cache_clear()
  try:
    assert jax.default_backend() == "cpu"
    assert runtime.compiler_options() == runtime.CPU_COMPILER_OPTIONS
    runtime.compiler_options.cache_clear()
    monkeypatch.setattr(runtime, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "1"})
    assert runtime.compiler_options() == {}  # skipped with a warning: training still runs
  finally:
    runtime.compiler_options.cache_clear()


def test_allocator_names_the_preloaded_malloc():
  code = "from mdx import runtime; print(runtime.allocator())"
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert plain.stdout.strip() == "system malloc", plain.stderr
  for lib in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",):  # where launch.sh finds it
    if os.path.exists(lib):
      env["LD_PRELOAD"] = lib
      out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
      assert out.stdout.strip() == "tcmalloc", out.stderr
