"""The training state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # Read by no step today (no dropout or stochastic depth); kept because every checkpoint written so
  # far holds it and Orbax refuses to restore a checkpoint into a state that lacks one of its
  # fields, so dropping it would strand those runs. A stochastic layer would draw from it.
  rng: jax.Array


def init_variables(model, sample_input: np.ndarray, seed: int) -> tuple[Any, Any]:
  """Initialises (params, batch_stats) from a sample batch; deterministic in the seed."""
  variables = jax.jit(lambda x: model.init(jax.random.key(seed), x, train=False))(sample_input)
  return variables["params"], variables.get("batch_stats", {})


def create_state(params, batch_stats, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    rng=jax.random.key_data(jax.random.key(seed + 1)),
  )
