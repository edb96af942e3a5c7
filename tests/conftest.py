"""Puts tests/ on sys.path so that the shared writers in tests/ (fixture_files.py,
torch_reference.py) can be imported by every test folder.

pytest runs in 'prepend' import mode and tests/ has no __init__.py: importing this rootdir conftest
inserts its folder, tests/, at the front of sys.path before any test module below it is collected.
It also points mdx's up-front record-check cache (mdx.data.check) and the records prepared on first
use (MDX_RECORDS) at each test's own folder, so tests neither read nor leave entries in
~/.cache/mdx (subprocesses inherit both).
"""

import pytest


@pytest.fixture(autouse=True)
def _record_check_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("MDX_CHECK_CACHE", str(tmp_path / "record-checks"))
  monkeypatch.setenv("MDX_RECORDS", str(tmp_path / "prepared-records"))  # records on first use
