"""Metadata tables (CSV or CSV.GZ) and a record source backed by image files listed in them.

The real datasets come as a CSV of rows (image, labels, patient) next to folders of images. read_csv
checks the columns a source needs and names the file and the missing column; FileSource is the
random-access source that the NIH, CheXpert, folder and expert-label sources all return.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from mdx import outputs
from mdx.data.image import images as images_lib


def read_csv(
  path: str | os.PathLike, required: Sequence[str] = ()
) -> tuple[list[str], list[dict[str, str]]]:
  """(column names, rows as dicts) of a CSV or gzip-compressed CSV table; checks required columns.

  Every table mdx reads goes through here (metadata, expert labels, readers' files, split lists),
  so every one refuses the same mistakes before any work: a row with fewer or more fields than the
  header (csv.DictReader would fill None or keep the extra cells aside, and a short NIH row would
  train with patient id None), text that is not UTF-8 and a malformed CSV are a ValueError naming
  the file and line. Blank lines are skipped; cells that mdx neutralised when it wrote them
  (mdx.outputs.safe_cell: "'=1+2.png") are read back as they were.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"metadata file {path} does not exist")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    try:
      columns = [outputs.original_cell(c) for c in next(reader, [])]
      missing = [c for c in required if c not in columns]
      if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {columns}")
      rows = []
      for fields in reader:
        if not fields:
          continue
        if len(fields) != len(columns):
          raise ValueError(_ragged(path, reader.line_num, len(fields), len(columns)))
        rows.append(dict(zip(columns, map(outputs.original_cell, fields))))
    except csv.Error as e:  # a NUL byte, an unterminated quote at the end of the file
      raise ValueError(
        f"{path} line {reader.line_num}: not a readable CSV table ({e}); fix the file"
      ) from None
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}: not UTF-8 text ({e.reason}); save it as UTF-8 CSV") from None
    except (gzip.BadGzipFile, EOFError) as e:  # a .gz that is not one, or cut short
      raise ValueError(f"{path}: not a complete gzip file ({e}); download it again") from None
  return columns, rows


def _ragged(path: str, line: int, fields: int, columns: int) -> str:
  what = "fewer" if fields < columns else "more"
  return (
    f"{path} line {line}: {fields} field{'s' * (fields != 1)}, the header has {columns}; every "
    f"row needs one value per column ({what} here: a missing or extra comma, or a value holding "
    "a comma without quotes): fix the row or remove it"
  )


def write_csv(
  path: str | os.PathLike, columns: Sequence[str], rows: Sequence[dict[str, str]]
) -> None:
  """Writes rows with the given columns (original order), creating the folder: the whole file or
  nothing (mdx.outputs.atomic_path), cells a spreadsheet would run as a formula neutralised
  (mdx.outputs.csv_writer; read_csv reads them back as they were)."""
  path = os.fspath(path)
  buf = io.StringIO()
  writer = outputs.csv_writer(buf, lineterminator="\n")
  writer.writerow(columns)
  writer.writerows([row.get(c, "") for c in columns] for row in rows)
  opener = gzip.open if path.endswith(".gz") else open
  with outputs.atomic_path(path) as tmp, opener(tmp, "wt", encoding="utf-8", newline="") as f:
    f.write(buf.getvalue())


ON_MISSING = ("raise", "skip", "unchecked")


def keep_existing(paths: Sequence[str], what: str, on_error: str) -> np.ndarray:
  """Boolean mask of the rows to keep: the files that exist; a missing one raises under
  on_error='raise' and is dropped under 'skip'. 'unchecked' keeps every row whether its file
  exists or not: a source built from its label tables alone (mdx.data.card.build_from_tables), as
  training would build it but without the images; nothing is read from those rows' files."""
  if on_error not in ON_MISSING:
    raise ValueError(f"config.data.on_error={on_error!r}; choose 'raise' or 'skip'")
  if on_error == "unchecked":
    return np.ones(len(paths), bool)
  exists = np.array([os.path.exists(p) for p in paths], bool)
  missing = int((~exists).sum())
  if missing:
    first = [paths[i] for i in np.flatnonzero(~exists)[:3]]
    if on_error == "raise":
      raise FileNotFoundError(
        f"{what}: {missing} of {len(paths)} image files are missing, e.g. "
        f"{first}; fix config.data.images or set config.data.on_error='skip'"
      )
    logging.warning(
      "%s: skipped %d of %d rows whose image file is missing (e.g. %s)",
      what,
      missing,
      len(paths),
      first,
    )
  return exists


class FileSource:
  """Random-access records from image files: read lazily, labels and patients held in memory."""

  def __init__(
    self,
    paths: Sequence[str],
    labels: np.ndarray,
    patient_ids: Sequence[str],
    image_ids: Sequence[str],
    findings: Sequence[str],
    channels: int = 1,
    name: str = "source",
    skipped: int = 0,
    extra: dict[str, np.ndarray] | None = None,
  ):
    labels = np.asarray(labels, np.float32)
    if not len(paths):
      raise ValueError(
        f"{name}: no records left (after filters and skipped files); check the "
        "metadata, config.data filters and the image folder"
      )
    if labels.shape != (len(paths), len(findings)):
      raise ValueError(f"{name}: labels shape {labels.shape} != ({len(paths)}, {len(findings)})")
    self.name = name
    self.findings = tuple(findings)
    self.channels = channels
    self.skipped = skipped
    self._paths = np.asarray(paths, dtype=object)
    self._labels = labels
    self._patients = np.asarray(patient_ids).astype(str)
    self._image_ids = np.asarray(image_ids).astype(str)
    self.extra = extra or {}

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    return {
      "image": images_lib.read_image(self._paths[index], self.channels),
      "labels": self._labels[index].copy(),
      "patient_id": self._patients[index],
      "image_id": self._image_ids[index],
    }

  def labels(self) -> np.ndarray:
    return self._labels

  def patient_ids(self) -> np.ndarray:
    return self._patients

  def image_ids(self) -> np.ndarray:
    return self._image_ids

  def paths(self) -> np.ndarray:
    return self._paths

  # --- for mdx.data.check (every record verified before training) ---

  def record_files(self, index: int) -> tuple[str, ...]:
    return (str(self._paths[index]),)

  def record_name(self, index: int) -> str:
    return self._image_ids[index]

  def select(self, indices) -> FileSource:
    """The records at `indices` (the others are counted as skipped)."""
    indices = np.asarray(indices, np.int64)
    return FileSource(
      self._paths[indices],
      self._labels[indices],
      self._patients[indices],
      self._image_ids[indices],
      self.findings,
      channels=self.channels,
      name=self.name,
      skipped=self.skipped + len(self) - len(indices),
      extra={k: np.asarray(v)[indices] for k, v in self.extra.items()},
    )

  def __repr__(self) -> str:
    return (
      f"{self.name}({len(self)} images, {len(np.unique(self._patients))} patients, "
      f"findings={list(self.findings)}, skipped={self.skipped})"
    )


def config_get(config, name: str, default=None):
  """config.name when set (ConfigDict or dict), else default."""
  if isinstance(config, dict):
    value = config.get(name, default)
  else:
    value = getattr(config, name, default) if name in config else default
  return default if value is None else value


def require(config, name: str, source: str):
  value = config_get(config, name)
  if value is None:
    raise ValueError(f"config.data.{name} must be set for config.data.source={source!r}")
  return value


def records_dir() -> str:
  """The per-user folder of prepared records, for experiments to set as config.data.prepared_dir:
  MDX_RECORDS, else ~/.cache/mdx/records. Per user, not a shared /tmp folder that another user may
  own; per machine, so every host of a pod prepares (once) on its own disk. MDX_RECORDS='' decodes
  the original files, as --config.data.prepared_dir='' does. Here, not in tfds_builders, so that an
  experiment file can call it without importing TFDS."""
  return os.environ.get(
    "MDX_RECORDS", os.path.join(os.path.expanduser("~"), ".cache", "mdx", "records")
  )
