"""Evaluate predictions from anywhere, or a bundle on an external dataset:

python -m mdx evaluate --labels=L.csv --probs=P.csv --out=DIR [--patient_column=NAME]
    [--val_labels=VL.csv --val_probs=VP.csv] [--compare_probs=P2.csv] [--threshold_policy=youden]
  Both CSVs have an id column and one column per finding (labels 0/1, blank = unknown;
  probabilities in [0, 1]).
python -m mdx evaluate --bundle=BUNDLE_DIR --config=EXPERIMENT.py [--config.data.root=...] \
    --out=DIR [--finding_map='Effusion=Pleural Effusion,...'] [--bootstrap=N]
  External validation (mdx.inference.external): the bundle, with its thresholds and calibration as
  shipped, on every record of the dataset that the experiment's config.data names. It runs as
  several processes too (python -m mdx local N python -m mdx evaluate --bundle=...; on a TPU VM
  or under SLURM add --jax_distributed): each predicts its share of the records, process 0
  writes the report.

Both write DIR/metrics.json, DIR/report.md, DIR/report.html and DIR/figures/*.png (external
validation also labels.csv, probs.csv, calibrated.csv), whole: the report is staged and moved into
DIR when complete, so a killed evaluation leaves the earlier report or nothing that looks complete
(the next run says what it found). A file in DIR that mdx did not write is never replaced: it is
refused, naming it, before anything is read or predicted, unless --overwrite. A user's mistake (a
missing file, a bad field, a full disk) is one line 'error: ...' on stderr and exit status 2
(mdx.cli); --debug or MDX_DEBUG=1 shows its traceback.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mdx import runtime
from mdx.evaluate import predictions as P
from mdx.evaluate import report

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("labels", None, "CSV of labels: id column + one 0/1 column per finding.")
  flags.DEFINE_string("probs", None, "CSV of probabilities with the same ids and findings.")
  flags.DEFINE_string("out", None, "Output folder for metrics.json and the report.")
  flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace files in --out that mdx did not write (a report.html of your own); without it they "
    "are refused before any work.",
  )
  flags.DEFINE_string(
    "patient_column", None, "Column of the labels CSV with patient ids (bootstrap by patient)."
  )
  flags.DEFINE_string("id_column", None, "Name of the id column (default: the first column).")
  flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the CIs (0: none).")
  flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")
  flags.DEFINE_string(
    "threshold_policy", "youden", "youden | f1 | sensitivity=0.9 | specificity=0.9 | a number."
  )
  flags.DEFINE_string(
    "val_labels",
    None,
    "Validation labels CSV: thresholds and recalibration are fitted on it (else on the evaluated "
    "set).",
  )
  flags.DEFINE_string("val_probs", None, "Validation probabilities CSV.")
  flags.DEFINE_float("prevalence", None, "Also report PPV/NPV at this prevalence.")
  flags.DEFINE_string(
    "compare_probs",
    None,
    "A second model's probabilities CSV (same ids and findings): AUROC differences by DeLong and "
    "paired bootstrap.",
  )
  flags.DEFINE_string("title", None, "Report title (default: the labels file name).")
  flags.DEFINE_string(
    "bundle", None, "External validation: the bundle folder of a trained classifier."
  )
  config_flags.DEFINE_config_file(
    "config",
    None,
    "External validation: an experiment file whose config.data names the dataset "
    "(override fields with --config.data.root=...).",
    lock_config=True,
  )
  flags.DEFINE_string(
    "finding_map",
    None,
    "External validation: BUNDLE_FINDING=DATASET_FINDING,... over the name and synonym "
    "matching (an empty right side leaves the finding out).",
  )
  flags.DEFINE_integer(
    "batch_size",
    None,
    "External validation: images per prediction batch on each process (default 8 per device).",
  )
  flags.DEFINE_bool(
    "jax_distributed",
    False,
    "External validation: call jax.distributed.initialize() (every worker of a TPU VM, SLURM).",
  )


def external(argv) -> int:
  """--bundle mode: the bundle on the dataset of --config."""
  from mdx import config as config_lib
  from mdx.inference import external as external_lib

  if not FLAGS.out:
    raise app.UsageError("--out is required with --bundle")
  runtime.quiet_library_logs()
  if FLAGS.config is None:
    raise app.UsageError("--config (the experiment file naming the dataset) is required")
  # Before anything touches a device: mdx local's processes (or --jax_distributed) join here.
  runtime.join_processes(FLAGS.jax_distributed)
  runtime.enable_compilation_cache()
  # A user's mistake (a missing bundle, a dataset without the findings) raises ValueError or
  # FileNotFoundError: run_program prints it as one line on each process that meets it.
  runtime.require_accelerator()  # $MDX_ACCELERATOR, as ./launch.sh sets it
  config = config_lib.resolve(FLAGS.config)  # cli.parse_flags checked that the file exists
  result = external_lib.evaluate_external(
    FLAGS.bundle,
    config,
    FLAGS.out,
    finding_map=external_lib.parse_finding_map(FLAGS.finding_map),
    bootstrap=FLAGS.bootstrap,
    seed=FLAGS.seed,
    batch_size=FLAGS.batch_size,
    overwrite=FLAGS.overwrite,
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
  print(f"{FLAGS.out}/report.html")
  return 0


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if FLAGS.bundle:
    return external(argv)
  for name in ("labels", "probs", "out"):
    if not FLAGS[name].value:
      raise app.UsageError(
        f"--{name} is required (or --bundle with --config for external validation)"
      )
  if bool(FLAGS.val_labels) != bool(FLAGS.val_probs):
    raise app.UsageError("give both --val_labels and --val_probs, or neither")
  # Before reading anything: a report.html, metrics.json or figure of the user's in --out is one
  # line naming it (the writer claims the same files: report.layout).
  report.layout("evaluation", ids=False, copied=False).claim(
    FLAGS.out, "evaluate", overwrite=FLAGS.overwrite
  )
  columns = dict(id_column=FLAGS.id_column, patient_column=FLAGS.patient_column)
  pred = P.read_predictions(FLAGS.labels, FLAGS.probs, **columns)
  val = None
  if FLAGS.val_labels:
    val = P.read_predictions(FLAGS.val_labels, FLAGS.val_probs, **columns)
    if val.findings != pred.findings:
      raise ValueError(
        f"{FLAGS.val_labels}: findings {list(val.findings)} differ from "
        f"{FLAGS.labels}: {list(pred.findings)}"
      )
  other = None
  if FLAGS.compare_probs:
    other = P.read_predictions(FLAGS.labels, FLAGS.compare_probs, **columns).probs
  result = report.evaluate_and_report(
    FLAGS.out,
    labels=pred.labels,
    probs=pred.probs,
    findings=pred.findings,
    patient_ids=pred.patient_ids,
    val_labels=None if val is None else val.labels,
    val_probs=None if val is None else val.probs,
    threshold_policy=FLAGS.threshold_policy,
    bootstrap=FLAGS.bootstrap,
    seed=FLAGS.seed,
    prevalence=FLAGS.prevalence,
    title=FLAGS.title or f"Evaluation of {FLAGS.probs}",
    compare_probs=other,
    compare_names=(FLAGS.probs, FLAGS.compare_probs or ""),
    overwrite=FLAGS.overwrite,
  )
  macro = result["macro"]["auroc"]
  logging.info(
    "wrote %s/metrics.json and report.html: macro AUROC %s [%s, %s]",
    FLAGS.out,
    macro["value"],
    *macro["ci"],
  )
  print(f"{FLAGS.out}/report.html")
  return 0
