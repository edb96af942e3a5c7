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
  from mdx.data.cxr import phantoms
  extra = {}
  for key in ("findings", "prevalence", "studies_per_patient"):
    value = data_config.get(key) if hasattr(data_config, "get") else getattr(data_config, key, None)
    if value:
      extra[key] = (dict(value) if key == "prevalence" else tuple(value))
  return phantoms.ChestXrayPhantoms(num_patients=data_config.num_patients,
                                    image_size=data_config.image_size, seed=seed, **extra)


def _nih(data_config, seed: int) -> RecordSource:
  from mdx.data.cxr import nih
  return nih.make_source(data_config, seed)


def _chexpert(data_config, seed: int) -> RecordSource:
  from mdx.data.cxr import chexpert
  return chexpert.make_source(data_config, seed)


def _folders(data_config, seed: int) -> RecordSource:
  from mdx.data.cxr import folders
  return folders.make_source(data_config, seed)


def _nih_expert(data_config, seed: int) -> RecordSource:
  from mdx.data.cxr import nih_expert
  return nih_expert.make_source(data_config, seed)


# name -> builder(config.data, seed). The config.data fields of each real source are documented in
# its module: nih.py, chexpert.py, folders.py, nih_expert.py. Every real source also takes
# config.data.prepared_dir: when set, records are read from the TFDS ArrayRecord files that
# `python -m mdx.data.cli.prepare --config=...` wrote there (images already resized).
SOURCES: dict[str, Callable[[Any, int], RecordSource]] = {
    "phantoms": _phantoms, "nih": _nih, "chexpert": _chexpert, "folders": _folders,
    "nih_expert": _nih_expert}


# config.data fields each source reads, besides the pipeline's own (mdx.config.defaults().data).
_FILE_FIELDS = ("metadata", "images", "findings", "channels", "on_error", "prepared_dir", "bit_depth")
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "phantoms": ("findings", "prevalence", "studies_per_patient"),
    "nih": _FILE_FIELDS + ("view_positions",),
    "chexpert": _FILE_FIELDS + ("uncertain", "blank", "frontal_only"),
    "folders": ("root", "classes", "extensions", "negative_class", "patient_regex", "channels",
                "on_error", "prepared_dir", "bit_depth"),
    "nih_expert": _FILE_FIELDS + ("set",),
}


def check_fields(data_config) -> None:
  """A config.data field that neither the pipeline nor the chosen source reads is a typo: say so."""
  import difflib

  from mdx import config as config_lib
  name = data_config.source
  known = set(config_lib.defaults().data.keys()) | set(SOURCE_FIELDS.get(name, ()))
  keys = data_config.keys() if hasattr(data_config, "keys") else vars(data_config).keys()
  for key in keys:
    if key not in known:
      close = difflib.get_close_matches(key, sorted(known), n=1)
      hint = f" Did you mean 'data.{close[0]}'?" if close else ""
      raise ValueError(f"unknown config field 'data.{key}' for source {name!r}.{hint} Known: "
                       f"{sorted(known)}")


def make_source(data_config, seed: int) -> RecordSource:
  name = data_config.source
  if name not in SOURCES:
    raise ValueError(f"config.data.source={name!r} is unknown; choose one of {sorted(SOURCES)}")
  if name in SOURCE_FIELDS:  # sources registered elsewhere check their own fields
    check_fields(data_config)
  prepared = data_config.get("prepared_dir") if hasattr(data_config, "get") else None
  if prepared and name != "phantoms":
    from mdx.data.cxr import tfds_builders
    return tfds_builders.load_prepared(data_config, seed)
  return SOURCES[name](data_config, seed)
