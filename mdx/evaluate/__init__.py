"""Evaluation: metrics, bootstrap, calibration, Grad-CAM, reports. Reads predictions, not models.

Nothing here imports mdx.train: a task gathers predictions and hands them to run_report.

  metrics         weighted binary metrics (AUROC, AP, Brier, confusion-matrix metrics, curves)
  thresholds      operating-threshold policies chosen on validation
  bootstrap       patient-level bootstrap CIs, DeLong and paired-bootstrap AUROC comparison
  calibration     reliability curve, ECE, Platt and isotonic recalibration
  classification  the per-finding / macro / micro table with CIs (a JSON-ready dict)
  predictions     labels / probabilities CSVs matched by id
  plots, report   PNG figures (also a run's training curves and example images) and
                  metrics.json + report.md + report.html, written whole through an
                  mdx.outputs.OutputFolder (report.layout: what each kind of report writes)
  gradcam         Grad-CAM for any Flax Linen classifier (the one place that reads a model), and
                  the report's Grad-CAM overlays and peak-in-lesion rates (gradcam.json)
  segmentation    per-class Dice, sensitivity, specificity, HD95, NSD; overlays, report.md
  postprocess     largest-component post-processing, decided per class on validation
  run_report      the report at the end of a run: classification (predictions CSV, curves,
                  examples, Grad-CAM, metrics report) and segmentation (metrics.json, curves)
  model_card      the sections of a bundle's model card (mdx.inference.bundle joins them)

Nothing here imports mdx.inference either: inference reads this room (calibration maps, Grad-CAM,
card sections), so what runs a bundle lives there, external validation included
(mdx.inference.external); the command line is `python -m mdx evaluate` (mdx.commands.evaluate).
"""
