"""3D U-Net (Cicek et al. 2016) for volumetric segmentation, with nnU-Net's per-axis pooling.

Each level: two 3x3x3 convolutions, each followed by normalisation and ReLU; max-pooling down,
transposed convolution up, skip connections by concatenation; a 1x1x1 convolution gives the
logits. Input [B, D, H, W, C]; output float32 logits [B, D, H, W, num_classes]. Parameters are
float32; dtype sets the compute precision.

Pooling: strides=None pools by 2 on every axis depth - 1 times (depth 3 when unset), so D, H, W
must be multiples of 2**(depth - 1). strides=((sd, sh, sw), ...) gives one entry per pooling level
(each factor 1 or 2; an axis with 1 is not pooled at that level), as nnU-Net's planner chooses for
anisotropic scans (e.g. ((1, 2, 2), (2, 2, 2)) keeps the few thick slices of a CT at level 1);
depth is then len(strides) + 1, and each axis must be a multiple of its stride product
(input_multiples()). The transposed convolution of a level has kernel = stride, so its kernel is
[sd, sh, sw, Cin, Cout] ([2, 2, 2, ...] and the same parameter names as before with strides=None).

Deep supervision (deep_supervision=True, nnU-Net's): with train=True, __call__ returns a tuple of
logits, full resolution first ('head' on decoder level 0), then one per coarser decoder level l =
1 .. depth - 2 ('head_ds{l}' on 'up{l}', at the resolution of level l: [B, D / prod(strides[:l]),
...]); the bottleneck has no head. mdx.losses.deep_supervision_loss weighs them (the coarsest one
at 0, as nnU-Net). With train=False it returns only the full-resolution logits, so evaluation,
sliding windows, export and bundles see one array. The extra variables are params['head_ds1'] ..
params['head_ds{depth - 2}'] only: drop them and the variables restore into a
deep_supervision=False model of the same strides.

conv_impl: 'native' uses XLA's 3D convolution; 'slices' computes the same 3x3x3 convolution as a sum
of three 2D convolutions over depth offsets, which XLA:CPU runs about 5x faster (forward and
backward) than its 3D convolution; 'stacked' is one 2D convolution of the whole volume with the
three depth offsets' kernels side by side on the output channels, then a shifted sum, which wins
where there are few output channels (a wider matrix product for XLA:CPU); 'auto' picks, for CPU,
'stacked' for up to 16 output channels and 'slices' above (benchmarks/unet3d.py), and 'native'
for every other platform. That choice is made in the lowering, per platform the program is lowered
for (common.by_platform, lax.platform_dependent), not from the process's default backend: a CPU jit
compiles only the 2D forms, jax.export for TPU or CUDA only the 3D convolution (on any machine),
and a multi-platform export carries both; inside common.portable_ops() 'auto' is 'native' with no
switch (ONNX export). Parameters are identical every way, so a checkpoint trained with one runs
with the others.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mdx.models import common

NORMS = ("batch", "group", "instance", "none")
CONV_IMPLS = ("auto", "native", "slices", "stacked")
STACKED_MAX_FEATURES = 16  # 'auto' on CPU: 'stacked' up to this many output channels


def conv3x3x3(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
  """'SAME' 3x3x3 convolution of x [B, D, H, W, Cin] with kernel [3, 3, 3, Cin, Cout]."""
  if impl == "auto":  # the CPU form where the program runs on CPU, 'native' elsewhere
    cpu = "stacked" if kernel.shape[-1] <= STACKED_MAX_FEATURES else "slices"
    return common.by_platform(
      cpu=lambda x, kernel: conv3x3x3(x, kernel, cpu),
      default=lambda x, kernel: conv3x3x3(x, kernel, "native"),
    )(x, kernel)
  if impl == "native":
    return jax.lax.conv_general_dilated(
      x, kernel, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )
  b, d, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))  # 'SAME' in depth, by hand
  if impl == "stacked":
    o = kernel.shape[-1]
    stacked = jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(3, 3, c, 3 * o)  # [h, w, c, (a, o)]
    z = jax.lax.conv_general_dilated(
      xp.reshape(b * (d + 2), h, w, c),
      stacked,
      (1, 1),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ).reshape(b, d + 2, h, w, 3, o)
    # output depth i sees padded input depths i, i + 1, i + 2 through depth offsets 0, 1, 2
    return z[:, :d, ..., 0, :] + z[:, 1 : d + 1, ..., 1, :] + z[:, 2:, ..., 2, :]
  out = None
  for a in range(3):
    y = jax.lax.conv_general_dilated(
      xp[:, a : a + d].reshape(b * d, h, w, c),
      kernel[a],
      (1, 1),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    out = y if out is None else out + y
  return out.reshape(b, d, h, w, kernel.shape[-1])


class Conv3(nn.Module):
  """A 3x3x3 'SAME' convolution with nn.Conv's parameter names and initialisation."""

  features: int
  use_bias: bool = True
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (3, 3, 3, x.shape[-1], self.features), jnp.float32
    )
    y = conv3x3x3(x.astype(self.dtype), kernel.astype(self.dtype), self.impl)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
        self.dtype
      )
    return y


def max_pool(x: jax.Array, strides: tuple[int, int, int]) -> jax.Array:
  """Max-pooling of x [B, D, H, W, C] by per-axis factors (sd, sh, sw), window = stride, by reshape
  (XLA:CPU's reduce_window gradient is slow in 3D) -> [B, D / sd, H / sh, W / sw, C]."""
  b, d, h, w, c = x.shape
  sd, sh, sw = strides
  return x.reshape(b, d // sd, sd, h // sh, sh, w // sw, sw, c).max((2, 4, 6))


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2x2 max-pooling (max_pool by 2 on every axis)."""
  return max_pool(x, (2, 2, 2))


class UpConv(nn.Module):
  """Transposed convolution with kernel = stride = (sd, sh, sw): the kernels do not overlap, so it
  is a per-voxel matmul to sd * sh * sw * features followed by depth-to-space (nn.ConvTranspose's
  'VALID' result). [B, D, H, W, C] -> [B, sd * D, sh * H, sw * W, features]."""

  features: int
  dtype: Any = jnp.float32
  strides: tuple[int, int, int] = (2, 2, 2)

  @nn.compact
  def __call__(self, x):
    b, d, h, w, c = x.shape
    sd, sh, sw = self.strides
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (sd, sh, sw, c, self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jnp.einsum("bdhwc,ijkcf->bdihjwkf", x.astype(self.dtype), kernel.astype(self.dtype))
    return y.reshape(b, sd * d, sh * h, sw * w, self.features) + bias.astype(self.dtype)


class ConvBlock(nn.Module):
  features: int
  norm: str = "batch"
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  groups: int = 8
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(2):
      x = Conv3(
        self.features,
        use_bias=self.norm == "none",
        impl=self.conv_impl,
        dtype=self.dtype,
        name=f"conv{i}",
      )(x)
      if self.norm == "batch":
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=0.9,
          epsilon=1e-5,
          axis_name=self.bn_axis_name if train else None,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=f"norm{i}",
        )(x)
      elif self.norm == "group":
        x = nn.GroupNorm(
          num_groups=min(self.groups, self.features),
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=f"norm{i}",
        )(x)
      elif self.norm == "instance":
        x = nn.GroupNorm(
          num_groups=None, group_size=1, dtype=self.dtype, param_dtype=jnp.float32, name=f"norm{i}"
        )(x)
      x = nn.relu(x)
    return x


class UNet3D(nn.Module):
  """depth levels (depth - 1 poolings, by `strides` or by 2); level l has base_width * 2**l channels
  (capped at max_width). See the module docstring for strides and deep_supervision."""

  num_classes: int
  dtype: Any = "float32"
  bn_axis_name: str | None = None
  depth: int | None = None  # None: 3 without strides, len(strides) + 1 with them
  base_width: int = 16
  max_width: int = 320
  norm: str = "batch"
  conv_impl: str = "auto"
  strides: tuple[tuple[int, int, int], ...] | None = None
  deep_supervision: bool = False

  def level_strides(self) -> tuple[tuple[int, int, int], ...]:
    """The (sd, sh, sw) of each pooling level, checked; ValueError naming the field if invalid."""
    depth = self.depth
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
      raise ValueError(f"config.model.depth={depth!r} must be a whole number >= 1 (or unset)")
    if self.strides is None:
      return ((2, 2, 2),) * ((3 if depth is None else depth) - 1)
    entries = self.strides if isinstance(self.strides, (tuple, list)) else (self.strides,)
    levels = []
    for entry in entries:
      entry = tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)
      if len(entry) != 3 or any(isinstance(s, bool) or s not in (1, 2) for s in entry):
        raise ValueError(
          f"config.model.strides={self.strides!r}: each entry must be three factors (D, H, W), "
          "each 1 or 2, e.g. ((1, 2, 2), (2, 2, 2))"
        )
      levels.append(tuple(int(s) for s in entry))
    if depth is not None and depth != len(levels) + 1:
      raise ValueError(
        f"config.model.depth={depth} disagrees with config.model.strides ({len(levels)} pooling "
        f"levels make depth {len(levels) + 1}); leave depth unset when giving strides"
      )
    return tuple(levels)

  def input_multiples(self) -> tuple[int, int, int]:
    """(m_d, m_h, m_w): each input axis must be a multiple of the product of its strides."""
    out = [1, 1, 1]
    for level in self.level_strides():
      out = [m * s for m, s in zip(out, level)]
    return tuple(out)

  def min_input_size(self) -> int:
    """Patch sides must be multiples of this: 2**(depth - 1) with uniform pooling; with strides,
    the largest per-axis multiple (all are powers of 2, so a multiple of it suits every axis)."""
    return max(self.input_multiples())

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.norm not in NORMS:
      raise ValueError(f"config.model.norm={self.norm!r}; choose one of {NORMS}")
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f"config.model.conv_impl={self.conv_impl!r}; choose one of {CONV_IMPLS}")
    if x.ndim != 5:
      raise ValueError(f"UNet3D expects [B, D, H, W, C] input, got shape {x.shape}")
    levels = self.level_strides()
    multiples = self.input_multiples()
    for axis, size, m in zip("DHW", x.shape[1:4], multiples):
      if size % m:
        raise ValueError(
          f"UNet3D input axis {axis} has size {size}, not divisible by {m} (the product of its "
          f"pooling strides on that axis; D, H, W multiples {multiples}, input {x.shape[1:4]}); "
          "pad the volume or choose another patch size"
        )
    dtype = jnp.dtype(self.dtype)
    block = dict(
      norm=self.norm, dtype=dtype, bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl
    )
    n = len(levels)
    widths = [min(self.base_width * 2**level, self.max_width) for level in range(n + 1)]
    x = x.astype(dtype)
    skips = []
    for level in range(n):
      x = ConvBlock(widths[level], name=f"down{level}", **block)(x, train)
      skips.append(x)
      x = max_pool(x, levels[level])
    x = ConvBlock(widths[-1], name="bottom", **block)(x, train)
    # heads of the coarser decoder levels: built at init whatever `train`, so variables initialised
    # for inference also train; run only when training
    supervise = self.deep_supervision and (train or self.is_initializing())

    def head(name, y):  # 1x1x1 convolution to float32 logits
      conv = nn.Conv(self.num_classes, (1, 1, 1), dtype=dtype, param_dtype=jnp.float32, name=name)
      return conv(y).astype(jnp.float32)

    extra = {}
    for level in reversed(range(n)):
      x = UpConv(widths[level], dtype=dtype, strides=levels[level], name=f"upconv{level}")(x)
      x = jnp.concatenate([skips[level], x], -1)
      x = ConvBlock(widths[level], name=f"up{level}", **block)(x, train)
      if supervise and level > 0:
        extra[level] = head(f"head_ds{level}", x)
    x = head("head", x)
    if self.deep_supervision and train:
      return (x, *(extra[level] for level in range(1, n)))
    return x
