"""Orbax checkpoints of a run: the train state and the data stream's position, saved together.

Keeps the last `keep_last` checkpoints and the best one by a validation metric (higher is better).
Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
at any moment, even in the middle of a save, leaves only complete checkpoints behind.

The data position is a step and the global batch, not grain's per-process iterator state: the
training stream is a function of the global position (mdx.data.pipeline), so a run checkpointed by
2 processes resumes exactly on 1, or on 8. That is also what makes asynchronous saves exact: the
state is copied off the devices when save() returns and written while training goes on, and there
is no iterator to capture at the same instant.

A damaged step (a torn copy, a lost or emptied file) must not block the run: Orbax reads every kept
step's small JSON files when a CheckpointManager starts, and one empty `metrics/metrics` stops it.
set_aside_damaged() checks them first and moves a damaged step to WORKDIR/checkpoints_damaged/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import flax
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from mdx import runtime
from mdx.train.state import TrainState

STATE, DATA, METRICS = "state", "data_position", "metrics"
STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's per-step file: the items a step holds, timestamps
DAMAGED = "checkpoints_damaged"
# Orbax's step folder names (no prefix, no zero padding). Its temporary folders of a save in flight
# ('6.orbax-checkpoint-tmp...') do not match: Orbax skips them at start and replaces one when it
# saves that step again, so they are left to it.
_STEP_NAME = re.compile(r"0|[1-9][0-9]*")
# The JSON file each item holds, which Orbax reads at start (metrics) or restore (the others).
_ITEM_JSON = {METRICS: "metrics", DATA: "metadata", STATE: "_METADATA"}


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
  """The data position saved with `step` (None for a checkpoint saved without one); a ValueError
  when it is not the position of `step` (a damaged file)."""
  if not os.path.isdir(os.path.join(str(manager.directory), str(step), DATA)):
    return None
  position = manager.restore(step, args=ocp.args.Composite(**{DATA: ocp.args.JsonRestore()}))[DATA]
  if (
    not isinstance(position, dict)
    or position.get("step") != step
    or not isinstance(position.get("global_batch"), int)
  ):
    raise ValueError(f"checkpoint {step}'s {DATA} is {position!r}, not the position of step {step}")
  return dict(position)


def move_aside(manager: ocp.CheckpointManager, step: int, workdir: str) -> str:
  """Moves checkpoint `step` out of the manager's folder into WORKDIR/checkpoints_damaged/ (kept
  for a person to look at, never deleted); returns where it went."""
  return _move_step_aside(str(manager.directory), step, workdir)


def _move_step_aside(directory: str, step: int, workdir: str) -> str:
  import shutil
  import time

  root = os.path.join(workdir, DAMAGED)
  os.makedirs(root, exist_ok=True)
  target = base = os.path.join(root, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  n = 1
  while os.path.lexists(target):  # the same step moved twice within a second: keep both
    target, n = f"{base}-{n}", n + 1
  shutil.move(os.path.join(directory, str(step)), target)
  return target


@dataclasses.dataclass(frozen=True)
class Damaged:
  """A step whose folder cannot be used: `path` (a file of it, or the step itself) `problem`."""

  step: int
  path: str
  problem: str  # 'is empty', 'is missing', 'is not valid JSON (...)', ...
  moved_to: str | None = None  # where set_aside_damaged put it (known to process 0)


def _read_json_object(path: str) -> tuple[dict | None, str | None]:
  """(the JSON object in file `path`, None), or (None, what is wrong with the file)."""
  if not os.path.lexists(path):
    return None, "is missing"
  if not os.path.isfile(path):
    return None, "is not a file"
  try:
    if os.path.getsize(path) == 0:
      return None, "is empty"
    with open(path, "rb") as f:
      value = json.load(f)
  except OSError as e:  # unreadable, a dangling link
    return None, f"cannot be read ({type(e).__name__}: {e.strerror})"
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
    return None, f"is not valid JSON ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
  return (value, None) if isinstance(value, dict) else (None, "does not hold a JSON object")


def step_damage(step_dir: str) -> tuple[str, str] | None:
  """(path, what is wrong) of the first damaged file of the checkpoint folder `step_dir`; None
  when it is intact.

  Checked: Orbax's per-step metadata, the folder of every item it lists (and the state, which
  every save holds), each item's JSON file (the metrics Orbax reads when a manager starts, the data
  position and the state's tree metadata it reads at restore) and every other small JSON file of
  the state (shardings, array metadata). Orbax writes no empty file, so an empty one anywhere is a
  torn copy. Array data is left to the restore itself (loop.restore_first_intact)."""
  if not os.path.isdir(step_dir):
    return step_dir, "is a file, not a checkpoint folder"
  metadata_path = os.path.join(step_dir, STEP_METADATA)
  metadata, problem = _read_json_object(metadata_path)
  if problem:
    return metadata_path, problem
  listed = metadata.get("item_handlers")
  items = {STATE} | (set(listed) if isinstance(listed, dict) else set())
  items |= {item for item in _ITEM_JSON if os.path.lexists(os.path.join(step_dir, item))}
  for item in sorted(items):
    item_dir = os.path.join(step_dir, item)
    if not os.path.isdir(item_dir):
      return item_dir, "is missing" if not os.path.lexists(item_dir) else "is not a folder"
    if item in _ITEM_JSON:
      path = os.path.join(item_dir, _ITEM_JSON[item])
      _, problem = _read_json_object(path)
      if problem:
        return path, problem
  for root, _, files in os.walk(step_dir):
    for name in sorted(files):
      path = os.path.join(root, name)
      try:
        if os.path.getsize(path) == 0:
          return path, "is empty"
      except OSError as e:  # a dangling link, a file gone unreadable
        return path, f"cannot be read ({type(e).__name__})"
  state_dir = os.path.join(step_dir, STATE)
  array_metadatas = os.path.join(state_dir, "array_metadatas")
  small_json = [os.path.join(state_dir, "_sharding")]
  if os.path.isdir(array_metadatas):
    small_json += [os.path.join(array_metadatas, n) for n in sorted(os.listdir(array_metadatas))]
  for path in small_json:
    if os.path.lexists(path):  # neither is required
      _, problem = _read_json_object(path)
      if problem:
        return path, problem
  return None


def saved_metrics(step_dir: str) -> dict | None:
  """The metrics a step was saved with (its `metrics` item, the JSON Orbax's best_fn reads), or
  None when the step has none or the file is damaged (step_damage says which)."""
  return _read_json_object(os.path.join(step_dir, METRICS, _ITEM_JSON[METRICS]))[0]


def step_entries(directory: str) -> list[int]:
  """The steps of the entries of `directory` named as Orbax names a step (intact or not), sorted."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if _STEP_NAME.fullmatch(name))


def find_damaged(directory: str) -> list[Damaged]:
  """The damaged steps of the checkpoint folder `directory` (step_damage), oldest first."""
  found = []
  for step in step_entries(directory):
    damage = step_damage(os.path.join(directory, str(step)))
    if damage:
      found.append(Damaged(step, *damage))
  return found


def set_aside_damaged(directory: str, workdir: str) -> list[Damaged]:
  """Moves every damaged step of `directory` to WORKDIR/checkpoints_damaged/ (never deleted), so
  that a CheckpointManager can start on what is left; returns them (moved_to set on process 0).
  Every process reads the folder before process 0 moves anything, so all of them return the same
  steps. Call it before make_manager."""
  damaged = find_damaged(directory)
  runtime.barrier("checkpoints checked for damage")
  if jax.process_index() == 0:
    damaged = [
      dataclasses.replace(d, moved_to=_move_step_aside(directory, d.step, workdir)) for d in damaged
    ]
  runtime.barrier("damaged checkpoints set aside")
  return damaged


def damaged_kept(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints_damaged/ holds anything (steps set aside by an earlier start)."""
  root = os.path.join(workdir, DAMAGED)
  return os.path.isdir(root) and bool(os.listdir(root))


def best_or_latest_step(manager: ocp.CheckpointManager) -> int | None:
  """The kept step with the best validation metric (the latest when none has metrics)."""
  best = manager.best_step()
  return best if best is not None else manager.latest_step()
