"""Leakage audit: which patients, images and findings two or more sets share.

  python -m mdx audit A.csv B.csv [C.csv ...] [--patient_column="Patient ID"]
  python -m mdx audit --config=experiments/nih_64px.py [--config.data.split.test=0.2]

prints a summary per set and per pair, and exits with status 1 when any patient is in two sets
(0 otherwise), so it can guard a pipeline or CI job. The CSVs are arguments, not a flag, so a shell
glob gives them (splits/*.csv); --config audits the split an experiment's config makes (overrides
as for train). A user's mistake (a missing or unreadable CSV)
is one line `error: ...` and exit status 2 (mdx.cli).
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from mdx.data import splits
from mdx.data.cxr import metadata

FLAGS = flags.FLAGS


def audit_tables(paths: list[str], patient_column: str | None = None, kind: str = "auto") -> dict:
  loaded = [metadata.load(p, kind, patient_column=patient_column) for p in paths]
  findings = loaded[0].findings
  same = all(t.findings == findings for t in loaded)
  sets = {}
  for t in loaded:
    name = os.path.splitext(os.path.basename(t.path.removesuffix(".gz")))[0]
    while name in sets:
      name += "'"
    sets[name] = {
      "patient_ids": t.patient_ids,
      "image_ids": t.image_ids,
      "labels": t.labels if same else None,
    }
  return splits.audit(sets, findings if same else None)


def audit_config(config) -> dict:
  """The audit of the split a run of `config` trains on: its data prepared as the run prepares it
  (mdx.data.prepare: records checked under config.data.on_error, so skipped files are out of the
  split here too)."""
  from mdx import config as config_lib
  from mdx.data import prepare

  kind = config_lib.task_config(config.task).source_kind
  prepared = prepare.prepare_dataset(config.data, config.seed, kind)
  return prepare.audit_report(prepared.source, prepared.splits)


def define_flags() -> None:
  flags.DEFINE_string("patient_column", None, "patient id column (default: guessed)")
  flags.DEFINE_enum("kind", "auto", ["auto", "nih", "chexpert", "columns"], "table layout")
  config_flags.DEFINE_config_file(
    "config", None, "an experiment file: audit the split its config makes", lock_config=True
  )


def main(argv) -> int:
  csvs = argv[1:]
  if FLAGS.config is None and len(csvs) < 2:
    raise app.UsageError("give at least two CSV files (or --config=experiments/X.py)")
  if FLAGS.config is not None and csvs:
    raise app.UsageError(f"give CSV files or --config, not both (got {csvs} and --config)")
  return _audit(FLAGS, csvs)


def _audit(args, csvs: list[str]) -> int:
  if args.config is not None:
    from mdx import config as config_lib

    report = audit_config(config_lib.resolve(args.config))
  else:
    report = audit_tables(csvs, args.patient_column, args.kind)
  print(splits.format_audit(report))
  return 1 if report["leak"] else 0  # a leak is a result (exit 1), not a mistake (exit 2)
