"""Pieces shared by the classifiers: dtypes, BatchNorm that knows when it is frozen, freeze
policies.

A classifier is a sequence of named top-level stages (e.g. 'stem', 'block1', ..., 'head'), listed in
its class attribute `stages`. A freeze policy names which stages are frozen:
  'none'            nothing frozen;
  'head'            everything but 'head' frozen;
  'from:<stage>'    every stage before <stage> frozen, <stage> and later ones trained.
The model uses the policy (its `freeze` field) to run the BatchNorm layers of frozen stages on their
running statistics; mdx.train.finetune uses the same policy to zero their optimizer updates.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# He-normal over fan-in, as torchvision initialises conv layers.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


# The hand-tuned operations below, on by default; plain_flax_ops() turns them off to measure them.
#
# What they rely on in JAX and Flax (checked with jax 0.10.2, flax 0.12.8), each pinned by a test in
# tests/models/test_tuned_ops.py that names it when an upgrade changes it:
# - jax.custom_vjp with nondiff_argnums: the backward rule takes those arguments first, then the
#   residuals and the cotangent (_max_pool_bwd, _bn_relu_train_bwd).
# - Under jax.shard_map with check_vma, a custom backward rule must return each gradient with the
#   varying mesh axes of its primal input; autodiff alone sums a replicated parameter's gradient.
#   _conv1x1_bwd psums the kernel gradient over the axes it varies in and the kernel does not, read
#   from jax.typeof(x) (`.mat.varying` in jax 0.10, `.vma` before: _varying_axes). Should that read
#   find nothing, JAX rejects the unsummed gradient ("manual axis types do not match"); with
#   check_vma off it would silently be one device's share.
# - lax.psum(1, axis) is the axis size, and lax.pmean averages, inside shard_map (the global batch
#   statistics of BatchNormReLU and their gradient's count).
# - by_platform (lax.platform_dependent) picks the CPU rewrites (a 1x1 convolution as a matrix
#   product, _materialized) in the lowering, per platform the program is lowered for: a CPU jit
#   compiles only the CPU form, a TPU or CUDA lowering (jax.export, on any machine) only the
#   accelerator form, where 1x1 convolutions are lax.conv_general_dilated with NHWC/HWIO dimension
#   numbers, as nn.Conv computes them; a multi-platform export carries both. Both forms are traced
#   (DenseNet-121's CPU train step: ~1 s more tracing, ~2 -> ~3 s; its compile time and optimised
#   program are unchanged). The forms' custom_vjp rules sit inside the branches; differentiating
#   lax.cond keeps each branch's platforms (tests/models/test_lowering.py reads each platform's
#   lowering of mdx's steps; test_by_platform_chooses_in_the_lowering pins platform_dependent).
# - BatchNormReLU copies nn.BatchNorm's numbers (float32 statistics, variance as E[x^2] - E[x]^2,
#   running averages m * old + (1 - m) * batch); the tests compare it with nn.BatchNorm.
# What XLA:CPU does with these programs (fusing an elementwise producer into every consumer,
# removing lax.optimization_barrier before fusion, transposing a contracted matrix operand) decides
# only their speed, not their numbers: benchmarks/classifiers.py measures it again.
_TUNED = {
  "bn_relu_vjp": True,
  "max_pool_vjp": True,
  "conv1x1_vjp": True,
  "gradient_materialized": True,
}


@contextlib.contextmanager
def plain_flax_ops(*names: str):
  """Trace models with plain Flax/JAX operations instead of the tuned ones named (default: all):
  'bn_relu_vjp' (BatchNorm-ReLU's hand-written backward pass), 'max_pool_vjp' (max pooling as a
  maximum of strided slices, with a hand-written backward pass), 'conv1x1_vjp' (1x1 convolutions
  as matrix products whose kernel gradient XLA:CPU computes without transposing the input),
  'gradient_materialized' (a dense-block layer's output gradient computed once, not per consumer).
  Parameters and results are the same; benchmarks/classifiers.py measures what each buys with it."""
  unknown = set(names) - set(_TUNED)
  if unknown:
    raise ValueError(f"unknown tuned operations {sorted(unknown)}; choose from {sorted(_TUNED)}")
  before = dict(_TUNED)
  _TUNED.update({n: False for n in names or _TUNED})
  try:
    yield
  finally:
    _TUNED.update(before)


_PORTABLE = {"on": False}


@contextlib.contextmanager
def portable_ops():
  """Trace models with the operations every runtime has (for ONNX export): the plain Flax/JAX
  ones (plain_flax_ops) and, wherever mdx picks a form per platform, the accelerators' form (XLA's
  own convolutions, no CPU rewrites), with no platform switch in the program."""
  before = _PORTABLE["on"]
  _PORTABLE["on"] = True
  try:
    with plain_flax_ops():
      yield
  finally:
    _PORTABLE["on"] = before


def portable() -> bool:
  """True inside portable_ops()."""
  return _PORTABLE["on"]


def by_platform(*, cpu: Callable[..., Any], default: Callable[..., Any]) -> Callable[..., Any]:
  """f(*args): `cpu(*args)` where the program runs on CPU, `default(*args)` on every other platform
  (TPU, CUDA, ROCm). The two must return the same shapes and dtypes (pytrees of arrays).

  The choice is made in the lowering (lax.platform_dependent), for the platform the program is
  lowered for, not from the process's default backend: jax.jit on CPU compiles only `cpu`,
  jax.export(..., platforms=("tpu",)) only `default`, and a multi-platform export carries both,
  each platform taking its own when the artifact is compiled. Inside portable_ops() f is `default`
  alone, with no switch in the program (ONNX converters know no platform index)."""

  def f(*args):
    if portable():
      return default(*args)
    return lax.platform_dependent(*args, cpu=cpu, default=default)

  return f


def compute_dtype(dtype: Any) -> Any:
  """'float32' | 'bfloat16' | 'float16' (or a jnp dtype) -> jnp dtype."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"model dtype={dtype!r} is unknown; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]
  return dtype


def frozen_stages(stages: Sequence[str], policy: str | None) -> frozenset[str]:
  """The stages a freeze policy freezes (see the module docstring)."""
  if policy in (None, "none"):
    return frozenset()
  if policy == "head":
    first = "head"
  elif isinstance(policy, str) and policy.startswith("from:"):
    first = policy[len("from:") :]
  else:
    raise ValueError(
      f"freeze policy {policy!r} is unknown; use 'none', 'head' or 'from:<stage>' "
      f"with a stage of {list(stages)}"
    )
  if first not in stages:
    raise ValueError(
      f"freeze policy {policy!r} names stage {first!r}, which this model does not "
      f"have; its stages are {list(stages)}"
    )
  return frozenset(stages[: list(stages).index(first)])


def batch_norm(
  train: bool,
  frozen: bool,
  axis_name: str | None,
  epsilon: float,
  dtype: Any,
  name: str | None = None,
) -> nn.BatchNorm:
  """BatchNorm with the mdx conventions: momentum 0.9, statistics averaged over `axis_name`.

  A frozen layer always uses (and never updates) its running statistics.
  """
  use_running = (not train) or frozen
  return nn.BatchNorm(
    use_running_average=use_running,
    axis_name=None if use_running else axis_name,
    momentum=0.9,
    epsilon=epsilon,
    dtype=dtype,
    name=name,
  )


def max_pool(x, window: int, stride: int, pad: int):
  """nn.max_pool(x, (window, window), (stride, stride), ((pad, pad), (pad, pad))) on [B, H, W, C],
  with the same values and gradients (ties included: the first maximum in the window takes it).

  JAX differentiates reduce_window-max through an index scatter that XLA:CPU runs slowly (a
  DenseNet stem's pooling took longer than its convolution), and differentiating a maximum of
  slices lets XLA recompute that maximum inside every slice's gradient. The backward pass here is
  elementwise: each window position's share of the output gradient, summed per stride phase of
  the input and interleaved (DenseNet-121's stem at 224 px: 370 -> 250 ms a step, fwd + bwd).
  """
  if not _TUNED["max_pool_vjp"]:
    return nn.max_pool(
      x, window_shape=(window, window), strides=(stride, stride), padding=((pad, pad), (pad, pad))
    )
  return _max_pool(x, window, stride, pad)


def _pool_windows(x, window, stride, pad):
  """(i, j, the input under window position (i, j) of every output) for the padded input."""
  b, h, w, c = x.shape
  ho, wo = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
  for i in range(window):
    for j in range(window):
      end = (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c)
      yield i, j, lax.slice(xp, (0, i, j, 0), end, (1, stride, stride, 1))


def _materialized(x):
  """x [..., C], computed once into memory on CPU (by_platform: x itself elsewhere). XLA:CPU
  fuses an elementwise producer into each of its consumers, recomputing it per consumer, and
  removes lax.optimization_barrier before fusion; a matrix product cannot take a fused producer, so
  x @ I (exact: 1 * x plus zeros, for finite x; C <= 64 here, a few ms at 224 px) is where the
  producer runs, once."""
  if not _TUNED["gradient_materialized"]:
    return x
  return by_platform(cpu=_times_identity, default=_same)(x)


def _times_identity(x):
  return jnp.dot(x, jnp.eye(x.shape[-1], dtype=x.dtype))


def _same(x):
  return x


@jax.custom_vjp
def gradient_materialized(x):
  """The identity, whose gradient XLA:CPU computes once into memory (see `_materialized`) instead
  of fusing the gradient's producers into each consumer: in a dense block a layer's output
  gradient is a sum over every later layer, which the 3x3 convolution's input and kernel
  gradients would otherwise each recompute."""
  return x


gradient_materialized.defvjp(lambda x: (x, None), lambda _, g: (_materialized(g),))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, pad):
  return _max_pool_fwd(x, window, stride, pad)[0]


def _max_pool_fwd(x, window, stride, pad):
  out = None
  for _, _, s in _pool_windows(x, window, stride, pad):
    out = s if out is None else jnp.maximum(out, s)
  return out, (x, out)


def _max_pool_bwd(window, stride, pad, residuals, g):
  x, out = residuals
  # Materialised first: XLA would otherwise fuse g's producers (a DenseNet block's whole input
  # gradient) into each of the window**2 shares below and compute them that many times.
  g = _materialized(g)
  b, h, w, c = x.shape
  ho, wo = out.shape[1:3]
  # Padded input row stride * p + a (phase a < stride) is under window row i = a + stride * m of
  # output row p - m: per phase, the shares are output-sized arrays shifted by m.
  shift = (window - 1) // stride
  hq = max(ho + shift, -(-(h + pad) // stride))
  wq = max(wo + shift, -(-(w + pad) // stride))
  phases = [[jnp.zeros((b, hq, wq, c), g.dtype)] * stride for _ in range(stride)]
  taken = None  # where an earlier window position already holds the maximum
  for i, j, s in _pool_windows(x, window, stride, pad):
    hit = s == out
    hit, taken = (hit, hit) if taken is None else (hit & ~taken, taken | hit)
    share = jnp.where(hit, g, jnp.zeros((), g.dtype))
    mi, mj = i // stride, j // stride
    share = jnp.pad(share, ((0, 0), (mi, hq - ho - mi), (mj, wq - wo - mj), (0, 0)))
    phases[i % stride][j % stride] = phases[i % stride][j % stride] + share
  rows = [jnp.stack(row, axis=3) for row in phases]  # [b, hq, wq, stride, c] per row phase
  dx = jnp.stack(rows, axis=2).reshape(b, hq * stride, wq * stride, c)
  return (dx[:, pad : pad + h, pad : pad + w, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def conv1x1(x, kernel, dtype):
  """A 1x1 convolution without bias, as nn.Conv computes it: x [..., C] and kernel [1, 1, C, O]
  cast to `dtype`, output [..., O] in `dtype`.

  On CPU (by_platform; other platforms get lax.conv_general_dilated) its backward pass is written
  out: XLA:CPU's matrix product wants the contracted rows contiguous, so for a kernel gradient
  sum_m x[m]^T g[m] it transposes one operand. Written as (g^T x)^T, that operand is the output
  gradient (O channels) instead of the input (C channels, up to 1024 in a DenseNet block): a
  DenseNet-121 layer's train step runs 6-13% faster.
  """
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if not _TUNED["conv1x1_vjp"]:
    return _conv_nhwc(x, kernel)
  return by_platform(cpu=lambda x, kernel: _conv1x1(x, kernel[0, 0]), default=_conv_nhwc)(x, kernel)


def _conv_nhwc(x, kernel):
  """nn.Conv's 'VALID' convolution of x [B, H, W, C] with kernel [h, w, C, O] -> [B, H', W', O]."""
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
  return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=dn)


@jax.custom_vjp
def _conv1x1(x, w):
  return _conv1x1_fwd(x, w)[0]


def _conv1x1_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _conv1x1_bwd(residuals, g):
  x, w = residuals
  c, o = w.shape
  dx = jnp.dot(g, w.T)
  dw = lax.dot_general(g.reshape(-1, o), x.reshape(-1, c), (((0,), (0,)), ((), ()))).T
  # Inside shard_map the batch (so dw) varies over the data axis while w is replicated: summed
  # over the devices, as autodiff does for a replicated parameter.
  varying = tuple(sorted(_varying_axes(dw) - _varying_axes(w)))
  return dx, lax.psum(dw, varying) if varying else dw


def _varying_axes(x) -> set:
  """The shard_map mesh axes x varies over (jax 0.10: typeof(x).mat.varying; earlier: .vma)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)
  return set(mat.varying) if mat is not None else set(getattr(aval, "vma", ()))


_conv1x1.defvjp(_conv1x1_fwd, _conv1x1_bwd)


class Conv1x1(nn.Module):
  """nn.Conv(features, (1, 1), use_bias=False, dtype=dtype, kernel_init=conv_init): the same
  parameter ('kernel' [1, 1, C, features]) and numbers, through `conv1x1`."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", conv_init, (1, 1, x.shape[-1], self.features), jnp.float32)
    return conv1x1(x, kernel, self.dtype)


def _batch_moments(x, axis_name):
  """Per-channel mean and biased variance over every axis but the last, in float32, as flax does."""
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  moments = jnp.stack([jnp.mean(x32, axes), jnp.mean(x32 * x32, axes)])
  if axis_name is not None:
    moments = lax.pmean(moments, axis_name)
  mean, mean2 = moments[0], moments[1]
  return mean, jnp.maximum(mean2 - mean * mean, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_relu_train(x, scale, bias, epsilon, axis_name):
  return _bn_relu_train_fwd(x, scale, bias, epsilon, axis_name)[0]


def _normalize_relu(x, mean, rstd, scale, bias):
  """relu((x - mean) * rstd * scale + bias) in x's dtype: BatchNorm-ReLU given the statistics."""
  a = (scale * rstd).astype(x.dtype)
  return nn.relu((x - mean.astype(x.dtype)) * a + bias.astype(x.dtype))


def _bn_relu_train_fwd(x, scale, bias, epsilon, axis_name):
  mean, var = _batch_moments(x, axis_name)
  rstd = lax.rsqrt(var + epsilon)
  out = _normalize_relu(x, mean, rstd, scale, bias)
  # Only x (the block's input, alive anyway) and per-channel vectors are kept for the backward
  # pass; autodiff of BatchNorm would also keep x - mean and the activation mask.
  return (out, mean, var), (x, scale, bias, mean, rstd)


def _bn_relu_train_bwd(epsilon, axis_name, residuals, cotangents):
  del epsilon
  x, scale, bias, mean, rstd = residuals
  g = cotangents[0]  # the batch statistics feed only the running averages: no gradient
  axes = tuple(range(x.ndim - 1))
  xhat = (x.astype(jnp.float32) - mean) * rstd
  dy = jnp.where(xhat * scale + bias > 0, g.astype(jnp.float32), 0.0)
  sums = jnp.stack([dy.sum(axes), (dy * xhat).sum(axes)])
  count = x.size // x.shape[-1]
  if axis_name is not None:  # statistics were global: so are their gradients
    sums = lax.psum(sums, axis_name)
    count = count * lax.psum(1, axis_name)
  dbias, dscale = sums[0], sums[1]
  dx = (scale * rstd) * (dy - dbias / count - xhat * (dscale / count))
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_bn_relu_train.defvjp(_bn_relu_train_fwd, _bn_relu_train_bwd)


class BatchNormReLU(nn.Module):
  """relu(BatchNorm(x)) with nn.BatchNorm's parameters, statistics and numbers, and a hand-written
  backward pass for training: one reduction and one elementwise pass, keeping only x and
  per-channel vectors. DenseNet-121's train step compiles in ~23 s instead of ~34 s on CPU; its
  speed is the same within noise (benchmarks/classifiers.py --variants=mdx,plain_flax_ops).

  Use in place of `relu(batch_norm(...)(x))`; the arguments are those of `batch_norm`.
  """

  train: bool
  frozen: bool
  axis_name: str | None
  epsilon: float
  dtype: Any
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    x = x.astype(self.dtype)
    if not self.train or self.frozen:  # running statistics: an affine map, autodiff is fine
      return _normalize_relu(x, ra_mean.value, lax.rsqrt(ra_var.value + self.epsilon), scale, bias)
    if _TUNED["bn_relu_vjp"]:
      out, mean, var = _bn_relu_train(x, scale, bias, self.epsilon, self.axis_name)
    else:  # the same function, differentiated by JAX (as nn.BatchNorm then nn.relu)
      mean, var = _batch_moments(x, self.axis_name)
      out = _normalize_relu(x, mean, lax.rsqrt(var + self.epsilon), scale, bias)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * lax.stop_gradient(var)
    return out


class NormBlock(nn.Module):
  """Base of the classifiers' building blocks: the four BatchNorm settings a block hands down to its
  children (whether its stage is frozen, the mesh axis its statistics average over, epsilon, the
  compute dtype), and the layers made with them. Subclasses declare their own fields after these
  four, so pass those by keyword."""

  frozen: bool
  axis_name: str | None
  epsilon: float
  dtype: Any

  def norm_fields(self) -> dict[str, Any]:
    """The four fields, for a child block: Child(**self.norm_fields(), ...)."""
    return dict(
      frozen=self.frozen, axis_name=self.axis_name, epsilon=self.epsilon, dtype=self.dtype
    )

  def bn(self, train: bool, name: str) -> nn.BatchNorm:
    return batch_norm(train, self.frozen, self.axis_name, self.epsilon, self.dtype, name)

  def bn_relu(self, train: bool, name: str) -> BatchNormReLU:
    return BatchNormReLU(train, self.frozen, self.axis_name, self.epsilon, self.dtype, name=name)

  def conv(self, features, kernel, stride=1, groups=1, name=None, use_bias=False) -> nn.Conv:
    """A square convolution padded by (kernel - 1) // 2 per side (torchvision), He-initialised."""
    pad = (kernel - 1) // 2
    return nn.Conv(
      features,
      (kernel, kernel),
      (stride, stride),
      padding=((pad, pad), (pad, pad)),
      feature_group_count=groups,
      use_bias=use_bias,
      dtype=self.dtype,
      kernel_init=conv_init,
      name=name,
    )


class Head(nn.Module):
  """Global average pooling and a dense layer in float32: logits [B, num_classes] float32."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="dense")(x)
