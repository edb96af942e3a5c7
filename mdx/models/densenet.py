"""DenseNet (Huang et al., 2017), laid out like torchvision and Keras so their weights import 1:1.

Stages: stem (7x7/2 conv, BN, ReLU, 3x3/2 max pool), block1, transition1, ..., block<n>,
norm_final (BN, ReLU: the last feature map, used by Grad-CAM), head (average pool, dense).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from mdx.models import common


class Stem(common.NormBlock):
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.bn_relu(train, "bn")(self.conv(self.features, 7, 2, name="conv")(x))
    return common.max_pool(x, 3, 2, 1)


class DenseLayer(common.NormBlock):
  """BN-ReLU-1x1 conv (bottleneck) - BN-ReLU-3x3 conv: growth_rate new channels."""

  growth_rate: int
  bn_size: int

  @nn.compact
  def __call__(self, x, train: bool):
    y = self.bn_relu(train, "bn1")(x)
    y = common.Conv1x1(self.bn_size * self.growth_rate, self.dtype, name="conv1")(y)
    y = self.bn_relu(train, "bn2")(y)
    return self.conv(self.growth_rate, 3, name="conv2")(y)


class DenseBlock(common.NormBlock):
  num_layers: int
  growth_rate: int
  bn_size: int
  remat: bool = False
  concat: str = "concat"

  @nn.compact
  def __call__(self, x, train: bool):
    """'concat': each layer's output concatenated to its input (a copy per layer, as torchvision);
    'buffer': one buffer of the block's final width, each output written into its slice."""
    layer_cls = nn.remat(DenseLayer, static_argnums=(2,)) if self.remat else DenseLayer
    layers = [
      layer_cls(
        **self.norm_fields(),
        growth_rate=self.growth_rate,
        bn_size=self.bn_size,
        name=f"layer{i + 1}",
      )
      for i in range(self.num_layers)
    ]
    if self.concat == "buffer":
      c0, k = x.shape[-1], self.growth_rate
      buf = jnp.zeros(x.shape[:-1] + (c0 + k * self.num_layers,), x.dtype)
      buf = jax.lax.dynamic_update_slice_in_dim(buf, x, 0, axis=-1)
      for i, layer in enumerate(layers):
        y = layer(buf[..., : c0 + i * k], train)
        buf = jax.lax.dynamic_update_slice_in_dim(buf, y.astype(x.dtype), c0 + i * k, axis=-1)
      return buf
    if self.concat != "concat":
      raise ValueError(f"DenseNet concat={self.concat!r} is unknown; use 'concat' or 'buffer'")
    for layer in layers:
      y = common.gradient_materialized(layer(x, train).astype(x.dtype))
      x = jnp.concatenate([x, y], axis=-1)
    return x


class Transition(common.NormBlock):
  """BN-ReLU-1x1 conv that halves the channels, then 2x2 average pooling."""

  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.bn_relu(train, "bn")(x)
    x = common.Conv1x1(self.features, self.dtype, name="conv")(x)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class NormAct(common.NormBlock):
  """BN then ReLU; its output is the classifier's last feature map."""

  @nn.compact
  def __call__(self, x, train: bool):
    return self.bn_relu(train, "bn")(x)


class DenseNet(nn.Module):
  """DenseNet-BC classifier on [B, H, W, C] images (any C): logits float32 [B, num_classes]."""

  num_classes: int
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth_rate: int = 32
  stem_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  dtype: Any = "float32"
  bn_axis_name: str | None = None
  bn_epsilon: float = 1.001e-5  # Keras applications; torchvision's 1e-5 differs by 1e-8
  freeze: str = "none"
  remat: bool = False
  concat: str = "concat"  # dense-block pattern: 'concat' or 'buffer' (see DenseBlock)

  gradcam_layer: ClassVar[str] = "norm_final"

  def min_input_size(self) -> int:
    """Smallest image side giving a 1x1 last feature map: the stem's 4x times 2x per transition."""
    return 4 * 2 ** (len(self.block_sizes) - 1)

  @property
  def stages(self) -> tuple[str, ...]:
    names = ["stem"]
    for i in range(len(self.block_sizes)):
      names.append(f"block{i + 1}")
      if i < len(self.block_sizes) - 1:
        names.append(f"transition{i + 1}")
    return tuple(names + ["norm_final", "head"])

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = common.compute_dtype(self.dtype)
    frozen = common.frozen_stages(self.stages, self.freeze)
    kw = dict(axis_name=self.bn_axis_name, epsilon=self.bn_epsilon, dtype=dtype)
    x = x.astype(dtype)
    x = Stem(frozen="stem" in frozen, features=self.stem_features, name="stem", **kw)(x, train)
    features = self.stem_features
    for i, n in enumerate(self.block_sizes):
      name = f"block{i + 1}"
      x = DenseBlock(
        frozen=name in frozen,
        num_layers=n,
        growth_rate=self.growth_rate,
        bn_size=self.bn_size,
        remat=self.remat,
        concat=self.concat,
        name=name,
        **kw,
      )(x, train)
      features += n * self.growth_rate
      if i < len(self.block_sizes) - 1:
        name = f"transition{i + 1}"
        features = int(features * self.compression)
        x = Transition(frozen=name in frozen, features=features, name=name, **kw)(x, train)
    x = NormAct(frozen="norm_final" in frozen, name="norm_final", **kw)(x, train)
    return common.Head(self.num_classes, name="head")(x)
