"""Run every variant of an ablation, each with several seeds, and report them together.

An ablation file (experiments/ablations/*.py) defines
  get_config()  -> the base ConfigDict (usually an experiment's get_config())
  get_sweep()   -> {variant name: {dotted config field: value}}
and optionally
  SEEDS         -> seeds per variant (config.seed; --seeds overrides); without it each variant runs
                   once with the config's seed
  get_report()  -> what the ablation report shows (mdx.evaluate.ablation: baseline, claim, columns,
                   figure, expect)
  ALLOW_IMAGE_SPLIT = True -> the leakage ablation's explicit switch: config.data.split.by='image'
                   may run (loudly; mdx.data.splits.image_split_allowed), nowhere else.
`python -m mdx.train.sweep --ablation=FILE --workdir=DIR` trains each run into DIR/<variant> (with
seeds DIR/<variant>/seed_<s>), evaluates it, and writes
  DIR/results.md, results.json  per run the task's headline test results (classification: mean
                   AUROC with its 95% CI; segmentation: mean and per-class Dice), the best
                   validation value of config.train.best_metric and the first step reaching
                   `--reach` of it;
  DIR/ablation.md, .png, .json  (classification) the ablation report: variant x metric over seeds,
                   each variant against the baseline on the same test images, a figure, a paragraph;
                   --results_page=docs/ablations.md also puts it into that page.
Resuming: a finished run leaves DIR/<run>/sweep_done.json (its resolved config and wall time), so
a sweep started again skips the runs it finished and resumes the interrupted one from its
checkpoint. A user's mistake (a missing ablation file, an unknown field) is one line `error: ...`
and exit status 2 (mdx.cli).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time

import jax
from absl import app, flags, logging

from mdx import cli, runtime

_ABLATION = flags.DEFINE_string(
  "ablation", None, "Ablation file with get_config() and get_sweep()."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one workdir per variant.")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants (default: all).")
_REACH = flags.DEFINE_float("reach", 0.95, "Report the first step reaching this share of the best.")
_OVERRIDE = flags.DEFINE_multi_string("set", [], "Extra override for every variant: field=value.")
_SEEDS = flags.DEFINE_list(
  "seeds", None, "Seeds per variant, e.g. 0,1,2 (default: the ablation file's SEEDS)."
)
_PAGE = flags.DEFINE_string(
  "results_page", None, "Also put the ablation report into this page, e.g. docs/ablations.md."
)
_PAIRED = flags.DEFINE_integer(
  "paired_resamples", 1000, "Patient resamples of the paired comparison against the baseline."
)

DONE = "sweep_done.json"  # in a run's folder once it is trained, evaluated and summarised


def load_module(path: str):
  """An ablation file: get_config() (the base) and get_sweep() (the variants)."""
  from mdx import config as config_lib

  return config_lib.load_experiment(path, needs=("get_config", "get_sweep"))


def apply_overrides(config, overrides: dict) -> None:
  """Sets dotted fields ('train.steps': 10); a field the config lacks is an error naming it."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for part in path:
      if part not in node:
        raise ValueError(f"override {key!r}: config has no section {part!r}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"override {key!r}: config has no field {leaf!r}")
    node[leaf] = value


def parse_value(text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


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
  text = "n/a" if value is None else f"{value:.3f}"
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
    lines.append(
      f"| {name} | " + " | ".join(cells) + f" | {r['best']:.3f} | {r['steps_to_reach']} |"
    )
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


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
  now = _config_json(config)
  if done["config"] != now:
    raise ValueError(
      f"{run_dir} holds a finished run of another config ({_first_difference(done['config'], now)}"
      "); remove that folder or use another --workdir"
    )
  return done


def _image_split_switch(module):
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
) -> dict:
  """Trains and evaluates every run of an ablation module into workdir (skipping runs a previous
  invocation finished); writes results.{md,json} and, for classification, the ablation report;
  returns {run name: row}. Flag-free (tests call it)."""
  from mdx import config as config_lib
  from mdx.train import run as runner

  start = time.perf_counter()
  seeds = seeds_of(module, seeds)
  results, walls, reused, task = {}, {}, 0, None
  with _image_split_switch(module):
    for name, _, seed, changes in plan(module, seeds, only):
      config = module.get_config()
      apply_overrides(config, changes)
      apply_overrides(config, overrides or {})
      if seed is not None:
        config.seed = seed
      resolved = config_lib.resolve(config)
      task = resolved.task
      run_dir = os.path.join(workdir, name)
      done = finished(run_dir, resolved)
      if done is None:
        t0 = time.perf_counter()
        runner.run(config, run_dir, "train")
        summary = summarize(run_dir, resolved, reach)
        done = {"config": _config_json(resolved), "wall_s": time.perf_counter() - t0, **summary}
        if jax.process_index() == 0:  # written last: the run counts as finished only now
          with open(os.path.join(run_dir, DONE), "w") as f:
            json.dump(done, f, indent=1)
      else:
        reused += 1
        logging.info("sweep: %s finished before (%s); not run again", name, run_dir)
      results[name] = {k: done[k] for k in ("headline", "metric", "best", "steps_to_reach")}
      walls[name] = done["wall_s"]
      if jax.process_index() == 0:
        print(f"sweep: {name}: {results[name]}", flush=True)
  if jax.process_index() == 0 and results:  # every process holds the same results; one writes
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    write_table(results, os.path.join(workdir, "results.md"), reach)
    if task == "classification":
      wall = f"{_duration(sum(walls.values()))} for {len(walls)} runs on {_where()}"
      if reused:  # the runs' own times count; say that some came from an earlier invocation
        this = _duration(time.perf_counter() - start)
        wall += f" ({reused} of them trained by an earlier invocation; this one took {this})"
      ablation_report(module, workdir, seeds, only, command, wall, results_page, bootstrap)
  runtime.barrier("sweep results written")
  return results


def _where() -> str:
  device = jax.devices()[0]
  cores = f", {os.cpu_count()} CPU cores" if device.platform == "cpu" else ""
  return f"{jax.device_count()} {device.platform} device(s){cores}"


def ablation_report(module, workdir, seeds, only, command, wall, results_page, bootstrap) -> dict:
  """The ablation report (mdx.evaluate.ablation) over every run of the sweep, and the results
  page's section when one is named."""
  from mdx.evaluate import ablation

  runs: dict = {}
  for name, variant, seed, _ in plan(module, seeds, only):
    runs.setdefault(variant, {})[0 if seed is None else seed] = ablation.load_run(
      os.path.join(workdir, name)
    )
  spec = module.get_report() if hasattr(module, "get_report") else None
  name = os.path.splitext(os.path.basename(getattr(module, "__file__", "ablation")))[0]
  if spec and spec.get("baseline") and spec["baseline"] not in runs:
    logging.warning(
      "sweep: no ablation report: its baseline %r did not run; add it to --only", spec["baseline"]
    )
    return {}
  written = ablation.write_report(
    workdir, name, runs, spec, command=command, wall=wall, n_resamples=bootstrap
  )
  if results_page:
    ablation.update_results_page(results_page, name, written)
  return written


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(
      f"unexpected arguments {argv[1:]}; overrides look like --set=train.steps=5"
    )
  # The user's mistakes first, before any process joins or device starts (one line: mdx.cli).
  module = load_module(_ABLATION.value)
  bad = [item for item in _OVERRIDE.value if "=" not in item]
  if bad:
    raise ValueError(f"--set={bad[0]}: give field=value, e.g. --set=train.steps=5")
  extra = dict(item.split("=", 1) for item in _OVERRIDE.value)
  seeds = seeds_of(module, _SEEDS.value)
  plan(module, seeds, _ONLY.value)
  runtime.join_processes()  # a no-op unless started by ./launch.sh local N
  runtime.quiet_library_logs()
  runtime.require_accelerator()
  flags_given = [shlex.quote(a) for a in sys.argv[1:] if not a.startswith("--ablation")]
  run_sweep(
    module,
    _WORKDIR.value,
    only=_ONLY.value,
    reach=_REACH.value,
    overrides={k: parse_value(v) for k, v in extra.items()},
    seeds=seeds,
    command=" ".join(["./launch.sh sweep", _ABLATION.value, *flags_given]),
    results_page=_PAGE.value,
    bootstrap=_PAIRED.value,
  )
  if jax.process_index() == 0:
    print(open(os.path.join(_WORKDIR.value, "results.md")).read())
    report = os.path.join(_WORKDIR.value, "ablation.md")
    if os.path.exists(report):
      print(open(report).read())


if __name__ == "__main__":
  flags.mark_flags_as_required(["ablation", "workdir"])  # not on import: keeps global flags clean
  cli.run(main)
