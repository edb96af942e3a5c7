"""Inception-v3 (Szegedy et al., 2016) in torchvision's layout, without the auxiliary classifier.

Stages: stem (Conv2d_1a .. Conv2d_4a with two max pools), mixed5b, mixed5c, mixed5d, mixed6a ..
mixed6e, mixed7a, mixed7b, mixed7c (the last feature map), head. Inputs of at least 75 px.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp
from flax import linen as nn

from mdx.models import common


class _Blocks(nn.Module):
  frozen: bool
  axis_name: str | None
  epsilon: float
  dtype: Any

  def cbr(self, x, train, features, kernel, stride=1, padding="SAME", name=None):
    """conv (no bias) - BN - ReLU; `kernel` an int or (kh, kw); padding 'SAME' keeps the size."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2)) if padding == "SAME" else "VALID"
    x = nn.Conv(
      features,
      (kh, kw),
      (stride, stride),
      padding=pad,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=common.conv_init,
      name=f"{name}_conv",
    )(x)
    return common.BatchNormReLU(
      train, self.frozen, self.axis_name, self.epsilon, self.dtype, name=f"{name}_bn"
    )(x)


def _avg3(x):
  return nn.avg_pool(
    x, window_shape=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True
  )


def _max3s2(x):
  return common.max_pool(x, 3, 2, 0)


class Stem(_Blocks):
  @nn.compact
  def __call__(self, x, train: bool):
    x = self.cbr(x, train, 32, 3, 2, "VALID", "Conv2d_1a_3x3")
    x = self.cbr(x, train, 32, 3, 1, "VALID", "Conv2d_2a_3x3")
    x = _max3s2(self.cbr(x, train, 64, 3, 1, "SAME", "Conv2d_2b_3x3"))
    x = self.cbr(x, train, 80, 1, 1, "VALID", "Conv2d_3b_1x1")
    return _max3s2(self.cbr(x, train, 192, 3, 1, "VALID", "Conv2d_4a_3x3"))


class InceptionA(_Blocks):
  pool_features: int = 32

  @nn.compact
  def __call__(self, x, train: bool):
    c = lambda y, f, k, n: self.cbr(y, train, f, k, name=n)
    b1 = c(x, 64, 1, "branch1x1")
    b5 = c(c(x, 48, 1, "branch5x5_1"), 64, 5, "branch5x5_2")
    b3 = c(c(c(x, 64, 1, "branch3x3dbl_1"), 96, 3, "branch3x3dbl_2"), 96, 3, "branch3x3dbl_3")
    bp = c(_avg3(x), self.pool_features, 1, "branch_pool")
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(_Blocks):
  @nn.compact
  def __call__(self, x, train: bool):
    b3 = self.cbr(x, train, 384, 3, 2, "VALID", "branch3x3")
    d = self.cbr(x, train, 64, 1, name="branch3x3dbl_1")
    d = self.cbr(d, train, 96, 3, name="branch3x3dbl_2")
    d = self.cbr(d, train, 96, 3, 2, "VALID", "branch3x3dbl_3")
    return jnp.concatenate([b3, d, _max3s2(x)], -1)


class InceptionC(_Blocks):
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x, train: bool):
    c = lambda y, f, k, n: self.cbr(y, train, f, k, name=n)
    m = self.channels_7x7
    b1 = c(x, 192, 1, "branch1x1")
    b7 = c(c(c(x, m, 1, "branch7x7_1"), m, (1, 7), "branch7x7_2"), 192, (7, 1), "branch7x7_3")
    d = c(x, m, 1, "branch7x7dbl_1")
    d = c(c(d, m, (7, 1), "branch7x7dbl_2"), m, (1, 7), "branch7x7dbl_3")
    d = c(c(d, m, (7, 1), "branch7x7dbl_4"), 192, (1, 7), "branch7x7dbl_5")
    bp = c(_avg3(x), 192, 1, "branch_pool")
    return jnp.concatenate([b1, b7, d, bp], -1)


class InceptionD(_Blocks):
  @nn.compact
  def __call__(self, x, train: bool):
    b3 = self.cbr(
      self.cbr(x, train, 192, 1, name="branch3x3_1"), train, 320, 3, 2, "VALID", "branch3x3_2"
    )
    b7 = self.cbr(x, train, 192, 1, name="branch7x7x3_1")
    b7 = self.cbr(b7, train, 192, (1, 7), name="branch7x7x3_2")
    b7 = self.cbr(b7, train, 192, (7, 1), name="branch7x7x3_3")
    b7 = self.cbr(b7, train, 192, 3, 2, "VALID", "branch7x7x3_4")
    return jnp.concatenate([b3, b7, _max3s2(x)], -1)


class InceptionE(_Blocks):
  @nn.compact
  def __call__(self, x, train: bool):
    c = lambda y, f, k, n: self.cbr(y, train, f, k, name=n)
    b1 = c(x, 320, 1, "branch1x1")
    b3 = c(x, 384, 1, "branch3x3_1")
    b3 = jnp.concatenate(
      [c(b3, 384, (1, 3), "branch3x3_2a"), c(b3, 384, (3, 1), "branch3x3_2b")], -1
    )
    d = c(c(x, 448, 1, "branch3x3dbl_1"), 384, 3, "branch3x3dbl_2")
    d = jnp.concatenate(
      [c(d, 384, (1, 3), "branch3x3dbl_3a"), c(d, 384, (3, 1), "branch3x3dbl_3b")], -1
    )
    bp = c(_avg3(x), 192, 1, "branch_pool")
    return jnp.concatenate([b1, b3, d, bp], -1)


class InceptionV3(nn.Module):
  """Inception-v3 classifier on [B, H, W, C] images (any C, >= 75 px): logits float32
  [B, classes]."""

  num_classes: int
  dtype: Any = "float32"
  bn_axis_name: str | None = None
  bn_epsilon: float = 1e-3
  freeze: str = "none"
  remat: bool = False

  gradcam_layer: ClassVar[str] = "mixed7c"
  stages: ClassVar[tuple[str, ...]] = (
    "stem",
    "mixed5b",
    "mixed5c",
    "mixed5d",
    "mixed6a",
    "mixed6b",
    "mixed6c",
    "mixed6d",
    "mixed6e",
    "mixed7a",
    "mixed7b",
    "mixed7c",
    "head",
  )

  def min_input_size(self) -> int:
    """Inception-v3's valid-padded stem and reductions need at least 75 px (as in Keras)."""
    return 75

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = common.compute_dtype(self.dtype)
    frozen = common.frozen_stages(self.stages, self.freeze)
    kw = dict(axis_name=self.bn_axis_name, epsilon=self.bn_epsilon, dtype=dtype)
    blocks = [
      (InceptionA, dict(pool_features=32)),
      (InceptionA, dict(pool_features=64)),
      (InceptionA, dict(pool_features=64)),
      (InceptionB, {}),
      (InceptionC, dict(channels_7x7=128)),
      (InceptionC, dict(channels_7x7=160)),
      (InceptionC, dict(channels_7x7=160)),
      (InceptionC, dict(channels_7x7=192)),
      (InceptionD, {}),
      (InceptionE, {}),
      (InceptionE, {}),
    ]
    x = Stem("stem" in frozen, name="stem", **kw)(x.astype(dtype), train)
    for name, (cls, extra) in zip(self.stages[1:-1], blocks):
      if self.remat:
        cls = nn.remat(cls, static_argnums=(2,))
      x = cls(name in frozen, name=name, **kw, **extra)(x, train)
    return common.Head(self.num_classes, name="head")(x)
