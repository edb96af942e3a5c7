"""One run per workdir: a live holder refuses a second run, a dead one's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mdx.train import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _lock_for(workdir, pid):
  holder = {"pid": pid, "host": socket.gethostname(), "started": time.time(), "command": "mdx x"}
  (workdir / workdir_lock.LOCK).write_text(json.dumps(holder))


def test_a_live_holder_refuses_and_a_dead_one_is_taken_over(tmp_path):
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    _lock_for(tmp_path, other.pid)
    with pytest.raises(workdir_lock.WorkdirInUse, match=f"in use by process {other.pid} on"):
      workdir_lock.acquire(str(tmp_path))
  finally:
    other.kill()
    other.wait()
  path = workdir_lock.acquire(str(tmp_path))  # the holder is gone: a stale lock
  assert json.loads(open(path).read())["pid"] == os.getpid()
  with pytest.raises(workdir_lock.WorkdirInUse, match=f"process {os.getpid()}"):
    workdir_lock.acquire(str(tmp_path))  # held now, by this process
  workdir_lock.release(path)
  assert not os.path.exists(path)
  with workdir_lock.hold(str(tmp_path)) as held:  # one process: process 0 holds it
    assert os.path.exists(held)
  assert not os.path.exists(held)


@pytest.mark.slow
def test_a_second_training_on_a_workdir_in_use_is_refused_before_it_writes(tmp_path):
  work = tmp_path / "w"
  work.mkdir()
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    _lock_for(work, other.pid)
    proc = subprocess.run(
      [sys.executable, "-m", "mdx.main", "--config=experiments/tiny_phantoms.py",
       f"--workdir={work}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )  # fmt: skip
  finally:
    other.kill()
    other.wait()
  assert proc.returncode != 0
  assert f"is in use by process {other.pid} on {socket.gethostname()}" in proc.stderr
  assert sorted(os.listdir(work)) == [workdir_lock.LOCK]  # no config, checkpoints or history
