"""Pure train and predict steps, data-parallel over the mesh with jax.shard_map.

Each device sees its share of the global batch. BatchNorm averages its batch statistics over the
'data' axis (the model gets bn_axis_name='data'), so statistics are those of the global batch. The
loss on a device is its examples' loss summed and divided by the GLOBAL batch size; under shard_map
with check_vma, the gradient of replicated parameters comes back summed over devices, which makes it
the gradient of the global mean loss - no extra pmean (that would divide by the device count twice).
A batch is a dict of 'image' (the model's input, for every task), the task's label fields, and
'mask' (1 for a real row, 0 for padding; optional in training).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mdx import runtime
from mdx.runtime import DATA
from mdx.train.state import TrainState

# (logits, batch) -> per-example loss [B]
LossFn = Callable[[jax.Array, dict], jax.Array]


def make_train_step(
  model,
  loss_fn: LossFn,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  global_batch: int,
):
  """Returns jit(train_step)(state, batch) -> (state, {'loss': global mean loss, 'finite': whether
  the loss and every gradient are finite}). The flag stays on the device: the loop reads a window
  of them at its next host sync, so checking costs no extra sync per step."""

  def local_step(state: TrainState, batch: dict[str, Any]):
    def loss_of(params):
      logits, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
      )
      per_example = loss_fn(logits, batch)
      if "mask" in batch:
        per_example = per_example * batch["mask"]
      return per_example.sum() / global_batch, updates

    (loss, updates), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, param_updates),
      batch_stats=updates.get("batch_stats", state.batch_stats),
      opt_state=opt_state,
    )
    loss = jax.lax.psum(loss, DATA)
    # gradients of replicated parameters are already summed over devices: the same on each
    finite = jnp.isfinite(loss) & jnp.all(
      jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
    )
    return new_state, {"loss": loss, "finite": finite}

  step = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=(P(), P()))
  return jax.jit(
    step,
    donate_argnums=0 if runtime.donate_state() else (),
    compiler_options=runtime.compiler_options(),
  )


def make_eval_loss_step(model, loss_fn: LossFn, mesh: Mesh, global_batch: int):
  """Returns jit(f)(state, batch) -> (summed masked loss / global_batch, logits)."""

  def local(state, batch):
    logits = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False
    )
    per_example = loss_fn(logits, batch) * batch["mask"]
    return jax.lax.psum(per_example.sum(), DATA) / global_batch, logits

  return jax.jit(
    jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=(P(), P(DATA))),
    compiler_options=runtime.compiler_options(),
  )
