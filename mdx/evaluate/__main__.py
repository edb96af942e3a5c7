"""Evaluate predictions from anywhere:
python -m mdx.evaluate --labels=L.csv --probs=P.csv --out=DIR.

Both CSVs have an id column and one column per finding (labels 0/1, blank = unknown; probabilities
in [0, 1]). Writes DIR/metrics.json, DIR/report.md, DIR/report.html and DIR/figures/*.png.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from mdx.evaluate import predictions as P
from mdx.evaluate import report

_LABELS = flags.DEFINE_string(
  "labels", None, "CSV of labels: id column + one 0/1 column per finding."
)
_PROBS = flags.DEFINE_string("probs", None, "CSV of probabilities with the same ids and findings.")
_OUT = flags.DEFINE_string("out", None, "Output folder for metrics.json and the report.")
_PATIENT = flags.DEFINE_string(
  "patient-column", None, "Column of the labels CSV with patient ids (bootstrap by patient)."
)
_ID = flags.DEFINE_string("id-column", None, "Name of the id column (default: the first column).")
_BOOT = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the CIs (0: none).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")
_POLICY = flags.DEFINE_string(
  "threshold-policy", "youden", "youden | f1 | sensitivity=0.9 | specificity=0.9 | a number."
)
_VAL_LABELS = flags.DEFINE_string(
  "val-labels",
  None,
  "Validation labels CSV: thresholds and "
  "recalibration are fitted on it (else on the evaluated set).",
)
_VAL_PROBS = flags.DEFINE_string("val-probs", None, "Validation probabilities CSV.")
_PREV = flags.DEFINE_float("prevalence", None, "Also report PPV/NPV at this prevalence.")
_COMPARE = flags.DEFINE_string(
  "compare-probs",
  None,
  "A second model's probabilities CSV (same ids "
  "and findings): AUROC differences by DeLong and paired bootstrap.",
)
_TITLE = flags.DEFINE_string("title", None, "Report title (default: the labels file name).")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  for flag in (_LABELS, _PROBS, _OUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  if bool(_VAL_LABELS.value) != bool(_VAL_PROBS.value):
    raise app.UsageError("give both --val-labels and --val-probs, or neither")
  try:
    pred = P.read_predictions(
      _LABELS.value, _PROBS.value, id_column=_ID.value, patient_column=_PATIENT.value
    )
    val = None
    if _VAL_LABELS.value:
      val = P.read_predictions(
        _VAL_LABELS.value, _VAL_PROBS.value, id_column=_ID.value, patient_column=_PATIENT.value
      )
      if val.findings != pred.findings:
        raise ValueError(
          f"{_VAL_LABELS.value}: findings {list(val.findings)} differ from "
          f"{_LABELS.value}: {list(pred.findings)}"
        )
    other = None
    if _COMPARE.value:
      other = P.read_predictions(
        _LABELS.value, _COMPARE.value, id_column=_ID.value, patient_column=_PATIENT.value
      ).probs
    result = report.evaluate_and_report(
      _OUT.value,
      labels=pred.labels,
      probs=pred.probs,
      findings=pred.findings,
      patient_ids=pred.patient_ids,
      val_labels=None if val is None else val.labels,
      val_probs=None if val is None else val.probs,
      threshold_policy=_POLICY.value,
      bootstrap=_BOOT.value,
      seed=_SEED.value,
      prevalence=_PREV.value,
      title=_TITLE.value or f"Evaluation of {_PROBS.value}",
      compare_probs=other,
      compare_names=(_PROBS.value, _COMPARE.value or ""),
    )
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  macro = result["macro"]["auroc"]
  logging.info(
    "wrote %s/metrics.json and report.html: macro AUROC %s [%s, %s]",
    _OUT.value,
    macro["value"],
    *macro["ci"],
  )
  print(f"{_OUT.value}/report.html")
  return 0


if __name__ == "__main__":
  app.run(main)
