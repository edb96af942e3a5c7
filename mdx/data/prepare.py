"""One path from config.data to the records a run uses: source -> record check -> split -> audit.

Why one function: both training tasks and external validation start from config.data, and each
step is a data decision that must be taken the same way wherever records are read: which records
exist (the source, mdx.data.sources), which of them can be used (every record decoded once,
mdx.data.check, under config.data.on_error: a bad file stops the run naming it, or is dropped and
listed), which patient goes to which set (mdx.data.splits), and whether any patient ended up in two
sets (the leakage audit). Written once, no caller splits records it has not checked, and external
validation checks its dataset as training does instead of meeting a corrupt file mid-prediction.

  prepare_dataset(config.data, seed, kind, workdir)               training: every step
  prepare_dataset(config.data, seed, kind, workdir, split=False)  external validation: every
                                                                  record, checked, no split

With several processes every one prepares the same dataset (the same splits, from the seed);
process 0 alone shows the check's progress and writes into workdir: the record check's lists
(bad_records.csv, skipped_records.csv, constant_records.csv) and, for 2D sources, the audit
(split_audit.json). A volume source's splits are not audited: one case is one patient.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from absl import logging

from mdx import outputs
from mdx.data import check, sources, splits

AUDIT_FILE = "split_audit.json"


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A dataset ready for a run; indices are those of `source` (the checked one)."""

  source: Any  # the checked source: under on_error='skip' without its bad records
  splits: dict[str, np.ndarray] | None  # name -> record indices (splits.make_split); None: no split
  check: check.CheckResult | None  # None: a generated source (phantoms), nothing to check
  audit: dict | None  # splits.audit_json of the splits (2D sources); None otherwise


def prepare_dataset(
  data_config, seed: int, kind: str, workdir: str | None = None, *, split: bool = True
) -> Prepared:
  """config.data -> its source of `kind` (sources.IMAGE or VOLUME), every record checked under
  config.data.on_error, split by config.data.split and the splits audited (split=False: every
  record, no split: external validation). workdir receives the check's lists and the audit
  (process 0 only; None: the lists go to the check cache's folder, named in the log)."""
  import jax  # which process writes; the data room has no other use for it

  chief = jax.process_index() == 0
  writes = workdir if chief else None
  source = sources.make_source(data_config, seed, kind)
  # Every record decoded once (or found in the check cache) before splitting: a bad file fails
  # now, not mid-training or mid-prediction, and on_error='skip' splits the dataset as if it had
  # been deleted.
  source, result = check.check_configured(source, data_config, writes, progress=chief)
  if not split:
    return Prepared(source, None, result, None)
  sets = splits.make_split(data_config, source, seed)  # by patient
  audit = audit_splits(source, sets, writes) if kind == sources.IMAGE else None
  return Prepared(source, sets, result, audit)


def audit_report(source, sets: dict[str, np.ndarray]) -> dict:
  """splits.audit of a 2D source's splits: the patients, images and findings the sets share."""
  ids, pids, labels = source.image_ids(), source.patient_ids(), source.labels()
  return splits.audit(
    {
      name: {"patient_ids": pids[i], "image_ids": ids[i], "labels": labels[i]}
      for name, i in sets.items()
    },
    source.findings,
  )


def audit_splits(source, sets: dict[str, np.ndarray], workdir: str | None = None) -> dict:
  """The leakage audit of a 2D source's splits, logged (loudly when a patient is in two sets: only
  the leakage ablation's image split does that) and written to WORKDIR/split_audit.json; returns
  its JSON summary (splits.audit_json)."""
  report = audit_report(source, sets)
  text = splits.format_audit(report)
  if report["leak"]:
    logging.warning("Leakage audit of the splits:\n%s", text)
  else:
    logging.info("Leakage audit of the splits:\n%s", text)
  summary = splits.audit_json(report)
  if workdir:  # whole or not at all
    outputs.write_text(os.path.join(workdir, AUDIT_FILE), json.dumps(summary, indent=1))
  return summary
