"""Evaluation: metrics, bootstrap, calibration, Grad-CAM, reports. Reads predictions, not models.

  metrics         weighted binary metrics (AUROC, AP, Brier, confusion-matrix metrics, curves)
  thresholds      operating-threshold policies chosen on validation
  bootstrap       patient-level bootstrap CIs, DeLong and paired-bootstrap AUROC comparison
  calibration     reliability curve, ECE, Platt and isotonic recalibration
  classification  the per-finding / macro / micro table with CIs (a JSON-ready dict)
  predictions     labels / probabilities CSVs matched by id
  plots, report   PNG figures and metrics.json + report.md + report.html
  gradcam         Grad-CAM for any Flax Linen classifier (the one place that reads a model)
  __main__        python -m mdx.evaluate --labels=L.csv --probs=P.csv --out=DIR
"""
