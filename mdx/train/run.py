"""One run of an experiment: train (then report), eval, export or predict. Flag-free, so sweeps and
tests call it.

A run owns its config: train writes the resolved config into WORKDIR/config.json, and eval, export
and a resumed train read it back (run_config, train_config) instead of trusting the command line,
which may lack the overrides the run was trained with (another split, another image size: a report
and a bundle that describe a model nobody trained, or a resumed run that silently continues on
other data). The command line may change what is reported (eval.*) and how many loader processes
read the data, and a resumed train also how long it trains and how it logs and keeps checkpoints; a
field it types that would change the run itself is refused.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

import ml_collections
from absl import logging

from mdx import outputs
from mdx.train import workdir_lock

if TYPE_CHECKING:
  from mdx.train import tasks

CONFIG = "config.json"
# What eval and export take from the command line over the run's config: the report's settings,
# and the loader processes (the batches are the same with any number: mdx.data.pipeline).
EVALUATION_FIELDS = ("eval", "data.workers", "data.prefetch")
# What a resumed train takes from the command line besides: how long it trains (the learning-rate
# schedule is then laid over the new count: _log_new_steps) and how it logs and keeps checkpoints.
# Anything else would continue the checkpoints' training on other terms (data, model, optimizer).
RESUME_FIELDS = (
  *EVALUATION_FIELDS,
  "train.steps",
  "train.log_every",
  "train.keep_last",
  "train.async_checkpoints",
)
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
  """WORKDIR/config.json, atomically: a kill never leaves half a config that every later command
  would refuse."""
  outputs.write_text(
    os.path.join(workdir, CONFIG), config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
  )


# ------------------------------------------------------------------------ the run's own config
def load_run_config(workdir: str, mode: str = "eval") -> ml_collections.ConfigDict:
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
  # train reads it only beside checkpoints, which need it: training again there cannot help
  fix = (
    "the run's checkpoints were trained with it: restore it, or train a new run in another "
    "--workdir"
    if mode == "train"
    else "train writes it: restore it or train again"
  )
  try:
    with open(path) as f:
      stored = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not JSON ({e}); {fix}") from e
  if not isinstance(stored, dict):
    raise ValueError(f"{path} holds no config (a JSON object); {fix}")
  try:
    return config_lib.resolve(ml_collections.ConfigDict(config_lib.as_tuples(stored)))
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


def _allowed_text(fields) -> str:
  return ", ".join(f + ".*" if f == "eval" else f for f in fields)


def _merge(asked, stored, overrides, mode: str, path: str) -> ml_collections.ConfigDict:
  """The run's config `stored` with what `asked` (the command line's, resolved) may change in
  `mode`: EVALUATION_FIELDS as the command line's config has them, typed or not (eval.* says what
  to report now), and the other RESUME_FIELDS of a resumed train only when typed. A typed field
  that may not change and differs from the run's is a ValueError naming it and both values."""
  from mdx import config as config_lib

  allowed = RESUME_FIELDS if mode == "train" else EVALUATION_FIELDS
  if asked.task != stored.task:
    raise ValueError(
      f"config.task={asked.task!r} on the command line, {stored.task!r} in {path}: give the "
      "experiment file the run was trained with"
      + (" (or train a new run in another --workdir)" if mode == "train" else "")
    )
  ours, theirs = flat_config(asked), flat_config(stored)
  # unset: what the run found in its data (the source's number of classes, its plan's fields)
  for field in ("model.num_classes", *config_lib.planned_fields(asked.task)):
    if field in ours and ours[field] is None:
      del ours[field]
      ours.update({k: v for k, v in theirs.items() if k == field or k.startswith(field + ".")})
  fields = sorted(set(ours) | set(theirs))
  changed = [f for f in fields if ours.get(f, _UNSET) != theirs.get(f, _UNSET)]
  typed = changed if overrides is None else [f for f in changed if _under(f, overrides)]
  refused = [f for f in typed if not _under(f, allowed)]
  if refused:
    first = refused[0]
    more = f" (also {', '.join(refused[1:])})" if len(refused) > 1 else ""
    rule = (
      f"train resumes the run's checkpoints with its config; only {_allowed_text(allowed)} may "
      "change on resume"
      if mode == "train"
      else f"{mode} uses the run's config; only {_allowed_text(allowed)} may differ"
    )
    raise ValueError(
      f"config.{first}={_shown(ours.get(first, _UNSET))} on the command line, "
      f"{_shown(theirs.get(first, _UNSET))} in {path}{more}: {rule} (drop the override, or train "
      "a new run in another --workdir)"
    )
  taken = [f for f in changed if _under(f, EVALUATION_FIELDS) or f in typed]
  yielded = [f for f in changed if f not in taken]

  def listed(names):
    return ", ".join(
      f"{f}={_shown(ours.get(f, _UNSET))} (run: {_shown(theirs.get(f, _UNSET))})" for f in names
    )

  if mode == "train":
    logging.info(
      "train resumes the run with its config %s%s%s",
      path,
      f"; from this command's config: {listed(taken)}" if taken else "",
      f"; the experiment file differs in {listed(yielded)} (the run's values kept)"
      if yielded
      else "",
    )
  elif yielded:
    logging.info(
      "%s uses the run's config %s; the experiment file differs in %s (the run's values kept)",
      mode,
      path,
      listed(yielded),
    )
  with stored.unlocked():
    stored.eval = ml_collections.ConfigDict(asked.eval)
    stored.data.workers, stored.data.prefetch = asked.data.workers, asked.data.prefetch
    for f in taken:
      if f.startswith("train."):  # the train fields of RESUME_FIELDS are leaves of config.train
        leaf = f.split(".", 1)[1]
        stored.train[leaf] = asked.train[leaf]
  return config_lib.resolve(stored)


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
  return _merge(config_lib.resolve(config), stored, overrides, mode, os.path.join(workdir, CONFIG))


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps saved in WORKDIR/checkpoints, read from the folder names without opening Orbax (a
  finished save is the folder '<step>'; one in flight or torn is '<step>.orbax-checkpoint-tmp-*',
  which a run does not resume from)."""
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(
    int(name)
    for name in os.listdir(folder)
    if name.isdigit() and os.path.isdir(os.path.join(folder, name))
  )


def train_config(
  workdir: str, config=None, overrides: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
  """The config train uses. A workdir holding a run to resume (config.json and checkpoints): the
  run's own config, with the command line's RESUME_FIELDS over it (eval.* and the loader as eval
  takes them; train.steps, log_every, keep_last and async_checkpoints when typed), so a resumed run
  continues on the data, model and optimizer its checkpoints were trained with; a typed field
  outside them that differs is a ValueError naming it and both values, raised before anything is
  built. Otherwise `config`: a new workdir, or one whose run stopped before its first checkpoint
  (nothing was trained; its config.json is rewritten). overrides as in run_config (None: every
  field of `config` counts as typed, so a sweep resumes an interrupted run only with its config).
  """
  from mdx import config as config_lib

  workdir = os.path.abspath(os.path.expanduser(workdir))
  path = os.path.join(workdir, CONFIG)
  saved = checkpoint_steps(workdir) if os.path.isfile(path) else []
  if not saved:
    from mdx.train import loop

    loop.refuse_start_over(workdir)  # before config.json is rewritten: its steps were set aside
    if config is None:
      raise ValueError(
        f"train on {workdir} needs a config: it holds no run to resume (no {CONFIG} with "
        "checkpoints)"
      )
    if os.path.isfile(path):
      logging.info(
        "%s holds %s but no checkpoint (its run stopped before the first save): nothing was "
        "trained, so train starts a new run with this command's config and rewrites %s",
        workdir,
        CONFIG,
        CONFIG,
      )
    return config_lib.resolve(config)
  stored = load_run_config(workdir, mode="train")
  if config is None:
    return stored
  trained = copy.deepcopy(stored.train)  # _merge changes `stored`
  merged = _merge(config_lib.resolve(config), stored, overrides, "train", path)
  if merged.train.steps != trained.steps:
    _log_new_steps(trained, merged.train, saved[-1])
  return merged


def _log_new_steps(before, after, latest: int) -> None:
  """One line on what a changed train.steps does to a resumed run: the schedule (mdx.train.optim)
  is a function of train.steps, evaluated at the optimizer's own step count, which the checkpoint
  restores; the data stream is a function of the step alone (mdx.data.pipeline)."""
  from mdx.train import optim

  old, new = before.steps, after.steps
  head = f"train.steps {old} -> {new}"
  if new <= latest:
    logging.info(
      "%s: the run's latest checkpoint (step %d) is at or past it, so nothing is trained; the "
      "report and bundle come from its kept checkpoints",
      head,
      latest,
    )
    return
  if after.schedule == "constant":
    logging.info(
      "%s: the run continues from its latest checkpoint (step %d) to step %d; its learning rate "
      "is constant (%g), so these steps train as a %d-step run from the start would have",
      head,
      latest,
      new,
      after.lr,
      new,
    )
    return
  was, now = float(optim.make_schedule(before)(latest)), float(optim.make_schedule(after)(latest))
  logging.info(
    "%s: the run continues from its latest checkpoint (step %d), and its %s learning-rate "
    "schedule is now laid over %d steps: from step %d the rate follows the %d-step curve (%.3g "
    "there, where the %d-step schedule the checkpoint was trained with gave %.3g) down to 0 at "
    "step %d, so this is not the run %d steps from the start would have been (this run's first %d "
    "steps followed the %d-step curve)",
    head,
    latest,
    after.schedule,
    new,
    latest + 1,
    new,
    now,
    old,
    was,
    new,
    new,
    latest,
    old,
  )


def report(
  task, evaluator, workdir: str, history: list[dict], out_dir: str, overwrite: bool = False
) -> tasks.Report:
  """The task's report into out_dir, written by process 0 alone: every process evaluates (the
  predictions are gathered across processes), the others write into a scratch folder they delete.
  Returns the task's mdx.train.tasks.Report (its folder out_dir on every process), which
  write_bundle takes. overwrite: replace files in out_dir that mdx did not write."""
  import dataclasses

  import jax

  if jax.process_index() == 0:
    return task.report(evaluator, workdir, history, out_dir=out_dir, overwrite=overwrite)
  scratch = tempfile.mkdtemp(prefix="mdx-report-")
  try:
    reported = task.report(evaluator, workdir, history, out_dir=os.path.join(scratch, "report"))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return dataclasses.replace(reported, folder=out_dir)


def write_bundle(
  task,
  evaluator,
  reported: tasks.Report,
  workdir: str,
  step: int,
  config,
  directory: str,
  overwrite: bool = False,
) -> str:
  """The state `reported` (what report returned) as a bundle (mdx.inference.bundle): everything
  predict needs. overwrite: replace files in `directory` that mdx did not write."""
  import jax

  from mdx import runtime
  from mdx.inference import bundle as bundle_lib

  spec, variables, samples = task.bundle_contents(evaluator, reported)
  variables = runtime.to_host(variables)  # every process joins the gather; process 0 writes
  spec["provenance"].update(step=int(step), workdir=workdir, config=config.to_dict())
  if jax.process_index() == 0:
    bundle_lib.write(directory, spec, variables, bootstrap=samples, overwrite=overwrite)
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
  overwrite: bool = False,
) -> str | None:
  """Runs one mode; returns the report directory (train, eval), the bundle (export) or the output
  folder (predict).

  train: train, then report and bundle the best checkpoint (WORKDIR/report, /bundle); on a workdir
  holding a run (config.json and checkpoints) it resumes that run with its own config, taking from
  `config` only what a resume may change (train_config: a typed override of anything else is
  refused). eval: report and bundle the best checkpoint again. export: a bundle of checkpoint
  `step` (default the best) into output_dir (default WORKDIR/bundle-step-N), its report beside it.
  eval and export use the run's WORKDIR/config.json with `config`'s evaluation fields over it
  (run_config: a typed override of anything else is refused; `overrides` as there). predict: the
  run's bundle on the files of input_dir, needing neither a config (None will do), the training
  data nor a checkpoint.

  What a mode writes for the user (export's bundle and its report, train's and eval's WORKDIR/bundle
  and report, predict's output) never replaces a file mdx did not write there unless overwrite
  (mdx.outputs): the bundle and report folders are claimed before any checkpoint is restored or
  anything evaluated (an export's default folder, which names the best step, once that step is
  restored), so a refusal costs a second.
  """
  import jax

  # before anything is built: a refused override leaves the workdir as it was
  if mode in ("eval", "export"):
    config = run_config(workdir, config, overrides, mode)
  elif mode == "train":
    config = train_config(workdir, config, overrides)
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
    return predict_files.predict(bundle_dir, input_dir, output_dir, overwrite=overwrite)["output"]
  with workdir_lock.hold(workdir):  # one run per workdir (train, eval and export write into it)
    return _run_with_workdir(config, workdir, mode, output_dir, step, overwrite)


def claim_outputs(config, bundle_dir: str, report_dir: str | None, overwrite: bool) -> None:
  """Refuses now, in one line (mdx.outputs.OutputError), a bundle or report that would replace a
  file mdx did not write: the same files and folders their writers claim again when writing
  (mdx.inference.bundle.claim, mdx.evaluate.report.layout). Every process checks, so all stop
  together."""
  from mdx.evaluate import report as report_lib
  from mdx.inference import bundle as bundle_lib

  bundle_lib.claim(bundle_dir, overwrite)
  if report_dir is None:
    return
  try:  # a run's report layouts are named by its task; a task without one claims in its report
    layout = report_lib.layout(config.task, split=config.eval.split)
  except ValueError:
    return
  layout.claim(report_dir, "report", overwrite=overwrite)


def _run_with_workdir(
  config, workdir: str, mode: str, output_dir: str | None, step: int | None, overwrite: bool
):
  import jax

  from mdx.train import loop, tasks

  # Where this run writes for the user, checked before any data, checkpoint or evaluation.
  own_bundle, own_report = os.path.join(workdir, "bundle"), os.path.join(workdir, "report")
  exported = None
  if mode == "export" and (output_dir or step is not None):
    exported = os.path.abspath(output_dir or os.path.join(workdir, f"bundle-step-{step}"))
    claim_outputs(config, exported, exported + "-report", overwrite)
  elif mode == "eval" or (mode == "train" and config.eval.after_train):
    claim_outputs(config, own_bundle, own_report, overwrite)
  if jax.process_index() == 0 and mode == "train":
    write_config(config, workdir)
  before = flat_config(config)
  # fills what only the data tells: the number of classes of a folder tree, a segmentation plan
  task = tasks.make_task(config, workdir)
  if jax.process_index() == 0 and mode == "train" and flat_config(config) != before:
    write_config(config, workdir)  # config.json states what the model was built with
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
    bundle_dir = exported or os.path.join(workdir, f"bundle-step-{step}")
    if exported is None:  # the best step's folder: known once restored, claimed before evaluating
      claim_outputs(config, bundle_dir, bundle_dir + "-report", overwrite)
    reported = report(task, evaluator, workdir, history, bundle_dir + "-report", overwrite)
    return write_bundle(task, evaluator, reported, workdir, step, config, bundle_dir, overwrite)
  reported = report(task, evaluator, workdir, history, own_report, overwrite)
  write_bundle(task, evaluator, reported, workdir, step, config, own_bundle, overwrite)
  if jax.process_index() == 0:
    outputs.write_json(os.path.join(workdir, "evaluated_checkpoint.json"), {"step": int(step)})
  return reported.folder
