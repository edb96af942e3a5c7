"""3D U-Net (Cicek et al. 2016) for volumetric segmentation.

Each level: two 3x3x3 convolutions, each followed by normalisation and ReLU; 2x max-pooling down,
2x transposed convolution up, skip connections by concatenation; a 1x1x1 convolution gives the
logits. Input [B, D, H, W, C] with D, H, W divisible by 2**(depth - 1); output float32 logits
[B, D, H, W, num_classes]. Parameters are float32; dtype sets the compute precision.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("batch", "group", "instance", "none")


class ConvBlock(nn.Module):
  features: int
  norm: str = "batch"
  dtype: Any = jnp.float32
  bn_axis_name: str | None = None
  groups: int = 8

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(2):
      x = nn.Conv(self.features, (3, 3, 3), padding="SAME", use_bias=self.norm == "none",
                  dtype=self.dtype, param_dtype=jnp.float32, name=f"conv{i}")(x)
      if self.norm == "batch":
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         axis_name=self.bn_axis_name if train else None, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"norm{i}")(x)
      elif self.norm == "group":
        x = nn.GroupNorm(num_groups=min(self.groups, self.features), dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"norm{i}")(x)
      elif self.norm == "instance":
        x = nn.GroupNorm(num_groups=None, group_size=1, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"norm{i}")(x)
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

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.norm not in NORMS:
      raise ValueError(f"config.model.norm={self.norm!r}; choose one of {NORMS}")
    if x.ndim != 5:
      raise ValueError(f"UNet3D expects [B, D, H, W, C] input, got shape {x.shape}")
    factor = 2 ** (self.depth - 1)
    if any(s % factor for s in x.shape[1:4]):
      raise ValueError(f"UNet3D with depth {self.depth} needs D, H, W divisible by {factor}; got "
                       f"{x.shape[1:4]} (pad the volume or choose another patch size)")
    dtype = jnp.dtype(self.dtype)
    block = dict(norm=self.norm, dtype=dtype, bn_axis_name=self.bn_axis_name)
    widths = [min(self.base_width * 2 ** level, self.max_width) for level in range(self.depth)]
    x = x.astype(dtype)
    skips = []
    for level, width in enumerate(widths[:-1]):
      x = ConvBlock(width, name=f"down{level}", **block)(x, train)
      skips.append(x)
      x = nn.max_pool(x, (2, 2, 2), strides=(2, 2, 2))
    x = ConvBlock(widths[-1], name="bottom", **block)(x, train)
    for level in reversed(range(self.depth - 1)):
      x = nn.ConvTranspose(widths[level], (2, 2, 2), strides=(2, 2, 2), dtype=dtype,
                           param_dtype=jnp.float32, name=f"upconv{level}")(x)
      x = jnp.concatenate([skips[level], x], -1)
      x = ConvBlock(widths[level], name=f"up{level}", **block)(x, train)
    x = nn.Conv(self.num_classes, (1, 1, 1), dtype=dtype, param_dtype=jnp.float32, name="head")(x)
    return x.astype(jnp.float32)
