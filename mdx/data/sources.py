"""One registry of record sources, 2D and 3D: config.data.source -> a random-access source.

Every source declares the config.data fields it reads (besides the task's own, such as image_size
or patch_size), so mdx.config can reject a typo in any of them before anything is built.

2D sources ('image': films for classification) offer
  len(source), source[i] -> {'image': uint8|uint16 array [H, W, C], 'labels': float32 [F]
  (nan = unknown), 'patient_id': str, 'image_id': str}
and, without decoding any image (splits and class weights need them for every record):
  source.findings -> tuple of F names, source.labels() -> float32 [N, F],
  source.patient_ids() -> str array [N], source.image_ids() -> str array [N].
3D sources ('volume': scans for segmentation) offer
  len(source), source[i] -> {'image': float32 [D, H, W, C], 'label': [D, H, W] classes or
  [D, H, W, R] regions, 'case_id', 'affine', 'spacing'},
  source.class_names, source.num_channels, source.label_mode ('classes' | 'regions'),
  source.patient_ids() (one patient per case).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from mdx.data.cxr.file_source import config_get

IMAGE, VOLUME = "image", "volume"


class RecordSource(Protocol):
  findings: tuple[str, ...]

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, Any]: ...
  def labels(self) -> np.ndarray: ...
  def patient_ids(self) -> np.ndarray: ...
  def image_ids(self) -> np.ndarray: ...


class VolumeSource(Protocol):
  class_names: tuple[str, ...] | None
  num_channels: int | None
  label_mode: str

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, Any]: ...
  def patient_ids(self) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  kind: str  # IMAGE or VOLUME
  build: Callable[[Any, int], Any]  # (config.data, seed) -> source
  fields: tuple[str, ...]  # the config.data fields it reads
  preparable: bool = False  # reads TFDS ArrayRecords when data.prepared_dir is set
  # The fields among `fields` that name a file or folder: mdx.config makes them absolute once, so
  # config.json, bundles and sweeps record where the data was, whatever the current directory.
  paths: tuple[str, ...] = ()


def _phantoms(data, seed: int):
  from mdx.data.cxr import phantoms

  extra = {}
  for key in ("findings", "prevalence", "studies_per_patient"):
    value = config_get(data, key)
    if value:
      extra[key] = dict(value) if key == "prevalence" else tuple(value)
  return phantoms.ChestXrayPhantoms(
    num_patients=config_get(data, "num_patients", 600),
    image_size=data.image_size,
    seed=seed,
    **extra,
  )


def _from_module(module: str) -> Callable[[Any, int], Any]:
  def build(data, seed: int):
    import importlib

    return importlib.import_module(module).make_source(data, seed)

  return build


def _msd(data, seed: int):
  del seed
  from mdx.data.volume import msd

  names = tuple(config_get(data, "class_names", ())) or None
  return msd.MSDSource(
    config_get(data, "root", ""), class_names=names, cache=bool(config_get(data, "cache", False))
  )


def _brats(data, seed: int):
  del seed
  from mdx.data.volume import brats

  return brats.BraTSSource(
    config_get(data, "root", ""), label_mode=config_get(data, "label_mode", "regions")
  )


def _brain_phantoms(data, seed: int):
  from mdx.data.volume import brain_phantoms

  return brain_phantoms.BrainPhantoms(
    int(config_get(data, "num_cases", 32)),
    tuple(config_get(data, "shape", (48, 48, 48))),
    seed=seed,
    label_mode=config_get(data, "label_mode", "regions"),
  )


# The config.data fields of each real source are documented in its module
# (mdx/data/cxr/nih.py, ...).
_FILE_PATHS = ("metadata", "images", "prepared_dir")
_FILE_FIELDS = (
  "metadata",
  "images",
  "findings",
  "channels",
  "on_error",
  "prepared_dir",
  "bit_depth",
)
SOURCES: dict[str, SourceSpec] = {
  "phantoms": SourceSpec(
    IMAGE, _phantoms, ("num_patients", "findings", "prevalence", "studies_per_patient")
  ),
  "nih": SourceSpec(
    IMAGE,
    _from_module("mdx.data.cxr.nih"),
    _FILE_FIELDS + ("view_positions",),
    preparable=True,
    paths=_FILE_PATHS,
  ),
  "chexpert": SourceSpec(
    IMAGE,
    _from_module("mdx.data.cxr.chexpert"),
    _FILE_FIELDS + ("uncertain", "blank", "frontal_only"),
    preparable=True,
    paths=_FILE_PATHS,
  ),
  "folders": SourceSpec(
    IMAGE,
    _from_module("mdx.data.cxr.folders"),
    (
      "root",
      "classes",
      "extensions",
      "negative_class",
      "patient_regex",
      "channels",
      "on_error",
      "prepared_dir",
      "bit_depth",
    ),
    preparable=True,
    paths=("root", "prepared_dir"),
  ),
  "nih_expert": SourceSpec(
    IMAGE,
    _from_module("mdx.data.cxr.nih_expert"),
    _FILE_FIELDS + ("set",),
    preparable=True,
    paths=_FILE_PATHS,
  ),
  # on_error: 'raise' (default) or 'skip' cases that cannot be read or hold NaN (mdx.data.check)
  "msd": SourceSpec(VOLUME, _msd, ("root", "class_names", "cache", "on_error"), paths=("root",)),
  "brats": SourceSpec(VOLUME, _brats, ("root", "label_mode", "on_error"), paths=("root",)),
  "brain_phantoms": SourceSpec(VOLUME, _brain_phantoms, ("num_cases", "shape", "label_mode")),
}


def spec(name: str, kind: str | None = None) -> SourceSpec:
  """The registered source `name` (of `kind`, when given); an unknown name is an error listing
  them."""
  choices = sorted(n for n, s in SOURCES.items() if kind is None or s.kind == kind)
  if name not in choices:
    what = f" for {kind} tasks" if kind else ""
    raise ValueError(f"config.data.source={name!r} is unknown{what}; choose one of {choices}")
  return SOURCES[name]


def make_source(data_config, seed: int, kind: str | None = None):
  """config.data -> the source it names (prepared records when data.prepared_dir is set)."""
  entry = spec(data_config.source, kind)
  if entry.preparable and config_get(data_config, "prepared_dir"):
    from mdx.data.cxr import tfds_builders

    return tfds_builders.load_prepared(data_config, seed)
  return entry.build(data_config, seed)
