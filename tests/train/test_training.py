"""End-to-end training behaviour: resume after SIGKILL, 4 devices == 1 device, clear config errors.

Each case runs tests/train/run_training.py in a subprocess (a fresh jax with its own device count).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "train", "run_training.py")


def train(workdir, out, *args, devices=1, check=True, timeout=600):
  env = dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
  )
  proc = subprocess.run(
    [sys.executable, SCRIPT, str(workdir), str(out), *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def max_diff(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a if k != "devices")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 1-device run of 8 steps (checkpoints at 3, 6 and 8)."""
  d = tmp_path_factory.mktemp("reference")
  train(d / "work", d / "final.npz", "train.steps=8", "data.workers=1")
  return load(d / "final.npz"), d


def test_sigkill_then_resume_gives_the_same_parameters(reference, tmp_path):
  ref, _ = reference
  # Killed abruptly before step 5: the last checkpoint is step 3, steps 4 (and the start of 5) are
  # lost.
  proc = train(
    tmp_path / "work",
    tmp_path / "never.npz",
    "train.steps=8",
    "data.workers=1",
    "--kill-at-step=5",
    check=False,
    timeout=240,
  )  # grain's worker must exit with it
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "work" / "checkpoints")) == ["3"]
  train(tmp_path / "work", tmp_path / "final.npz", "train.steps=8", "data.workers=1")
  resumed = load(tmp_path / "final.npz")
  # Bit-for-bit the same computation (same batches, same order, same compiled step).
  assert max_diff(ref, resumed) == 0.0
  # And training did change the parameters (the comparison is not vacuous).
  fresh = tmp_path / "fresh.npz"
  train(tmp_path / "zero", fresh, "train.steps=1")
  assert max_diff(ref, load(fresh)) > 1e-4


def test_four_devices_match_one_device(reference, tmp_path):
  ref, _ = reference
  train(tmp_path / "work", tmp_path / "final.npz", "train.steps=8", "data.workers=1", devices=4)
  four = load(tmp_path / "final.npz")
  assert int(four["devices"]) == 4 and int(ref["devices"]) == 1
  # Same global batch, BatchNorm statistics and gradients averaged over devices: equal up to the
  # order of float summation (Adam amplifies it a little over 8 steps). Per-device BatchNorm
  # statistics (2 images per device) would differ by ~1e-2.
  assert max_diff(ref, four) < 2e-4
  for key in ref:
    if "batch_stats" in key:
      np.testing.assert_allclose(four[key], ref[key], rtol=5e-4, atol=5e-5)


def test_batch_that_does_not_divide_over_devices_is_a_clear_error(tmp_path):
  proc = train(tmp_path / "work", tmp_path / "x.npz", "train.batch_size=6", devices=4, check=False)
  assert proc.returncode != 0
  assert "config.train.batch_size=6 does not divide over 4 devices" in proc.stderr


def test_checkpoints_keep_last_and_best(reference):
  _, d = reference
  kept = sorted(int(s) for s in os.listdir(d / "work" / "checkpoints") if s.isdigit())
  # keep_last=2 keeps steps 6 and 8; the best by validation AUROC may add one more.
  assert kept[-2:] == [6, 8] and len(kept) <= 3
