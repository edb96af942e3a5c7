"""Test helper run as a subprocess: trains experiments/tiny_phantoms.py with overrides.

usage: python tests/train/run_training.py WORKDIR OUT.npz [--kill-at-step=N[@RANK]]
    [--term-at-step=N] [--kill-after-save=N] [--nan-at-step=N] [key=value ...]
Writes the final parameters and batch statistics to OUT.npz. With --kill-at-step=N the process
(only process RANK with @RANK) sends itself SIGKILL right before running train step N: an abrupt
death between checkpoints, like preemption. With --term-at-step=N process 0 sends itself SIGTERM (a
preemption notice) instead. With --kill-after-save=N it is killed as soon as the save of step N
returns: with asynchronous checkpoints, while that checkpoint is still being written. With
--nan-at-step=N step N's batch has NaN pixels.
"""

import os
import signal
import sys
import time

import numpy as np
from absl import flags

flags.FLAGS.mark_as_parsed()  # grain workers need parsed absl flags


def main():
  workdir, out, *rest = sys.argv[1:]
  kill_at = kill_rank = term_at = kill_after_save = nan_at = None
  overrides = {}
  for arg in rest:
    if arg.startswith("--kill-at-step="):
      step, _, rank = arg.split("=")[1].partition("@")
      kill_at, kill_rank = int(step), (int(rank) if rank else None)
    elif arg.startswith("--term-at-step="):
      term_at = int(arg.split("=")[1])
    elif arg.startswith("--kill-after-save="):
      kill_after_save = int(arg.split("=")[1])
    elif arg.startswith("--nan-at-step="):
      nan_at = int(arg.split("=")[1])
    else:
      key, value = arg.split("=", 1)
      overrides[key] = eval(value)  # test-controlled literals
  import importlib.util

  import jax

  from mdx import runtime

  runtime.join_processes()  # a no-op unless started by mdx.local (several processes)
  from absl import logging

  logging.use_absl_handler()  # mdx's INFO lines ("Resumed from step N") on stderr, as mdx.main
  logging.set_verbosity(logging.INFO)
  runtime.quiet_library_logs()
  from flax import traverse_util

  from mdx import config as config_lib
  from mdx.train import loop, steps, tasks
  from mdx.train.run import prepare_workdir

  spec = importlib.util.spec_from_file_location("cfg", "experiments/tiny_phantoms.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for p in path:
      node = node[p]
    node[leaf] = value
  config = config_lib.resolve(config)
  runtime.enable_compilation_cache()

  if kill_at is not None or term_at is not None or nan_at is not None:
    make = steps.make_train_step

    def make_killing_step(*args, **kwargs):
      step_fn = make(*args, **kwargs)

      def wrapped(state, batch):
        if int(state.step) + 1 == kill_at and kill_rank in (None, jax.process_index()):
          os.kill(os.getpid(), signal.SIGKILL)
        if int(state.step) + 1 == term_at and jax.process_index() == 0:
          os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice: finish the step, save, exit
        if term_at is not None and int(state.step) + 1 > term_at:
          # steps as slow as real ones: jax's notice reaches the other processes in well under a
          # second, but a tiny model could otherwise finish all its steps before it does
          time.sleep(0.3)
        if int(state.step) + 1 == nan_at:  # NaN pixels, as from a damaged file
          batch = dict(batch, image=batch["image"] * float("nan"))
        return step_fn(state, batch)

      return wrapped

    steps.make_train_step = make_killing_step

  if kill_after_save is not None:
    from mdx.train import checkpoint

    save = checkpoint.save

    def save_then_die(manager, step, *args, **kwargs):
      save(manager, step, *args, **kwargs)
      if step == kill_after_save:
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save = save_then_die

  try:
    state = loop.train(config, prepare_workdir(workdir), tasks.make_task(config)).state
  except loop.Preempted:
    sys.exit(0)
  host = runtime.to_host({"params": state.params, "batch_stats": state.batch_stats})
  flat = traverse_util.flatten_dict(host, sep="/")
  if jax.process_index() == 0:
    np.savez(out, devices=jax.device_count(), processes=jax.process_count(), **flat)


if __name__ == "__main__":
  main()
