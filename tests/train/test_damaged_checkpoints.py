"""A checkpoint step with any damaged file is moved to WORKDIR/checkpoints_damaged/ with a warning
naming the file, and the run goes on from the newest intact step (train, eval and export alike).

The fast tests build real checkpoints (steps 2, 4, 6 of a tiny TrainState, saved with
checkpoint.save as training does) and damage step 6 the ways a torn copy or a lost file does; the
restored state must be step 4's, bit for bit. The slow test does the same through `python -m mdx
train` and `eval` on the tiny phantom experiment.
"""

import logging
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mdx import config as config_lib
from mdx.train import checkpoint, loop, run
from mdx.train.state import create_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = (2, 4, 6)
BATCH = 8


def _params(step):
  """Values no other step holds (random, so a mix-up of steps cannot pass by chance)."""
  return {"w": jnp.asarray(np.random.default_rng(step).normal(size=(3, 5)), jnp.float32)}


def _config():
  c = config_lib.defaults()
  c.train.keep_last = 3
  c.train.best_metric = "val_auroc"
  c.train.batch_size = BATCH
  c.train.async_checkpoints = "off"
  c.eval.batch_size = BATCH
  return c


def _template():
  return create_state({"w": jnp.zeros((3, 5))}, {}, optax.sgd(0.1), seed=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir whose checkpoints/ holds steps 2, 4 and 6, each with metrics and data position."""
  work = tmp_path_factory.mktemp("saved") / "work"
  manager = checkpoint.make_manager(str(work / "checkpoints"), keep_last=3, best_metric="val_auroc")
  for step in STEPS:
    state = create_state(_params(step), {}, optax.sgd(0.1), seed=0)
    position = checkpoint.data_position(step, BATCH)
    checkpoint.save(manager, step, state, position, {"val_auroc": step / 10})
  manager.wait_until_finished()
  manager.close()
  return work


@pytest.fixture
def work(saved, tmp_path):
  copy = tmp_path / "work"
  shutil.copytree(saved, copy)
  return copy


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)


def _empty_metrics(step_dir):
  _write(step_dir / "metrics" / "metrics", "")
  return step_dir / "metrics" / "metrics", "is empty"


def _garbage_step_metadata(step_dir):
  _write(step_dir / "_CHECKPOINT_METADATA", "\x00\x00garbage{")
  return step_dir / "_CHECKPOINT_METADATA", "is not valid JSON"


def _truncated_data_position(step_dir):
  path = step_dir / "data_position" / "metadata"
  text = path.read_text()
  _write(path, text[: len(text) // 2])
  return path, "is not valid JSON"


def _missing_state_metadata(step_dir):
  os.remove(step_dir / "state" / "_METADATA")
  return step_dir / "state" / "_METADATA", "is missing"


def _deleted_state(step_dir):
  shutil.rmtree(step_dir / "state")
  return step_dir / "state", "is missing"


def _empty_array_file(step_dir):
  data = step_dir / "state" / "ocdbt.process_0" / "d"
  path = data / sorted(os.listdir(data))[0]
  _write(path, "")
  return path, "is empty"


def _garbage_array_metadata(step_dir):
  path = step_dir / "state" / "array_metadatas" / "process_0"
  _write(path, "[1, 2")
  return path, "is not valid JSON"


def _metrics_listed_but_gone(step_dir):
  shutil.rmtree(step_dir / "metrics")  # _CHECKPOINT_METADATA still lists the item
  return step_dir / "metrics", "is missing"


def _a_file_named_as_the_step(step_dir):
  shutil.rmtree(step_dir)
  _write(step_dir, "not a checkpoint")
  return step_dir, "is a file, not a checkpoint folder"


DAMAGES = [
  _empty_metrics,
  _garbage_step_metadata,
  _truncated_data_position,
  _missing_state_metadata,
  _deleted_state,
  _empty_array_file,
  _garbage_array_metadata,
  _metrics_listed_but_gone,
  _a_file_named_as_the_step,
]


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_step_is_moved_aside_and_the_run_resumes_from_the_one_before(
  work, damage, caplog
):
  path, problem = damage(work / "checkpoints" / "6")
  assert checkpoint.find_damaged(str(work / "checkpoints")) == [
    checkpoint.Damaged(6, str(path), checkpoint.step_damage(str(work / "checkpoints" / "6"))[1])
  ]
  with caplog.at_level(logging.WARNING):
    manager, damaged = loop._open_for_training(_config(), str(work))  # the manager starts
    state, start = loop._resume(manager, _config(), str(work), _template(), damaged)
  assert start == 4 and manager.all_steps() == [2, 4]
  assert np.asarray(state.params["w"]).tobytes() == np.asarray(_params(4)["w"]).tobytes()
  (moved,) = os.listdir(work / "checkpoints_damaged")
  assert moved.startswith("6-") and sorted(os.listdir(work / "checkpoints")) == ["2", "4"]
  (warning,) = _warnings(caplog)
  assert f"({path} {problem}" in warning, warning
  assert f"moved it to {work}/checkpoints_damaged/{moved}" in warning
  assert warning.endswith("this run uses checkpoint 4 instead")
  manager.close()


def test_an_intact_workdir_and_orbax_temporary_folders_are_left_alone(work, caplog):
  """A save cut short leaves '<step>.orbax-checkpoint-tmp': Orbax skips it at start and replaces
  it when it saves that step again, so it is neither a step nor damage."""
  shutil.copytree(work / "checkpoints" / "6", work / "checkpoints" / "8.orbax-checkpoint-tmp")
  os.remove(work / "checkpoints" / "8.orbax-checkpoint-tmp" / "metrics" / "metrics")
  before = sorted(os.listdir(work / "checkpoints"))
  with caplog.at_level(logging.WARNING):
    manager, damaged = loop._open_for_training(_config(), str(work))
    state, start = loop._resume(manager, _config(), str(work), _template(), damaged)
  assert (damaged, start, _warnings(caplog)) == ([], 6, [])
  assert sorted(os.listdir(work / "checkpoints")) == before
  assert not os.path.exists(work / "checkpoints_damaged")
  assert np.asarray(state.params["w"]).tobytes() == np.asarray(_params(6)["w"]).tobytes()
  checkpoint.save(manager, 8, state, checkpoint.data_position(8, BATCH), {"val_auroc": 0.1})
  manager.wait_until_finished()
  assert manager.all_steps() == [4, 6, 8]  # keep_last 3 (the best, 6, among them)
  assert not os.path.exists(work / "checkpoints" / "8.orbax-checkpoint-tmp")  # Orbax replaced it
  manager.close()


def test_a_step_damaged_twice_is_kept_twice(work, saved):
  """Never deleted: a step set aside again (even in the same second) lands beside the first."""
  for _ in range(2):
    shutil.rmtree(work / "checkpoints" / "6", ignore_errors=True)
    shutil.copytree(saved / "checkpoints" / "6", work / "checkpoints" / "6")
    _empty_metrics(work / "checkpoints" / "6")
    (damaged,) = checkpoint.set_aside_damaged(str(work / "checkpoints"), str(work))
    assert damaged.step == 6 and os.path.isdir(damaged.moved_to)
  moved = sorted(os.listdir(work / "checkpoints_damaged"))
  assert len(moved) == 2 and all(name.startswith("6-") for name in moved)
  assert checkpoint.step_entries(str(work / "checkpoints")) == [2, 4]


@pytest.mark.parametrize(
  "position",
  ['{"step": 5, "global_batch": 8}', '{"step": 6}', '{"step": 6, "global_batch": "8"}'],
)
def test_a_data_position_that_parses_but_is_not_the_steps_falls_back_too(work, position, caplog):
  """A JSON object that is not step 6's position passes the file check; the restore finds it, and
  the same fallback as for a torn state moves step 6 aside."""
  _write(work / "checkpoints" / "6" / "data_position" / "metadata", position)
  with caplog.at_level(logging.WARNING):
    manager, damaged = loop._open_for_training(_config(), str(work))
    state, start = loop._resume(manager, _config(), str(work), _template(), damaged)
  assert start == 4 and manager.all_steps() == [2, 4]
  assert np.asarray(state.params["w"]).tobytes() == np.asarray(_params(4)["w"]).tobytes()
  (warning,) = _warnings(caplog)
  assert "Checkpoint 6 of" in warning and "continued from checkpoint 4" in warning
  manager.close()


def _damage_every_step(work):
  for step in STEPS:
    _empty_metrics(work / "checkpoints" / str(step))


def test_train_does_not_start_over_a_run_whose_checkpoints_are_all_damaged(work):
  _damage_every_step(work)
  for attempt in (1, 2):  # the second start finds checkpoints/ empty and the damaged set aside
    with pytest.raises(loop.CheckpointError) as e:
      loop._open_for_training(_config(), str(work))
    (line,) = str(e.value).splitlines()
    assert f"no intact checkpoint is left in {work}/checkpoints" in line
    assert f"{work}/checkpoints_damaged/" in line and "use a new workdir" in line
    assert ("3 damaged, just moved" in line) == (attempt == 1)
  assert len(os.listdir(work / "checkpoints_damaged")) == 3
  assert os.listdir(work / "checkpoints") == []
  with pytest.raises(loop.CheckpointError, match="no intact checkpoint is left"):
    loop.refuse_start_over(str(work))
  # train_config asks it before it would rewrite the run's config.json with a new command's
  (work / "config.json").write_text("{}")
  with pytest.raises(loop.CheckpointError, match="no intact checkpoint is left"):
    run.train_config(str(work), _config())
  assert (work / "config.json").read_text() == "{}"


def test_eval_and_export_fall_back_and_say_when_nothing_intact_is_left(work):
  """restore_for_eval refuses before it builds anything (task=None is never touched)."""
  _empty_metrics(work / "checkpoints" / "6")
  with pytest.raises(loop.CheckpointError) as e:  # export --step=6
    loop.restore_for_eval(_config(), str(work), None, step=6)
  metrics = work / "checkpoints" / "6" / "metrics" / "metrics"
  assert f"--step=6: checkpoint 6 of {work} is damaged ({metrics} is empty)" in str(e.value)
  assert str(e.value).endswith("choose one of the intact steps [2, 4]")
  for step in (2, 4):
    _empty_metrics(work / "checkpoints" / str(step))
  with pytest.raises(loop.CheckpointError) as e:
    loop.restore_for_eval(_config(), str(work), None)
  (line,) = str(e.value).splitlines()
  assert "no intact checkpoint is left" in line and "train the run again in a new workdir" in line
  assert len(os.listdir(work / "checkpoints_damaged")) == 3


def test_a_new_workdir_still_starts_fresh(tmp_path):
  manager, damaged = loop._open_for_training(_config(), str(tmp_path / "new"))
  state, start = loop._resume(manager, _config(), str(tmp_path / "new"), _template(), damaged)
  assert (damaged, start) == ([], 0)
  manager.close()
  loop.refuse_start_over(str(tmp_path / "new"))  # nothing to refuse


def _mdx(*args):
  return subprocess.run(
    [sys.executable, "-m", "mdx", "main", *args],
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.slow
def test_train_and_eval_go_on_from_the_step_before_an_emptied_metrics_file(tmp_path):
  """The issue's case: the newest step's metrics file emptied (a torn copy). A longer train
  resumes from the step before with a warning naming the file; eval then works on the workdir."""
  work = tmp_path / "work"
  common = (
    "--config=experiments/tiny_phantoms.py",
    f"--workdir={work}",
    "--config.data.workers=0",
    "--config.train.async_checkpoints=off",
    "--config.eval.after_train=False",
    "--config.train.checkpoint_every=2",
  )
  proc = _mdx(*common, "--config.train.steps=4")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert sorted(os.listdir(work / "checkpoints")) == ["2", "4"]
  _write(work / "checkpoints" / "4" / "metrics" / "metrics", "")
  proc = _mdx(*common, "--config.train.steps=6")
  assert proc.returncode == 0, proc.stderr[-4000:]
  metrics = work / "checkpoints" / "4" / "metrics" / "metrics"
  assert f"Checkpoint 4 of {work} is damaged ({metrics} is empty)" in proc.stderr
  assert "this run uses checkpoint 2 instead" in proc.stderr
  assert "Resumed from step 2" in proc.stderr
  assert {"4", "6"} <= set(os.listdir(work / "checkpoints"))  # 4 trained again, then 6
  (moved,) = os.listdir(work / "checkpoints_damaged")
  assert moved.startswith("4-")
  assert (work / "checkpoints_damaged" / moved / "metrics" / "metrics").read_text() == ""

  _write(work / "checkpoints" / "6" / "metrics" / "metrics", "")
  proc = _mdx(*common[:2], "--mode=eval")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "Checkpoint 6 of" in proc.stderr and "is empty" in proc.stderr
  assert len(os.listdir(work / "checkpoints_damaged")) == 2
  assert (work / "report" / "metrics.json").exists()
