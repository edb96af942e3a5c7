"""The report at the end of a training run (or of --mode=eval), for classification and segmentation.

A task gathers predictions (it knows its data and model); everything after that is here: the
predictions CSV, the training curves, example images, Grad-CAM and the metrics report for
classification; metrics.json, curves and report.md for segmentation. Inputs are plain arrays and
callables, so this module needs nothing of mdx.train and a report can be remade from saved
predictions.

Both write through an mdx.outputs.OutputFolder (mdx.evaluate.report.staged): the whole report is
staged and moved into out_dir when complete, and a file there that mdx did not write is refused
(report.layout('classification' | 'segmentation') lists what each writes).

Classification predictions are dicts {'probs' [N, C], 'labels' [N, C] (nan unknown), 'index' [N]
(record indices)} over the rows of one split, as ClassificationTask.predict returns them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from absl import logging

from mdx import outputs
from mdx.data import card as card_lib
from mdx.evaluate import calibration as C
from mdx.evaluate import gradcam as G
from mdx.evaluate import plots, report
from mdx.evaluate import predictions as P
from mdx.evaluate import segmentation as S


@contextlib.contextmanager
def _drawing(folder: outputs.OutputFolder, fig_dir: str | None) -> Iterator[str]:
  """Where a report's figures are drawn before it copies them in: fig_dir, else a temporary folder
  inside the staging folder (on the output's disk, removed with it if the run is killed)."""
  if fig_dir is not None:
    os.makedirs(fig_dir, exist_ok=True)
    yield fig_dir
    return
  drawn = tempfile.mkdtemp(prefix=".drawn-", dir=folder.staging)
  try:
    yield drawn
  finally:
    shutil.rmtree(drawn, ignore_errors=True)


def dataset_card_blocks(card: Mapping) -> list[tuple]:
  """The training data's dataset card (mdx.data.card.describe) as blocks of mdx.evaluate.report:
  a heading, its counts as paragraphs, the per-finding table and, when the card has splits, the
  positives per split."""
  blocks: list[tuple] = [("h2", f"Training data: dataset card of {card.get('source')}")]
  blocks.append(("p", " ".join(card_lib.summary_lines(card))))  # one paragraph: results follow
  header, rows = card_lib.finding_header(card), card_lib.finding_rows(card)
  split_header, split_rows = card_lib.split_rows(card)
  if split_rows:  # one table: the counts, then the positives of each split
    header = header + split_header[1:]
    rows = [row + extra[1:] for row, extra in zip(rows, split_rows)]
  blocks.append(("table", header, rows))
  return blocks


def per_dataset_blocks(per_dataset: Mapping, findings: Sequence[str], split: str) -> list[tuple]:
  """A model trained across datasets: each dataset's share of the reported split and its AUROC
  (95% CI) per finding and macro, beside the pooled numbers of the report; findings a dataset does
  not label say so (they are unknown there, never negative)."""

  def auroc(value, ci) -> str:
    if value is None:
      return "undefined"
    ci = ci or [None, None]
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if None not in ci else "")

  names = list(per_dataset)
  blocks: list[tuple] = [
    ("h2", "Per dataset"),
    (
      "p",
      f"The {split} split of each training dataset on its own (patient bootstrap within the "
      "dataset); the tables below pool them. A finding a dataset does not label is 'not "
      "labelled' there: unknown, left out of its metrics.",
    ),
  ]
  rows = [
    [
      n,
      f"{e['n_images']:,}",
      f"{e['n_patients']:,}",
      auroc(e.get("macro_auroc"), e.get("macro_auroc_ci")),
    ]
    for n, e in per_dataset.items()
  ]
  blocks.append(("table", ["Dataset", "Images", "Patients", "Macro AUROC (95% CI)"], rows))
  rows = []
  for f in findings:
    row = [f]
    for n in names:
      entry = per_dataset[n]["per_finding"].get(f)
      row.append(auroc(entry["auroc"], entry.get("auroc_ci")) if entry else "not labelled")
    rows.append(row)
  blocks.append(("table", ["Finding (AUROC, 95% CI)", *names], rows))
  return blocks


def classification_run_report(
  out_dir: str | outputs.OutputFolder,
  fig_dir: str | None = None,
  *,
  split: str,
  pred: Mapping,
  val: Mapping,
  findings: Sequence[str],
  patient_ids,
  image_ids,
  image_fn: Callable[[int], np.ndarray],
  history: Sequence[Mapping],
  threshold_policy: str | float = "youden",
  bootstrap: int = 1000,
  examples: int = 8,
  seed: int = 0,
  title: str = "mdx evaluation",
  model=None,
  variables=None,
  model_inputs: Callable[[Sequence[int]], np.ndarray] | None = None,
  gradcam: Mapping | None = None,
  lesion_masks: Callable[[int], Mapping[str, np.ndarray]] | None = None,
  necklace_masks: Callable[[int], np.ndarray] | None = None,
  calibration: tuple[str, Mapping[str, Mapping]] | None = None,
  weighted_loss: bool = False,
  loss_label: str = "weighted BCE loss",
  keep_bootstrap: Sequence[str] = (),
  overwrite: bool = False,
  command: str = "report",
  data_card: Mapping | None = None,
  per_dataset: Mapping | None = None,
) -> dict:
  """Writes out_dir/{split}_predictions.csv, gradcam.json, metrics.json, report.md and report.html.

  pred: the evaluated split, val: the validation split (thresholds and recalibration are chosen
  on it). patient_ids [N] and image_ids [N] belong to pred's rows; image_fn(record index) -> the
  stored image for the examples figure. Figures are drawn into fig_dir (default: a temporary
  folder, removed) and the report copies what it shows. Grad-CAM runs when model, variables,
  model_inputs and gradcam (a mapping with findings, images, overlays, layer: config.eval.gradcam)
  are given; see
  gradcam.grad_cam_report (necklace_masks: where the phantoms' per-patient necklace is, a shortcut
  a model can memorise). calibration: (method, {finding: map spec}) fitted on validation
  (mdx.evaluate.calibration.fit_map): the example images then show calibrated probabilities, as a
  bundle's predict does. weighted_loss: the raw scores come from a weighted loss (the report says
  they are inflated); loss_label names the loss in the training curves. keep_bootstrap: metrics
  whose bootstrap samples per finding the returned dict also holds (report.evaluate_and_report).
  data_card: the training data's dataset card (mdx.data.card.describe), shown after the
  introduction (dataset_card_blocks); per_dataset: a model trained across datasets, each one's
  numbers on the split (per_dataset_blocks). Returns the metrics dict (as in metrics.json).

  out_dir: the report's folder, claimed for report.layout('classification', split) (a file mdx did
  not write is an OutputError naming it, unless overwrite), staged, and committed once the whole
  report is written; or an entered OutputFolder its caller claimed and commits. command names the
  writer in the folder's manifest.
  """
  writes = report.layout("classification", split=split)
  with (
    report.staged(out_dir, writes, command, overwrite=overwrite) as folder,
    _drawing(folder, fig_dir) as drawn,
  ):
    findings = list(findings)
    P.write_csv(
      folder.path(f"{split}_predictions.csv"),
      image_ids,
      pred["probs"],
      findings,
      id_column="image_id",
      patient_ids=patient_ids,
      digits=6,
    )
    shown, scores, uncalibrated = pred["probs"], "raw scores", []
    if calibration is not None and calibration[0] != "none":
      uncalibrated = [f for f in findings if calibration[1][f]["kind"] == "identity"]
      maps = [C.map_from_spec(calibration[1][f]) for f in findings]
      raw = np.asarray(pred["probs"], np.float64)
      shown = np.stack([m(raw[:, j]) for j, m in enumerate(maps)], 1).reshape(raw.shape)
      scores = f"probabilities calibrated on validation ({calibration[0]})"
    notes = [
      f"Scores: {split}_predictions.csv and every table and curve below use the model's raw scores "
      "(sigmoid outputs); thresholds are chosen on them. "
      + (
        "The loss weighted positives up, so raw scores overstate probabilities (findings absent "
        "from a film can score well above 0.5). "
        if weighted_loss
        else ""
      )
      + (
        f"The example images show {scores}, as the bundle's predict writes them; 'after Platt' and "
        "'after isotonic' rows give the calibration of such maps."
        + (
          f" Not calibrated (validation lacks positives or negatives), so shown raw: "
          f"{', '.join(uncalibrated)}."
          if uncalibrated
          else ""
        )
        if calibration is not None and calibration[0] != "none"
        else "The example images show raw scores too (no calibration was asked for)."
      )
    ]
    figures = [
      plots.training_curves_png(
        history,
        os.path.join(drawn, "loss_curves.png"),
        "val_auroc",
        "mean AUROC",
        loss_label,
        ylim=(0.4, 1.0),
        chance=0.5,
      )
    ]
    if examples > 0:  # 0 asks for no example figure (sweeps of many runs)
      figures.append(
        plots.examples_png(
          image_fn,
          pred["labels"],
          shown,
          pred["index"],
          findings,
          os.path.join(drawn, "examples.png"),
          count=examples,
          seed=seed,
          scores=scores,
          raw_findings=uncalibrated,
        )
      )
    gradcam_figures = []
    if model is not None and gradcam is not None:
      gradcam_figures = G.grad_cam_report(
        model,
        variables,
        model_inputs,
        labels=pred["labels"],
        probs=pred["probs"],
        index=pred["index"],
        findings=findings,
        out_dir=drawn,
        gradcam_findings=tuple(gradcam["findings"]),
        images=gradcam["images"],
        overlays=gradcam["overlays"],
        layer=gradcam["layer"] or None,
        lesion_masks=lesion_masks,
        necklace_masks=necklace_masks,
        summary_path=folder.path("gradcam.json"),
      )
    return report.evaluate_and_report(
      folder,
      labels=pred["labels"],
      probs=pred["probs"],
      findings=findings,
      patient_ids=patient_ids,
      ids=image_ids,
      val_labels=val["labels"],
      val_probs=val["probs"],
      threshold_policy=threshold_policy,
      bootstrap=bootstrap,
      seed=seed,
      extra_figures=figures,
      gradcam_figures=gradcam_figures,
      title=title,
      notes=notes,
      keep_bootstrap=keep_bootstrap,
      preface=[
        *(dataset_card_blocks(data_card) if data_card else []),
        *(per_dataset_blocks(per_dataset, findings, split) if per_dataset else []),
      ],
    )


def segmentation_run_report(
  out_dir: str | outputs.OutputFolder,
  *,
  split: str,
  per_case: Mapping,
  history: Sequence[Mapping],
  overlays: Sequence[str] = (),
  overwrite: bool = False,
  command: str = "report",
  plan: Sequence[str] | None = None,
  inference: Mapping | None = None,
) -> dict:
  """Writes out_dir/metrics.json, curves.png (when there is a history), report.md and overlays/.

  plan: the run's plan in a few lines (mdx.data.volume.plan.describe); inference: what test-time
  mirroring and post-processing each brought on validation (SegmentationTask.inference_parts).
  Both appear in the report and in metrics.json's summary.

  per_case: {case_id: segmentation.case_metrics(...)} of the evaluated split; overlays: PNG paths
  drawn while evaluating (anywhere, e.g. a temporary folder), copied into overlays/ and shown
  after the curves. out_dir: the report's folder, claimed for report.layout('segmentation') (a
  file mdx did not write is an OutputError naming it, unless overwrite), staged and committed once
  the whole report is written; or an entered OutputFolder its caller claimed and commits. Returns
  the summary (as in metrics.json).
  """
  summary = S.summarize(per_case)
  summary["split"] = split
  if plan:
    summary["plan"] = list(plan)
  if inference:
    summary["inference"] = dict(inference)
  writes = report.layout("segmentation")
  with report.staged(out_dir, writes, command, overwrite=overwrite) as folder:
    figures = []
    if history:
      _, path = plots.training_curves_png(
        history, folder.path("curves.png"), "val_dice", "Dice", "loss", ylim=(None, 1)
      )
      figures.append(path)
    for src in overlays:
      dst = folder.path(f"overlays/{os.path.basename(src)}")
      if os.path.abspath(src) != os.path.abspath(dst):
        shutil.copyfile(src, dst)
      figures.append(dst)
    S.write_metrics(folder.path("metrics.json"), per_case, summary)
    S.write_report(folder.path("report.md"), summary, figures)
  logging.info(
    "%s: mean Dice %.4f; per class %s",
    split,
    summary["mean_dice"],
    {k: round(v["dice"], 4) for k, v in summary["per_class"].items()},
  )
  return summary
