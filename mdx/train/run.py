"""One run of an experiment: train (then report), eval or predict. Flag-free, so sweeps and tests
call it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from absl import logging

from mdx.train import workdir_lock


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


def report(task, evaluator, workdir: str, history: list[dict], out_dir: str) -> str:
  """The task's report into out_dir, written by process 0 alone: every process evaluates (the
  predictions are gathered across processes), the others write into a scratch folder they delete."""
  import jax

  if jax.process_index() == 0:
    return task.report(evaluator, workdir, history, out_dir=out_dir)
  scratch = tempfile.mkdtemp(prefix="mdx-report-")
  try:
    task.report(evaluator, workdir, history, out_dir=os.path.join(scratch, "report"))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return out_dir


def write_bundle(task, evaluator, workdir: str, step: int, config, directory: str) -> str:
  """The reported state as a bundle (mdx.inference.bundle): everything predict needs."""
  import jax

  from mdx import runtime
  from mdx.inference import bundle as bundle_lib

  spec, variables, samples = task.bundle_contents(evaluator)
  variables = runtime.to_host(variables)  # every process joins the gather; process 0 writes
  spec["provenance"].update(step=int(step), workdir=workdir, config=config.to_dict())
  if jax.process_index() == 0:
    bundle_lib.write(directory, spec, variables, bootstrap=samples)
    logging.info("Wrote the bundle %s (model card: %s)", directory, bundle_lib.CARD)
  return directory


def run(
  config,
  workdir: str,
  mode: str,
  input_dir: str | None = None,
  output_dir: str | None = None,
  step: int | None = None,
) -> str | None:
  """Runs one mode; returns the report directory (train, eval), the bundle (export) or the output
  folder (predict).

  train: train (resuming), then report and bundle the best checkpoint (WORKDIR/report, /bundle).
  eval: report and bundle the best checkpoint again. export: a bundle of checkpoint `step` (default
  the best) into output_dir (default WORKDIR/bundle-step-N), its report beside it. predict: the
  run's bundle on the files of input_dir, needing neither the training data nor a checkpoint.
  """
  import jax

  from mdx import config as config_lib

  config = config_lib.resolve(config)
  workdir = prepare_workdir(workdir)
  from mdx import runtime

  runtime.enable_compilation_cache()
  logging.info(
    "mdx %s on %d device(s) (%s), %d process(es); workdir %s",
    mode,
    jax.device_count(),
    jax.devices()[0].platform,
    jax.process_count(),
    workdir,
  )
  if mode == "predict":
    if not (input_dir and output_dir):
      raise ValueError("--mode=predict needs --input=PATH and --output=FOLDER")
    from mdx.inference import predict_files

    bundle_dir = os.path.join(workdir, "bundle")
    if not os.path.isdir(bundle_dir):
      raise FileNotFoundError(
        f"{workdir} has no bundle/ folder; train the run first, or make one with "
        f"--mode=export --workdir={workdir}"
      )
    return predict_files.predict(bundle_dir, input_dir, output_dir)["output"]
  with workdir_lock.hold(workdir):  # one run per workdir (train, eval and export write into it)
    return _run_with_workdir(config, workdir, mode, output_dir, step)


def _run_with_workdir(config, workdir: str, mode: str, output_dir: str | None, step: int | None):
  import jax

  from mdx.train import loop, tasks

  if jax.process_index() == 0 and mode == "train":
    write_config(config, workdir)
  task = tasks.make_task(config, workdir)
  if mode == "train":
    result = loop.train(config, workdir, task)
    if not config.eval.after_train:
      return None
    evaluator = result.evaluator
    evaluator.state, step = loop.best_state(result)
  else:
    _, evaluator, step = loop.restore_for_eval(config, workdir, task, step)
  history = loop.History(workdir, enabled=True).read()
  if mode == "export":
    bundle_dir = os.path.abspath(output_dir or os.path.join(workdir, f"bundle-step-{step}"))
    report(task, evaluator, workdir, history, bundle_dir + "-report")
    return write_bundle(task, evaluator, workdir, step, config, bundle_dir)
  report_dir = report(task, evaluator, workdir, history, os.path.join(workdir, "report"))
  write_bundle(task, evaluator, workdir, step, config, os.path.join(workdir, "bundle"))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "evaluated_checkpoint.json"), "w") as f:
      json.dump({"step": int(step)}, f)
  return report_dir
