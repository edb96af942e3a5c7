"""ResNet-18/34/50 and ResNeXt-50 (32x4d), laid out like torchvision (He et al., 2016; Xie et al.,
2017).

Stages: stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), layer1..layer4, head. Keras applications'
ResNet50 differs in two ways, both options here: its convolutions have biases and a bottleneck's
stride sits on the first 1x1 convolution (v1) instead of the 3x3 (v1.5, torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from flax import linen as nn

from mdx.models import common


class _Base(common.NormBlock):
  """common.NormBlock plus conv_bias (Keras applications' ResNet50 has convolution biases)."""

  conv_bias: bool

  def block_fields(self) -> dict[str, Any]:
    return dict(**self.norm_fields(), conv_bias=self.conv_bias)

  def conv(self, features, kernel, stride=1, groups=1, name=None):
    return super().conv(features, kernel, stride, groups, name, use_bias=self.conv_bias)


class Stem(_Base):
  features: int = 64

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.bn_relu(train, "bn")(self.conv(self.features, 7, 2, name="conv")(x))
    return common.max_pool(x, 3, 2, 1)


class BasicBlock(_Base):
  features: int = 64
  stride: int = 1
  groups: int = 1
  width: int = 64
  stride_on_1x1: bool = False
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool):
    y = self.bn_relu(train, "bn1")(self.conv(self.features, 3, self.stride, name="conv1")(x))
    y = self.bn(train, "bn2")(self.conv(self.features, 3, name="conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = self.bn(train, "down_bn")(self.conv(self.features, 1, self.stride, name="down_conv")(x))
    return nn.relu(x + y)


class Bottleneck(_Base):
  features: int = 64  # output channels / 4
  stride: int = 1
  groups: int = 1
  width: int = 64  # channels of the grouped 3x3 convolution
  stride_on_1x1: bool = False
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.features * self.expansion
    s1, s3 = (self.stride, 1) if self.stride_on_1x1 else (1, self.stride)
    y = self.bn_relu(train, "bn1")(self.conv(self.width, 1, s1, name="conv1")(x))
    y = self.bn_relu(train, "bn2")(self.conv(self.width, 3, s3, self.groups, name="conv2")(y))
    y = self.bn(train, "bn3")(self.conv(out, 1, name="conv3")(y))
    if self.stride != 1 or x.shape[-1] != out:
      x = self.bn(train, "down_bn")(self.conv(out, 1, self.stride, name="down_conv")(x))
    return nn.relu(x + y)


class Stage(_Base):
  block: str
  num_blocks: int
  features: int
  stride: int
  groups: int
  width: int
  stride_on_1x1: bool
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
    if self.remat:
      cls = nn.remat(cls, static_argnums=(2,))
    for i in range(self.num_blocks):
      x = cls(
        **self.block_fields(),
        features=self.features,
        stride=self.stride if i == 0 else 1,
        groups=self.groups,
        width=self.width,
        stride_on_1x1=self.stride_on_1x1,
        name=f"block{i + 1}",
      )(x, train)
    return x


class ResNet(nn.Module):
  """ResNet / ResNeXt classifier on [B, H, W, C] images (any C): logits float32 [B, num_classes]."""

  num_classes: int
  block: str = "bottleneck"  # 'basic' (ResNet-18/34) or 'bottleneck'
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  groups: int = 1
  width_per_group: int = 64
  stem_features: int = 64
  dtype: Any = "float32"
  bn_axis_name: str | None = None
  bn_epsilon: float = 1e-5
  conv_bias: bool = False  # True for Keras applications' ResNet50
  stride_on_1x1: bool = False  # True for Keras applications' ResNet50
  freeze: str = "none"
  remat: bool = False

  gradcam_layer: ClassVar[str] = "layer4"

  def min_input_size(self) -> int:
    """Smallest image side giving a 1x1 last feature map: the stem's 4x times 2x per later stage."""
    return 4 * 2 ** (len(self.stage_sizes) - 1)

  @property
  def stages(self) -> tuple[str, ...]:
    return ("stem",) + tuple(f"layer{i + 1}" for i in range(len(self.stage_sizes))) + ("head",)

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = common.compute_dtype(self.dtype)
    frozen = common.frozen_stages(self.stages, self.freeze)
    kw = dict(
      axis_name=self.bn_axis_name, epsilon=self.bn_epsilon, dtype=dtype, conv_bias=self.conv_bias
    )
    x = Stem(frozen="stem" in frozen, features=self.stem_features, name="stem", **kw)(
      x.astype(dtype), train
    )
    for i, n in enumerate(self.stage_sizes):
      name = f"layer{i + 1}"
      features = self.stem_features * 2**i
      width = int(features * self.width_per_group / 64) * self.groups
      x = Stage(
        frozen=name in frozen,
        block=self.block,
        num_blocks=n,
        features=features,
        stride=1 if i == 0 else 2,
        groups=self.groups,
        width=width,
        stride_on_1x1=self.stride_on_1x1,
        remat=self.remat,
        name=name,
        **kw,
      )(x, train)
    return common.Head(self.num_classes, name="head")(x)
