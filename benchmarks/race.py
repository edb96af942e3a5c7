"""Timing races for the benchmarks: contestants (a compiled JAX train step and forward pass, or a
PyTorch one) take turns, so a noisy machine slows all of them alike; medians and paired ratios.

Used by the benches beside it: classifiers.py (beside PyTorch's DenseNet-121), unet3d.py (the 3D
U-Net beside MONAI's) and predict.py; each runs as `python benchmarks/NAME.py`, which puts this
folder on sys.path.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import jax
import numpy as np
import optax

from mdx import runtime
from mdx.models import common, registry

# variant -> (tuned operations traced as plain Flax/JAX ones: names, () none or None all (see
# common.plain_flax_ops), use mdx's XLA options, donate: None = mdx's choice)
VARIANTS = {
  "mdx": ((), True, None),
  "plain_flax_ops": (None, True, None),
  "plain_conv1x1": (("conv1x1_vjp",), True, None),
  "plain_max_pool": (("max_pool_vjp",), True, None),
  "plain_bn_relu": (("bn_relu_vjp",), True, None),
  "unmaterialized_grads": (("gradient_materialized",), True, None),
  "xla_cpu_defaults": ((), False, None),
  "donate": ((), True, True),
  "baseline": (None, False, True),
}


def _rate(fn, images: int, steps: int) -> float:
  t = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return images * steps / (time.perf_counter() - t)


def jax_contestant(model, x, y, loss, variant: str = "mdx", /, **info) -> dict:
  """Compiles a Flax model's SGD train step (loss(logits, y) on x) and its inference forward pass
  as `variant` (see VARIANTS): a contestant for `race`, labelled by `info`."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
  plain, options, donate = VARIANTS[variant]
  options = runtime.compiler_options() if options else {}
  donate = runtime.donate_state() if donate is None else donate
  variables = registry.init_variables(model, x.shape)
  params, stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.sgd(1e-3, momentum=0.9)
  opt_state = tx.init(params)

  def train_step(params, stats, opt_state, x, y):
    def loss_fn(p):
      logits, upd = model.apply(
        {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
      )
      return loss(logits, y), upd["batch_stats"]

    (value, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, value

  with common.plain_flax_ops(*(plain or ())) if plain != () else contextlib.nullcontext():
    t = time.perf_counter()
    step = (
      jax.jit(train_step, donate_argnums=(0, 1, 2) if donate else (), compiler_options=options)
      .lower(params, stats, opt_state, x, y)
      .compile()
    )
    compile_s = time.perf_counter() - t
    forward = (
      jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=options)
      .lower({"params": params, "batch_stats": stats}, x)
      .compile()
    )
  state = [params, stats, opt_state]

  def train():
    state[0], state[1], state[2], value = step(state[0], state[1], state[2], x, y)
    return value

  jax.block_until_ready(train())
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  return dict(
    info,
    variant=variant,
    params=n,
    compile_s=compile_s,
    forward_fn=lambda: forward({"params": state[0], "batch_stats": state[1]}, x),
    train_fn=train,
  )


def race(contestants: list[dict], batch: int, steps: int, repeats: int) -> None:
  """Times every contestant's train (and forward) function in turns, adding their median img/s and
  'vs_last' ('fwd_vs_last'): the median over rounds of train (forward) img/s / the last
  contestant's in the same round (on a noisy machine a paired ratio is steadier than a ratio of
  medians)."""
  rates = [{"train": [], "forward": []} for _ in contestants]
  for _ in range(repeats):
    for c, r in zip(contestants, rates):
      r["train"].append(_rate(c["train_fn"], batch, steps))
      if c.get("forward_fn"):
        r["forward"].append(_rate(c["forward_fn"], batch, steps))
  last = rates[-1]
  for c, r in zip(contestants, rates):
    c["train"] = statistics.median(r["train"])
    c["forward"] = statistics.median(r["forward"]) if r["forward"] else float("nan")
    c["vs_last"] = statistics.median(a / b for a, b in zip(r["train"], last["train"]))
    c["fwd_vs_last"] = (
      statistics.median(a / b for a, b in zip(r["forward"], last["forward"]))
      if r["forward"] and last["forward"]
      else float("nan")
    )


def torch_contestant(model, x, y, loss, threads: int, /, **info) -> dict:
  """A PyTorch model's SGD train step (loss(model(x), y)) and inference forward pass as a contestant
  for `race`: on a GPU channels-last with bfloat16 autocast (x: a CPU tensor, moved there)."""
  import torch

  cuda = torch.cuda.is_available()
  if threads:
    torch.set_num_threads(threads)
  device = "cuda" if cuda else "cpu"
  fmt = {4: torch.channels_last, 5: torch.channels_last_3d}[x.ndim] if cuda else None
  model = model.to(device)
  x, y = x.to(device), y.to(device)
  if fmt is not None:
    model, x = model.to(memory_format=fmt), x.to(memory_format=fmt)
  opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

  def train():
    model.train()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
      value = loss(model(x).float(), y)
    value.backward()
    opt.step()
    if cuda:
      torch.cuda.synchronize()

  def forward():  # inference as deployed: running statistics, no autograd bookkeeping
    model.eval()
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
      out = model(x)
    if cuda:
      torch.cuda.synchronize()
    return out

  train()
  forward()
  n = sum(p.numel() for p in model.parameters())
  return dict(
    info,
    variant=f"torch {torch.__version__}",
    params=n,
    compile_s=float("nan"),
    forward_fn=forward,
    train_fn=train,
  )
