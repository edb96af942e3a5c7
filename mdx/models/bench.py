"""Model benchmark: parameters, compile time, forward and train-step images/s, in one run.

  python -m mdx.models.bench --models=densenet121,resnet50 --resolutions=128,224 --batch=16
  python -m mdx.models.bench --models=densenet121 --resolutions=128 --torch   # + PyTorch beside it

The train step is a full SGD step (forward in train mode, backward, BatchNorm statistics, update),
timed after compilation as the median over --repeats timings of --steps steps. With --torch, a
PyTorch DenseNet-121 (torchvision's architecture) trains at the same batch, resolution and thread
count (channels-last and autocast bfloat16 on a GPU) and the ratio mdx / PyTorch is printed.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from mdx.models import registry

_MODELS = flags.DEFINE_list("models", ["densenet121", "resnet50"], "registry names")
_RES = flags.DEFINE_list("resolutions", ["128"], "square input sizes")
_BATCH = flags.DEFINE_integer("batch", 16, "images per step")
_CHANNELS = flags.DEFINE_integer("channels", 3, "input channels")
_DTYPE = flags.DEFINE_string("dtype", "float32", "compute dtype (params stay float32)")
_STEPS = flags.DEFINE_integer("steps", 3, "steps per timing")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timings; the median is reported")
_TORCH = flags.DEFINE_bool("torch", False, "also time a PyTorch DenseNet-121 train step")
_KWARGS = flags.DEFINE_string("kwargs", "{}", "JSON model kwargs, e.g. '{\"concat\": \"buffer\"}'")
_THREADS = flags.DEFINE_integer("threads", 0, "torch threads (0: as many as JAX's CPU devices use)")


def _median_rate(fn, images: int, steps: int, repeats: int) -> float:
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      out = fn()
    jax.block_until_ready(out)
    rates.append(images * steps / (time.perf_counter() - t))
  return statistics.median(rates)


def bench_model(name: str, size: int, batch: int, channels: int, dtype: str, steps: int,
                repeats: int, **kwargs) -> dict:
  model = registry.create(name, num_classes=14, dtype=dtype, **kwargs)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, channels)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(1).integers(0, 2, (batch, 14)), jnp.float32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x))(x)
  params, stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.sgd(1e-3, momentum=0.9)
  opt_state = tx.init(params)

  def train_step(params, stats, opt_state, x, y):
    def loss_fn(p):
      logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"])
      return optax.sigmoid_binary_cross_entropy(logits, y).mean(), upd["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  t = time.perf_counter()
  step = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(params, stats, opt_state, x, y).compile()
  compile_s = time.perf_counter() - t
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  jax.block_until_ready(forward(variables, x))
  fwd = _median_rate(lambda: forward(variables, x), batch, steps, repeats)
  state = [params, stats, opt_state]

  def run():
    state[0], state[1], state[2], loss = step(state[0], state[1], state[2], x, y)
    return loss
  jax.block_until_ready(run())
  train = _median_rate(run, batch, steps, repeats)
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return dict(model=name, size=size, params=n, compile_s=compile_s, forward=fwd, train=train)


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

    def forward(self, feats):   # torchvision: concatenate the list of previous outputs
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

  mods, c = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
             nn.MaxPool2d(3, 2, 1)], 64
  for i, n in enumerate((6, 12, 24, 16)):
    mods.append(Block(n, c))
    c += 32 * n
    if i < 3:
      mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
      c //= 2
  mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
           nn.Linear(c, num_classes)]
  return nn.Sequential(*mods)


def bench_torch(size: int, batch: int, channels: int, steps: int, repeats: int,
                threads: int) -> float:
  import torch
  cuda = torch.cuda.is_available()
  if threads:
    torch.set_num_threads(threads)
  device = "cuda" if cuda else "cpu"
  model = torch_densenet121(14, channels).to(device)
  fmt = torch.channels_last if cuda else torch.contiguous_format
  model = model.to(memory_format=fmt).train()
  opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
  x = torch.randn(batch, channels, size, size, device=device).to(memory_format=fmt)
  y = torch.randint(0, 2, (batch, 14), device=device).float()
  loss_fn = torch.nn.BCEWithLogitsLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
      loss = loss_fn(model(x).float(), y)
    loss.backward()
    opt.step()
    return loss

  step()
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      step()
    if cuda:
      torch.cuda.synchronize()
    rates.append(batch * steps / (time.perf_counter() - t))
  return statistics.median(rates)


def main(argv):
  del argv
  print(f"devices: {jax.devices()}  dtype={_DTYPE.value}  batch={_BATCH.value}  "
        f"kwargs={_KWARGS.value}")
  print(f"{'model':<18}{'size':>6}{'params':>12}{'compile s':>11}{'fwd img/s':>11}"
        f"{'train img/s':>13}")
  rows = []
  for name in _MODELS.value:
    for size in map(int, _RES.value):
      r = bench_model(name, size, _BATCH.value, _CHANNELS.value, _DTYPE.value, _STEPS.value,
                      _REPEATS.value, **json.loads(_KWARGS.value))
      rows.append(r)
      print(f"{name:<18}{size:>6}{r['params']:>12,}{r['compile_s']:>11.1f}{r['forward']:>11.1f}"
            f"{r['train']:>13.2f}", flush=True)
  if _TORCH.value:
    import os
    threads = _THREADS.value or os.cpu_count()
    for r in rows:
      if r["model"] == "densenet121":
        t = bench_torch(r["size"], _BATCH.value, _CHANNELS.value, _STEPS.value, _REPEATS.value,
                        threads)
        print(f"torch densenet121 size {r['size']} batch {_BATCH.value} threads {threads}: "
              f"train {t:.2f} img/s; mdx/torch ratio {r['train'] / t:.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
