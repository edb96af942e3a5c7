"""Orbax checkpoints of a run: the train state and the grain iterator's state, saved together.

Keeps the last `keep_last` checkpoints and the best one by a validation metric (higher is better).
Saves are synchronous: a run killed at any moment leaves only complete checkpoints (Orbax writes to
a temporary directory and renames it when done), and the iterator state matches the train state.
"""

from __future__ import annotations

import os

import flax
import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from mdx.train.state import TrainState


def make_manager(directory: str, *, keep_last: int, best_metric: str) -> ocp.CheckpointManager:
  policy = cm.AnyPreservationPolicy(
    [
      cm.LatestN(n=keep_last),
      cm.BestN(
        get_metric_fn=lambda metrics: metrics[best_metric],
        reverse=False,
        n=1,
        keep_checkpoints_without_metrics=False,
      ),
    ]
  )
  # best_fn too: without it Orbax neither writes the metrics to disk nor answers best_step() after a
  # restart (it returns the latest step), although the policy above kept the best checkpoint.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy,
    best_fn=lambda metrics: metrics[best_metric],
    best_mode="max",
    enable_async_checkpointing=False,
    create=True,
  )
  return ocp.CheckpointManager(
    os.path.abspath(directory), options=options, item_names=("state", "data")
  )


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: TrainState,
  data_iterator,
  metrics: dict[str, float] | None,
) -> None:
  args = {"state": ocp.args.StandardSave(flax.serialization.to_state_dict(state))}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)


def restore(
  manager: ocp.CheckpointManager, step: int, state: TrainState, data_iterator=None
) -> TrainState:
  """Restores into the structure and shardings of `state` (and into data_iterator, in place)."""
  template = flax.serialization.to_state_dict(state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  args = {"state": ocp.args.StandardRestore(abstract)}
  if data_iterator is not None:
    args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = manager.restore(step, args=ocp.args.Composite(**args))
  return flax.serialization.from_state_dict(state, restored["state"])


def best_or_latest_step(manager: ocp.CheckpointManager) -> int | None:
  """The kept step with the best validation metric (the latest when none has metrics)."""
  best = manager.best_step()
  return best if best is not None else manager.latest_step()
