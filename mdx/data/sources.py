"""The record-source interface and a factory that builds a source from config.data.

A source is a random-access sequence of records. Every source, phantom or real, offers:
  len(source), source[i] -> {'image': uint8|uint16 array [H, W, C], 'labels': float32 [num_findings]
  (nan = unknown), 'patient_id': str, 'image_id': str}
and, without decoding any image (splits and class weights need them for every record):
  source.findings -> tuple of finding names, source.labels() -> float32 [N, num_findings],
  source.patient_ids() -> str array [N], source.image_ids() -> str array [N].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


class RecordSource(Protocol):
  findings: tuple[str, ...]

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, Any]: ...
  def labels(self) -> np.ndarray: ...
  def patient_ids(self) -> np.ndarray: ...
  def image_ids(self) -> np.ndarray: ...


def _phantoms(data_config, seed: int) -> RecordSource:
  from mdx.data import phantoms
  return phantoms.ChestXrayPhantoms(num_patients=data_config.num_patients,
                                    image_size=data_config.image_size, seed=seed)


# name -> builder(config.data, seed). Real sources register here too.
SOURCES: dict[str, Callable[[Any, int], RecordSource]] = {"phantoms": _phantoms}


def make_source(data_config, seed: int) -> RecordSource:
  name = data_config.source
  if name not in SOURCES:
    raise ValueError(f"config.data.source={name!r} is unknown; choose one of {sorted(SOURCES)}")
  return SOURCES[name](data_config, seed)
