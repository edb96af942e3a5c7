"""Optimizer and learning-rate schedule from config.train.

Schedules: constant, cosine (to 0 over train.steps), warmup_cosine (linear from 0 over
train.warmup_steps, then cosine), poly (nnU-Net's: lr * (1 - step / steps) ** train.poly_exponent,
exponent 0.9 by default; step counts the updates already made, so the first uses lr).
Optimizers: adam; adamw (decoupled weight decay, train.weight_decay); sgd with Nesterov momentum
train.momentum (0.9 by default) and, when train.weight_decay is set, torch SGD's weight_decay: the
decay times the parameter added to the gradient before momentum (nnU-Net: lr 1e-2, momentum 0.99,
weight decay 3e-5). A global-norm clip (train.grad_clip) comes first, as torch clips the gradient
before the optimizer adds the decay.
An average of the weights (train.ema_decay) rides in the optimizer state: with_params_average.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "warmup_cosine", "poly")
POLY_EXPONENT = 0.9  # nnU-Net's
MOMENTUM = 0.9  # sgd's default momentum (nnU-Net trains with 0.99)


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def make_schedule(train_config) -> optax.Schedule:
  lr, steps, warmup = train_config.lr, train_config.steps, train_config.warmup_steps
  name = train_config.schedule
  if name == "constant":
    return optax.constant_schedule(lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=max(steps, 1))
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup_steps=warmup, decay_steps=max(steps, warmup + 1)
    )
  if name == "poly":
    exponent = train_config.get("poly_exponent", POLY_EXPONENT)
    if not _number(exponent) or exponent <= 0:
      raise ValueError(f"config.train.poly_exponent={exponent!r} must be a number > 0 (e.g. 0.9)")
    # (lr - 0) * (1 - count / steps) ** exponent + 0, count clipped to [0, steps]
    return optax.polynomial_schedule(
      init_value=lr, end_value=0.0, power=exponent, transition_steps=max(steps, 1)
    )
  raise ValueError(f"config.train.schedule={name!r} is unknown; choose one of {SCHEDULES}")


def make_optimizer(train_config) -> optax.GradientTransformation:
  schedule = make_schedule(train_config)
  name = train_config.optimizer
  if name == "adam":
    opt = optax.adam(schedule)
  elif name == "adamw":
    opt = optax.adamw(schedule, weight_decay=train_config.weight_decay)
  elif name == "sgd":
    momentum = train_config.get("momentum", MOMENTUM)
    if not _number(momentum) or not 0 <= momentum < 1:
      raise ValueError(f"config.train.momentum={momentum!r} must be a number in [0, 1) (e.g. 0.99)")
    opt = optax.sgd(schedule, momentum=momentum, nesterov=True)
    if train_config.weight_decay:  # torch SGD's weight_decay: decay * param joins the gradient
      opt = optax.chain(optax.add_decayed_weights(train_config.weight_decay), opt)
  else:
    raise ValueError(f"config.train.optimizer={name!r} is unknown; choose adam, adamw or sgd")
  if train_config.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(train_config.grad_clip), opt)
  return opt


# --- The weights' exponential moving average (train.ema_decay) ---


class ParamsAverage(NamedTuple):
  """The optimizer state of with_params_average: updates seen and the average itself."""

  count: jax.Array
  average: Any


def with_params_average(tx: optax.GradientTransformation, decay: float):
  """tx, then an exponential moving average of the parameters each update leaves (decay 0: tx).

  Kept in the optimizer state, so checkpoints carry it and resuming continues it, and a run
  without it keeps the state (and the checkpoints) it always had. The average is debiased, as
  Adam's moments are: after t updates it is sum_i w_i p_i with w_i proportional to decay**(t - i),
  the weights summing to 1 (after one update, the parameters themselves), so no weight is left on
  the initialisation and a validation early in the run sees no half-trained blend. That equals
  the running form a_t = a_{t-1} + (p_t - a_{t-1}) * (1 - decay) / (1 - decay**t). decay in
  [0, 1) is config.check_values' to enforce, before any work starts.
  """
  if not decay:
    return tx

  def init(params):
    return ParamsAverage(
      count=jnp.zeros((), jnp.int32), average=jax.tree.map(jnp.zeros_like, params)
    )

  def update(updates, state: ParamsAverage, params=None):
    if params is None:
      raise ValueError("the weights' average needs the parameters: call tx.update(g, s, params)")
    count = state.count + 1
    # (1 - d) / (1 - d**t) in float32: 1 at t = 1, decreasing to 1 - d
    rate = (1.0 - decay) / (1.0 - jnp.power(jnp.float32(decay), count.astype(jnp.float32)))
    new = optax.apply_updates(params, updates)
    average = jax.tree.map(lambda a, p: a + (p - a) * rate.astype(a.dtype), state.average, new)
    return updates, ParamsAverage(count=count, average=average)

  return optax.chain(tx, optax.GradientTransformation(init, update))


def averaged_params(opt_state) -> Any | None:
  """The weights' average held by an optimizer state of with_params_average, else None."""
  if isinstance(opt_state, tuple) and opt_state and isinstance(opt_state[-1], ParamsAverage):
    return opt_state[-1].average
  return None


def saved_average_key(opt_state: Any) -> tuple[str, ...] | None:
  """Where a saved optimizer state keeps the weights' average: the key path under 'opt_state' in
  an Orbax checkpoint's tree (its tuples saved as dicts keyed '0', '1', ...), else None.

  with_params_average's state is a chain's, (tx's state, ParamsAverage), so the average sits at
  ('<last>', 'average') beside a 'count'. Readers of a checkpoint (fine-tuning from a run) take
  it in place of 'params', as the run's validation, best checkpoint and bundle did.
  """
  if not isinstance(opt_state, Mapping) or not opt_state:
    return None
  last = max(opt_state, key=lambda k: int(k) if str(k).isdigit() else -1)
  entry = opt_state[last]
  if isinstance(entry, Mapping) and set(entry) == {"count", "average"}:
    return (str(last), "average")
  return None
