"""Patient-level split of a metadata CSV into train / validation / test CSVs, then an audit.

  python -m mdx.data.cli.split --source=nih --metadata=CSV --out=DIR [--seed=N]
      [--test-size=N --val-size=N --min-positive-share=0.5 --findings=Mass,Pneumonia,...]
      [--official=DIR]  (the official NIH test list; train_val split by patient)

With --test-size / --val-size (image counts, or shares when < 1) the test set is sampled first, then
validation, each with at least --min-positive-share of images positive for one of --findings; the
remaining patients go to training. Without them, --test-fraction / --val-fraction of the patients
are drawn at random. DIR/train.csv, DIR/validation.csv and DIR/test.csv keep the original rows
and columns. A user's mistake (a missing CSV, an unknown finding) is one line `error: ...` and exit
status 2 (mdx.cli); exit status 1 means the audit found a patient in two sets.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from mdx import cli
from mdx.data import splits
from mdx.data.cxr import file_source, metadata


def split_table(
  table: metadata.Table,
  seed: int,
  test_size: float | None = None,
  val_size: float | None = None,
  min_positive_share: float = 0.0,
  findings: list[str] | None = None,
  test_fraction: float = 0.15,
  val_fraction: float = 0.15,
  official: str | None = None,
) -> dict[str, np.ndarray]:
  if official:
    return splits.official_nih_split(
      table.image_ids, table.patient_ids, official, val_fraction, seed
    )
  if test_size is not None or val_size is not None:
    if test_size is None or val_size is None:
      raise ValueError("give both --test-size and --val-size")
    names = findings or list(table.findings)
    missing = [f for f in names if f not in table.findings]
    if missing:
      raise ValueError(
        f"--findings {missing} are not in {table.path}'s findings {list(table.findings)}"
      )
    positive = splits.positives_any(table.labels, [table.findings.index(f) for f in names])
    return splits.test_first_split(
      table.patient_ids, positive, test_size, val_size, min_positive_share, seed
    )
  return splits.patient_split(
    table.patient_ids, {"test": test_fraction, "validation": val_fraction}, seed
  )


def main(argv: list[str] | None = None) -> int:
  p = cli.ArgumentParser(prog="python -m mdx.data.cli.split", description=__doc__)
  p.add_argument("--source", default="auto", choices=["auto", "nih", "chexpert", "columns"])
  p.add_argument("--metadata", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--test-size", type=float, default=None)
  p.add_argument("--val-size", type=float, default=None)
  p.add_argument("--min-positive-share", type=float, default=0.0)
  p.add_argument("--findings", default=None, help="comma-separated finding names")
  p.add_argument("--test-fraction", type=float, default=0.15)
  p.add_argument("--val-fraction", type=float, default=0.15)
  p.add_argument(
    "--official", default=None, help="folder with train_val_list.txt and test_list.txt"
  )
  p.add_argument("--patient-column", default=None)
  args = p.parse_args(argv)
  return cli.call(_split, args, debug=args.debug)


def _split(args) -> int:
  start = time.perf_counter()
  table = metadata.load(args.metadata, args.source, patient_column=args.patient_column)
  findings = [f.strip() for f in args.findings.split(",")] if args.findings else None
  parts = split_table(
    table,
    args.seed,
    args.test_size,
    args.val_size,
    args.min_positive_share,
    findings,
    args.test_fraction,
    args.val_fraction,
    args.official,
  )
  for name, idx in parts.items():
    file_source.write_csv(
      os.path.join(args.out, f"{name}.csv"), table.columns, [table.rows[i] for i in idx]
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
  return 1 if report["leak"] else 0


if __name__ == "__main__":
  sys.exit(main())
