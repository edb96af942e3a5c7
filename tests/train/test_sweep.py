"""Sweeps work for any task: a tiny segmentation sweep writes its results table from the task's
report."""

import json
import os

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
