"""Checkpoint retention and best-step selection survive a restart (what --mode=eval relies on)."""

import json

import jax.numpy as jnp
import numpy as np
import optax

from mdx.train import checkpoint
from mdx.train.state import create_state


def test_keeps_last_k_and_the_best_and_finds_the_best_after_reopening(tmp_path):
  params = {"w": jnp.ones(3)}
  tx = optax.sgd(0.1)
  manager = checkpoint.make_manager(str(tmp_path), keep_last=2, best_metric="val_auroc")
  for step, auroc in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7)]:
    state = create_state({"w": jnp.full(3, float(step))}, {}, tx, seed=0)
    checkpoint.save(manager, step, state, None, {"val_auroc": auroc})
  reopened = checkpoint.make_manager(str(tmp_path), keep_last=2, best_metric="val_auroc")
  assert reopened.all_steps() == [2, 3, 4]
  assert checkpoint.best_or_latest_step(reopened) == 2  # not the latest (4)
  template = create_state(params, {}, tx, seed=0)
  restored = checkpoint.restore(reopened, 2, template)
  np.testing.assert_array_equal(restored.params["w"], np.full(3, 2.0))


def test_finetune_restores_from_the_best_step_of_a_run(tmp_path):
  from mdx.train import finetune

  tx = optax.sgd(0.1)
  manager = checkpoint.make_manager(str(tmp_path), keep_last=1, best_metric="val_auroc")
  for step, auroc in [(1, 0.8), (2, 0.6), (3, 0.7)]:
    checkpoint.save(
      manager, step, create_state({"w": jnp.ones(2)}, {}, tx, 0), None, {"val_auroc": auroc}
    )
  assert finetune._best_step(str(tmp_path), [1, 3]) == 1


def _tear(directory, step):
  """Deletes a checkpoint's array files (a torn copy, a disk error)."""
  import os

  for root, _, files in os.walk(os.path.join(directory, str(step), "state")):
    if os.path.basename(root) == "d":
      for name in files:
        os.remove(os.path.join(root, name))


def test_a_damaged_checkpoint_is_moved_aside_and_the_newest_intact_one_restored(tmp_path):
  """What resume and --mode=eval rely on: the damaged step goes to WORKDIR/checkpoints_damaged
  (not deleted), the next one restores. If none restores into the state (a changed model), nothing
  is moved and the error says so."""
  import os

  import pytest

  from mdx.train import loop

  tx = optax.sgd(0.1)
  directory = str(tmp_path / "checkpoints")
  manager = checkpoint.make_manager(directory, keep_last=3, best_metric="val_auroc")
  for step in (1, 2, 3):
    state = create_state({"w": jnp.full(3, float(step))}, {}, tx, seed=0)
    checkpoint.save(manager, step, state, checkpoint.data_position(step, 8), {"val_auroc": step})
  manager.wait_until_finished()
  _tear(directory, 3)
  template = create_state({"w": jnp.zeros(3)}, {}, tx, seed=0)
  restored, step = loop.restore_first_intact(manager, [3, 2, 1], template, str(tmp_path))
  assert step == 2 and np.all(np.asarray(restored.params["w"]) == 2.0)
  assert manager.all_steps() == [1, 2]
  (moved,) = os.listdir(tmp_path / "checkpoints_damaged")
  assert moved.startswith("3-")
  other_model = create_state({"w": jnp.zeros(5)}, {}, tx, seed=0)
  with pytest.raises(loop.CheckpointError, match="no checkpoint of .* restores into this run"):
    loop.restore_first_intact(manager, [2, 1], other_model, str(tmp_path))
  assert manager.all_steps() == [1, 2]  # nothing moved for a model that does not fit


def test_history_keeps_lines_up_to_the_resumed_step_and_drops_a_torn_one(tmp_path):
  """A resume from step 2 keeps steps <= 2; a fresh start (0) keeps none; a line cut short by a
  kill never makes the restart fail."""
  from mdx.train import loop

  lines = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
  for start, kept in ((2, [1, 2]), (0, [])):
    history = loop.History(str(tmp_path), enabled=True)
    with open(history.path, "w") as f:
      f.writelines(json.dumps(x) + "\n" for x in lines)
      f.write('{"step": 4, "lo')  # the kill came mid-write
    history.truncate_after(start)
    assert [h["step"] for h in history.read()] == kept
