"""The hand-tuned operations in mdx.models.common give Flax's numbers, and the XLA options fall
back.

Oracles: nn.BatchNorm followed by nn.relu, and nn.max_pool, differentiated by JAX.
"""

import functools
import os
import re
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


@pytest.mark.slow  # it trains: the full tier (the fast one stays under 3 minutes)
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


@pytest.mark.slow  # spawns processes: the full tier
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


# ------------------------------------------------------------------ JAX internals (common.py note)
_UPGRADE = "a JAX upgrade changed what mdx.models.common's tuned ops rely on (see its note): "


def _on_mesh(f, *args, in_specs, out_specs):
  """f under jax.shard_map on a 1-D 'data' mesh of this process's devices (check_vma on)."""
  from jax.sharding import NamedSharding

  mesh = runtime.make_mesh()
  placed = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, in_specs)]
  return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs))(*placed)


def test_jax_internals_the_tuned_ops_rely_on():
  from jax import lax
  from jax.sharding import PartitionSpec as P

  assert hasattr(jax, "typeof"), _UPGRADE + "jax.typeof is gone (common._varying_axes reads it)"
  seen = {}

  def probe(x, w):
    seen["x"], seen["w"] = common._varying_axes(x), common._varying_axes(w)
    return lax.psum(1, runtime.DATA) * jnp.ones(()), lax.pmean(x.sum(), runtime.DATA)

  size, mean = _on_mesh(
    probe, jnp.ones((jax.device_count() * 2, 3)), jnp.ones(3), in_specs=(P("data"), P()),
    out_specs=(P(), P()),
  )  # fmt: skip
  assert seen == {"x": {"data"}, "w": set()}, (
    _UPGRADE + f"the varying mesh axes of a sharded / replicated value read {seen}, not "
    "{'data'} / set(): update common._varying_axes (jax.typeof(x).mat.varying, or .vma before "
    "jax 0.10), or the 1x1 convolution's kernel gradient is not summed over devices"
  )
  assert int(size) == jax.device_count(), _UPGRADE + "lax.psum(1, axis) is not the axis size"
  assert float(mean) == 6.0, _UPGRADE + "lax.pmean inside shard_map does not average"

  # custom_vjp: nondiff arguments come first in the backward rule.
  @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
  def scaled(x, k):
    return x * k

  scaled.defvjp(lambda x, k: (x * k, x), lambda k, residual, g: (g * k + 0 * residual,))
  assert float(jax.grad(scaled)(2.0, 3)) == 3.0, _UPGRADE + "custom_vjp's nondiff_argnums order"

  # check_vma rejects a backward rule whose gradient varies over an axis its input does not: what
  # makes a _varying_axes that finds nothing fail loudly instead of giving one device's gradient.
  @jax.custom_vjp
  def unsummed(x, w):
    return x * w

  unsummed.defvjp(lambda x, w: (x * w, x), lambda x, g: (g, (g * x).sum(0)))
  with pytest.raises(Exception, match="manual axis types do not match|vma"):
    _on_mesh(
      jax.grad(lambda w, x: unsummed(x, w).sum()), jnp.ones(3), jnp.ones((jax.device_count(), 3)),
      in_specs=(P(), P("data")), out_specs=P(),
    )  # fmt: skip

  # The 1x1 convolution off CPU (or with the tuned op off): lax.conv_general_dilated, NHWC/HWIO.
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.normal(size=(2, 3, 3, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(1, 1, 5, 4)), jnp.float32)
  want = nn.Conv(4, (1, 1), use_bias=False).apply({"params": {"kernel": kernel}}, x)
  with common.plain_flax_ops("conv1x1_vjp"):
    np.testing.assert_allclose(common.conv1x1(x, kernel, jnp.float32), want, rtol=1e-5, atol=1e-5)


def test_by_platform_chooses_in_the_lowering():
  """common.by_platform: the CPU branch where this CPU process runs it, the default branch in a
  TPU or CUDA lowering (also of its gradient: differentiating lax.cond keeps the platforms),
  both in a multi-platform export, the default alone inside portable_ops()."""
  f = common.by_platform(cpu=lambda x: jnp.sin(x), default=lambda x: jnp.tanh(x))
  x = jnp.float32(0.5)
  assert float(f(x)) == float(jnp.sin(x)) and float(jax.jit(f)(x)) == float(jnp.sin(x))
  assert float(jax.jit(jax.grad(f))(x)) == pytest.approx(float(jnp.cos(x)), rel=1e-6)
  with common.portable_ops():  # a new function to trace: jit caches by function, not by flag
    assert float(jax.jit(lambda x: f(x))(x)) == float(jnp.tanh(x))

  def lowered(fn, platforms):
    spec = jax.ShapeDtypeStruct((), jnp.float32)
    return jax.export.export(jax.jit(fn), platforms=platforms)(spec).mlir_module()

  for fn in (f, jax.grad(f)):
    for platforms, sine, tanh in (
      (("cpu",), True, False),
      (("tpu",), False, True),
      (("cuda",), False, True),
      (("cpu", "cuda", "tpu"), True, True),
    ):
      text = lowered(fn, platforms)  # sin's derivative is cos; tanh's is 1 - tanh**2
      found = (bool(re.search(r"stablehlo\.(sine|cosine)", text)), "stablehlo.tanh" in text)
      assert found == (sine, tanh), (
        _UPGRADE + f"lax.platform_dependent lowered for {platforms} does not keep exactly its "
        "platforms' branches (common.by_platform relies on it)"
      )


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P
from mdx import runtime
from mdx.models import common

assert jax.device_count() == 4, jax.devices()


class Stack(nn.Module):
  axis_name: str | None

  @nn.compact
  def __call__(self, x):
    x = common.Conv1x1(6, jnp.float32, name="conv")(x)
    x = common.BatchNormReLU(True, False, self.axis_name, 1e-5, jnp.float32, name="bn")(x)
    return common.gradient_materialized(common.max_pool(x, 3, 2, 1))


rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(8, 9, 9, 4)) * 2 + 1, jnp.float32)
g = jnp.asarray(rng.normal(size=(8, 5, 5, 6)), jnp.float32)
variables = Stack(None).init(jax.random.key(0), x)


def grads(axis_name):
  def loss(params, stats, x, g):
    y, upd = Stack(axis_name).apply(
      {"params": params, "batch_stats": stats}, x, mutable=["batch_stats"]
    )
    return (y * g).sum() / 8, upd["batch_stats"]

  def step(params, stats, x, g):
    return jax.grad(loss, has_aux=True)(params, stats, x, g)

  if axis_name is None:
    return jax.jit(step)(variables["params"], variables["batch_stats"], x, g)
  mesh = runtime.make_mesh()
  specs = (P(), P(), P("data"), P("data"))
  args = [
    jax.device_put(a, NamedSharding(mesh, s))
    for a, s in zip((variables["params"], variables["batch_stats"], x, g), specs)
  ]
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=specs, out_specs=(P(), P())))(*args)


want = dict(jax.tree_util.tree_leaves_with_path(grads(None)))
tuned = grads("data")
with common.plain_flax_ops():  # each grads() call traces anew: these use JAX's own VJPs
  plain = grads("data")
for name, got in (("tuned", tuned), ("plain", plain)):
  for path, a in jax.tree_util.tree_leaves_with_path(got):
    np.testing.assert_allclose(a, want[path], rtol=1e-4, atol=1e-5, err_msg=f"{name} {path}")
print("OK")
"""


@pytest.mark.slow  # spawns processes: the full tier
def test_tuned_ops_on_four_devices_match_one_device():
  """The gradients and BatchNorm statistics of conv1x1, BatchNorm-ReLU and max pooling under
  shard_map on 4 CPU devices (batch split, parameters replicated, check_vma on) equal one device's
  on the whole batch: the mesh-axis handling of the custom VJPs (common.py's note)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0 and out.stdout.strip().endswith("OK"), (
    _UPGRADE + "the tuned ops under shard_map on 4 devices differ from one device "
    f"(or fail):\n{out.stderr[-3000:]}"
  )
