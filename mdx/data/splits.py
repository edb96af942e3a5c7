"""Patient-level splits: no patient ever has images in two sets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def patient_split(
    patient_ids: Sequence[str] | np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
) -> dict[str, np.ndarray]:
  """Splits record indices into named sets by patient.

  Args:
    patient_ids: the patient id of every record.
    fractions: share of *patients* per named set, e.g. {'test': .15, 'validation': .15};
      the remaining patients form 'train'.
    seed: decides the assignment.

  Returns:
    {name: sorted record indices} including 'train'.
  """
  pids = np.asarray(patient_ids).astype(str)
  total = float(sum(fractions.values()))
  if not 0.0 <= total < 1.0 or any(f < 0 for f in fractions.values()):
    raise ValueError(f"split fractions {dict(fractions)} must be >= 0 and sum to < 1 "
                     "(the rest of the patients go to 'train')")
  unique = np.unique(pids)
  order = np.random.default_rng(seed).permutation(len(unique))
  assignment = np.full(len(unique), "train", dtype=object)
  start = 0
  for name, frac in fractions.items():
    n = int(round(frac * len(unique)))
    assignment[order[start:start + n]] = name
    start += n
  set_of_record = assignment[np.searchsorted(unique, pids)]
  out = {name: np.flatnonzero(set_of_record == name) for name in ["train", *fractions]}
  for name, idx in out.items():
    if len(idx) == 0:
      raise ValueError(f"split '{name}' is empty: {len(unique)} patients are too few for "
                       f"fractions {dict(fractions)}; use more data or larger fractions")
  return out
