"""Shared fixtures of tests/data (helpers that write real layouts live in real_layouts.py)."""

import pytest
from real_layouts import make_nih_dir


@pytest.fixture
def nih_dir(tmp_path):
  return make_nih_dir(tmp_path)
