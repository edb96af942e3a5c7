"""Evaluate predictions from anywhere, or a bundle on an external dataset:

python -m mdx.evaluate --labels=L.csv --probs=P.csv --out=DIR
  Both CSVs have an id column and one column per finding (labels 0/1, blank = unknown;
  probabilities in [0, 1]).
python -m mdx.evaluate --bundle=BUNDLE_DIR --config=EXPERIMENT.py [--config.data.root=...] \
    --out=DIR [--finding_map='Effusion=Pleural Effusion,...'] [--bootstrap=N]
  External validation (mdx.evaluate.external): the bundle, with its thresholds and calibration as
  shipped, on every record of the dataset that the experiment's config.data names. It runs as
  several processes too (python -m mdx.local N python -m mdx.evaluate --bundle=...; on a TPU VM
  or under SLURM add --jax_distributed): each predicts its share of the records, process 0
  writes the report.

Both write DIR/metrics.json, DIR/report.md, DIR/report.html and DIR/figures/*.png. A user's mistake
(a missing file, a bad field) is one line 'error: ...' on stderr and exit status 2 (mdx.cli);
--debug or MDX_DEBUG=1 shows its traceback.

Like mdx.main, this entry point resolves a config (mdx.config), which the library rooms below it
must not import.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mdx import cli, runtime
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
_BUNDLE = flags.DEFINE_string(
  "bundle", None, "External validation: the bundle folder of a trained classifier."
)
_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "External validation: an experiment file whose config.data names the dataset "
  "(override fields with --config.data.root=...).",
  lock_config=True,
)
_FINDING_MAP = flags.DEFINE_string(
  "finding_map",
  None,
  "External validation: BUNDLE_FINDING=DATASET_FINDING,... over the name and synonym "
  "matching (an empty right side leaves the finding out).",
)
_BATCH = flags.DEFINE_integer(
  "batch_size",
  None,
  "External validation: images per prediction batch on each process (default 8 per device).",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "jax_distributed",
  False,
  "External validation: call jax.distributed.initialize() (every worker of a TPU VM, SLURM).",
)


def external(argv) -> int:
  """--bundle mode: the bundle on the dataset of --config."""
  from mdx import config as config_lib
  from mdx.evaluate import external as external_lib

  if not _OUT.value:
    raise app.UsageError("--out is required with --bundle")
  runtime.quiet_library_logs()
  if _CONFIG.value is None:
    raise app.UsageError("--config (the experiment file naming the dataset) is required")
  # Before anything touches a device: mdx.local's processes (or --jax_distributed) join here.
  runtime.join_processes(_DISTRIBUTED.value)
  runtime.enable_compilation_cache()
  # A user's mistake (a missing bundle, a dataset without the findings) raises ValueError or
  # FileNotFoundError: cli.run prints it as one line on each process that meets it.
  runtime.require_accelerator()  # $MDX_ACCELERATOR, as ./launch.sh sets it
  config = config_lib.resolve(_CONFIG.value)  # cli.parse_flags checked that the file exists
  result = external_lib.evaluate_external(
    _BUNDLE.value,
    config,
    _OUT.value,
    finding_map=external_lib.parse_finding_map(_FINDING_MAP.value),
    bootstrap=_BOOT.value,
    seed=_SEED.value,
    batch_size=_BATCH.value,
  )
  if jax.process_index() != 0:  # process 0 wrote the report and says so
    return 0
  for f, c in result["external"]["comparison"].items():
    d = c["difference"]
    logging.info(
      "%s: AUROC internal %s, external %s, difference %s [%s, %s]",
      f,
      c["internal"]["value"],
      c["external"]["value"],
      d["value"],
      *d["ci"],
    )
  print(f"{_OUT.value}/report.html")
  return 0


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _BUNDLE.value:
    return external(argv)
  for flag in (_LABELS, _PROBS, _OUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  if bool(_VAL_LABELS.value) != bool(_VAL_PROBS.value):
    raise app.UsageError("give both --val-labels and --val-probs, or neither")
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
  cli.run(main)
