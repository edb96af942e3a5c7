"""What an asynchronous checkpoint costs the training steps, beside a synchronous one, in one run:

  python benchmarks/checkpoint.py --config=experiments/cxr_phantoms.py --steps=12 --saves=4

Builds the experiment's model, optimizer and train step (no data: a fixed batch of the configured
shape), compiles, then takes turns over --saves rounds:
  quiet   --steps steps with no save in flight;
  async   an asynchronous save, then steps until it is written (the steps it overlaps are timed);
  sync    a synchronous save (training waits for all of it).
Prints the medians: step time quiet and with an async save in flight, how long save() blocks
(async: until the arrays are off the devices; sync: the whole write), and the train state's size.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from mdx import commands, runtime
from mdx import config as config_lib
from mdx.train import checkpoint, loop, steps, tasks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 12, "Quiet steps per round.")
_SAVES = flags.DEFINE_integer("saves", 4, "Rounds (each: quiet steps, an async save, a sync save).")
_DIR = flags.DEFINE_string("dir", None, "Where to write the checkpoints (default: a temp folder).")


def _timed_step(train_step, state, batch):
  start = time.perf_counter()
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - start


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides look like --config.seed=1")
  runtime.quiet_library_logs()
  config = config_lib.resolve(_CONFIG.value)
  task = tasks.make_task(config)
  mesh = runtime.make_mesh()
  geometry = runtime.batch_geometry(config.train.batch_size, mesh)
  model, tx, state = loop.build(config, task, mesh, pretrained=False)
  batch = runtime.shard_batch(next(iter(task.train_data(geometry))), mesh)
  train_step = steps.make_train_step(model, task.loss, tx, mesh, config.train.batch_size)
  root = _DIR.value or tempfile.mkdtemp(prefix="mdx-ckpt-bench-")
  managers = {
    mode: checkpoint.make_manager(
      os.path.join(root, mode), keep_last=2, best_metric="m", async_save=(mode == "async")
    )
    for mode in ("async", "sync")
  }
  state, _ = _timed_step(train_step, state, batch)  # compile
  quiet, overlapped, blocking = [], [], {"async": [], "sync": []}
  step = 0
  for _ in range(_SAVES.value):
    for _ in range(_STEPS.value):
      state, dt = _timed_step(train_step, state, batch)
      quiet.append(dt)
    for mode in ("async", "sync"):
      step += 1
      manager = managers[mode]
      start = time.perf_counter()
      checkpoint.save(manager, step, state, checkpoint.data_position(step, 1), {"m": 0.0})
      blocking[mode].append(time.perf_counter() - start)
      while mode == "async" and manager.is_saving_in_progress():
        state, dt = _timed_step(train_step, state, batch)
        overlapped.append(dt)
      manager.wait_until_finished()
  size = sum(x.nbytes for x in jax.tree.leaves(state))
  if not _DIR.value:
    shutil.rmtree(root, ignore_errors=True)
  ms = lambda xs: f"{1e3 * statistics.median(xs):.1f} ms" if xs else "n/a"
  print(f"backend {jax.default_backend()}, {jax.device_count()} devices, {config.model.name} at "
        f"{config.data.get('image_size', '-')} px, batch {config.train.batch_size}, "
        f"state {size / 2**20:.1f} MiB")  # fmt: skip
  print(f"step, no save in flight          median {ms(quiet)}  ({len(quiet)} steps)")
  print(f"step, async save in flight       median {ms(overlapped)}  ({len(overlapped)} steps)")
  print(f"save() blocks training: async    median {ms(blocking['async'])}")
  print(f"save() blocks training: sync     median {ms(blocking['sync'])}")
  if overlapped:
    ratio = statistics.median(overlapped) / statistics.median(quiet)
    print(f"step time in flight / quiet      {ratio:.2f}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  commands.run_program(main)  # a config mistake: one line, exit status 2
