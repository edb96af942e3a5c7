"""Header fields of DICOM films read without their pixels (patient, sex, age, view, study), for the
sources whose tables lack them (RSNA, SIIM), and DICOM ages in years. A header that cannot be read
is named before training; a film whose header reads but that has no pixel data is named by the
record check (mdx.data.check), which decodes every image.

Reading only the header (pydicom's stop_before_pixels and specific_tags) costs about 0.3 to 0.6 s
per 1000 files from a warm local disk, so a source can read every header when it is built, before
any image is decoded.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

from absl import logging

_AGE = re.compile(r"\s*(\d+)\s*([DWMY]?)\s*", re.IGNORECASE)
_PER_YEAR = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 365.25 / 7, "D": 365.25}


def age_years(value: str, max_age: float = math.inf) -> float:
  """DICOM PatientAge ('062Y', '010M', '003W', '020D'; RSNA and SIIM write plain '62') -> years;
  nan when empty, unreadable or above max_age (typos in real headers)."""
  m = _AGE.fullmatch(str(value or ""))
  if not m:
    return math.nan
  years = int(m.group(1)) / _PER_YEAR[m.group(2).upper()]
  return years if years <= max_age else math.nan


def refuse_unchecked(on_error: str, dataset: str, instead: str) -> None:
  """A ValueError when on_error is 'unchecked' (a source built from its tables alone, without
  its image files: file_source.keep_existing) and the source's config would read the DICOM
  headers; `instead` says what config gives the same without them."""
  if on_error == "unchecked":
    raise ValueError(
      f"{dataset}: config.data.on_error='unchecked' builds from the tables without the image "
      f"files, but this config reads every film's DICOM header; {instead}"
    )


def read(
  paths: Sequence[str], tags: Sequence[str], on_error: str, dataset: str
) -> tuple[list[dict[str, str] | None], int]:
  """({tag: value as stripped text, '' when absent} of each DICOM, the number unreadable), pixels
  not read. An unreadable file is None when on_error is 'skip' (counted and logged), else a
  ValueError naming it and the fix; on_error='unchecked' (no image file is to be read) is a
  ValueError (the sources call refuse_unchecked first, with their own fix)."""
  import pydicom

  refuse_unchecked(on_error, dataset, "describe it with its images")

  start = time.perf_counter()
  out: list[dict[str, str] | None] = []
  bad = 0
  # RSNA and SIIM write PatientAge as '62', not the 'AS' form '062Y': pydicom would warn (and log)
  # once per file when the value is read; age_years parses it instead.
  settings = pydicom.config.settings
  validation = settings.reading_validation_mode
  settings.reading_validation_mode = pydicom.config.IGNORE
  try:
    for path in paths:
      try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(tags))
        out.append({t: str(ds.get(t, "") or "").strip() for t in tags})
      except (OSError, ValueError, pydicom.errors.InvalidDicomError) as e:
        if on_error == "raise":
          raise ValueError(
            f"cannot read the DICOM header of {path} ({type(e).__name__}: {e}); replace the "
            "file or set config.data.on_error='skip'"
          ) from None
        out.append(None)
        bad += 1
  finally:
    settings.reading_validation_mode = validation
  logging.info(
    "%s: read %d DICOM headers in %.2f s", dataset, len(paths), time.perf_counter() - start
  )
  if bad:
    logging.warning("%s: skipped %d films whose DICOM header cannot be read", dataset, bad)
  return out, bad
