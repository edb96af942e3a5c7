"""One run of an experiment: train (then report), eval or predict. Flag-free, so sweeps and tests
call it."""

from __future__ import annotations

import json
import logging as logging_std
import os

from absl import logging


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of Orbax and grain (each save/restore logs a dozen lines); keeps
  warnings."""

  def filter(self, record) -> bool:
    return record.levelno >= logging_std.WARNING or not any(
      part in record.pathname for part in ("/orbax/", "/grain/")
    )


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())


def prepare_workdir(workdir: str) -> str:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(
      f"--workdir={workdir} is a file, not a directory; pass a directory "
      "path (it is created if missing)"
    )
  os.makedirs(workdir, exist_ok=True)
  return workdir


def write_config(config, workdir: str) -> None:
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def run(
  config, workdir: str, mode: str, input_dir: str | None = None, output_dir: str | None = None
) -> str | None:
  """Runs one mode; returns the report directory (train, eval) or the output folder (predict)."""
  import jax

  from mdx import config as config_lib
  from mdx.train import loop, tasks

  config = config_lib.resolve(config)
  workdir = prepare_workdir(workdir)
  from mdx import runtime

  runtime.enable_compilation_cache()
  if jax.process_index() == 0 and mode == "train":
    write_config(config, workdir)
  logging.info(
    "mdx %s on %d device(s) (%s), %d process(es); workdir %s",
    mode,
    jax.device_count(),
    jax.devices()[0].platform,
    jax.process_count(),
    workdir,
  )
  task = tasks.make_task(config)
  if mode == "predict":
    if not (input_dir and output_dir):
      raise ValueError("--mode=predict needs --input=FOLDER and --output=FOLDER")
    if task.predict_files is None:
      raise ValueError(f"config.task={config.task!r} has no predict mode")
    _, evaluator, _ = loop.restore_for_eval(config, workdir, task)
    return task.predict_files(evaluator, input_dir, output_dir)
  if mode == "train":
    result = loop.train(config, workdir, task)
    if not config.eval.after_train:
      return None
    evaluator = result.evaluator
    evaluator.state, step = loop.best_state(result)
  else:
    _, evaluator, step = loop.restore_for_eval(config, workdir, task)
  history = loop.History(workdir, enabled=True).read()
  report_dir = task.report(evaluator, workdir, history)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "evaluated_checkpoint.json"), "w") as f:
      json.dump({"step": int(step)}, f)
  return report_dir
