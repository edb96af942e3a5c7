"""Sweeps work for any task: a tiny segmentation sweep writes its results table from the task's
report."""

import json
import os

import numpy as np
import pytest
from absl import flags

from mdx.train import sweep

flags.FLAGS.mark_as_parsed()
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_segmentation_sweep_over_unet_width_writes_its_table(tmp_path):
  module = sweep.load_module(os.path.join(ROOT, "experiments", "ablations", "unet_width.py"))
  tiny = {
    "data.num_cases": 5,
    "data.shape": (16, 16, 16),
    "data.patch_size": (8, 8, 8),
    "data.split": {"by": "patient", "test": 0.2, "val": 0.2},
    "model.depth": 2,
    "train.steps": 2,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "eval.examples": 0,
  }
  results = sweep.run_sweep(module, str(tmp_path), only=["width_4", "width_8"], overrides=tiny)
  assert list(results) == ["width_4", "width_8"]
  for name, r in results.items():
    assert r["metric"] == "val_dice" and 0.0 <= r["best"] <= 1.0
    assert set(r["headline"]) == {
      "mean Dice",
      "Dice whole_tumour",
      "Dice tumour_core",
      "Dice enhancing_tumour",
    }
    report = json.load(open(tmp_path / name / "report" / "metrics.json"))
    assert r["headline"]["mean Dice"]["value"] == report["summary"]["mean_dice"]
    config = json.load(open(tmp_path / name / "config.json"))
    assert config["model"]["base_width"] == int(name.split("_")[1])
  table = (tmp_path / "results.md").read_text().splitlines()
  assert table[0].startswith(
    "| variant | mean Dice | Dice whole_tumour | Dice tumour_core | Dice enhancing_tumour "
    "| best val_dice |"
  )
  assert [line.split("|")[1].strip() for line in table[2:]] == ["width_4", "width_8"]
  assert json.load(open(tmp_path / "results.json")).keys() == results.keys()


def test_classification_table_keeps_auroc_with_ci(tmp_path):
  results = {
    "a": {
      "headline": {"test mean AUROC": {"value": 0.81, "ci": [0.75, 0.88]}},
      "metric": "val_auroc",
      "best": 0.9,
      "steps_to_reach": 25,
    }
  }
  sweep.write_table(results, str(tmp_path / "t.md"), 0.95)
  lines = (tmp_path / "t.md").read_text().splitlines()
  assert lines[0] == "| variant | test mean AUROC | best val_auroc | steps to 95% of best |"
  assert lines[2] == "| a | 0.810 [0.750, 0.880] | 0.900 | 25 |"


_ABLATION = """
import os
from mdx.config import load_experiment

SEEDS = (0, 1)
_base = load_experiment(os.path.join({root!r}, "experiments", "tiny_phantoms.py"))


def get_config():
  c = _base.get_config()
  c.data.findings = ("Mass", "Effusion")
  c.model.num_classes = 2
  return c


def get_sweep():
  return {{"a": {{"train.lr": 1e-3}}, "b": {{"train.lr": 2e-3}}}}


def get_report():
  return dict(baseline="a", expect={{"b": ("delta_auroc", "higher")}})
"""


def _fake_training(calls, kill_at):
  """mdx.train.run.run's stand-in: records the run, 'dies' at kill_at, else writes what a finished
  run leaves (history, report, split audit) from made-up scores that improve with the lr."""
  from mdx.evaluate import classification, report
  from mdx.evaluate import predictions as P

  def run(config, workdir, mode):
    name = os.path.relpath(workdir, os.path.dirname(os.path.dirname(workdir)))
    calls.append(name)
    if name == kill_at:
      raise RuntimeError(f"killed during {name}")
    rng = np.random.default_rng(config.seed)
    labels = (rng.random((60, 2)) < 0.4).astype(float)
    skill = config.train.lr * 1000
    noise = np.random.default_rng([config.seed, int(skill)]).normal(size=labels.shape)
    probs = 1 / (1 + np.exp(-(skill * (2 * labels - 1) + noise)))
    ids, pids = [f"i{k}" for k in range(60)], [f"p{k // 2}" for k in range(60)]
    out = os.path.join(workdir, "report")
    os.makedirs(out)
    result = classification.evaluate_classification(
      labels, probs, ("Mass", "Effusion"), patient_ids=pids, bootstrap=20
    )
    report.write_json(os.path.join(out, "metrics.json"), result)
    P.write_csv(
      os.path.join(out, "labels.csv"), ids, labels, ("Mass", "Effusion"), patient_ids=pids
    )
    P.write_csv(os.path.join(out, "probs.csv"), ids, probs, ("Mass", "Effusion"))
    with open(os.path.join(workdir, "history.jsonl"), "w") as f:
      f.write(json.dumps({"step": 3, "val_auroc": 0.5 + skill / 10}) + "\n")
    return out

  return run


def test_a_sweep_killed_after_its_first_variant_resumes_without_retraining_it(
  tmp_path, monkeypatch
):
  from mdx.train import run as runner

  path = tmp_path / "two_variants.py"
  path.write_text(_ABLATION.format(root=os.path.abspath(ROOT)))
  module = sweep.load_module(str(path))
  calls = []
  monkeypatch.setattr(runner, "run", _fake_training(calls, kill_at="b/seed_0"))
  with pytest.raises(RuntimeError, match="killed"):
    sweep.run_sweep(module, str(tmp_path / "sweep"), command="./launch.sh sweep two_variants.py")
  assert calls == ["a/seed_0", "a/seed_1", "b/seed_0"]
  assert not (tmp_path / "sweep" / "b" / "seed_0" / sweep.DONE).exists()

  calls.clear()
  monkeypatch.setattr(runner, "run", _fake_training(calls, kill_at=None))
  results = sweep.run_sweep(module, str(tmp_path / "sweep"), command="again")
  assert calls == ["b/seed_0", "b/seed_1"]  # variant a is not trained again
  assert list(results) == ["a/seed_0", "a/seed_1", "b/seed_0", "b/seed_1"]
  report = (tmp_path / "sweep" / "ablation.md").read_text()
  assert "2 of them trained by an earlier invocation" in report
  assert "| a | 2 |" in report and "| b | 2 |" in report and "it shows up" in report

  with pytest.raises(ValueError, match="another config.*eval.bootstrap"):
    sweep.run_sweep(module, str(tmp_path / "sweep"), overrides={"eval.bootstrap": 7})
  assert calls == ["b/seed_0", "b/seed_1"]


def test_only_the_leakage_ablation_switches_the_image_split_on():
  from mdx.data import splits

  leakage = sweep.load_module(os.path.join(ROOT, "experiments", "ablations", "leakage.py"))
  with sweep._image_split_switch(leakage):
    splits.check_split_by("image")
  for name in ("imbalance.py", "unet_width.py"):
    other = sweep.load_module(os.path.join(ROOT, "experiments", "ablations", name))
    with sweep._image_split_switch(other), pytest.raises(ValueError, match="ALLOW_IMAGE_SPLIT"):
      splits.check_split_by("image")
