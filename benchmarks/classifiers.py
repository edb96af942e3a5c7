"""Model benchmark: parameters, compile time, forward and train-step images/s, in one run.

  python benchmarks/classifiers.py --models=densenet121,resnet50 --resolutions=128,224 --batch=16
  python benchmarks/classifiers.py --models=densenet121 --resolutions=64,128 --torch \
      --variants=mdx,plain_flax_ops,xla_cpu_defaults,donate,baseline   # what each tuning buys

The train step is a full SGD step (forward in train mode, backward, BatchNorm statistics, update).
Every contestant (each variant of each model, and with --torch a PyTorch DenseNet-121 of
torchvision's architecture at the same batch, resolution and thread count; channels-last and
autocast bfloat16 on a GPU) is compiled first, then they take turns: --repeats rounds of --steps
steps each, so a noisy machine slows all of them alike; the median round is reported.

Variants (mdx's train step is 'mdx'; the others undo one tuning each, 'baseline' all of them):
  mdx                   mdx.models.common's tuned operations (BatchNorm-ReLU, max pooling and 1x1
                        convolutions with hand-written backward passes; a dense layer's output
                        gradient computed once), mdx.runtime's XLA options, buffers donated only
                        off CPU;
  plain_flax_ops        the same with plain Flax operations for all of them;
  plain_conv1x1         ... for the 1x1 convolutions only (nn.Conv);
  plain_max_pool        ... for max pooling only (nn.max_pool);
  plain_bn_relu         ... for BatchNorm-ReLU only (nn.BatchNorm, nn.relu);
  unmaterialized_grads  ... without computing dense-layer output gradients once;
  xla_cpu_defaults      the same as mdx with XLA's default options;
  donate                the same as mdx, donating the state's buffers on CPU too;
  baseline              plain Flax operations, XLA defaults, donation: a straightforward Flax step.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import race  # benchmarks/race.py: this script's folder is on sys.path
from absl import app, flags

from mdx import runtime
from mdx.models import registry

_MODELS = flags.DEFINE_list("models", ["densenet121", "resnet50"], "registry names")
_RES = flags.DEFINE_list("resolutions", ["128"], "square input sizes")
_BATCH = flags.DEFINE_integer("batch", 16, "images per step")
_CHANNELS = flags.DEFINE_integer("channels", 3, "input channels")
_DTYPE = flags.DEFINE_string("dtype", "float32", "compute dtype (params stay float32)")
_STEPS = flags.DEFINE_integer("steps", 3, "steps per timing")
_REPEATS = flags.DEFINE_integer("repeats", 5, "rounds of timings; the median is reported")
_TORCH = flags.DEFINE_bool("torch", False, "also time a PyTorch DenseNet-121 train step")
_KWARGS = flags.DEFINE_string("kwargs", "{}", 'JSON model kwargs, e.g. \'{"concat": "buffer"}\'')
_THREADS = flags.DEFINE_integer("threads", 0, "torch threads (0: one per CPU core)")
_VARIANTS = flags.DEFINE_list("variants", ["mdx"], "train-step variants (see the module docstring)")


def build_model_step(
  name: str, size: int, batch: int, channels: int, dtype: str, variant: str = "mdx", **kwargs
) -> dict:
  """Registry model `name`'s 14-finding train step and forward pass as `variant`: a contestant."""
  model = registry.create(name, num_classes=14, dtype=dtype, **kwargs)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, channels)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(1).integers(0, 2, (batch, 14)), jnp.float32)
  bce = lambda logits, y: optax.sigmoid_binary_cross_entropy(logits, y).mean()
  return race.jax_contestant(model, x, y, bce, variant, model=name, size=size)


def torch_densenet121(num_classes: int = 14, in_channels: int = 3):
  """torchvision's DenseNet-121 (memory_efficient off) written out, as torchvision is absent."""
  import torch
  from torch import nn

  class Layer(nn.Module):
    def __init__(self, cin, growth=32, bn_size=4):
      super().__init__()
      self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, bn_size * growth, 1, bias=False)
      self.norm2 = nn.BatchNorm2d(bn_size * growth)
      self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, feats):  # torchvision: concatenate the list of previous outputs
      y = self.conv1(torch.relu(self.norm1(torch.cat(feats, 1))))
      return self.conv2(torch.relu(self.norm2(y)))

  class Block(nn.Module):
    def __init__(self, n, cin):
      super().__init__()
      self.layers = nn.ModuleList(Layer(cin + i * 32) for i in range(n))

    def forward(self, x):
      feats = [x]
      for layer in self.layers:
        feats.append(layer(feats))
      return torch.cat(feats, 1)

  mods, c = (
    [
      nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
      nn.BatchNorm2d(64),
      nn.ReLU(),
      nn.MaxPool2d(3, 2, 1),
    ],
    64,
  )
  for i, n in enumerate((6, 12, 24, 16)):
    mods.append(Block(n, c))
    c += 32 * n
    if i < 3:
      mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
      c //= 2
  mods += [
    nn.BatchNorm2d(c),
    nn.ReLU(),
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),
    nn.Linear(c, num_classes),
  ]
  return nn.Sequential(*mods)


def build_torch_step(size: int, batch: int, channels: int, threads: int) -> dict:
  """PyTorch DenseNet-121's train step and forward pass as a contestant for `race`."""
  import torch

  gen = torch.Generator().manual_seed(0)
  x = torch.randn(batch, channels, size, size, generator=gen)
  y = torch.randint(0, 2, (batch, 14), generator=gen).float()
  model = torch_densenet121(14, channels)
  bce = torch.nn.BCEWithLogitsLoss()
  return race.torch_contestant(model, x, y, bce, threads, model="densenet121", size=size)


def _check_flags() -> dict:
  """The flags' mistakes as a ValueError before anything compiles (one line: mdx.cli); returns the
  model kwargs."""
  for name in _MODELS.value:
    registry.model_class(name)  # names the known models
  unknown = [v for v in _VARIANTS.value if v not in race.VARIANTS]
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}; choose from {sorted(race.VARIANTS)}")
  if not all(r.isdigit() and int(r) > 0 for r in _RES.value):
    raise ValueError(f"--resolutions={','.join(_RES.value)}: give whole numbers, e.g. 128,224")
  try:
    kwargs = json.loads(_KWARGS.value)
  except json.JSONDecodeError as e:
    raise ValueError(f"--kwargs={_KWARGS.value!r} is not JSON ({e})") from None
  if not isinstance(kwargs, dict):
    raise ValueError(f"--kwargs={_KWARGS.value!r}: give a JSON object, e.g. '{{\"concat\": 1}}'")
  return kwargs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --models=densenet121")
  kwargs = _check_flags()
  threads = _THREADS.value or os.cpu_count()
  print(
    f"devices: {jax.devices()}  dtype={_DTYPE.value}  batch={_BATCH.value}  "
    f"kwargs={_KWARGS.value}  torch threads={threads if _TORCH.value else '-'}  "
    f"malloc: {runtime.allocator()}"
  )
  print(
    f"{'model':<14}{'size':>5}  {'variant':<22}{'params':>11}{'compile s':>11}{'fwd img/s':>11}"
    f"{'fwd vs torch':>13}{'train img/s':>13}{'vs torch':>10}"
  )
  for name in _MODELS.value:
    for size in map(int, _RES.value):
      contestants = [
        build_model_step(name, size, _BATCH.value, _CHANNELS.value, _DTYPE.value, v, **kwargs)
        for v in _VARIANTS.value
      ]
      with_torch = _TORCH.value and name == "densenet121"
      if with_torch:
        contestants.append(build_torch_step(size, _BATCH.value, _CHANNELS.value, threads))
      race.race(contestants, _BATCH.value, _STEPS.value, _REPEATS.value)
      for c in contestants:
        ratio = f"{c['vs_last']:10.2f}" if with_torch else f"{'-':>10}"
        fwd_ratio = f"{c['fwd_vs_last']:13.2f}" if with_torch else f"{'-':>13}"
        print(
          f"{name:<14}{size:>5}  {c['variant']:<22}{c['params']:>11,}{c['compile_s']:>11.1f}"
          f"{c['forward']:>11.1f}{fwd_ratio}{c['train']:>13.2f}{ratio}",
          flush=True,
        )


if __name__ == "__main__":
  from mdx import commands

  commands.run_program(main)
