"""Run every variant of an ablation and gather the results in one table.

An ablation file (experiments/ablations/*.py) defines
  get_config()  -> the base ConfigDict (usually an experiment's get_config())
  get_sweep()   -> {variant name: {dotted config field: value}}
and `python -m mdx.train.sweep --ablation=FILE --workdir=DIR` trains each variant into DIR/<name>
(resuming any that were interrupted), evaluates it, and writes DIR/results.md and DIR/results.json:
per variant the test mean AUROC with its 95% CI, the best validation AUROC, and the first step at which
validation AUROC reached `--reach` of its final best (how fast a variant learns).
"""

from __future__ import annotations

import importlib.util
import json
import os

from absl import app, flags

_ABLATION = flags.DEFINE_string("ablation", None, "Ablation file with get_config() and get_sweep().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one workdir per variant.")
_ONLY = flags.DEFINE_list("only", None, "Run only these variants (default: all).")
_REACH = flags.DEFINE_float("reach", 0.95, "Report the first step reaching this share of the best.")
_OVERRIDE = flags.DEFINE_multi_string("set", [], "Extra override for every variant: field=value.")


def load_module(path: str):
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  if spec is None:
    raise FileNotFoundError(f"--ablation={path} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in ("get_config", "get_sweep"):
    if not hasattr(module, name):
      raise ValueError(f"{path} has no {name}(); an ablation file defines get_config() and get_sweep()")
  return module


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


def summarize(workdir: str, reach: float) -> dict:
  metrics = json.load(open(os.path.join(workdir, "report", "metrics.json")))
  history = [json.loads(line) for line in open(os.path.join(workdir, "history.jsonl"))]
  val = [(h["step"], h["val_auroc"]) for h in history if "val_auroc" in h]
  best = max((v for _, v in val), default=float("nan"))
  first = next((s for s, v in val if v >= reach * best), None)
  auroc = metrics["macro"]["auroc"]
  return {"test_auroc": auroc["value"], "test_auroc_ci": auroc["ci"], "best_val_auroc": best,
          "steps_to_reach": first}


def write_table(results: dict, path: str, reach: float) -> None:
  lines = ["| variant | test mean AUROC [95% CI] | best val AUROC | "
           f"steps to {reach:.0%} of best |", "|---|---|---|---|"]
  for name, r in results.items():
    lo, hi = r["test_auroc_ci"]
    ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "[n/a]"
    lines.append(f"| {name} | {r['test_auroc']:.3f} {ci} | {r['best_val_auroc']:.3f} | "
                 f"{r['steps_to_reach']} |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv):
  del argv
  from mdx.train import run as runner
  runner.quiet_library_logs()

  module = load_module(_ABLATION.value)
  sweep = module.get_sweep()
  extra = dict(item.split("=", 1) for item in _OVERRIDE.value)
  results = {}
  for name, overrides in sweep.items():
    if _ONLY.value and name not in _ONLY.value:
      continue
    config = module.get_config()
    apply_overrides(config, overrides)
    apply_overrides(config, {k: parse_value(v) for k, v in extra.items()})
    workdir = os.path.join(_WORKDIR.value, name)
    runner.run(config, workdir, "train")
    results[name] = summarize(workdir, _REACH.value)
    print(f"sweep: {name}: {results[name]}", flush=True)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  json.dump(results, open(os.path.join(_WORKDIR.value, "results.json"), "w"), indent=2)
  write_table(results, os.path.join(_WORKDIR.value, "results.md"), _REACH.value)
  print(open(os.path.join(_WORKDIR.value, "results.md")).read())


if __name__ == "__main__":
  flags.mark_flags_as_required(["ablation", "workdir"])  # not on import: keeps global flags clean
  app.run(main)
