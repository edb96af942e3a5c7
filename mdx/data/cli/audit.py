"""Leakage audit: which patients, images and findings two or more sets share.

  python -m mdx.data.cli.audit A.csv B.csv [C.csv ...] [--patient-column="Patient ID"]
  python -m mdx.data.cli.audit --config=experiments/nih_64px.py

prints a summary per set and per pair, and exits with status 1 when any patient is in two sets
(0 otherwise), so it can guard a pipeline or CI job. A user's mistake (a missing or unreadable CSV)
is one line `error: ...` and exit status 2 (mdx.cli).
"""

from __future__ import annotations

import os
import sys

from mdx import cli
from mdx.data import splits
from mdx.data.cxr import metadata


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
  from mdx.data import sources

  source = sources.make_source(config.data, config.seed)
  parts = splits.make_split(config.data, source, config.seed)
  labels, pids, ids = source.labels(), source.patient_ids(), source.image_ids()
  return splits.audit(
    {
      n: {"patient_ids": pids[i], "image_ids": ids[i], "labels": labels[i]}
      for n, i in parts.items()
    },
    source.findings,
  )


def _load_config(path: str):
  from mdx import config as config_lib

  return config_lib.resolve(config_lib.load_experiment(path).get_config())


def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(prog="python -m mdx.data.cli.audit", description=__doc__)
  parser.add_argument("csvs", nargs="*", help="metadata CSV(s) of the sets to compare")
  parser.add_argument("--patient-column", default=None, help="patient id column (default: guessed)")
  parser.add_argument("--kind", default="auto", choices=["auto", "nih", "chexpert", "columns"])
  parser.add_argument("--config", default=None, help="an experiment file: audit its split")
  args = parser.parse_args(argv)
  if not args.config and len(args.csvs) < 2:
    parser.error("give at least two CSV files (or --config)")
  return cli.call(_audit, args, debug=args.debug)


def _audit(args) -> int:
  if args.config:
    report = audit_config(_load_config(args.config))
  else:
    report = audit_tables(args.csvs, args.patient_column, args.kind)
  print(splits.format_audit(report))
  return 1 if report["leak"] else 0  # a leak is a result (exit 1), not a mistake (exit 2)


if __name__ == "__main__":
  sys.exit(main())
