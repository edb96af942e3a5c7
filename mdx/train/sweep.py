"""Run every variant of an ablation and gather the results in one table.

An ablation file (experiments/ablations/*.py) defines
  get_config()  -> the base ConfigDict (usually an experiment's get_config())
  get_sweep()   -> {variant name: {dotted config field: value}}
and `python -m mdx.train.sweep --ablation=FILE --workdir=DIR` trains each variant into DIR/<name>
(resuming any that were interrupted), evaluates it, and writes DIR/results.md and DIR/results.json:
per variant the task's headline test results (classification: mean AUROC with its 95% CI;
segmentation: mean and per-class Dice), the best validation value of config.train.best_metric, and
the first step at which it reached `--reach` of its best (how fast a variant learns). Any task
works. A user's mistake (a missing ablation file, an unknown field) is one line `error: ...` and
exit status 2 (mdx.cli).
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags

from mdx import cli, runtime

_ABLATION = flags.DEFINE_string(
  "ablation", None, "Ablation file with get_config() and get_sweep()."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one workdir per variant.")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants (default: all).")
_REACH = flags.DEFINE_float("reach", 0.95, "Report the first step reaching this share of the best.")
_OVERRIDE = flags.DEFINE_multi_string("set", [], "Extra override for every variant: field=value.")


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


def run_sweep(
  module, workdir: str, *, only=None, reach: float = 0.95, overrides: dict | None = None
) -> dict:
  """Trains and evaluates every variant of an ablation module into workdir/<variant>; writes
  workdir/results.json and workdir/results.md; returns the results. Flag-free (tests call it)."""
  from mdx import config as config_lib
  from mdx.train import run as runner

  results = {}
  for name, changes in module.get_sweep().items():
    if only and name not in only:
      continue
    config = module.get_config()
    apply_overrides(config, changes)
    apply_overrides(config, overrides or {})
    variant_dir = os.path.join(workdir, name)
    runner.run(config, variant_dir, "train")
    results[name] = summarize(variant_dir, config_lib.resolve(config), reach)
    if jax.process_index() == 0:
      print(f"sweep: {name}: {results[name]}", flush=True)
  if jax.process_index() == 0:  # every process holds the same results; one writes them
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    write_table(results, os.path.join(workdir, "results.md"), reach)
  runtime.barrier("sweep results written")
  return results


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
  runtime.join_processes()  # a no-op unless started by ./launch.sh local N
  runtime.quiet_library_logs()
  runtime.require_accelerator()
  run_sweep(
    module,
    _WORKDIR.value,
    only=_ONLY.value,
    reach=_REACH.value,
    overrides={k: parse_value(v) for k, v in extra.items()},
  )
  if jax.process_index() == 0:
    print(open(os.path.join(_WORKDIR.value, "results.md")).read())


if __name__ == "__main__":
  flags.mark_flags_as_required(["ablation", "workdir"])  # not on import: keeps global flags clean
  cli.run(main)
