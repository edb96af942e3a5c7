"""Fault injection: a run killed at a random moment (SIGKILL) or meeting a full disk never leaves a
file that mdx reports as final incomplete, and never changes a file the user owned (issue 24).

For each command the folder it writes into starts as a user would have it: a previous complete
result and a file of the user's own. After the fault every visible file must be either the previous
result's, byte for byte, or the new complete result's (an uninterrupted run's reference), the
completion file (predictions.csv, report.html, bundle.json) must come with a whole result, and the
user's file must be unchanged. The next run must succeed and say what the killed one left.

The disk fills on a small tmpfs when this machine lets the test mount one (root), otherwise through
tests/full_disk.py, which injects ENOSPC into Python's writes under the folder.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from bundle_fixtures import write_classifier_bundle
from PIL import Image

from mdx import outputs

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLS = 4  # random kill points per command
NOTE = "APPROVED.txt"


def mdx(args, wrapper=(), **kwargs):
  env = {k: v for k, v in os.environ.items() if k != "MDX_DEBUG"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
  command = [sys.executable, *wrapper] if wrapper else [sys.executable, "-m", "mdx"]
  return subprocess.Popen(
    [*command, *args],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    **kwargs,
  )


def finish(proc, timeout=600):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def visible(folder):
  """{relative path: bytes} of the files a person sees (hidden staging and manifest left out)."""
  found = {}
  for dirpath, dirnames, names in os.walk(folder):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    for name in names:
      if not name.startswith("."):
        full = os.path.join(dirpath, name)
        with open(full, "rb") as f:
          found[os.path.relpath(full, folder)] = f.read()
  return found


def check_after_fault(folder, old, new, completes):
  """Every visible file is the old result's or the new one's; a completion file comes with its
  whole result; the user's note is unchanged."""
  now = visible(folder)
  assert now[NOTE] == old[NOTE]
  for rel, data in now.items():
    assert data in (old.get(rel), new.get(rel)), f"{rel} is neither the old nor the new result"
  for rel in completes:
    if rel in now and now[rel] == new[rel] != old.get(rel):
      assert all(now.get(r) == d for r, d in new.items()), (
        "a new completion file without its result"
      )
    if rel in now and now[rel] == old[rel] != new.get(rel):
      assert all(now.get(r) == d for r, d in old.items() if r != NOTE), (
        "old completion, mixed files"
      )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  return write_classifier_bundle(
    str(tmp_path_factory.mktemp("bundle") / "b"),
    ("Effusion", "Nodule"),
    {"Effusion": 0.5, "Nodule": 0.4},
    {"mode": "none"},
    32,
  )


def films(folder, n, seed):
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (96, 96), np.uint8)).save(folder / f"film_{i:03d}.png")
  (folder / "broken.png").write_bytes(b"\x89PNG not really")  # a row of errors.csv
  return folder


def predict_args(bundle, images, out):
  return ["predict", f"--bundle={bundle}", f"--input={images}", f"--output={out}", "--batch_size=4"]


def staged(folder):
  return os.path.isdir(folder) and any(n.startswith(outputs.STAGING) for n in os.listdir(folder))


def staging_appears(proc, folder, timeout=300):
  """Seconds until the run's staging folder appears in `folder` (its work has begun), polling."""
  began = time.monotonic()
  while time.monotonic() - began < timeout and proc.poll() is None:
    if staged(folder):
      return time.monotonic() - began
    time.sleep(0.01)
  raise AssertionError(f"no staging folder appeared in {folder}")


def staging_lasts(proc, folder):
  """Seconds from the staging folder's appearance to its commit (its disappearance): the work a
  kill should hit. Process start and teardown are left out; they vary most between machines."""
  staging_appears(proc, folder)
  began = time.monotonic()
  while staged(folder) and proc.poll() is None:
    time.sleep(0.005)
  lasted = time.monotonic() - began
  finish(proc)
  return lasted


def kill_moments(proc, folder, work, rng):
  """Waits for the staging folder, then a random moment of the measured work, and kills."""
  staging_appears(proc, folder)
  time.sleep(rng.uniform(0, 0.9 * work))  # the margin: a rerun may run a little faster
  proc.send_signal(signal.SIGKILL)
  finish(proc)


def killed_runs(args_for, start, old, new, completes, trials, rng, tmp_path):
  """Copies the user's folder `start`, runs args_for(out), kills it at a random moment of its work,
  checks the folder, reruns and checks the rerun's result. Returns how many kills left a staging
  folder (the work was under way)."""
  work = staging_lasts(mdx(args_for(tmp_path / "timing")), tmp_path / "timing")
  under_way = 0
  for trial in range(trials):
    out = tmp_path / f"kill{trial}"
    shutil.copytree(start, out)
    kill_moments(mdx(args_for(out)), out, work, rng)
    check_after_fault(out, old, new, completes)
    left = any(n.startswith(outputs.STAGING) for n in os.listdir(out))
    under_way += left
    code, _, err = finish(mdx(args_for(out)))  # the next run completes, and says what it found
    assert code == 0, err
    if left:
      assert "interrupted" in err, err
    assert visible(out) == new
  return under_way


def test_predict_killed_at_random_moments(bundle, tmp_path):
  old_images, new_images = films(tmp_path / "old", 6, 0), films(tmp_path / "new", 160, 1)
  # the folder as the user has it: an earlier complete result and their own note
  start = tmp_path / "start"
  assert finish(mdx(predict_args(bundle, old_images, start)))[0] == 0
  (start / NOTE).write_text("reviewed by Dr. A")
  old = visible(start)
  reference = tmp_path / "reference"
  code, _, err = finish(mdx(predict_args(bundle, new_images, reference)))
  assert code == 0, err
  new = {**visible(reference), NOTE: old[NOTE]}
  args_for = lambda out: predict_args(bundle, new_images, out)  # noqa: E731
  rng = np.random.default_rng(24)
  under_way = killed_runs(args_for, start, old, new, ["predictions.csv"], KILLS, rng, tmp_path)
  assert under_way >= KILLS // 2  # most kills hit the work itself, not its start or its end


def mount_tmpfs(path, size):
  path.mkdir()
  try:
    subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
      check=True,
      capture_output=True,
    )
    return True
  except (OSError, subprocess.CalledProcessError):
    return False


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_predict_on_a_full_disk(bundle, tmp_path, disk):
  images = films(tmp_path / "images", 48, 2)
  disk_root = tmp_path / "disk"
  wrapper = ()
  if disk == "tmpfs":
    if not mount_tmpfs(disk_root, "64k"):
      pytest.skip("this machine does not let the test mount a tmpfs (the injected case runs)")
  else:
    disk_root.mkdir()
  try:
    out = disk_root / "out"
    out.mkdir()
    (out / NOTE).write_text("reviewed by Dr. A")
    if disk == "tmpfs":  # leave about 3 KiB: less than the predictions of 48 films
      with open(disk_root / "filler", "wb") as f:
        f.write(b"\0" * (shutil.disk_usage(disk_root).free - 3 * 1024))
    else:
      wrapper = (os.path.join(ROOT, "tests", "full_disk.py"), str(disk_root), "3072")
    code, stdout, err = finish(mdx(predict_args(bundle, images, out), wrapper))
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: no space left writing"), err
    assert visible(out) == {NOTE: b"reviewed by Dr. A"}
    assert not [n for n in os.listdir(out) if n.startswith(outputs.STAGING)]
  finally:
    if disk == "tmpfs":
      subprocess.run(["umount", str(disk_root)], check=False)
