"""Optimizer and learning-rate schedule from config.train."""

from __future__ import annotations

import optax


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
  raise ValueError(
    f"config.train.schedule={name!r} is unknown; choose constant, cosine or warmup_cosine"
  )


def make_optimizer(train_config) -> optax.GradientTransformation:
  schedule = make_schedule(train_config)
  name = train_config.optimizer
  if name == "adam":
    opt = optax.adam(schedule)
  elif name == "adamw":
    opt = optax.adamw(schedule, weight_decay=train_config.weight_decay)
  elif name == "sgd":
    opt = optax.sgd(schedule, momentum=0.9, nesterov=True)
  else:
    raise ValueError(f"config.train.optimizer={name!r} is unknown; choose adam, adamw or sgd")
  if train_config.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(train_config.grad_clip), opt)
  return opt
