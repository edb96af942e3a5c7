"""Patient-level split of a metadata CSV into train / validation / test CSVs, then an audit.

  python -m mdx split --source=nih --metadata=CSV --out=DIR [--seed=N]
      [--test_size=N --val_size=N --min_positive_share=0.5 --findings=Mass,Pneumonia,...]
      [--official=DIR]  (the official NIH test list; train_val split by patient)

With --test_size / --val_size (image counts, or shares when < 1) the test set is sampled first, then
validation, each with at least --min_positive_share of images positive for one of --findings; the
remaining patients go to training. Without them, --test_fraction / --val_fraction of the patients
are drawn at random. DIR/train.csv, DIR/validation.csv and DIR/test.csv keep the original rows
and columns; a run trains on them with --config.data.split.by=lists
--config.data.split.lists_dir=DIR (each record in the set whose CSV lists its image). The flags are
a config.data.split policy split by training's own dispatcher (mdx.data.splits.split_records), so
the same policy splits the same records alike in both. A user's mistake (a missing CSV, an unknown
finding) is one line `error: ...` and exit status 2 (mdx.cli); exit status 1 means the audit found
a patient in two sets.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from mdx.data import splits
from mdx.data.cxr import metadata
from mdx.data.image import file_source

FLAGS = flags.FLAGS


# The policy fields (mdx.data.splits.split_records) as this command's flags, for its messages.
FLAGS_OF_FIELDS = {
  "test": "--test_fraction",
  "val": "--val_fraction",
  "lists_dir": "--official",
  "by": "the split flags",
  "": "the split flags",
}


def split_policy(
  test_size: float | None = None,
  val_size: float | None = None,
  min_positive_share: float = 0.0,
  findings: list[str] | None = None,
  test_fraction: float = 0.15,
  val_fraction: float = 0.15,
  official: str | None = None,
) -> dict:
  """The command's flags as the config.data.split policy that training reads (the same fields,
  the same dispatcher)."""
  if official:
    return {"by": "official", "lists_dir": official, "val": val_fraction}
  if test_size is not None or val_size is not None:
    if test_size is None or val_size is None:
      raise ValueError("give both --test_size and --val_size")
    return {
      "by": "test_first",
      "test_size": test_size,
      "val_size": val_size,
      "min_positive_share": min_positive_share,
      "findings": findings,
    }
  return {"by": "patient", "test": test_fraction, "val": val_fraction}


def split_table(table: metadata.Table, seed: int, policy: dict) -> dict[str, np.ndarray]:
  """A metadata table split by training's dispatcher (mdx.data.splits.split_records) under a
  config.data.split policy (the command's flags: split_policy)."""
  records = splits.ArrayRecords(
    table.patient_ids, table.image_ids, table.labels, table.findings, whose=table.path
  )
  return splits.split_records(
    policy, records, seed, field=lambda name: FLAGS_OF_FIELDS.get(name, f"--{name}")
  )


def define_flags() -> None:
  flags.DEFINE_enum("source", "auto", ["auto", "nih", "chexpert", "columns"], "table layout")
  flags.DEFINE_string("metadata", None, "the metadata CSV (or CSV.GZ) to split")
  flags.DEFINE_string("out", None, "folder for train.csv, validation.csv and test.csv")
  flags.DEFINE_integer("seed", 0, "seed of the split")
  flags.DEFINE_float("test_size", None, "test images (a count, or a share when < 1)")
  flags.DEFINE_float("val_size", None, "validation images (a count, or a share when < 1)")
  flags.DEFINE_float("min_positive_share", 0.0, "least share of test / validation images positive")
  flags.DEFINE_list("findings", None, "findings that count as positive (default: all)")
  flags.DEFINE_float("test_fraction", 0.15, "share of patients in test (without --test_size)")
  flags.DEFINE_float("val_fraction", 0.15, "share of patients in validation")
  flags.DEFINE_string("official", None, "folder with train_val_list.txt and test_list.txt")
  flags.DEFINE_string("patient_column", None, "patient id column (default: the layout's)")
  flags.mark_flags_as_required(["metadata", "out"])


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --out=DIR")
  return _split(FLAGS)


def _split(args) -> int:
  start = time.perf_counter()
  table = metadata.load(args.metadata, args.source, patient_column=args.patient_column)
  findings = [f.strip() for f in args.findings] if args.findings else None
  policy = split_policy(
    args.test_size,
    args.val_size,
    args.min_positive_share,
    findings,
    args.test_fraction,
    args.val_fraction,
    args.official,
  )
  parts = split_table(table, args.seed, policy)
  for name, idx in parts.items():
    file_source.write_csv(
      os.path.join(args.out, splits.LIST_FILES[name]), table.columns, [table.rows[i] for i in idx]
    )
  elapsed = time.perf_counter() - start
  report = splits.audit(
    {
      n: {
        "patient_ids": table.patient_ids[i],
        "image_ids": table.image_ids[i],
        "labels": table.labels[i],
      }
      for n, i in parts.items()
    },
    table.findings,
  )
  print(
    f"split {len(table.rows)} images of {len(np.unique(table.patient_ids))} patients from "
    f"{args.metadata} into {args.out}/{{train,validation,test}}.csv in {elapsed:.1f} s"
  )
  if findings:
    positive = splits.positives_any(table.labels, [table.findings.index(f) for f in findings])
    for name, idx in parts.items():
      print(f"{name}: {positive[idx].mean():.1%} of images positive for any of {findings}")
  print(splits.format_audit(report))
  print(
    "train on these sets: --config.data.split.by=lists "
    f"--config.data.split.lists_dir={os.path.abspath(args.out)}"
  )
  return 1 if report["leak"] else 0
