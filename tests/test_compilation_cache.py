"""The compilation cache's bound (mdx.runtime.prune_cache, enable_compilation_cache): the programs
used least recently go first, mdx.inference.executables' count with jax's, a file mdx did not write
is never touched, and a bad bound is one line before anything is deleted."""

import os

import jax
import pytest

from mdx import runtime

DAY = 86400.0


def _file(path, size, used):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"x" * size)
  os.utime(path, (used, used))  # (access, modification): last used at `used`
  return path


def test_the_files_used_least_recently_go_until_the_folder_fits(tmp_path):
  now = 1.7e9
  # the user's own files in the folder are neither counted nor deleted, however old or large
  theirs = [
    _file(tmp_path / "notes.txt", 5000, now - 9 * DAY),
    _file(tmp_path / "sub" / "old-cache", 5000, now - 9 * DAY),
    _file(tmp_path / "mdx_executables" / "k.bin", 5000, now - 9 * DAY),
  ]
  oldest = _file(tmp_path / "jit_a-cache", 400, now - 3 * DAY)
  program = _file(tmp_path / "mdx_executables" / "k.xla", 300, now - 2 * DAY)
  recent = _file(tmp_path / "jit_b-cache", 200, now - 1 * DAY)
  read = _file(tmp_path / "jit_c-cache", 100, now - 4 * DAY)
  killed = _file(tmp_path / "mdx_executables" / ".k2.xla.x1y2.tmp", 50, now - 5 * DAY)
  os.utime(read, (now, now - 4 * DAY))  # written long ago, read just now: in use
  # 1,050 bytes in all; a bound of 500 deletes the three used least recently: a write a kill
  # left (50), then 400 and 300
  removed = runtime.prune_cache(str(tmp_path), 500)
  assert removed == [str(killed), str(oldest), str(program)]
  left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and p not in theirs)
  assert left == ["jit_b-cache", "jit_c-cache"]
  assert recent.exists() and read.exists()
  assert runtime.prune_cache(str(tmp_path), 300) == []  # exactly 300 left: all kept
  assert runtime.prune_cache(str(tmp_path), 299) == [str(recent)]
  assert runtime.prune_cache(str(tmp_path / "missing"), 0) == []
  assert runtime.prune_cache(str(tmp_path), 0) == [str(read)]
  assert all(p.exists() for p in theirs)


@pytest.mark.parametrize("given", ["0", "-1", "lots", "inf", "nan"])
def test_a_bad_bound_is_one_line_and_deletes_nothing(tmp_path, monkeypatch, given):
  kept = _file(tmp_path / "jit_a-cache", 10, 1.7e9)
  monkeypatch.setenv("MDX_COMPILATION_CACHE", str(tmp_path))
  monkeypatch.setenv("MDX_COMPILATION_CACHE_GB", given)
  with pytest.raises(ValueError, match=f"^MDX_COMPILATION_CACHE_GB='{given}'; give the cache's"):
    runtime.enable_compilation_cache()
  assert kept.exists()


def test_enabling_the_cache_bounds_its_folder(tmp_path, monkeypatch):
  old = _file(tmp_path / "jit_old-cache", 2**20, 1.7e9)  # 1 MiB, used long ago
  new = _file(tmp_path / "jit_new-cache", 2**19, 1.8e9)
  monkeypatch.setenv("MDX_COMPILATION_CACHE", str(tmp_path))
  monkeypatch.setenv("MDX_COMPILATION_CACHE_GB", str(1.0 / 1024))  # 1 MiB
  before = jax.config.jax_compilation_cache_dir
  try:
    runtime.enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  assert not old.exists() and new.exists()
