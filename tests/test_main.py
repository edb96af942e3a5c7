"""The command line: config errors, workdir errors, the resolved config written to the workdir."""

import os
import subprocess
import sys

import ml_collections
import pytest

from mdx import config as config_lib
from mdx.train import run as runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
  return subprocess.run([sys.executable, "-m", "mdx.main", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_unknown_config_field_in_an_experiment_file_names_it():
  c = ml_collections.ConfigDict({"train": {"stpes": 10}})
  with pytest.raises(ValueError, match=r"unknown config field 'train.stpes'.*'train.steps'"):
    config_lib.resolve(c)


def test_unknown_top_level_field():
  with pytest.raises(ValueError, match="unknown config field 'sed'"):
    config_lib.resolve(ml_collections.ConfigDict({"sed": 1}))


def test_resolve_keeps_defaults_and_applies_changes():
  c = config_lib.resolve(ml_collections.ConfigDict({"train": {"steps": 7}, "data": {"image_size": 32}}))
  assert c.train.steps == 7 and c.train.batch_size == 32  # merged, not replaced
  assert c.data.image_size == 32 and c.data.source == "phantoms"


def test_unknown_override_flag_is_rejected(tmp_path):
  proc = run_main("--config=experiments/tiny_phantoms.py", f"--workdir={tmp_path}",
                  "--config.train.stpes=3")
  assert proc.returncode != 0
  assert "stpes" in proc.stderr


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  with pytest.raises(NotADirectoryError, match="is a file"):
    runner.prepare_workdir(str(f))
  proc = run_main("--config=experiments/tiny_phantoms.py", f"--workdir={f}")
  assert proc.returncode != 0 and "is a file, not a directory" in proc.stderr


def test_train_then_eval_writes_config_report_and_tensorboard(tmp_path):
  work = tmp_path / "run"
  proc = run_main("--config=experiments/tiny_phantoms.py", f"--workdir={work}",
                  "--config.train.steps=4", "--config.train.checkpoint_every=2")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "see " in proc.stdout
  resolved = (work / "config.json").read_text()
  assert '"steps": 4' in resolved and '"checkpoint_every": 2' in resolved
  assert any(name.startswith("events") for name in os.listdir(work / "tensorboard"))
  for name in ("metrics.json", "report.html", "report.md", "gradcam.json", "test_predictions.csv"):
    assert (work / "report" / name).exists(), name
  html = (work / "report" / "report.html").read_text()
  for figure in ("loss_curves.png", "examples.png", "gradcam_Mass_0.png"):
    assert figure in html, figure
  assert "step 4/4" in proc.stderr  # the progress line
  # eval alone on the same workdir reproduces the report from the best checkpoint
  proc = run_main("--config=experiments/tiny_phantoms.py", f"--workdir={work}", "--mode=eval")
  assert proc.returncode == 0, proc.stderr[-4000:]


def test_unknown_data_field_for_the_chosen_source_names_it():
  from mdx.data import sources
  c = config_lib.defaults()
  c.data.imag_size = 64  # a typo: phantoms and the pipeline read data.image_size
  with pytest.raises(ValueError, match=r"unknown config field 'data.imag_size'.*'data.image_size'"):
    sources.make_source(c.data, seed=0)
  c = config_lib.defaults()
  c.data.source = "nih"
  c.data.metadata = "x.csv"
  c.data.patient_regex = "p(\\d+)"  # a folders field, not an NIH one
  with pytest.raises(ValueError, match="unknown config field 'data.patient_regex' for source 'nih'"):
    sources.make_source(c.data, seed=0)
