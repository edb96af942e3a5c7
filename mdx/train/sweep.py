"""Run every variant of an ablation, each with several seeds, and report them together.

An ablation file (experiments/ablations/*.py) defines
  get_config()  -> the base ConfigDict (usually an experiment's get_config())
  get_sweep()   -> {variant name: {dotted config field: value}}
and optionally
  SEEDS         -> seeds per variant (config.seed; --seeds overrides); without it each variant runs
                   once with the config's seed
  get_report()  -> what the ablation report shows (mdx.evaluate.ablation: baseline, claim, columns,
                   figure, expect)
  get_prerequisites() -> {name: ConfigDict}: runs the variants need, e.g. a pretraining run to
                   fine-tune from. The sweep trains each one first, once (its own seed; --seeds do
                   not apply), into DIR/<name>, and a config value holding '{name}' gets that folder
                   in its place: model.init_from = "{pretrain}". A prerequisite is trained only
                   when an unfinished run names it (--only=from_scratch skips the pretraining) and
                   may name the prerequisites listed before it.
  ALLOW_IMAGE_SPLIT = True -> the leakage ablation's explicit switch: config.data.split.by='image'
                   may run (loudly; mdx.data.splits.image_split_allowed), nowhere else.
run_sweep(module, DIR) (the command: `python -m mdx sweep --config=FILE --workdir=DIR`, or
`./launch.sh sweep FILE --workdir=DIR`) trains each run into DIR/<variant> (with seeds
DIR/<variant>/seed_<s>), evaluates it, and writes
  DIR/results.md, results.json  per run the task's headline test results (classification: mean
                   AUROC with its 95% CI; segmentation: mean and per-class Dice), the best
                   validation value of config.train.best_metric and the first step reaching
                   `--reach` of it;
  DIR/ablation.md, .png, .json  (classification) the ablation report: variant x metric over seeds,
                   each variant against the baseline on the same test images, a figure, a paragraph;
                   --results_page=docs/ablations.md also puts it into that page.
`overrides` ({dotted field: value}; on the command line --config.<field>=value, as for train) change
a field in every run, prerequisites included (so --config.train.steps=2 makes a smoke test of the
whole sweep and a fine-tuned model matches its pretrained one), after the variant's own changes; a
field or value the config cannot take is an error naming the override and the closest known field
(mdx.config.resolve).
--only=a,b runs some variants; the report then leaves out, and names, the expectations about the
others, and without the baseline it has no paired comparison (it says so).
Everything is checked before the first run trains: --only and get_report(), every run's config
(base, variant, overrides and seed, resolved by mdx.config), that each model.init_from exists or is
a prerequisite's folder, and that finished runs were made with the same config.
Resuming: a finished run leaves DIR/<run>/sweep_done.json (its resolved config and wall time), so
a sweep started again skips the runs it finished and resumes the interrupted one from its
checkpoint. A mistake (an unknown field, a bad value) is a ValueError naming where it came from; on
the command line one line `error: ...` and exit status 2 (mdx.cli).
Results files: DIR's results.md, results.json and ablation.* are written together through an
mdx.outputs.OutputFolder (staged, moved in when all are written, results.md last); a file of those
names in DIR that mdx did not write is refused before the first run trains, unless overwrite
(--overwrite).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time

import jax
import ml_collections
from absl import logging

from mdx import cli, jsonio, outputs, runtime

DONE = "sweep_done.json"  # in a run's folder once it is trained, evaluated and summarised
RESULTS = ("results.md", "results.json")  # in the sweep's folder, results.md moved in last


def load_module(path: str):
  """An ablation file: get_config() (the base) and get_sweep() (the variants)."""
  from mdx import config as config_lib

  return config_lib.load_experiment(path, needs=("get_config", "get_sweep"))


def apply_overrides(config, overrides: dict, where: str = "override") -> None:
  """Sets dotted fields ('train.steps': 10). A field or section the config lacks is added, so that
  mdx.config.resolve judges it like a --config.<field> override (an unknown one is an error naming
  the closest known field, a field the chosen source or model reads is fine); a value of another
  type than the field's is a ValueError naming `where` the override came from."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for i, part in enumerate(path):
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(
          f"{where}: config.{'.'.join(path[: i + 1])} is a value ({node!r}), not a section"
        )
    try:
      node[leaf] = value
    except TypeError:  # ml_collections keeps a field's type
      raise ValueError(
        f"{where}: {value!r} does not fit config.{key}, which holds {node[leaf]!r} "
        f"({type(node[leaf]).__name__})"
      ) from None


def override_text(key: str, value) -> str:
  """An override as it is typed: --config.train.steps=2, --config.data.patch_size=16,16,16."""
  if isinstance(value, (tuple, list)):
    text = ",".join(str(v) for v in value)
  else:
    text = value if isinstance(value, str) else json.dumps(value)
  return f"--config.{key}={text}"


def _blame(overrides: dict, message: str) -> str:
  """The overrides a config error is about: those whose field it names, else all."""
  named = [k for k in overrides if f"'{k}'" in message or f"config.{k}" in message]
  return " ".join(override_text(k, overrides[k]) for k in named or overrides)


def summarize(workdir: str, config, reach: float) -> dict:
  """A variant's row: the task's headline test results (from its report) and, from the run's
  history, the best validation value of config.train.best_metric and the first step reaching
  `reach` of it (how fast a variant learns)."""
  from mdx.train import tasks

  metric = config.train.best_metric
  headline = tasks.task_class(config.task).headline(os.path.join(workdir, "report"))
  history = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
  val = [(h["step"], h[metric]) for h in history if h.get(metric) is not None]
  best = max((v for _, v in val), default=float("nan"))
  first = next((s for s, v in val if v >= reach * best), None)
  return {
    "headline": {k: {"value": v, "ci": ci} for k, (v, ci) in headline.items()},
    "metric": metric,
    "best": best,
    "steps_to_reach": first,
  }


def _cell(entry: dict) -> str:
  value, ci = entry["value"], entry["ci"]
  text = "n/a" if value is None or value != value else f"{value:.3f}"  # None or nan
  if ci is not None:
    lo, hi = ci
    text += f" [{lo:.3f}, {hi:.3f}]" if lo is not None else " [n/a]"
  return text


def write_table(results: dict, path: str, reach: float) -> None:
  """One markdown table: variant x (the task's headline results, best validation metric, speed)."""
  first = next(iter(results.values()))
  columns = list(first["headline"])
  metric = first["metric"]
  lines = [
    "| variant | " + " | ".join(columns) + f" | best {metric} | steps to {reach:.0%} of best |",
    "|---|" + "---|" * (len(columns) + 2),
  ]
  for name, r in results.items():
    cells = [_cell(r["headline"][c]) if c in r["headline"] else "" for c in columns]
    best = _cell({"value": r["best"], "ci": None})  # null: no validation value was recorded
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {best} | {r['steps_to_reach']} |")
  outputs.write_text(path, "\n".join(lines) + "\n")


def seeds_of(module, given=None) -> list[int] | None:
  """The seeds each variant runs with: `given` (--seeds), else the file's SEEDS, else None (one
  run with the config's seed, in DIR/<variant>)."""
  seeds = given if given else getattr(module, "SEEDS", None)
  if seeds is None:
    return None
  try:
    out = [int(s) for s in seeds]
  except (TypeError, ValueError):
    raise ValueError(f"seeds {seeds!r}: give whole numbers, e.g. --seeds=0,1,2") from None
  if not out or len(set(out)) != len(out) or min(out) < 0:
    raise ValueError(f"seeds {seeds!r}: give distinct whole numbers >= 0, e.g. --seeds=0,1,2")
  return out


def prerequisites_of(module) -> dict:
  """{name: ConfigDict} of the ablation's get_prerequisites() (see the module docstring); {}
  without it. Names are folders beside the variants' and must differ from them."""
  if not hasattr(module, "get_prerequisites"):
    return {}
  where = f"{getattr(module, '__file__', module.__name__)} get_prerequisites()"
  pre = module.get_prerequisites()
  if not isinstance(pre, dict) or not all(
    isinstance(c, ml_collections.ConfigDict) for c in pre.values()
  ):
    raise ValueError(f"{where} must return {{name: ConfigDict}}, e.g. {{'pretrain': get_config()}}")
  bad = [n for n in pre if not n or not PLACEHOLDER_NAME.fullmatch(n)]
  if bad:
    raise ValueError(f"{where}: names {bad} must be folder names of letters, digits, _ and -")
  clash = [n for n in pre if n in module.get_sweep()]
  if clash:
    raise ValueError(f"{where}: {clash} are also variant names; rename them (both are folders)")
  return pre


def plan(module, seeds: list[int] | None, only=None) -> list[tuple[str, str, int | None, dict]]:
  """(run name, variant, seed, overrides) of every run, variant by variant."""
  sweep = module.get_sweep()
  unknown = [v for v in only or () if v not in sweep]
  if unknown:
    raise ValueError(f"--only={','.join(unknown)}: no such variant; the variants are {list(sweep)}")
  bad = [v for v in sweep if not v or "/" in v or v.startswith(".")]
  if bad:
    raise ValueError(f"variant names {bad} must be folder names (no '/', not empty)")
  runs = []
  for variant, changes in sweep.items():
    if only and variant not in only:
      continue
    for seed in seeds or [None]:
      name = variant if seed is None else f"{variant}/seed_{seed}"
      runs.append((name, variant, seed, changes))
  return runs


PLACEHOLDER_NAME = re.compile(r"[A-Za-z_][\w-]*")
PLACEHOLDER = re.compile(r"\{(" + PLACEHOLDER_NAME.pattern + r")\}")


def substitute(config, folders: dict, where: str, prefix: str = "") -> set[str]:
  """Replaces '{name}' in the config's strings by the prerequisite's folder (`folders`: name ->
  path); returns the names used. A '{name}' that is no prerequisite is an error naming the field."""
  used = set()
  for key, value in config.items():
    field = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      used |= substitute(value, folders, where, field + ".")
    elif isinstance(value, str) and PLACEHOLDER.search(value):
      unknown = [n for n in PLACEHOLDER.findall(value) if n not in folders]
      if unknown:
        known = f"the prerequisites here are {list(folders)}" if folders else "there are none"
        raise ValueError(
          f"{where}: config.{field}={value!r} names {{{unknown[0]}}}, which is no prerequisite "
          f"run ({known}; the ablation's get_prerequisites() declares them, in order)"
        )
      used |= set(PLACEHOLDER.findall(value))
      config[key] = PLACEHOLDER.sub(lambda m: folders[m.group(1)], value)
  return used


@dataclasses.dataclass
class Planned:
  """One run of a sweep, its config checked before anything trains."""

  name: str  # its folder under the sweep's workdir
  variant: str | None  # None: a prerequisite
  seed: int | None
  config: ml_collections.ConfigDict  # every change applied (mdx.train.run resolves it again)
  resolved: ml_collections.ConfigDict
  uses: set[str]  # the prerequisites it names
  done: dict | None  # its sweep_done.json when an earlier invocation finished it


@dataclasses.dataclass
class Plan:
  """What a sweep will do: the prerequisites an unfinished run needs, then the variant runs."""

  prerequisites: list[Planned]
  runs: list[Planned]
  name: str  # the ablation's, from its file name
  variants: list[str]  # all its variants, selected or not
  report: dict | None  # its get_report() (checked), None when the sweep writes no ablation report


def configure(make, changes: dict, overrides: dict, seed, folders: dict, where: str, on=""):
  """A run's (config, resolved config, prerequisites it names): `make()` (its base config) with the
  `overrides` (the command line's --config.<field>), then the variant's `changes` on top, the seed
  and the prerequisites' `folders` in place of their '{name}'. A mistake names its source: `where`
  (the ablation file's part) or the override (`on`: which run it reached)."""
  from mdx import config as config_lib

  config = make()
  for key, value in overrides.items():
    apply_overrides(config, {key: value}, override_text(key, value) + on)
  apply_overrides(config, changes, where)
  if seed is not None:
    config.seed = seed
  uses = substitute(config, folders, where)
  try:
    return config, config_lib.resolve(config), uses
  except ValueError as e:
    error = cli.one_line(e)
  if overrides:  # resolved once more on the error path only (resolving may log warnings)
    alone = make()
    apply_overrides(alone, changes, where)
    try:
      config_lib.resolve(alone)
    except ValueError as e:
      error = cli.one_line(e)
    else:
      raise ValueError(f"{_blame(overrides, error)}{on}: {error}") from None
  raise ValueError(f"{where}: {error}") from None


def _warn_overridden(overrides: dict, changes: dict, variant: str) -> None:
  """One warning when a variant sets a field an override sets too: the variant's value holds (the
  overrides change the base, and a variant is a change of the base)."""
  within = lambda a, b: a == b or a.startswith(b + ".")
  both = [k for k in overrides if any(within(k, c) or within(c, k) for c in changes)]
  if both:
    logging.warning(
      "sweep: variant %r sets %s itself; its own value holds over %s",
      variant,
      ", ".join(f"config.{c}" for c in changes if any(within(k, c) or within(c, k) for k in both)),
      " ".join(override_text(k, overrides[k]) for k in both),
    )


def _check_init_from(run: Planned, ready: list[str], where: str) -> None:
  """A fine-tuning run's pretrained weights must be there or come from a prerequisite trained
  before it (`ready`: their folders); else it would fail after the runs before it trained."""
  path = run.resolved.model.get("init_from") if "model" in run.resolved else None
  if not path or run.done is not None or path in ready or os.path.exists(path):
    return
  raise ValueError(
    f"{where}: config.model.init_from={path!r} does not exist; train the pretraining run there "
    f"first (./launch.sh train EXPERIMENT --workdir={path}), point it elsewhere "
    "(--config.model.init_from=DIR), or let the ablation train it (get_prerequisites() and "
    "'{name}', see mdx.train.sweep)"
  )


def prepare(
  module, workdir: str, *, only=None, overrides=None, seeds=None, overwrite: bool = False
) -> Plan:
  """Every run of the sweep, checked before anything trains: --only and the report spec, every
  run's resolved config, each model.init_from, finished runs against their configs (a ValueError
  naming the run and the fix), and that the results files would replace no file in workdir that
  mdx did not write (an OutputError naming it, unless overwrite). Call inside
  image_split_switch(module)."""
  overrides = dict(overrides or {})
  seeds = seeds_of(module, seeds)
  file = getattr(module, "__file__", module.__name__)
  pre = prerequisites_of(module)
  # absolute, as mdx.config.resolve makes model.init_from: '{pretrain}' must name the same folder
  folders = {n: os.path.join(os.path.abspath(os.path.expanduser(workdir)), n) for n in pre}
  runs = []
  for name, variant, seed, changes in plan(module, seeds, only):
    where = f"{file} variant {variant!r}"
    if not runs or runs[-1].variant != variant:
      _warn_overridden(overrides, changes, variant)
    config, resolved, uses = configure(module.get_config, changes, overrides, seed, folders, where)
    done = finished(os.path.join(workdir, name), resolved)
    runs.append(Planned(name, variant, seed, config, resolved, uses, done))
  needed = set().union(*(r.uses for r in runs if r.done is None))
  prerequisites = []
  names = list(pre)
  for i in reversed(range(len(names))):  # a needed prerequisite's own ones are needed too
    name = names[i]
    if name not in needed:
      continue
    earlier = {n: folders[n] for n in names[:i]}  # it may name those listed before it
    where = f"{file} get_prerequisites()[{name!r}]"
    config, resolved, uses = configure(
      lambda name=name: prerequisites_of(module)[name],  # a fresh config per call
      {},
      overrides,
      None,
      earlier,
      where,
      f" (on the prerequisite run {name!r})",
    )
    done = finished(folders[name], resolved)
    needed |= uses if done is None else set()
    prerequisites.insert(0, Planned(name, None, None, config, resolved, uses, done))
  ready = []
  for run in prerequisites:
    _check_init_from(run, ready, f"{file} get_prerequisites()[{run.name!r}]")
    ready.append(folders[run.name])
  for run in runs:
    _check_init_from(run, ready, f"{file} run {run.name!r}")
  variants = list(module.get_sweep())
  report = None
  if runs and runs[0].resolved.task == "classification":
    from mdx.evaluate import ablation

    report = getattr(module, "get_report", dict)()
    selected = list(dict.fromkeys(r.variant for r in runs))
    spec = ablation.check_spec(report, variants, selected)
    if not spec["paired"]:
      logging.warning(
        "sweep: the baseline %r is not in --only: the report will have no paired comparison "
        "(add it to --only to compare)",
        spec["baseline"],
      )
  results_folder(workdir, report is not None, overwrite)  # refuses a user's results.md now
  name = os.path.splitext(os.path.basename(file))[0]
  return Plan(prerequisites, runs, name, variants, report)


def results_folder(workdir: str, ablation: bool, overwrite: bool = False) -> outputs.OutputFolder:
  """The sweep folder's results files (RESULTS, and the ablation report's when `ablation`) as a
  claimed OutputFolder: an OutputError naming a file of theirs that mdx did not write, unless
  overwrite."""
  from mdx.evaluate import ablation as ablation_lib

  folder = outputs.OutputFolder(workdir, "sweep", overwrite=overwrite, completes=RESULTS[:1])
  files = RESULTS + (ablation_lib.LAYOUT.files if ablation else ())
  folder.claim(files=files)
  return folder


def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _first_difference(a, b, path: str = "") -> str:
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
  return f"{path}: {a!r} then, {b!r} now"


def finished(run_dir: str, config) -> dict | None:
  """The run's sweep_done.json when it finished with this resolved config; None when it did not
  finish; a ValueError when it finished with another config (its results would not be this
  one's)."""
  path = os.path.join(run_dir, DONE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    done = json.load(f)
  now = jsonio.jsonable(_config_json(config))  # as sweep_done.json holds it
  if done["config"] != now:
    raise ValueError(
      f"{run_dir} holds a finished run of another config ({_first_difference(done['config'], now)}"
      "); remove that folder or use another --workdir"
    )
  return done


def image_split_switch(module):
  """The leakage ablation's explicit switch (ALLOW_IMAGE_SPLIT = True in its file), else nothing."""
  if getattr(module, "ALLOW_IMAGE_SPLIT", False) is not True:
    return contextlib.nullcontext()
  from mdx.data import splits

  return splits.image_split_allowed(f"ablation {getattr(module, '__file__', module.__name__)}")


def _duration(seconds: float) -> str:
  return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run_sweep(
  module,
  workdir: str,
  *,
  only=None,
  reach: float = 0.95,
  overrides: dict | None = None,
  seeds: list[int] | None = None,
  command: str = "",
  results_page: str | None = None,
  bootstrap: int = 1000,
  planned: Plan | None = None,
  overwrite: bool = False,
) -> dict:
  """Trains the prerequisites an unfinished run needs, then trains and evaluates every run of an
  ablation module into workdir (skipping runs a previous invocation finished); writes
  results.{md,json} and, for classification, the ablation report; returns {run name: row}.
  Everything is checked first (prepare; `planned` when the caller already did; overwrite: replace
  results files in workdir that mdx did not write). Flag-free (tests call it)."""
  from mdx.train import run as runner

  start = time.perf_counter()
  results, walls, reused = {}, {}, 0
  with image_split_switch(module):
    planned = planned or prepare(
      module, workdir, only=only, overrides=overrides, seeds=seeds, overwrite=overwrite
    )
    for run in planned.prerequisites + planned.runs:
      run_dir = os.path.join(workdir, run.name)
      label = run.name if run.variant is not None else f"prerequisite {run.name}"
      done = run.done
      if done is None:
        t0 = time.perf_counter()
        runner.run(run.config, run_dir, "train")
        done = {"config": _config_json(run.resolved)}
        if run.variant is not None:  # a prerequisite is no row of the results
          done.update(summarize(run_dir, run.resolved, reach))
        done["wall_s"] = time.perf_counter() - t0
        if jax.process_index() == 0:  # written last (whole): the run counts as finished only now
          outputs.write_json(os.path.join(run_dir, DONE), jsonio.jsonable(done))
      else:
        reused += 1
        logging.info("sweep: %s finished before (%s); not run again", label, run_dir)
      walls[run.name] = done["wall_s"]
      if run.variant is None:
        if jax.process_index() == 0:
          print(f"sweep: {label}: {run_dir} ({_duration(done['wall_s'])})", flush=True)
        continue
      results[run.name] = {k: done[k] for k in ("headline", "metric", "best", "steps_to_reach")}
      if jax.process_index() == 0:
        print(f"sweep: {run.name}: {results[run.name]}", flush=True)
  if jax.process_index() == 0 and results:  # every process holds the same results; one writes
    # all results files staged and moved in together: a killed sweep leaves no results.md that
    # disagrees with its ablation report
    folder = results_folder(workdir, planned.report is not None, overwrite)
    written = None
    with folder:
      outputs.write_json(folder.path("results.json"), jsonio.jsonable(results))
      write_table(results, folder.path("results.md"), reach)
      if planned.report is not None:  # classification
        wall = f"{_duration(sum(walls.values()))} for {len(walls)} runs"
        if planned.prerequisites:
          wall += f" (prerequisite {', '.join(r.name for r in planned.prerequisites)} included)"
        wall += f" on {_where()}"
        if reused:  # the runs' own times count; say that some came from an earlier invocation
          this = _duration(time.perf_counter() - start)
          wall += f" ({reused} of them trained by an earlier invocation; this one took {this})"
        written = ablation_report(planned, folder, command, wall, bootstrap)
      folder.commit()
    if written is not None and results_page:  # its figure is in place now
      from mdx.evaluate import ablation

      ablation.update_results_page(results_page, planned.name, written)
  runtime.barrier("sweep results written")
  return results


def _where() -> str:
  device = jax.devices()[0]
  cores = f", {os.cpu_count()} CPU cores" if device.platform == "cpu" else ""
  return f"{jax.device_count()} {device.platform} device(s){cores}"


def ablation_report(planned: Plan, folder: outputs.OutputFolder, command, wall, bootstrap) -> dict:
  """The ablation report (mdx.evaluate.ablation) over the sweep's variant runs, staged in the
  sweep's entered results folder (results_folder)."""
  from mdx.evaluate import ablation

  runs: dict = {}
  for run in planned.runs:
    seed = 0 if run.seed is None else run.seed
    run_dir = os.path.join(folder.folder, run.name)
    runs.setdefault(run.variant, {})[seed] = ablation.load_run(run_dir)
  return ablation.write_report(
    folder,
    planned.name,
    runs,
    planned.report,
    command=command,
    wall=wall,
    n_resamples=bootstrap,
    variants=planned.variants,
  )
