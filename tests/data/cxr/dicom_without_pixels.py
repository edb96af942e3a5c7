"""A DICOM film whose pixel data is gone, and the one-line error mdx.data.check gives for it: the
bad input 'a DICOM without pixel data' of the DICOM sources (VinDr, RSNA, SIIM), shared by their
tests. Imported as a top-level module (pytest puts this folder on sys.path)."""

import os

import pydicom
import pytest

from mdx.data import check


def strip_pixels(path) -> None:
  """Rewrites the DICOM at `path` without its PixelData element (the header stays readable)."""
  ds = pydicom.dcmread(path)
  del ds.PixelData
  ds.save_as(path)


def assert_check_names_it(source, name: str, path, tmp_path) -> None:
  """The record check of `source` refuses it in one line naming `path` and the missing pixels."""
  with pytest.raises(ValueError) as info:
    check.check_source(
      source,
      name,
      workdir=str(tmp_path / "work"),
      cache_dir=str(tmp_path / "check-cache"),
      threads=1,
      progress=False,
    )
  message = str(info.value)
  assert "\n" not in message
  assert os.fspath(path) in message and "no pixel data" in message, message
  assert message.startswith(f"{name}: 1 of {len(source)} records cannot be used"), message
