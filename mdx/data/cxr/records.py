"""The per-record metadata every chest X-ray source exposes in FileSource.extra, the check that a
label table has rows, the image file extension a source of DICOM films takes for converted copies,
and the index of image folders.

Every source gives 'study_id', 'view', 'sex' ('M' / 'F' / ''), 'age' (years, nan unknown) per
record, '' and nan where the dataset has none, so the dataset card and the reports read one layout;
source-specific keys (boxes, masks, splits) come beside them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mdx.data.image import file_source


def objects(items: Sequence) -> np.ndarray:
  """[N] object array of `items` (lists, tuples, arrays kept whole: np.asarray would stack them),
  so that FileSource.select can index it as the other extra columns."""
  out = np.empty(len(items), object)
  for i, item in enumerate(items):
    out[i] = item
  return out


def extra(
  n: int,
  *,
  study_id: Sequence[str] | None = None,
  view: Sequence[str] | str | None = None,
  sex: Sequence[str] | None = None,
  age: Sequence[float] | None = None,
  **more: np.ndarray,
) -> dict[str, np.ndarray]:
  """FileSource.extra for n records: the common keys ('' and nan where not given; a str view is
  every record's) and the source's own `more`."""

  def text(values) -> np.ndarray:
    if values is None or isinstance(values, str):
      return np.asarray([values or ""] * n, dtype=str)
    return np.asarray(values, dtype=str).reshape(n)

  ages = np.full(n, np.nan, np.float32) if age is None else np.asarray(age, np.float32).reshape(n)
  return {
    "study_id": text(study_id),
    "view": text(view),
    "sex": text(sex),
    "age": ages,
    **more,
  }


SEXES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}


def sex_of(cell: str | None) -> str:
  """A table's sex cell as the card counts it: 'M' / 'Male' -> 'M', 'F' / 'Female' -> 'F',
  anything else (blank, 'Unknown', 'O') -> ''."""
  return SEXES.get((cell or "").strip().upper(), "")


def require_rows(path: str, rows: Sequence, what: str) -> None:
  """A ValueError naming `path` when its table (or list) has no data rows: an empty table would
  otherwise surface as 'no records left' without saying which file was empty."""
  if not rows:
    raise ValueError(f"{path}: no data rows; give {what}")


def extension(data_config, default: str, allowed: Sequence[str]) -> str:
  """config.data.extension (default `default`), lower case with its dot; one outside `allowed` is
  a ValueError listing them."""
  ext = str(file_source.config_get(data_config, "extension", default)).lower()
  ext = ext if ext.startswith(".") else "." + ext
  if ext not in allowed:
    raise ValueError(f"config.data.extension={ext!r}; choose one of {list(allowed)}")
  return ext


def index_files(folders: Sequence[str]) -> dict[str, str]:
  """File name -> path of the files directly in each of `folders` that exists; a name found in two
  folders keeps the first folder's file."""
  found: dict[str, str] = {}
  for folder in folders:
    if os.path.isdir(folder):
      with os.scandir(folder) as it:
        for entry in it:
          if entry.is_file():
            found.setdefault(entry.name, entry.path)
  return found
