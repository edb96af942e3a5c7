"""Resampling against class imbalance: which record indices one epoch visits.

config.data.resample (a dict; None turns resampling off):
  mode: 'oversample' - records positive for a finding are repeated so that, per finding, positives
          reach `ratio` x negatives (repeat-factor sampling: a record's factor is the largest factor
          of its positive findings, so multi-label records are not counted twice);
        'undersample' - every record positive for any finding is kept, and records negative for all
          findings are kept with the probability that makes (any positive) : (all negative) = ratio.
  ratio: target positives per negative (1.0 = balanced).
  max_repeat: cap on a record's repeat factor when oversampling (default 10; a 0.2% finding would
          otherwise be repeated hundreds of times and memorised).
  findings: indices or names of the findings to balance (default all).
Fractional repeat factors are rounded stochastically, seeded by (seed, epoch), with every epoch of
the same length: the same config gives the same epochs, and each epoch draws anew. Unknown labels
(nan) count as not positive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

# The fields of config.data.resample (see the module docstring).
RESAMPLE_FIELDS = ("mode", "ratio", "max_repeat", "findings")


def _columns(policy: Mapping[str, Any], num: int, findings: Sequence[str] | None) -> list[int]:
  chosen = policy.get("findings")
  if chosen is None:
    return list(range(num))
  out = []
  for f in chosen:
    if isinstance(f, str):
      if findings is None or f not in findings:
        raise ValueError(f"config.data.resample.findings has {f!r}, not one of {findings}")
      out.append(list(findings).index(f))
    else:
      out.append(int(f))
  return out


def repeat_factors(
  labels: np.ndarray, policy: Mapping[str, Any], findings: Sequence[str] | None = None
) -> np.ndarray:
  """Expected number of visits per record in one epoch (float [N])."""
  labels = np.asarray(labels, np.float64)
  if labels.ndim == 1:
    labels = labels[:, None]
  pos = np.nan_to_num(labels[:, _columns(policy, labels.shape[1], findings)], nan=0.0) > 0.5
  ratio = float(policy.get("ratio", 1.0))
  if ratio <= 0:
    raise ValueError(f"config.data.resample.ratio={ratio} must be > 0")
  mode = policy.get("mode", "oversample")
  n = len(labels)
  if mode == "oversample":
    n_pos = pos.sum(0)
    per_finding = np.where(n_pos > 0, ratio * (n - n_pos) / np.maximum(n_pos, 1), 1.0)
    per_finding = np.clip(per_finding, 1.0, float(policy.get("max_repeat", 10.0)))
    return np.where(pos, per_finding, 1.0).max(axis=1) if pos.shape[1] else np.ones(n)
  if mode == "undersample":
    any_pos = pos.any(axis=1)
    n_any, n_none = int(any_pos.sum()), int((~any_pos).sum())
    keep = min(1.0, n_any / (ratio * n_none)) if n_none else 1.0
    return np.where(any_pos, 1.0, keep)
  raise ValueError(
    f"config.data.resample.mode={mode!r} is unknown; choose 'oversample' or 'undersample'"
  )


def resampled_indices(
  labels: np.ndarray,
  policy: Mapping[str, Any],
  seed: int,
  epoch: int,
  findings: Sequence[str] | None = None,
) -> np.ndarray:
  """Shuffled int64 record indices for one epoch (repeats allowed), decided by (seed, epoch).

  Every epoch has the same length, round(sum of repeat factors): each record is visited
  floor(factor) times, and the remaining visits go to records drawn without replacement with
  probability proportional to the fractional parts.
  """
  factors = repeat_factors(labels, policy, findings)
  rng = np.random.default_rng([seed, epoch, 0x5E5A])
  whole = np.floor(factors).astype(np.int64)
  frac = factors - whole
  extra = int(round(factors.sum())) - int(whole.sum())
  counts = whole.copy()
  if extra > 0:
    counts[rng.choice(len(factors), size=extra, replace=False, p=frac / frac.sum())] += 1
  out = np.repeat(np.arange(len(factors), dtype=np.int64), counts)
  if len(out) == 0:
    raise ValueError("resampling left no records; check config.data.resample")
  return rng.permutation(out)


def class_balance(
  labels: np.ndarray,
  indices: np.ndarray | None = None,
  findings: Sequence[str] | None = None,
  log: bool = True,
) -> dict[str, float]:
  """Share of positives per finding among the visited records (what the model actually sees)."""
  labels = np.asarray(labels, np.float64)
  if labels.ndim == 1:
    labels = labels[:, None]
  seen = labels if indices is None else labels[np.asarray(indices)]
  known = ~np.isnan(seen)
  share = np.where(known, seen, 0).sum(0) / np.maximum(known.sum(0), 1)
  names = findings or [str(i) for i in range(labels.shape[1])]
  out = dict(zip(names, share.round(4).tolist()))
  if log:
    logging.info("effective class balance (positive share) over %d records: %s", len(seen), out)
  return out
