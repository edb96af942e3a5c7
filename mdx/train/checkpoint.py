"""Orbax checkpoints of a run: the train state and the data stream's position, saved together.

Keeps the last `keep_last` checkpoints and the best one by a validation metric (higher is better).
Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
at any moment, even in the middle of a save, leaves only complete checkpoints behind.

The data position is a step and the global batch, not grain's per-process iterator state: the
training stream is a function of the global position (mdx.data.pipeline), so a run checkpointed by
2 processes resumes exactly on 1, or on 8. That is also what makes asynchronous saves exact: the
state is copied off the devices when save() returns and written while training goes on, and there
is no iterator to capture at the same instant.
"""

from __future__ import annotations

import os

import flax
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from mdx.train.state import TrainState

STATE, DATA = "state", "data_position"


def make_manager(
  directory: str, *, keep_last: int, best_metric: str, async_save: bool = False
) -> ocp.CheckpointManager:
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
    enable_async_checkpointing=async_save,
    create=True,
  )
  return ocp.CheckpointManager(
    os.path.abspath(directory), options=options, item_names=(STATE, DATA)
  )


def data_position(step: int, global_batch: int) -> dict:
  """What a checkpoint records of the data stream: global batches read, and their size."""
  return {"step": int(step), "global_batch": int(global_batch)}


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state: TrainState,
  position: dict | None,
  metrics: dict[str, float] | None,
) -> None:
  """Saves (state, data position) as `step`; returns once the arrays are off the devices (an
  asynchronous manager writes them in the background: wait_until_finished() before reading)."""
  args = {STATE: ocp.args.StandardSave(flax.serialization.to_state_dict(state))}
  if position is not None:
    args[DATA] = ocp.args.JsonSave(position)
  manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, state: TrainState) -> TrainState:
  """Restores into the structure and shardings of `state` (any process count: the state is
  replicated, and each process reads what its devices hold)."""
  template = flax.serialization.to_state_dict(state)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  restored = manager.restore(
    step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)})
  )
  return flax.serialization.from_state_dict(state, restored[STATE])


def restore_position(manager: ocp.CheckpointManager, step: int) -> dict | None:
  """The data position saved with `step` (None for a checkpoint saved without one)."""
  if not os.path.isdir(os.path.join(str(manager.directory), str(step), DATA)):
    return None
  return dict(
    manager.restore(step, args=ocp.args.Composite(**{DATA: ocp.args.JsonRestore()}))[DATA]
  )


def move_aside(manager: ocp.CheckpointManager, step: int, workdir: str) -> str:
  """Moves checkpoint `step` out of the manager's folder into WORKDIR/checkpoints_damaged/ (kept
  for a person to look at, never deleted); returns where it went."""
  import shutil
  import time

  root = os.path.join(workdir, "checkpoints_damaged")
  os.makedirs(root, exist_ok=True)
  target = os.path.join(root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  shutil.move(os.path.join(str(manager.directory), str(step)), target)
  return target


def best_or_latest_step(manager: ocp.CheckpointManager) -> int | None:
  """The kept step with the best validation metric (the latest when none has metrics)."""
  best = manager.best_step()
  return best if best is not None else manager.latest_step()
