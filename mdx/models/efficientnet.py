"""EfficientNet-B0..B3 (Tan and Le, 2019): MBConv blocks with squeeze-and-excitation, SiLU.

Stages: stem (3x3/2 conv), block1..block7 (torchvision's `features[1..7]`), top (1x1 conv to
1280 x width, the last feature map), head. Widths are rounded to multiples of 8 and depths rounded
up, as in the paper; stochastic depth is left out (deterministic steps).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from flax import linen as nn

from mdx.models import common

# expand ratio, kernel, stride, output channels, layers (B0)
_B0 = (
  (1, 3, 1, 16, 1),
  (6, 3, 2, 24, 2),
  (6, 5, 2, 40, 2),
  (6, 3, 2, 80, 3),
  (6, 5, 1, 112, 3),
  (6, 5, 2, 192, 4),
  (6, 3, 1, 320, 1),
)


def _round(channels: float, divisor: int = 8) -> int:
  new = max(divisor, int(channels + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * channels else new


class ConvBN(common.NormBlock):
  features: int
  kernel: int
  stride: int = 1
  groups: int = 1
  act: bool = True  # SiLU after the BatchNorm

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.conv(self.features, self.kernel, self.stride, self.groups, name="conv")(x)
    x = self.bn(train, "bn")(x)
    return nn.silu(x) if self.act else x


class MBConv(common.NormBlock):
  expand: int
  kernel: int
  stride: int
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    kw = self.norm_fields()
    cin = x.shape[-1]
    hidden = cin * self.expand
    y = x
    if self.expand != 1:
      y = ConvBN(features=hidden, kernel=1, name="expand", **kw)(y, train)
    y = ConvBN(
      features=hidden,
      kernel=self.kernel,
      stride=self.stride,
      groups=hidden,
      name="depthwise",
      **kw,
    )(y, train)
    s = y.mean(axis=(1, 2), keepdims=True)
    s = nn.silu(nn.Conv(max(1, cin // 4), (1, 1), dtype=self.dtype, name="se_reduce")(s))
    y = y * nn.sigmoid(nn.Conv(hidden, (1, 1), dtype=self.dtype, name="se_expand")(s))
    y = ConvBN(features=self.features, kernel=1, act=False, name="project", **kw)(y, train)
    return x + y if self.stride == 1 and cin == self.features else y


class Stage(common.NormBlock):
  expand: int
  kernel: int
  stride: int
  features: int
  layers: int
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    cls = nn.remat(MBConv, static_argnums=(2,)) if self.remat else MBConv
    for i in range(self.layers):
      x = cls(
        **self.norm_fields(),
        expand=self.expand,
        kernel=self.kernel,
        stride=self.stride if i == 0 else 1,
        features=self.features,
        name=f"layer{i + 1}",
      )(x, train)
    return x


class EfficientNet(nn.Module):
  """EfficientNet classifier on [B, H, W, C] images (any C): logits float32 [B, num_classes]."""

  num_classes: int
  width: float = 1.0
  depth: float = 1.0
  dtype: Any = "float32"
  bn_axis_name: str | None = None
  bn_epsilon: float = 1e-3
  freeze: str = "none"
  remat: bool = False

  gradcam_layer: ClassVar[str] = "top"
  stages: ClassVar[tuple[str, ...]] = (
    ("stem",) + tuple(f"block{i}" for i in range(1, 8)) + ("top", "head")
  )

  def min_input_size(self) -> int:
    """Smallest image side giving a 1x1 last feature map (five stride-2 stages: 32x)."""
    return 32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = common.compute_dtype(self.dtype)
    frozen = common.frozen_stages(self.stages, self.freeze)
    kw = dict(axis_name=self.bn_axis_name, epsilon=self.bn_epsilon, dtype=dtype)
    channels = lambda c: _round(c * self.width)  # B0's channels at this width
    stem = ConvBN(
      frozen="stem" in frozen, features=channels(32), kernel=3, stride=2, name="stem", **kw
    )
    x = stem(x.astype(dtype), train)
    for i, (e, k, s, c, n) in enumerate(_B0):
      name = f"block{i + 1}"
      x = Stage(
        frozen=name in frozen,
        expand=e,
        kernel=k,
        stride=s,
        features=channels(c),
        layers=int(math.ceil(n * self.depth)),
        remat=self.remat,
        name=name,
        **kw,
      )(x, train)
    top = ConvBN(frozen="top" in frozen, features=channels(1280), kernel=1, name="top", **kw)
    x = top(x, train)
    return common.Head(self.num_classes, name="head")(x)
