"""Compiled programs kept on disk (mdx.inference.executables): a second process (here: a fresh jit
of the same function) loads the stored program instead of compiling, results equal the compiled
program's exactly (the same executable), a stale or damaged file is replaced, a program jax read
from its own cache is not stored again, and different facts never share a file."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdx.inference import executables

W = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3)


def fresh():
  """A new jit object each time: what a new process holds before it compiles."""
  return jax.jit(lambda x: jnp.tanh(x @ W) * 2.0)


def x(batch=2):
  return np.arange(batch * 4, dtype=np.float32).reshape(batch, 4) / 7.0


def files(folder):
  return sorted(f for f in os.listdir(folder) if f.endswith(executables.SUFFIX))


def test_a_stored_program_serves_the_next_process_without_compiling(tmp_path, monkeypatch):
  expected = np.asarray(fresh()(x()))
  first = executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))
  np.testing.assert_array_equal(np.asarray(first(x())), expected)
  assert len(files(tmp_path)) == 1

  def never(*args, **kwargs):
    raise AssertionError("compiled although the program was on disk")

  monkeypatch.setattr(executables, "_compile", never)
  second = executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))
  np.testing.assert_array_equal(np.asarray(second(x())), expected)
  np.testing.assert_array_equal(np.asarray(second(x() + 1)), np.asarray(fresh()(x() + 1)))


def test_a_program_loaded_is_marked_as_used_for_the_cache_bound(tmp_path):
  """runtime.prune_cache deletes the files used least recently: a load touches the program."""
  executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))
  (name,) = files(tmp_path)
  long_ago = 1.0e9
  os.utime(tmp_path / name, (long_ago, long_ago))
  executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))
  assert os.stat(tmp_path / name).st_mtime > long_ago + 1e8


def test_other_facts_or_shapes_are_other_files(tmp_path):
  for facts, batch in (({"f": "tanh"}, 2), ({"f": "tanh", "v": 2}, 2), ({"f": "tanh"}, 3)):
    executables.load_or_compile(
      fresh(), (x(batch),), {**facts, "b": batch}, directory=str(tmp_path)
    )
  assert len(files(tmp_path)) == 3
  assert executables.key({"a": 1}) != executables.key({"a": 2})
  assert executables.key({"a": 1, "b": 2}) == executables.key({"b": 2, "a": 1})


@pytest.mark.parametrize("damage", ["empty", "text", "truncated"])
def test_a_damaged_file_is_compiled_again_and_replaced(tmp_path, monkeypatch, damage):
  path = tmp_path / (executables.key({"f": "tanh"}) + executables.SUFFIX)
  executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))
  good = path.read_bytes()
  path.write_bytes(
    {"empty": b"", "text": b"not a program", "truncated": good[: len(good) // 2]}[damage]
  )
  program = executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))
  np.testing.assert_array_equal(np.asarray(program(x())), np.asarray(fresh()(x())))
  # the replacement serves the next process without compiling
  monkeypatch.setattr(executables, "_compile", lambda *a: pytest.fail("compiled again"))
  again = executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))
  np.testing.assert_array_equal(np.asarray(again(x())), np.asarray(fresh()(x())))


def test_a_program_from_jax_cache_is_not_stored_again(tmp_path):
  class FromJaxCache:
    """lower().compile() as jax does on a persistent-cache hit (it records the event)."""

    def __init__(self, jitted):
      self.jitted = jitted

    def lower(self, *args):
      lowered = self.jitted.lower(*args)

      class Lowered:
        def compile(self):
          compiled = lowered.compile()
          jax.monitoring.record_event(executables._JAX_CACHE_HIT)
          return compiled

      return Lowered()

    def __call__(self, *args):
      return self.jitted(*args)

  program = executables.load_or_compile(
    FromJaxCache(fresh()), (x(),), {"f": "tanh"}, directory=str(tmp_path)
  )
  np.testing.assert_array_equal(np.asarray(program(x())), np.asarray(fresh()(x())))
  assert files(tmp_path) == []


def test_the_folder_follows_jax_cache_and_none_means_nothing_on_disk(tmp_path, monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
    assert executables.folder() == str(tmp_path / "jax" / executables.FOLDER)
    jax.config.update("jax_compilation_cache_dir", None)
    assert executables.folder() is None
    monkeypatch.setattr(executables, "_load", lambda *a: pytest.fail("read a file"))
    program = executables.load_or_compile(fresh(), (x(),), {"f": "tanh"})
    np.testing.assert_array_equal(np.asarray(program(x())), np.asarray(fresh()(x())))
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_a_stored_program_that_fails_on_its_first_call_is_compiled_again(tmp_path, monkeypatch):
  # what XLA:CPU does with a program serialized from jax's cache: it loads, then its first call
  # fails ("Function add_rsqrt_fusion.114 not found")
  executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))

  def broken(*args):
    raise jax.errors.JaxRuntimeError("NOT_FOUND: Function add_rsqrt_fusion.114 not found")

  monkeypatch.setattr(executables, "_load", lambda *a: broken)
  program = executables.load_or_compile(fresh(), (x(),), {"f": "tanh"}, directory=str(tmp_path))
  np.testing.assert_array_equal(np.asarray(program(x())), np.asarray(fresh()(x())))
  np.testing.assert_array_equal(np.asarray(program(x() + 1)), np.asarray(fresh()(x() + 1)))
  assert len(files(tmp_path)) == 1  # the fresh compile stored again
