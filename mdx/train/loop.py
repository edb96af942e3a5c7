"""The host loop: build state on the mesh, resume, step, log, validate, checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable

import jax
import numpy as np
from absl import logging

from mdx import runtime
from mdx.train import checkpoint, optim, steps
from mdx.train.state import TrainState, create_state, init_variables


class Evaluator:
  """Runs a model state over padded evaluation batches; returns host numpy for the valid rows."""

  def __init__(self, model, loss_fn, mesh, geometry: runtime.BatchGeometry):
    self.mesh = mesh
    self.geometry = geometry  # tasks build their evaluation batches with it
    self.global_batch = geometry.global_batch
    self._step = steps.make_eval_loss_step(model, loss_fn, mesh, geometry.global_batch)
    self._state: TrainState | None = None
    self._compiled = False  # the first batch compiles the step: say so, it is a silent minute

  @property
  def state(self) -> TrainState | None:
    return self._state

  @state.setter
  def state(self, state: TrainState | None) -> None:
    """The state evaluated, and so validated, reported and bundled: its weights' average in place
    of its weights when the run keeps one (train.ema_decay), else the state as trained."""
    average = None if state is None else optim.averaged_params(state.opt_state)
    self._state = state if average is None else state.replace(params=average)

  def run(self, batches: Iterable[dict]) -> tuple[np.ndarray, float, list[dict]]:
    """-> (logits of valid rows, mean loss over valid rows, the valid rows' host batch fields)."""
    logits, total, count, fields = [], 0.0, 0.0, []
    for batch in batches:
      global_batch = runtime.shard_batch(batch, self.mesh)
      if not self._compiled:
        logging.info("%s", _compile_note("evaluation step", "at its first batch; "))
        first_start = time.perf_counter()
      loss_sum, out = self._step(self.state, global_batch)
      if not self._compiled:
        jax.block_until_ready(loss_sum)
        logging.info(
          "first evaluation batch done in %.1f s (compiling included)",
          time.perf_counter() - first_start,
        )
        self._compiled = True
      # Gather logits and the small per-row fields of the GLOBAL batch (every host sees all rows).
      host = runtime.to_host({k: v for k, v in global_batch.items() if k != "image"})
      mask = host["mask"] > 0
      logits.append(np.asarray(runtime.to_host(out))[mask])
      total += float(loss_sum) * self.global_batch
      count += float(mask.sum())
      fields.append({k: v[mask] for k, v in host.items()})
    return np.concatenate(logits), total / max(count, 1.0), fields


def _history_step(line: str) -> float:
  """The step of a history.jsonl line; infinity for a line that does not parse (cut short)."""
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError, TypeError):
    return float("inf")


class History:
  """Scalars of a run as JSON lines in the workdir (for the report) and TensorBoard events."""

  def __init__(self, workdir: str, enabled: bool):
    self.path = os.path.join(workdir, "history.jsonl")
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops entries a killed run wrote after the checkpoint it resumes from (all of them for a
    run that starts afresh), and a last line cut short by the kill."""
    if self.enabled and os.path.exists(self.path):
      kept = [line for line in open(self.path) if _history_step(line) <= step]
      with open(self.path, "w") as f:
        f.writelines(kept)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), step)
    self._tb.flush()

  def read(self) -> list[dict]:
    return [json.loads(line) for line in open(self.path)] if os.path.exists(self.path) else []


def _format_eta(seconds: float | None) -> str:
  """'--' before a rate is measured, else the two largest units: 3d04h, 2h05m, 4m07s, 9s."""
  if seconds is None or not np.isfinite(seconds):
    return "--"
  s = int(round(max(seconds, 0.0)))
  if s >= 86400:
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
  if s >= 3600:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  if s >= 60:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s}s"


def _speed(
  steps: int, seconds: float, batch_size: int, remaining: int, pauses: float = 0.0
) -> tuple[float | None, str]:
  """-> (images/s or None, 'R img/s  ETA T') of a window of `steps` timed steps, with `remaining`
  steps and `pauses` seconds of validating and saving to go; none measured yet (the window held
  only the first step, which compiles) is '-- img/s  ETA --'."""
  if steps <= 0 or seconds <= 0:
    return None, "-- img/s  ETA --"
  rate = steps * batch_size / seconds
  return rate, f"{rate:.1f} img/s  ETA {_format_eta(remaining * seconds / steps + pauses)}"


def _validations_after(step: int, total: int, every: int) -> int:
  """How many validations (at multiples of `every`, and at `total`) come after `step`."""
  return total // every - step // every + (1 if total % every and step < total else 0)


def _compile_note(what: str, typical: str = "") -> str:
  """The line before compiling `what`: what it may cost and whether the next run pays it again
  (mdx.runtime keeps compiled programs on disk)."""
  cache = jax.config.jax_compilation_cache_dir
  kept = (
    f"seconds when {cache} holds it from an earlier run, and kept there for the next one"
    if cache
    else "the compilation cache is off"
  )
  return f"compiling the {what} ({typical}{kept})"


def build(config, task, mesh, pretrained: bool = True):
  """-> (model, tx, state on the mesh) from a fresh initialisation, plus the task's pretrained
  weights unless a checkpoint is about to replace them anyway (pretrained=False)."""
  model = task.model(bn_axis_name=runtime.DATA)
  params, batch_stats = init_variables(model, task.sample_input(), config.seed)
  if pretrained:
    params, batch_stats = task.init_variables(params, batch_stats)
  tx = optim.with_params_average(task.optimizer(params), config.train.get("ema_decay", 0.0))
  state = runtime.replicate(create_state(params, batch_stats, tx, config.seed), mesh)
  return model, tx, state


def async_checkpoints(setting: str) -> bool:
  """config.train.async_checkpoints -> whether saves are written in the background. 'auto' is on
  everywhere: resume stays exact (the data position is the step), and even on a 2-core CPU, where
  the write competes with the steps for the cores, a DenseNet-121 save costs the run ~2.6 s instead
  of the 3.9 s a synchronous save blocks (benchmarks/checkpoint.py)."""
  return setting in ("auto", "on")


def _open_checkpoints(config, workdir: str, async_save: bool = False):
  """-> (manager of WORKDIR/checkpoints, the damaged steps set aside before it started).

  Orbax reads every kept step's small files when the manager starts, and one damaged file (an
  empty metrics file of a torn copy) would stop train, eval and export alike: such steps go to
  WORKDIR/checkpoints_damaged/ first (checkpoint.set_aside_damaged); the caller says which step
  the run uses instead (_warn_set_aside)."""
  directory = os.path.join(workdir, "checkpoints")
  damaged = checkpoint.set_aside_damaged(directory, workdir)
  manager = checkpoint.make_manager(
    directory,
    keep_last=config.train.keep_last,
    best_metric=config.train.best_metric,
    async_save=async_save,
  )
  return manager, damaged


def _warn_set_aside(damaged: list, workdir: str, used: int) -> None:
  if jax.process_index() != 0:
    return
  for d in damaged:
    logging.warning(
      "Checkpoint %d of %s is damaged (%s %s); moved it to %s; this run uses checkpoint %d instead",
      d.step, workdir, d.path, d.problem, d.moved_to, used,
    )  # fmt: skip


class CheckpointError(ValueError):
  """No kept checkpoint of a workdir restores into this run's state."""


def _no_intact_left(workdir: str, damaged: list, fix: str) -> CheckpointError:
  """The one line for a workdir whose checkpoints are all damaged (set aside now or before)."""
  what = f"{len(damaged)} damaged, just moved" if damaged else "the damaged ones are"
  return CheckpointError(
    f"no intact checkpoint is left in {workdir}/checkpoints ({what} in "
    f"{workdir}/{checkpoint.DAMAGED}/, kept for you to look at); {fix}"
  )


def restore_first_intact(
  manager, candidates: list[int], state, workdir: str, move: bool = True, restore=None
):
  """-> (state, step) from the first of `candidates` (preferred first) that restores.

  A checkpoint that fails while an older one restores is damaged (a torn write, a lost file): it is
  moved to WORKDIR/checkpoints_damaged/ with a warning (move=True), so the run goes on from the
  newest intact one. If none restores, nothing is moved and the first error is raised: then the
  files are not the problem but the run (e.g. its model or optimizer changed since). `restore`
  (default checkpoint.restore) may read more of a step than its state; what it returns is
  returned in place of the state."""
  restore = restore or checkpoint.restore
  failures = []
  for step in candidates:
    try:
      restored = restore(manager, step, state)
    except Exception as e:  # Orbax raises many types for damaged files  # noqa: BLE001
      failures.append((step, e))
      continue
    if failures and move:
      if jax.process_index() == 0:
        for bad, error in failures:
          target = checkpoint.move_aside(manager, bad, workdir)
          logging.warning(
            "Checkpoint %d of %s does not restore (%s: %s); moved it to %s and continued from "
            "checkpoint %d",
            bad, workdir, type(error).__name__, _first_line(error), target, step,
          )  # fmt: skip
      runtime.barrier("damaged checkpoints moved aside")
      manager.reload()
    return restored, step
  if not failures:
    raise CheckpointError(f"no checkpoint in {workdir}/checkpoints; train first")
  step, error = failures[0]
  raise CheckpointError(
    f"no checkpoint of {workdir}/checkpoints restores into this run ({len(failures)} tried; step "
    f"{step}: {type(error).__name__}: {_first_line(error)}); if the model, optimizer or their "
    "config changed since they were written, use a new workdir"
  ) from error


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:300] if text else ""


def _open_for_training(config, workdir: str):
  """_open_checkpoints for train, which never silently starts over a run that had checkpoints:
  a CheckpointError when every one of them is damaged (raised before anything is built)."""
  manager, damaged = _open_checkpoints(
    config, workdir, async_checkpoints(config.train.async_checkpoints)
  )
  try:
    refuse_start_over(workdir, damaged)
  except CheckpointError:
    manager.close()
    raise
  return manager, damaged


def refuse_start_over(workdir: str, damaged: list = ()) -> None:
  """A CheckpointError when WORKDIR/checkpoints holds no step while checkpoints_damaged/ holds
  some (`damaged`: those set aside just now): train never silently starts over a run whose
  checkpoints were all damaged."""
  no_step = not checkpoint.step_entries(os.path.join(workdir, "checkpoints"))
  if no_step and (damaged or checkpoint.damaged_kept(workdir)):
    raise _no_intact_left(workdir, damaged, "to train this run afresh, use a new workdir")


def _state_and_position(manager, step: int, state):
  """A step's state and data position: a step whose position does not restore is damaged too."""
  return checkpoint.restore(manager, step, state), checkpoint.restore_position(manager, step)


def _resume(manager, config, workdir: str, state, damaged: list = ()):
  """-> (state, step) to continue from: the newest checkpoint whose state and data position
  restore (moving damaged newer ones aside), checked against that position; (state, 0) for a new
  run. `damaged`: the steps _open_checkpoints set aside."""
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return state, 0
  _warn_set_aside(damaged, workdir, steps[0])
  (state, position), start = restore_first_intact(
    manager, steps, state, workdir, restore=_state_and_position
  )
  if position is not None and position["global_batch"] != config.train.batch_size:
    raise ValueError(
      f"{workdir}/checkpoints/{start} was trained with config.train.batch_size="
      f"{position['global_batch']}, this run asks for {config.train.batch_size}: the data stream "
      "would not continue where it stopped; resume with the same batch size or use a new workdir"
    )
  return state, start


def train(config, workdir: str, task) -> TrainResult:
  mesh = runtime.make_mesh()
  geometry = runtime.batch_geometry(config.train.batch_size, mesh)
  eval_geometry = runtime.batch_geometry(config.eval.batch_size, mesh, "config.eval.batch_size")
  manager, damaged = _open_for_training(config, workdir)
  model, tx, state = build(config, task, mesh)
  is_chief = jax.process_index() == 0
  history = History(workdir, enabled=is_chief)
  state, start = _resume(manager, config, workdir, state, damaged)
  history.truncate_after(start)  # start 0: a run killed before its first checkpoint left lines
  if start:
    logging.info("Resumed from step %d of %s", start, workdir)
  # the stream continues at the checkpoint's global position, whatever the process count
  data = iter(task.train_data(geometry, start_step=start))

  train_step = steps.make_train_step(model, task.loss, tx, mesh, config.train.batch_size)
  evaluator = Evaluator(model, task.loss, mesh, eval_geometry)
  total = config.train.steps
  schedule = optim.make_schedule(config.train)  # for the logged learning rate
  if start >= total:
    logging.info("Nothing to train: checkpoint step %d >= train.steps %d", start, total)
  preemption = runtime.Preemption(start)
  finite = FiniteWatch(task, manager, workdir)
  window_start, window_steps = time.perf_counter(), 0
  validation_seconds = 0.0  # the last validation and save (none yet: the ETA leaves them out)
  try:
    for step in range(start + 1, total + 1):
      batch = next(data)
      if step == start + 1:
        logging.info(
          "%s",
          _compile_note("train step", "the first step; about a minute for DenseNet-121 on CPU, "),
        )
        first_start = time.perf_counter()
      state, metrics = train_step(state, runtime.shard_batch(batch, mesh))
      finite.add(step, metrics, batch.get("index"))
      if step == start + 1:  # the first step compiles: keep it out of the images/s and the ETA
        jax.block_until_ready(metrics)
        window_start = time.perf_counter()
        logging.info("first step done in %.1f s (compiling included)", window_start - first_start)
      else:
        window_steps += 1
      if step % config.train.log_every == 0 or step == total:
        finite.check()  # with the loss below: the one host sync per log window
        loss = float(metrics["loss"])
        scalars = {"train_loss": loss, "learning_rate": schedule(step)}
        rate, speed = _speed(
          window_steps,
          time.perf_counter() - window_start,
          config.train.batch_size,
          total - step,
          validation_seconds * _validations_after(step, total, config.train.checkpoint_every),
        )
        if rate is not None:
          scalars["images_per_second"] = rate
        logging.info("step %d/%d  loss %.4f  %s", step, total, loss, speed)
        history.write(step, scalars)
        window_start, window_steps = time.perf_counter(), 0
      # asked at every step by every process (jax's multi-process preemption sync needs that)
      preempted = step < total and preemption.reached(step)
      if step % config.train.checkpoint_every == 0 or step == total or preempted:
        finite.check()  # never validate or save a state that a non-finite step has touched
      if step % config.train.checkpoint_every == 0 or step == total:
        validation_start = time.perf_counter()
        evaluator.state = state
        val = task.validate(evaluator)
        if config.train.best_metric not in val:
          raise ValueError(
            f"config.train.best_metric={config.train.best_metric!r} is not one of the "
            f"task's validation metrics {sorted(val)}"
          )
        history.write(step, val)
        logging.info(
          "step %d validation: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in val.items())
        )
        position = checkpoint.data_position(step, config.train.batch_size)
        checkpoint.save(manager, step, state, position, val)
        # img/s is the training's speed: the next window starts after validating and saving,
        # whose time the ETA adds for each validation to come
        validation_seconds = time.perf_counter() - validation_start
        window_start, window_steps = time.perf_counter(), 0
      elif preempted:  # every process is at this step: save it, without validating (time is short)
        position = checkpoint.data_position(step, config.train.batch_size)
        checkpoint.save(manager, step, state, position, None)
      if preempted:
        manager.wait_until_finished()
        logging.warning("Preempted (SIGTERM): saved step %d; run the same command to resume", step)
        raise Preempted(step)
  finally:
    preemption.close()  # the process's SIGTERM handler as it was
  manager.wait_until_finished()
  return TrainResult(state=state, evaluator=evaluator, manager=manager)


class NonFiniteStep(ValueError):
  """A train step whose loss or gradient was not finite; the run stopped before saving it."""


class FiniteWatch:
  """Each step's 'finite' flag, left on the device, and the records of its batch, until the loop's
  next host sync reads them all: a NaN/Inf loss or gradient stops the run naming the first bad
  step, its records and the last good checkpoint, at no extra sync per step."""

  def __init__(self, task, manager, workdir: str):
    self.task, self.manager, self.workdir = task, manager, workdir
    self.pending: list[tuple[int, object, np.ndarray | None, object]] = []

  def add(self, step: int, metrics: dict, index) -> None:
    self.pending.append((step, metrics["finite"], index, metrics["loss"]))

  def check(self) -> None:
    if not self.pending:
      return
    flags = jax.device_get([flag for _, flag, _, _ in self.pending])
    bad = next((i for i, ok in enumerate(flags) if not ok), None)
    if bad is None:
      self.pending.clear()
      return
    step, _, index, loss = self.pending[bad]
    records = "unknown (this task's batches carry no record index)"
    if index is not None:
      records = ", ".join(self.task.record_names(np.asarray(index)))
    last = self.manager.latest_step()
    where = (
      f"the last good checkpoint is step {last} ({self.workdir}/checkpoints/{last}), which a "
      "restart resumes from"
      if last is not None
      else "no checkpoint was saved before it"
    )
    loss = float(jax.device_get(loss))
    what = (
      f"the loss is {loss}"
      if not np.isfinite(loss)
      else f"a gradient is not finite (loss {loss:.4f})"
    )
    raise NonFiniteStep(
      f"step {step}: {what}; nothing after step "
      f"{last or 0} was saved; {where}. This process's records of that batch: {records}. Check "
      "them for NaN/Inf pixels, or lower config.train.lr (or set config.train.grad_clip)"
    )


class Preempted(Exception):
  """Training stopped at a SIGTERM after saving `step`; the same command resumes from it."""

  def __init__(self, step: int):
    super().__init__(f"preempted: saved step {step}; run the same command to resume")
    self.step = step


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  evaluator: Evaluator  # compiled once; reused for the final report
  manager: object


def best_state(result: TrainResult) -> tuple[TrainState, int]:
  """The best checkpoint's state (by the validation metric), restored into the run's structure."""
  step = checkpoint.best_or_latest_step(result.manager)
  return checkpoint.restore(result.manager, step, result.state), step


def restore_for_eval(config, workdir: str, task, step: int | None = None):
  """-> (state, evaluator holding that state, step restored) from a run's workdir.

  Without `step`: the best checkpoint by the validation metric (the latest when none has metrics);
  if it does not restore, the other kept ones newest first, the damaged ones moved aside as resuming
  does (restore_first_intact). With `step`: that checkpoint or an error (ValueError when it is not
  kept, CheckpointError when it does not restore or was damaged), nothing moved by the restore.
  Either way a step with a damaged file is first set aside (_open_checkpoints). FileNotFoundError
  when the workdir has no checkpoint, CheckpointError when it has only damaged ones."""
  mesh = runtime.make_mesh()
  eval_geometry = runtime.batch_geometry(config.eval.batch_size, mesh, "config.eval.batch_size")
  manager, damaged = _open_checkpoints(config, workdir)
  kept = sorted(manager.all_steps())
  asked = next((d for d in damaged if d.step == step), None)
  if asked is not None:
    raise CheckpointError(
      f"--step={step}: checkpoint {step} of {workdir} is damaged ({asked.path} {asked.problem}) "
      f"and was moved to {workdir}/{checkpoint.DAMAGED}/; choose one of the intact steps {kept}"
    )
  if step is not None and step not in kept:
    raise ValueError(
      f"--step={step}: {workdir}/checkpoints keeps steps {kept}; "
      "choose one of them (config.train.keep_last decides how many are kept)"
    )
  best = step if step is not None else checkpoint.best_or_latest_step(manager)
  if best is None and (damaged or checkpoint.damaged_kept(workdir)):
    raise _no_intact_left(workdir, damaged, "train the run again in a new workdir")
  if best is None:
    raise FileNotFoundError(
      f"no checkpoint in {workdir}/checkpoints; train first "
      "(--mode=train) or pass the workdir of a trained run"
    )
  _warn_set_aside(damaged, workdir, best)
  model, _, state = build(config, task, mesh, pretrained=False)
  if step is not None:  # asked for by name: an error if it does not restore, nothing moved
    state, step = restore_first_intact(manager, [step], state, workdir, move=False)
  else:
    # the best, else (damaged) the others newest first
    others = [s for s in sorted(manager.all_steps(), reverse=True) if s != best]
    state, step = restore_first_intact(manager, [best, *others], state, workdir)
  evaluator = Evaluator(model, task.loss, mesh, eval_geometry)
  evaluator.state = state
  logging.info("Evaluating checkpoint step %d of %s", step, workdir)
  return state, evaluator, step
