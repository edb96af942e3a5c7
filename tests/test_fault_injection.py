"""Fault injection: a run killed at a random moment (SIGKILL) or meeting a full disk never leaves a
file that mdx reports as final incomplete, and never changes a file the user owned (issue 24).

For predict and evaluate the folder they write into starts as a user would have it: a previous
complete result and a file of the user's own. After the kill every visible file must be either the
previous result's, byte for byte, or the new complete result's (an uninterrupted run's reference),
a completion file (predictions.csv, report.html, metrics.json) must come with its whole result,
and the user's file must be unchanged; the next run must succeed and say what the killed one left.
An export's weights differ byte-wise between two exports (Orbax), so there a bundle.json present
must load: its recorded digests prove the files are one bundle. A training run killed anywhere
must leave the old report or the new one whole, and resume to the uninterrupted run's report.

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
EXPORT_KILLS = 3  # an export or a tiny run takes about 15 s
TRAIN_KILLS = 3
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


def predictions_csv(path, n, seed):
  """An id column and two findings' labels and probabilities (what evaluate reads)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, (n, 2))
  p = np.clip(0.3 * y + 0.7 * rng.random((n, 2)), 0, 1)
  path.mkdir(parents=True)
  for name, values, fmt in (("labels.csv", y, "%d"), ("probs.csv", p, "%.4f")):
    lines = [f"film_{i:04d}," + ",".join(fmt % v for v in values[i]) for i in range(n)]
    (path / name).write_text("\n".join(["id,Effusion,Nodule", *lines]) + "\n")
  return path


def evaluate_args(data, out):
  return ["evaluate", f"--labels={data / 'labels.csv'}", f"--probs={data / 'probs.csv'}",
          f"--out={out}"]  # fmt: skip


def test_evaluate_killed_at_random_moments(tmp_path):
  old_data, new_data = (
    predictions_csv(tmp_path / "old", 60, 0),
    predictions_csv(tmp_path / "new", 400, 1),
  )
  start = tmp_path / "start"
  code, _, err = finish(mdx(evaluate_args(old_data, start)))
  assert code == 0, err
  (start / NOTE).write_text("reviewed by Dr. A")
  old = visible(start)
  reference = tmp_path / "reference"
  code, _, err = finish(mdx(evaluate_args(new_data, reference)))
  assert code == 0, err
  new = {**visible(reference), NOTE: old[NOTE]}
  assert "report.html" in new and "metrics.json" in new
  args_for = lambda out: evaluate_args(new_data, out)  # noqa: E731
  rng = np.random.default_rng(24)
  completes = ["report.html", "metrics.json"]
  under_way = killed_runs(args_for, start, old, new, completes, KILLS, rng, tmp_path)
  assert under_way >= KILLS // 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny trained run (checkpoints at steps 3 and 6, its report and bundle) to export from."""
  work = tmp_path_factory.mktemp("run") / "work"
  code, _, err = finish(mdx(train_args(work, 6)))
  assert code == 0, err[-3000:]
  return work


def train_args(work, steps, bootstrap=20):
  return ["main", "--config=experiments/tiny_phantoms.py", f"--workdir={work}", "--mode=train",
          f"--config.train.steps={steps}", f"--config.eval.bootstrap={bootstrap}",
          "--config.data.workers=0"]  # fmt: skip


def test_training_killed_at_random_moments(workdir, tmp_path):
  """A finished run trained on for more steps, killed anywhere from its start to its end (mostly
  while it trains, sometimes while it writes its report or bundle): the report folder holds the
  old report or the new one whole, the bundle loads or is absent, and the resumed run's report is
  byte for byte the uninterrupted run's (resume is exact)."""
  start = tmp_path / "start"
  shutil.copytree(workdir, start)
  (start / "report" / NOTE).write_text("reviewed by Dr. A")
  old = visible(start / "report")
  reference = tmp_path / "reference"
  shutil.copytree(start, reference)
  began = time.monotonic()
  code, _, err = finish(mdx(train_args(reference, 9, 40)))
  lasted = time.monotonic() - began
  assert code == 0, err[-3000:]
  new = visible(reference / "report")
  # the best checkpoint may stay the same: the report differs by its bootstrap (an eval.* field)
  assert new[NOTE] == old[NOTE] and new["metrics.json"] != old["metrics.json"]
  best = loads_whole(reference / "bundle").spec["provenance"]["step"]  # by val_auroc
  rng = np.random.default_rng(24)
  for trial in range(TRAIN_KILLS):
    out = tmp_path / f"kill{trial}"
    shutil.copytree(start, out)
    proc = mdx(train_args(out, 9, 40))
    time.sleep(rng.uniform(0.2, 1.0) * lasted)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    check_after_fault(out / "report", old, new, ["report.html", "metrics.json"])
    loads_whole(out / "bundle")
    code, _, err = finish(mdx(train_args(out, 9, 40)))
    assert code == 0, err[-3000:]
    assert visible(out / "report") == new
    assert loads_whole(out / "bundle").spec["provenance"]["step"] == best


def export_args(work, out, step):
  return ["main", "--config=experiments/tiny_phantoms.py", f"--workdir={work}", "--mode=export",
          f"--output={out}", f"--step={step}", "--config.data.workers=0"]  # fmt: skip


def loads_whole(folder):
  """The bundle in `folder` if its bundle.json is there (the export's completion file): load
  checks every file against the digests bundle.json records, so a mix of two exports fails."""
  from mdx.inference import bundle as bundle_lib

  if not (folder / "bundle.json").exists():
    return None
  return bundle_lib.load(str(folder))


def test_export_killed_at_random_moments(workdir, tmp_path):
  """Orbax's variables are not byte-identical between two exports (file names, timestamps), so
  the check is that of load: a bundle.json present is a whole bundle by its digests."""
  start = tmp_path / "start"
  code, _, err = finish(mdx(export_args(workdir, start, 3)))
  assert code == 0, err[-3000:]
  (start / NOTE).write_text("reviewed by Dr. A")
  old_step = loads_whole(start).spec["provenance"]["step"]
  work = staging_lasts(mdx(export_args(workdir, tmp_path / "timing", 6)), tmp_path / "timing")
  rng = np.random.default_rng(24)
  under_way = 0
  for trial in range(EXPORT_KILLS):
    out = tmp_path / f"kill{trial}"
    shutil.copytree(start, out)
    kill_moments(mdx(export_args(workdir, out, 6)), out, work, rng)
    assert (out / NOTE).read_text() == "reviewed by Dr. A"
    found = loads_whole(out)
    assert found is None or found.spec["provenance"]["step"] in (old_step, 6)
    left = any(n.startswith(outputs.STAGING) for n in os.listdir(out))
    under_way += left
    code, _, err = finish(mdx(export_args(workdir, out, 6)))
    assert code == 0, err[-3000:]
    if left:
      assert "interrupted" in err, err[-3000:]
    assert loads_whole(out).spec["provenance"]["step"] == 6
    assert (out / NOTE).read_text() == "reviewed by Dr. A"
  assert under_way >= EXPORT_KILLS // 2


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


def full_disk_commands(command, tmp_path, request):
  """(args for the earlier result, args for the run that meets the full disk), by output folder."""
  if command == "predict":
    bundle = request.getfixturevalue("bundle")
    old, new = films(tmp_path / "old", 4, 0), films(tmp_path / "images", 48, 2)
    return (lambda out: predict_args(bundle, old, out)), (
      lambda out: predict_args(bundle, new, out)
    )
  if command == "evaluate":
    old, new = predictions_csv(tmp_path / "old", 60, 0), predictions_csv(tmp_path / "new", 400, 1)
    return (lambda out: evaluate_args(old, out)), (lambda out: evaluate_args(new, out))
  work = request.getfixturevalue("workdir")
  return (lambda out: export_args(work, out, 3)), (lambda out: export_args(work, out, 6))


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_full_disk_is_one_line_and_keeps_the_earlier_result(command, disk, tmp_path, request):
  """The disk fills with about 3 KiB left, less than any new result: one line, exit 2, and the
  folder as it was (the earlier complete result and the user's note), no staging left."""
  earlier, args_for = full_disk_commands(command, tmp_path, request)
  disk_root = tmp_path / "disk"
  wrapper = ()
  if disk == "tmpfs":
    if not mount_tmpfs(disk_root, "8m"):
      pytest.skip("this machine does not let the test mount a tmpfs (the injected case runs)")
  else:
    disk_root.mkdir()
  try:
    out = disk_root / "out"
    code, _, err = finish(mdx(earlier(out)))
    assert code == 0, err[-3000:]
    (out / NOTE).write_text("reviewed by Dr. A")
    before = visible(out)
    if disk == "tmpfs":
      with open(disk_root / "filler", "wb") as f:
        f.write(b"\0" * (shutil.disk_usage(disk_root).free - 3 * 1024))
    else:
      wrapper = (os.path.join(ROOT, "tests", "full_disk.py"), str(disk_root), "3072")
    code, _, err = finish(mdx(args_for(out), wrapper))
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: no space left writing"), err[-3000:]
    assert visible(out) == before
    assert not [n for n in os.listdir(out) if n.startswith(outputs.STAGING)]
  finally:
    if disk == "tmpfs":
      subprocess.run(["umount", str(disk_root)], check=False)
