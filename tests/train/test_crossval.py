"""k-fold cross-validation of a segmentation experiment: every case out of fold exactly once, the
pooled metrics equal to the folds' reports, the ensemble bundle the mean of its folds, resumed
folds not trained again."""

import json
import os

import numpy as np
import pytest
from fixture_files import write_msd

from mdx import config as config_lib
from mdx.inference import bundle as bundle_lib
from mdx.inference.segmenter import VolumeSegmenter
from mdx.train import crossval


@pytest.fixture(autouse=True)
def check_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("MDX_CHECK_CACHE", str(tmp_path / "check_cache"))


def _experiment(root):
  module = config_lib.load_experiment("experiments/msd_hippocampus.py")
  overrides = {
    "data.root": root,
    "data.class_names": ("background", "anterior", "posterior"),  # no MSD task in the name
    "data.flip_axes": (0,),
    "model.base_width": 2,
    "model.depth": 2,
    "data.patch_size": (8, 8, 8),
    "train.steps": 2,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "eval.examples": 0,
  }
  return module, overrides


def _report(name, n, before, after):
  decision = {"largest_component": [], "dice_before": before, "dice_after": after}
  return {"summary": {"num_cases": n, "inference": {"postprocess": decision}}}


def test_pooled_postprocess_weighs_each_fold_by_its_cases():
  # anterior: fold a (3 cases) gains 0.1, fold b (1 case) loses 0.2: pooled +0.1 (kept);
  # posterior: a loses 0.1 x 3, b gains 0.2 x 1: pooled -0.1 (not kept)
  reports = {
    "a": _report("a", 3, {"anterior": 0.5, "posterior": 0.6}, {"anterior": 0.6, "posterior": 0.5}),
    "b": _report("b", 1, {"anterior": 0.7, "posterior": 0.4}, {"anterior": 0.5, "posterior": 0.6}),
  }
  out = crossval.pooled_postprocess(reports)
  assert out["largest_component"] == ["anterior"]
  assert out["dice_before"]["anterior"] == pytest.approx((3 * 0.5 + 0.7) / 4)
  assert out["dice_after"]["posterior"] == pytest.approx((3 * 0.5 + 0.6) / 4)
  reports["b"]["summary"]["inference"] = {}
  assert crossval.pooled_postprocess(reports) is None  # a fold measured none
  with pytest.raises(ValueError, match="folds >= 2"):
    crossval.folds_module(object(), 1)


@pytest.mark.slow  # trains two folds
def test_two_folds_pool_out_of_fold_and_ensemble_their_bundles(tmp_path):
  write_msd(str(tmp_path / "data"), np.diag([1.0, 1.2, 0.8, 1.0]), n=4)
  module, overrides = _experiment(str(tmp_path / "data"))
  work = str(tmp_path / "cv")
  out = crossval.run_crossval(module, work, 2, overrides=overrides)

  reports = [json.load(open(f"{work}/fold_{i}/report/metrics.json")) for i in range(2)]
  held = [set(r["per_case"]) for r in reports]
  assert not held[0] & held[1] and len(held[0] | held[1]) == 4  # every case out of fold once
  pooled = json.load(open(f"{work}/crossval/metrics.json"))["pooled"]
  assert pooled["num_cases"] == 4
  dice = [c["anterior"]["dice"] for r in reports for c in r["per_case"].values()]
  assert pooled["per_class"]["anterior"]["dice"] == pytest.approx(np.mean(dice))
  assert "pooled" in open(f"{work}/crossval/results.md").read()

  ensemble = bundle_lib.load(out["bundle"])
  assert ensemble.members == 2 and ensemble.spec["ensemble"]["combine"] == "mean of probabilities"
  folds = [bundle_lib.load(f"{work}/fold_{i}/bundle") for i in range(2)]
  scan = np.random.default_rng(1).normal(300, 50, (10, 14, 9, 1)).astype(np.float32)
  expected = np.mean([VolumeSegmenter(b).probabilities(scan) for b in folds], 0)
  # the same windows and weights; only the order of two float32 sums differs
  np.testing.assert_allclose(VolumeSegmenter(ensemble).probabilities(scan), expected, atol=1e-6)

  # a second call trains nothing again: the folds' checkpoints stay as they were
  stamp = os.path.getmtime(f"{work}/fold_0/sweep_done.json")
  crossval.run_crossval(module, work, 2, overrides=overrides)
  assert os.path.getmtime(f"{work}/fold_0/sweep_done.json") == stamp
