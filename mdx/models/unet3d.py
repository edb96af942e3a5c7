"""3D U-Net (Cicek et al. 2016) for volumetric segmentation.

Each level: two 3x3x3 convolutions, each followed by normalisation and ReLU; 2x max-pooling down,
2x transposed convolution up, skip connections by concatenation; a 1x1x1 convolution gives the
logits. Input [B, D, H, W, C] with D, H, W divisible by 2**(depth - 1); output float32 logits
[B, D, H, W, num_classes]. Parameters are float32; dtype sets the compute precision.

conv_impl: 'native' uses XLA's 3D convolution; 'slices' computes the same 3x3x3 convolution as a sum
of three 2D convolutions over depth offsets, which XLA:CPU runs about 5x faster (forward and
backward) than its 3D convolution; 'stacked' is one 2D convolution of the whole volume with the
three depth offsets' kernels side by side on the output channels, then a shifted sum, which wins
where there are few output channels (a wider matrix product for XLA:CPU); 'auto' picks, on CPU,
'stacked' for up to 16 output channels and 'slices' above (benchmarks/unet3d.py), and
'native' elsewhere. Parameters are identical every way, so a checkpoint trained with one runs with
the others.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "group", "instance", "none")
CONV_IMPLS = ("auto", "native", "slices", "stacked")
STACKED_MAX_FEATURES = 16  # 'auto' on CPU: 'stacked' up to this many output channels


def conv3x3x3(x: jax.Array, kernel: jax.Array, impl: str) -> jax.Array:
  """'SAME' 3x3x3 convolution of x [B, D, H, W, Cin] with kernel [3, 3, 3, Cin, Cout]."""
  if impl == "auto":
    if jax.default_backend() != "cpu":
      impl = "native"
    else:
      impl = "stacked" if kernel.shape[-1] <= STACKED_MAX_FEATURES else "slices"
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


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2x2 max-pooling by reshape (XLA:CPU's reduce_window gradient is slow in 3D)."""
  b, d, h, w, c = x.shape
  return x.reshape(b, d // 2, 2, h // 2, 2, w // 2, 2, c).max((2, 4, 6))


class UpConv(nn.Module):
  """2x2x2 transposed convolution with stride 2: the kernels do not overlap, so it is a per-voxel
  matmul to 8 * features followed by depth-to-space (nn.ConvTranspose's 'VALID' result)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, d, h, w, c = x.shape
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (2, 2, 2, c, self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jnp.einsum("bdhwc,ijkcf->bdihjwkf", x.astype(self.dtype), kernel.astype(self.dtype))
    return y.reshape(b, 2 * d, 2 * h, 2 * w, self.features) + bias.astype(self.dtype)


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
  """depth levels (depth - 1 poolings); level l has base_width * 2**l channels (capped)."""

  num_classes: int
  dtype: Any = "float32"
  bn_axis_name: str | None = None
  depth: int = 3
  base_width: int = 16
  max_width: int = 320
  norm: str = "batch"
  conv_impl: str = "auto"

  def min_input_size(self) -> int:
    """Patch sides must be multiples of this (depth - 1 poolings by 2)."""
    return 2 ** (self.depth - 1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.norm not in NORMS:
      raise ValueError(f"config.model.norm={self.norm!r}; choose one of {NORMS}")
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f"config.model.conv_impl={self.conv_impl!r}; choose one of {CONV_IMPLS}")
    if x.ndim != 5:
      raise ValueError(f"UNet3D expects [B, D, H, W, C] input, got shape {x.shape}")
    factor = 2 ** (self.depth - 1)
    if any(s % factor for s in x.shape[1:4]):
      raise ValueError(
        f"UNet3D with depth {self.depth} needs D, H, W divisible by {factor}; got "
        f"{x.shape[1:4]} (pad the volume or choose another patch size)"
      )
    dtype = jnp.dtype(self.dtype)
    block = dict(
      norm=self.norm, dtype=dtype, bn_axis_name=self.bn_axis_name, conv_impl=self.conv_impl
    )
    widths = [min(self.base_width * 2**level, self.max_width) for level in range(self.depth)]
    x = x.astype(dtype)
    skips = []
    for level, width in enumerate(widths[:-1]):
      x = ConvBlock(width, name=f"down{level}", **block)(x, train)
      skips.append(x)
      x = max_pool2(x)
    x = ConvBlock(widths[-1], name="bottom", **block)(x, train)
    for level in reversed(range(self.depth - 1)):
      x = UpConv(widths[level], dtype=dtype, name=f"upconv{level}")(x)
      x = jnp.concatenate([skips[level], x], -1)
      x = ConvBlock(widths[level], name=f"up{level}", **block)(x, train)
    x = nn.Conv(self.num_classes, (1, 1, 1), dtype=dtype, param_dtype=jnp.float32, name="head")(x)
    return x.astype(jnp.float32)
