"""What every chest X-ray source does with the one label space (findings.CANONICAL): the canonical
findings a config asks for, and the label matrix with nan where the dataset does not label one.

A source maps its own label names onto canonical findings (its TO_CANONICAL table) and predicts
the canonical findings config.data.findings names; a canonical finding the dataset does not label
is a column of nan (unknown: masked out of loss and metrics), never of zeros, and is logged once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from mdx.data.cxr import findings as findings_lib
from mdx.data.image import file_source


def requested_findings(data_config, default: Sequence[str]) -> tuple[str, ...]:
  """config.data.findings (default `default`) as a tuple of canonical names, told without reading
  a file; a name outside CANONICAL or named twice is a ValueError listing the canonical names."""
  names = tuple(file_source.config_get(data_config, "findings", ()) or default)
  bad = [n for n in names if n not in findings_lib.CANONICAL]
  if bad:
    raise ValueError(
      f"config.data.findings has {bad}, which are not canonical finding names; choose from "
      f"{list(findings_lib.CANONICAL)}"
    )
  if len(set(names)) != len(names):
    raise ValueError(f"config.data.findings names a finding twice: {list(names)}")
  return names


def log_unlabelled(dataset: str, findings: Sequence[str], labelled) -> list[str]:
  """The findings `dataset` does not label (not in `labelled`), logged at INFO when any."""
  missing = [f for f in findings if f not in labelled]
  if missing:
    logging.info(
      "%s labels no %s: their columns are unknown (nan) for every image", dataset, missing
    )
  return missing


def label_matrix(
  dataset: str, n: int, findings: Sequence[str], columns: Mapping[str, np.ndarray | float]
) -> np.ndarray:
  """float32 [n, len(findings)]: columns[f] (values of the n records, or one value for all) for
  each finding the dataset labels, nan for the others (logged)."""
  out = np.full((n, len(findings)), np.nan, np.float32)
  for j, f in enumerate(findings):
    if f in columns:
      out[:, j] = columns[f]
  log_unlabelled(dataset, findings, columns)
  return out


def term_labels(findings: Sequence[str], labelled, positive: set[str], normal: bool) -> np.ndarray:
  """float32 [F] of one image of a dataset labelled by a list of terms (PadChest, OpenI): nan for
  a finding the dataset does not label, No Finding 1 exactly when the terms say normal, else 1 for
  the findings a term maps onto (`positive`) and 0 for the rest."""
  out = np.empty(len(findings), np.float32)
  for j, f in enumerate(findings):
    if f not in labelled:
      out[j] = np.nan
    elif f == findings_lib.NO_FINDING:
      out[j] = float(normal)
    else:
      out[j] = float(f in positive)
  return out
