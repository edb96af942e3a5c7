"""Records are prepared on first use (mdx.data.image.tfds_builders): a run whose config sets
data.prepared_dir finds them built with one log line instead of an error; concurrent users prepare
once; a killed preparation never looks complete; experiments keep them in the per-user cache."""

import errno
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np
import pytest
from real_layouts import make_nih_dir

from mdx.data import sources
from mdx.data.image import file_source, tfds_builders

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

VERSION = str(tfds_builders._Prepared.VERSION)  # the folder of the prepared records


def nih_config(data, records):
  return ml_collections.ConfigDict(
    dict(
      source="nih",
      metadata=str(data / "Data_Entry_2017.csv"),
      images=str(data),
      image_size=8,
      prepared_dir=str(records),
    )
  )


def test_missing_records_are_prepared_on_first_use_with_one_line(tmp_path, caplog, monkeypatch):
  cfg = nih_config(make_nih_dir(tmp_path / "nih"), tmp_path / "records")
  with caplog.at_level(logging.INFO):
    prepared = sources.make_source(cfg, 0)
  path = tfds_builders.prepared_path(cfg)
  assert isinstance(prepared, tfds_builders.PreparedSource) and prepared.path == path
  line = f"preparing records of nih at 8 px into {path} (once; ./launch.sh prepare does it ahead)"
  assert line in caplog.messages
  raw = sources.make_source(ml_collections.ConfigDict({**cfg.to_dict(), "prepared_dir": ""}), 0)
  assert not isinstance(raw, tfds_builders.PreparedSource)  # '' still decodes the originals
  np.testing.assert_array_equal(prepared.labels(), raw.labels())
  assert [prepared[i]["image_id"] for i in range(6)] == list(raw.image_ids())
  # the second use reads them: nothing is built again, and prepare says they exist
  monkeypatch.setattr(tfds_builders, "_build", None)
  assert len(sources.make_source(cfg, 0)) == 6
  assert sources.prepare(cfg) == {"dir": path, "records": 6, "skipped": 0, "built": False}
  assert sorted(os.listdir(os.path.dirname(path))) == [tfds_builders.LOCK_FILE, VERSION]


def test_concurrent_first_uses_prepare_once(tmp_path, monkeypatch):
  """Two users at once (threads here; processes take the same file lock): one builds, the other
  waits for the lock and reads what it built."""
  cfg = nih_config(make_nih_dir(tmp_path / "nih"), tmp_path / "records")
  real, builds = tfds_builders._build, []

  def slow_build(*args):
    builds.append(1)
    time.sleep(0.5)  # long enough for the other thread to reach the lock
    return real(*args)

  monkeypatch.setattr(tfds_builders, "_build", slow_build)
  loaded, errors = [], []

  def use():
    try:
      loaded.append(len(sources.make_source(cfg, 0)))
    except Exception as e:  # noqa: BLE001 (reported below)
      errors.append(e)

  threads = [threading.Thread(target=use) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors and loaded == [6, 6] and len(builds) == 1


def test_without_file_locks_a_preparation_that_loses_the_race_uses_the_winners(
  tmp_path, monkeypatch, caplog
):
  """A filesystem without locks: another process's scratch folder is left alone, and when another
  process finishes first, its records are used (the rename onto them fails)."""
  cfg = nih_config(make_nih_dir(tmp_path / "nih"), tmp_path / "records")
  path = tfds_builders.prepared_path(cfg)
  other = os.path.join(os.path.dirname(path), tfds_builders.INCOMPLETE + "other-host")
  os.makedirs(other)

  def no_locks(*args):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(tfds_builders.fcntl, "flock", no_locks)
  real, raced = tfds_builders.images_lib.resize, []

  def racing_resize(image, size):
    if not raced:  # the other process prepares them all while this one is at its first image
      raced.append(1)
      assert sources.prepare(cfg)["built"]
    return real(image, size)

  monkeypatch.setattr(tfds_builders.images_lib, "resize", racing_resize)
  with caplog.at_level(logging.INFO):
    assert sources.prepare(cfg) == {"dir": path, "records": 6, "skipped": 0, "built": True}
  assert "preparing without a lock" in caplog.text and "prepared" in caplog.text
  assert f"another process prepared {path} first" in caplog.text
  assert os.path.isdir(other)  # maybe in use: not removed without the lock
  assert len(sources.make_source(cfg, 0)) == 6


def test_an_interrupted_preparation_leaves_nothing_complete_and_is_redone(tmp_path, monkeypatch):
  """An exception mid-way (the scratch folder is removed) and a leftover as SIGKILL leaves it (the
  removal patched away): neither looks prepared, and the next use prepares from scratch."""
  cfg = nih_config(make_nih_dir(tmp_path / "nih"), tmp_path / "records")
  path = tfds_builders.prepared_path(cfg)
  folder = os.path.dirname(path)
  real_resize = tfds_builders.images_lib.resize
  calls = []

  def failing_resize(image, size):
    calls.append(1)
    if len(calls) == 4:
      raise KeyboardInterrupt  # as Ctrl-C would, inside TFDS's writer
    return real_resize(image, size)

  monkeypatch.setattr(tfds_builders.images_lib, "resize", failing_resize)
  with pytest.raises(KeyboardInterrupt):
    sources.make_source(cfg, 0)
  assert os.listdir(folder) == [tfds_builders.LOCK_FILE]  # the scratch folder was removed
  calls.clear()
  monkeypatch.setattr(tfds_builders.shutil, "rmtree", lambda *a, **k: None)  # as after SIGKILL
  with pytest.raises(KeyboardInterrupt):
    sources.make_source(cfg, 0)
  (left,) = [n for n in os.listdir(folder) if n.startswith(tfds_builders.INCOMPLETE)]
  assert not os.path.exists(path)
  monkeypatch.undo()
  assert len(sources.make_source(cfg, 0)) == 6
  assert sorted(os.listdir(folder)) == [tfds_builders.LOCK_FILE, VERSION]


def test_a_record_folder_without_its_index_is_prepared_again(tmp_path, caplog):
  """mdx before this layout wrote the index after TFDS's rename: a kill between left records
  without an index, which used to fail as 'every image failed'."""
  cfg = nih_config(make_nih_dir(tmp_path / "nih"), tmp_path / "records")
  path = tfds_builders.prepared_path(cfg)
  os.makedirs(path)
  open(os.path.join(path, "dataset_info.json"), "w").close()
  with caplog.at_level(logging.WARNING):
    assert len(sources.make_source(cfg, 0)) == 6
  assert f"removing {path}: it has no mdx_index.npz" in caplog.text


KILLED_CHILD = """
import os, signal, sys
import ml_collections
from mdx.data import sources
from mdx.data.image import images
cfg = ml_collections.ConfigDict(dict(source="nih", metadata=sys.argv[1], images=sys.argv[2],
                                     image_size=8, prepared_dir=sys.argv[3]))
real, seen = images.resize, []
def resize(image, size):
  seen.append(1)
  if len(seen) == 4:
    os.kill(os.getpid(), signal.SIGKILL)
  return real(image, size)
images.resize = resize
sources.make_source(cfg, 0)
"""


@pytest.mark.slow
def test_sigkill_mid_preparation_never_looks_complete(tmp_path):
  """A process killed (SIGKILL: no cleanup) while writing the records: nothing at the records'
  path, and the next use removes its leftover and prepares them."""
  data = make_nih_dir(tmp_path / "nih")
  cfg = nih_config(data, tmp_path / "records")
  proc = subprocess.run(
    [sys.executable, "-c", KILLED_CHILD, cfg.metadata, cfg.images, cfg.prepared_dir],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  path = tfds_builders.prepared_path(cfg)
  folder = os.path.dirname(path)
  assert not os.path.exists(path)
  assert any(n.startswith(tfds_builders.INCOMPLETE) for n in os.listdir(folder))
  assert len(sources.make_source(cfg, 0)) == 6
  assert sorted(os.listdir(folder)) == [tfds_builders.LOCK_FILE, VERSION]


def load_experiment(name):
  path = os.path.join(ROOT, "experiments", name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name", ["nih_64px.py", "nih_course_sample.py", "pneumonia_folder.py"])
def test_experiments_keep_records_in_the_per_user_cache(name, tmp_path, monkeypatch):
  monkeypatch.delenv("MDX_RECORDS", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert load_experiment(name).data.prepared_dir == str(tmp_path / ".cache" / "mdx" / "records")
  monkeypatch.setenv("MDX_RECORDS", str(tmp_path / "mine"))
  assert load_experiment(name).data.prepared_dir == str(tmp_path / "mine")
  monkeypatch.setenv("MDX_RECORDS", "")  # the original files, as --config.data.prepared_dir=''
  assert load_experiment(name).data.prepared_dir == ""
  assert file_source.records_dir() == ""
