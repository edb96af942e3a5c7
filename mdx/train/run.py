"""One run of an experiment: train (then report), eval, export or predict. Flag-free, so sweeps and
tests call it.

A run owns its config: train writes the resolved config into WORKDIR/config.json, and eval and
export read it back (run_config) instead of trusting the command line, which may lack the overrides
the run was trained with (another split, another image size: a report and a bundle that describe a
model nobody trained). The command line may change what is reported (eval.*) and how many loader
processes read the data; a field it types that would change the run itself is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import ml_collections
from absl import logging

from mdx.train import workdir_lock

CONFIG = "config.json"
# What eval and export take from the command line over the run's config: the report's settings,
# and the loader processes (the batches are the same with any number: mdx.data.pipeline).
EVALUATION_FIELDS = ("eval", "data.workers", "data.prefetch")
_UNSET = object()


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
  with open(os.path.join(workdir, CONFIG), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# ------------------------------------------------------------------------ the run's own config
def _tuples(value):
  """JSON's lists back into the tuples experiment files use (hashable, as the config was)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json, resolved; a one-line error when the workdir was never trained."""
  from mdx import config as config_lib

  workdir = os.path.abspath(os.path.expanduser(workdir))
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    if not os.path.exists(workdir):
      what = "does not exist"
    elif not os.path.isdir(workdir):
      what = "is a file, not a run's folder"
    else:
      what = f"has no {CONFIG} (it was never trained)"
    raise FileNotFoundError(
      f"--workdir={workdir} {what}: eval and export use the config the run was trained with, "
      f"which train writes into WORKDIR/{CONFIG}; train it first or give a trained run's workdir"
    )
  try:
    with open(path) as f:
      stored = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not JSON ({e}); train writes it: restore it or train again") from e
  if not isinstance(stored, dict):
    raise ValueError(f"{path} holds no config (a JSON object); train writes it: train again")
  try:
    return config_lib.resolve(ml_collections.ConfigDict(_tuples(stored)))
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def flat_config(config) -> dict[str, Any]:
  """Dotted field -> value, as config.json holds it (tuples as lists, nested sections such as
  data.split flattened to their leaves): two configs are the same run when these are equal."""
  if not isinstance(config, dict):
    config = json.loads(config.to_json_best_effort(sort_keys=True))

  def leaves(node: dict, prefix: str):
    for key, value in node.items():
      if isinstance(value, dict) and value:
        yield from leaves(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value

  return dict(leaves(config, ""))


def _under(field: str, prefixes) -> bool:
  return any(field == p or field.startswith(p + ".") for p in prefixes)


def _shown(value) -> str:
  return "not set" if value is _UNSET else repr(value)


def run_config(
  workdir: str, config=None, overrides: dict[str, Any] | None = None, mode: str = "eval"
) -> ml_collections.ConfigDict:
  """The config eval and export use: the run's own (WORKDIR/config.json) with the command line's
  evaluation fields (EVALUATION_FIELDS) over it.

  config: the command line's config (the experiment file and its overrides; None: the run's
  alone). overrides: the dotted fields typed on the command line (mdx.main passes config_flags'
  override values); None counts every field of `config` as typed (the flag-free API: a caller
  passes what it means). A typed field outside the evaluation fields that differs from the run's
  is a ValueError naming it and both values. The experiment file's other fields yield to the
  run's, which may have been trained with overrides the eval command does not repeat.
  """
  from mdx import config as config_lib

  workdir = os.path.abspath(os.path.expanduser(workdir))
  stored = load_run_config(workdir)
  if config is None:
    return stored
  asked = config_lib.resolve(config)
  path = os.path.join(workdir, CONFIG)
  if asked.task != stored.task:
    raise ValueError(
      f"config.task={asked.task!r} on the command line, {stored.task!r} in {path}: give the "
      "experiment file the run was trained with"
    )
  ours, theirs = flat_config(asked), flat_config(stored)
  fields = sorted(set(ours) | set(theirs))
  changed = [f for f in fields if ours.get(f, _UNSET) != theirs.get(f, _UNSET)]
  typed = changed if overrides is None else [f for f in changed if _under(f, overrides)]
  refused = [f for f in typed if not _under(f, EVALUATION_FIELDS)]
  if refused:
    first = refused[0]
    more = f" (also {', '.join(refused[1:])})" if len(refused) > 1 else ""
    raise ValueError(
      f"config.{first}={_shown(ours.get(first, _UNSET))} on the command line, "
      f"{_shown(theirs.get(first, _UNSET))} in {path}{more}: {mode} uses the run's config; only "
      f"{', '.join(f + '.*' if f == 'eval' else f for f in EVALUATION_FIELDS)} may differ "
      "(drop the override, or train a new run in another --workdir)"
    )
  yielded = [f for f in changed if not _under(f, EVALUATION_FIELDS)]
  if yielded:
    logging.info(
      "%s uses the run's config %s; the experiment file differs in %s (the run's values kept)",
      mode,
      path,
      ", ".join(
        f"{f}={_shown(ours.get(f, _UNSET))} (run: {_shown(theirs.get(f, _UNSET))})" for f in yielded
      ),
    )
  with stored.unlocked():
    stored.eval = ml_collections.ConfigDict(asked.eval)
    stored.data.workers, stored.data.prefetch = asked.data.workers, asked.data.prefetch
  return config_lib.resolve(stored)


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
  overrides: dict[str, Any] | None = None,
) -> str | None:
  """Runs one mode; returns the report directory (train, eval), the bundle (export) or the output
  folder (predict).

  train: train (resuming), then report and bundle the best checkpoint (WORKDIR/report, /bundle).
  eval: report and bundle the best checkpoint again. export: a bundle of checkpoint `step` (default
  the best) into output_dir (default WORKDIR/bundle-step-N), its report beside it. eval and export
  use the run's WORKDIR/config.json with `config`'s evaluation fields over it (run_config: a typed
  override of anything else is refused; `overrides` as there). predict: the run's bundle on the
  files of input_dir, needing neither a config (None will do), the training data nor a checkpoint.
  """
  import jax

  from mdx import config as config_lib

  if mode in ("eval", "export"):
    config = run_config(workdir, config, overrides, mode)
  elif mode == "train":
    config = config_lib.resolve(config)
  elif mode != "predict":
    raise ValueError(f"mode {mode!r} is unknown; choose train, eval, export or predict")
  # predict only reads the run's bundle: a workdir that is not there is not created
  if mode == "predict":
    workdir = os.path.abspath(os.path.expanduser(workdir))
  else:
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
