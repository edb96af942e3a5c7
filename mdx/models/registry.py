"""Models by name: config.model.name -> a Flax module, imported lazily so no import cycles arise.

model = registry.create('densenet121', num_classes=14, dtype='bfloat16')
model = registry.create_from_config(config.model, bn_axis_name='data')
registry.input_multiples(config.model)  # a volumetric model's per-axis patch multiples (D, H, W)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from flax import linen as nn

# name -> ('module:Class', default kwargs). Defaults are the published architectures.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
  "densenet121": ("mdx.models.densenet:DenseNet", dict(block_sizes=(6, 12, 24, 16))),
  "densenet169": ("mdx.models.densenet:DenseNet", dict(block_sizes=(6, 12, 32, 32))),
  "densenet201": ("mdx.models.densenet:DenseNet", dict(block_sizes=(6, 12, 48, 32))),
  # Four blocks like DenseNet-121 (same stage names and freeze policies), for CPU-sized runs.
  "densenet_small": (
    "mdx.models.densenet:DenseNet",
    dict(block_sizes=(2, 4, 6, 4), growth_rate=12, stem_features=24),
  ),
  "densenet_tiny": (
    "mdx.models.densenet:DenseNet",
    dict(block_sizes=(2, 2), growth_rate=8, stem_features=16, bn_size=2),
  ),
  "resnet18": ("mdx.models.resnet:ResNet", dict(block="basic", stage_sizes=(2, 2, 2, 2))),
  "resnet34": ("mdx.models.resnet:ResNet", dict(block="basic", stage_sizes=(3, 4, 6, 3))),
  "resnet50": ("mdx.models.resnet:ResNet", dict(block="bottleneck", stage_sizes=(3, 4, 6, 3))),
  # Keras applications' ResNet50 (v1): conv biases, stride on the first 1x1, epsilon 1.001e-5.
  "resnet50_keras": (
    "mdx.models.resnet:ResNet",
    dict(
      block="bottleneck",
      stage_sizes=(3, 4, 6, 3),
      conv_bias=True,
      stride_on_1x1=True,
      bn_epsilon=1.001e-5,
    ),
  ),
  "resnext50_32x4d": (
    "mdx.models.resnet:ResNet",
    dict(block="bottleneck", stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4),
  ),
  "resnet_tiny": (
    "mdx.models.resnet:ResNet",
    dict(block="basic", stage_sizes=(1, 1, 1, 1), stem_features=8),
  ),
  "efficientnet_b0": ("mdx.models.efficientnet:EfficientNet", dict(width=1.0, depth=1.0)),
  "efficientnet_b1": ("mdx.models.efficientnet:EfficientNet", dict(width=1.0, depth=1.1)),
  "efficientnet_b2": ("mdx.models.efficientnet:EfficientNet", dict(width=1.1, depth=1.2)),
  "efficientnet_b3": ("mdx.models.efficientnet:EfficientNet", dict(width=1.2, depth=1.4)),
  "efficientnet_tiny": ("mdx.models.efficientnet:EfficientNet", dict(width=0.25, depth=0.3)),
  "inception_v3": ("mdx.models.inception:InceptionV3", {}),
  "unet3d": ("mdx.models.unet3d:UNet3D", {}),
}

# Config fields of config.model that are not module fields (read by the training core).
NON_MODEL_FIELDS = frozenset({"name", "num_classes", "dtype", "init_from"})


def model_class(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
  """The module class and default kwargs registered under `name`."""
  if name not in MODELS:
    raise ValueError(f"model name {name!r} is unknown; choose one of {sorted(MODELS)}")
  path, defaults = MODELS[name]
  module_name, class_name = path.split(":")
  return getattr(importlib.import_module(module_name), class_name), dict(defaults)


def config_fields(name: str) -> tuple[str, ...]:
  """The config.model fields model `name` reads besides name, num_classes and dtype: its module's
  own fields (e.g. growth_rate, freeze, base_width), so mdx.config can reject a typo early."""
  cls, _ = model_class(name)
  fields = {f.name for f in dataclasses.fields(cls) if f.init}
  return tuple(sorted(fields - {"parent", "name", "num_classes", "dtype", "bn_axis_name"}))


def min_input_size(model_config: Any) -> int:
  """The smallest image side (classifiers) or the patch-side multiple (U-Net) of config.model."""
  return create_from_config(model_config).min_input_size()


def input_multiples(model_config: Any) -> tuple[int, int, int]:
  """(m_d, m_h, m_w): a volumetric model's patch sides must be multiples of these (the U-Net's
  per-axis product of pooling strides); ValueError for a model that takes no volumes."""
  model = create_from_config(model_config)
  if not hasattr(model, "input_multiples"):
    raise ValueError(
      f"config.model.name={model_config['name']!r} is not a volumetric model; per-axis input "
      "multiples exist for 3D models such as 'unet3d'"
    )
  return tuple(model.input_multiples())


def _tuples(value: Any) -> Any:
  """Lists (from JSON or flags) as tuples, nested ones too: module fields must be hashable."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def create(
  name: str,
  *,
  num_classes: int,
  dtype: str = "float32",
  bn_axis_name: str | None = None,
  **kwargs: Any,
) -> nn.Module:
  """Builds a registered model; unknown kwargs are a ValueError naming them."""
  cls, params = model_class(name)
  fields = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(
      f"model {name!r} has no field(s) {unknown}; its fields are "
      f"{sorted(fields - {'num_classes', 'dtype', 'bn_axis_name'})}"
    )
  params.update(kwargs)
  params.update(num_classes=num_classes, dtype=dtype)
  if "bn_axis_name" in fields:
    params["bn_axis_name"] = bn_axis_name
  return cls(**params)


def create_from_config(model_config: Any, bn_axis_name: str | None = None) -> nn.Module:
  """Builds config.model (name, num_classes, dtype, model-specific fields such as growth_rate)."""
  cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  for key in ("name", "num_classes"):
    if key not in cfg:
      raise ValueError(f"config.model.{key} is missing; set it in the experiment file or by flag")
  kwargs = {k: _tuples(v) for k, v in cfg.items() if k not in NON_MODEL_FIELDS}
  try:
    return create(
      cfg["name"],
      num_classes=cfg["num_classes"],
      dtype=cfg.get("dtype", "float32"),
      bn_axis_name=bn_axis_name,
      **kwargs,
    )
  except ValueError as e:
    raise ValueError(f"config.model: {e}") from None


def random_variables(model_config: Any, shape, seed: int = 0) -> dict:
  """A configured model's initial (random) variables as numpy for an input of `shape`: weights for
  benchmarks and tests, where random ones are what is wanted."""
  return init_variables(create_from_config(model_config), shape, seed)


def init_variables(model: nn.Module, shape, seed: int = 0) -> dict:
  """A built model's initial variables (inference-mode init) as numpy for an input of `shape`."""
  import jax  # pylint: disable=import-outside-toplevel  (the registry itself needs only flax)
  import numpy as np  # pylint: disable=import-outside-toplevel

  # XLA:CPU's optimiser spends 10-40 s on the initialisers' random-number code; unoptimised it
  # compiles in ~3 s, and random weights need no speed
  init = jax.jit(
    lambda x: model.init(jax.random.key(seed), x, train=False),
    compiler_options={"xla_backend_optimization_level": 0},
  )
  return jax.tree.map(np.asarray, dict(init(np.zeros(shape, np.float32))))
