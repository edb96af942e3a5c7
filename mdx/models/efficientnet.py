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


class ConvBN(nn.Module):
  features: int
  kernel: int
  stride: int
  groups: int
  act: bool
  frozen: bool
  axis_name: str | None
  epsilon: float
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    p = (self.kernel - 1) // 2
    x = nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      (self.stride, self.stride),
      padding=((p, p), (p, p)),
      feature_group_count=self.groups,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=common.conv_init,
      name="conv",
    )(x)
    x = common.batch_norm(train, self.frozen, self.axis_name, self.epsilon, self.dtype, "bn")(x)
    return nn.silu(x) if self.act else x


class MBConv(nn.Module):
  expand: int
  kernel: int
  stride: int
  features: int
  frozen: bool
  axis_name: str | None
  epsilon: float
  dtype: Any

  @nn.compact
  def __call__(self, x, train: bool):
    kw = dict(frozen=self.frozen, axis_name=self.axis_name, epsilon=self.epsilon, dtype=self.dtype)
    cin = x.shape[-1]
    hidden = cin * self.expand
    y = x
    if self.expand != 1:
      y = ConvBN(hidden, 1, 1, 1, True, name="expand", **kw)(y, train)
    y = ConvBN(hidden, self.kernel, self.stride, hidden, True, name="depthwise", **kw)(y, train)
    s = y.mean(axis=(1, 2), keepdims=True)
    s = nn.silu(nn.Conv(max(1, cin // 4), (1, 1), dtype=self.dtype, name="se_reduce")(s))
    y = y * nn.sigmoid(nn.Conv(hidden, (1, 1), dtype=self.dtype, name="se_expand")(s))
    y = ConvBN(self.features, 1, 1, 1, False, name="project", **kw)(y, train)
    return x + y if self.stride == 1 and cin == self.features else y


class Stage(nn.Module):
  expand: int
  kernel: int
  stride: int
  features: int
  layers: int
  frozen: bool
  axis_name: str | None
  epsilon: float
  dtype: Any
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    cls = nn.remat(MBConv, static_argnums=(2,)) if self.remat else MBConv
    for i in range(self.layers):
      x = cls(
        self.expand,
        self.kernel,
        self.stride if i == 0 else 1,
        self.features,
        self.frozen,
        self.axis_name,
        self.epsilon,
        self.dtype,
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
    x = ConvBN(_round(32 * self.width), 3, 2, 1, True, "stem" in frozen, name="stem", **kw)(
      x.astype(dtype), train
    )
    for i, (e, k, s, c, n) in enumerate(_B0):
      name = f"block{i + 1}"
      x = Stage(
        e,
        k,
        s,
        _round(c * self.width),
        int(math.ceil(n * self.depth)),
        name in frozen,
        remat=self.remat,
        name=name,
        **kw,
      )(x, train)
    x = ConvBN(_round(1280 * self.width), 1, 1, 1, True, "top" in frozen, name="top", **kw)(
      x, train
    )
    return common.Head(self.num_classes, name="head")(x)
