"""k-fold cross-validation of a segmentation experiment, and the ensemble of its folds (nnU-Net's
way to a final model).

run_crossval trains fold i of k as a sweep variant 'fold_i' (mdx.train.sweep: the experiment's
config with data.split = {'by': 'kfold', 'k': k, 'fold': i}, folders DIR/fold_i), so an
interrupted cross-validation resumes as a sweep does: finished folds are not trained again, the
interrupted one continues from its checkpoint. Each fold's report evaluates its held-out cases
(its validation split: kfold leaves no test set), so the folds' per-case metrics together are the
out-of-fold result of every case exactly once; they are pooled into DIR/crossval/ (metrics.json:
per fold and pooled; results.md). The folds' bundles become one ensemble bundle DIR/bundle
(mdx.inference.bundle.write_ensemble) whose predict averages the folds' probabilities, with the
post-processing decided on the pooled out-of-fold Dice (a class keeps its largest component when,
over all folds' validation cases, that did not lower Dice).
"""

from __future__ import annotations

import json
import os
import types

import jax
from absl import logging

from mdx import jsonio, outputs
from mdx.evaluate import segmentation as seg_metrics
from mdx.inference import bundle as bundle_lib
from mdx.train import sweep

RESULTS = "crossval"  # DIR/crossval/: metrics.json and results.md
ENSEMBLE = "bundle"  # DIR/bundle: the folds' ensemble


def folds_module(module, k: int):
  """The experiment as an ablation whose variants are its k folds (what run_sweep trains)."""
  if isinstance(k, bool) or not isinstance(k, int) or k < 2:
    raise ValueError(f"--folds={k!r}: cross-validation needs a whole number of folds >= 2")
  if not hasattr(module, "get_config"):
    raise ValueError(f"{getattr(module, '__file__', module)} has no get_config()")

  def get_sweep():
    return {f"fold_{i}": {"data.split": {"by": "kfold", "k": k, "fold": i}} for i in range(k)}

  return types.SimpleNamespace(
    get_config=module.get_config,
    get_sweep=get_sweep,
    __file__=getattr(module, "__file__", "experiment"),
    __name__=getattr(module, "__name__", "experiment"),
  )


def _fold_report(workdir: str, fold: str) -> dict:
  path = os.path.join(workdir, fold, "report", "metrics.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"{path} is missing: fold {fold} finished without its report (config.eval.after_train "
      "must stay on for cross-validation)"
    )
  with open(path) as f:
    return json.load(f)


def pooled_postprocess(reports: dict[str, dict]) -> dict | None:
  """The post-processing of the ensemble, decided on every fold's validation cases together: per
  class, the case-weighted mean Dice with and without the largest component (each fold's report
  measured both on its own held-out cases); kept where it did not lower Dice, as nnU-Net keeps
  it. None when the folds measured no post-processing (eval.postprocess off)."""
  before, after, cases = {}, {}, {}
  for report in reports.values():
    parts = report["summary"].get("inference") or {}
    decision = parts.get("postprocess")
    if not decision:
      return None
    n = report["summary"]["num_cases"]
    for name in decision["dice_before"]:
      before[name] = before.get(name, 0.0) + n * decision["dice_before"][name]
      after[name] = after.get(name, 0.0) + n * decision["dice_after"][name]
      cases[name] = cases.get(name, 0) + n
  dice_before = {k: before[k] / cases[k] for k in before}
  dice_after = {k: after[k] / cases[k] for k in after}
  return {
    "largest_component": [k for k in dice_before if dice_after[k] >= dice_before[k]],
    "dice_before": dice_before,
    "dice_after": dice_after,
    "decided_on": "pooled out-of-fold validation cases",
  }


def results_table(per_fold: dict[str, dict], pooled: dict) -> str:
  """results.md: mean Dice (and NSD, HD95) per class, per fold and pooled out of fold."""
  names = [n for n in pooled["per_class"] if n != "background"]
  lines = [
    f"# Cross-validation ({len(per_fold)} folds, {pooled['num_cases']} cases out of fold)",
    "",
    "| fold | cases | mean Dice | " + " | ".join(f"Dice {n}" for n in names) + " |",
    "|---|---|---|" + "---|" * len(names),
  ]
  for fold, s in [*per_fold.items(), ("pooled", pooled)]:
    cells = " | ".join(f"{s['per_class'][n]['dice']:.4f}" for n in names)
    lines.append(f"| {fold} | {s['num_cases']} | {s['mean_dice']:.4f} | {cells} |")
  tol = pooled.get("nsd_tolerance_mm")
  lines += ["", "Pooled out of fold, per class:", ""]
  lines += ["| class | Dice | HD95 (mm) | NSD |", "|---|---|---|---|"]
  for n in names:
    c = pooled["per_class"][n]
    lines.append(f"| {n} | {c['dice']:.4f} | {c['hd95']:.2f} | {c.get('nsd', float('nan')):.4f} |")
  if tol is not None:
    lines += ["", f"NSD at a tolerance of {tol:g} mm."]
  return "\n".join(lines) + "\n"


def run_crossval(
  module,
  workdir: str,
  k: int = 5,
  *,
  overrides: dict | None = None,
  command: str = "",
  overwrite: bool = False,
) -> dict:
  """Trains (or resumes) the k folds, pools their out-of-fold metrics into DIR/crossval/ and
  writes the folds' ensemble into DIR/bundle; returns {'per_fold', 'pooled', 'bundle'}.
  Everything is checked before the first fold trains (sweep.prepare: every fold's config, the
  results files). Flag-free (tests call it)."""
  folds = folds_module(module, k)
  planned = sweep.prepare(folds, workdir, overrides=overrides, overwrite=overwrite)
  if planned.runs[0].resolved.task != "segmentation":
    raise ValueError(
      "cross-validation with an ensemble bundle is for segmentation experiments (config.task="
      f"'segmentation'); this one is {planned.runs[0].resolved.task!r}: use a sweep of "
      "split.by='kfold' folds instead"
    )
  results_folder = outputs.OutputFolder(
    os.path.join(workdir, RESULTS), "crossval", overwrite=overwrite
  )
  results_folder.claim(files=["metrics.json", "results.md"])
  bundle_lib.claim(os.path.join(workdir, ENSEMBLE), overwrite)
  sweep.run_sweep(folds, workdir, overrides=overrides, command=command, planned=planned)
  names = [r.name for r in planned.runs]
  reports = {name: _fold_report(workdir, name) for name in names}
  per_case = {}
  for report in reports.values():
    for case, metrics in report["per_case"].items():
      if case in per_case:
        raise ValueError(f"case {case!r} is held out by two folds; the folds are not a partition")
      per_case[case] = metrics
  pooled = seg_metrics.summarize(per_case)
  per_fold = {name: reports[name]["summary"] for name in names}
  decision = pooled_postprocess(reports)
  bundle_dir = os.path.join(workdir, ENSEMBLE)
  if jax.process_index() == 0:
    with results_folder:
      outputs.write_json(
        results_folder.path("metrics.json"),
        jsonio.jsonable(
          {"folds": k, "per_fold": per_fold, "pooled": pooled, "postprocess": decision}
        ),
      )
      outputs.write_text(results_folder.path("results.md"), results_table(per_fold, pooled))
      results_folder.commit()
    bundle_lib.write_ensemble(
      bundle_dir,
      [os.path.join(workdir, name, "bundle") for name in names],
      postprocess=decision,
      results={"out_of_fold": seg_metrics.bundle_results(pooled)},
      overwrite=overwrite,
    )
    logging.info(
      "cross-validation: pooled out-of-fold mean Dice %.4f over %d cases; ensemble %s",
      pooled["mean_dice"],
      pooled["num_cases"],
      bundle_dir,
    )
  return {"per_fold": per_fold, "pooled": pooled, "bundle": bundle_dir}
