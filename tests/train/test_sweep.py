"""Sweeps work for any task: a tiny segmentation sweep writes its results table from the task's
report. Everything a sweep can reject is rejected before its first run trains (--only against the
report, each run's config and --config overrides, model.init_from); prerequisite runs (a
pretraining) are trained first, once, and named by '{name}' in the configs that use them. The
command line takes train's --config.<field> overrides of the base; the variants apply on top."""

import json
import os

import numpy as np
import pytest
from absl import flags

from mdx.train import sweep

flags.FLAGS.mark_as_parsed()
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.mark.slow
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
  return {{"a": {{"train.lr": 1e-3}}, "b": {{"train.lr": 2e-3}}{more}}}


def get_report():
  return dict(baseline="a", expect={{"b": ("delta_auroc", "higher"){expect}}})
"""


def _ablation(tmp_path, more="", expect=""):
  """The two-variant ablation above (a, b; seeds 0 and 1), with `more` variants and expectations."""
  path = tmp_path / "two_variants.py"
  path.write_text(_ABLATION.format(root=os.path.abspath(ROOT), more=more, expect=expect))
  return sweep.load_module(str(path))


def _fake_training(calls, kill_at, root=None):
  """mdx.train.run.run's stand-in: records the run (its folder under `root`, default two levels
  up), 'dies' at kill_at, else writes what a finished run leaves (history, report, split audit)
  from made-up scores that improve with the lr."""
  from mdx.evaluate import classification, report
  from mdx.evaluate import predictions as P

  def run(config, workdir, mode):
    name = os.path.relpath(workdir, root or os.path.dirname(os.path.dirname(workdir)))
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
    os.makedirs(out, exist_ok=True)  # a rerun of an unfinished run
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

  module = _ablation(tmp_path)
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


def test_a_users_results_file_is_refused_before_the_first_run_trains(tmp_path, monkeypatch):
  from mdx import outputs
  from mdx.train import run as runner

  module = _ablation(tmp_path)
  calls = []
  monkeypatch.setattr(runner, "run", _fake_training(calls, kill_at=None))
  work = tmp_path / "sweep"
  work.mkdir()
  (work / "ablation.md").write_text("my notes on this ablation")
  with pytest.raises(outputs.OutputError, match=r"ablation.md, which mdx did not write"):
    sweep.run_sweep(module, str(work), bootstrap=20)
  assert calls == [] and os.listdir(work) == ["ablation.md"]
  assert (work / "ablation.md").read_text() == "my notes on this ablation"

  sweep.run_sweep(module, str(work), bootstrap=20, overwrite=True)
  assert "my notes" not in (work / "ablation.md").read_text()
  manifest = json.loads((work / outputs.MANIFEST).read_text())["files"]
  assert set(manifest) == {
    "results.md",
    "results.json",
    "ablation.md",
    "ablation.png",
    "ablation.json",
  }
  assert not [n for n in os.listdir(work) if n.startswith(outputs.STAGING)]
  calls.clear()  # every run finished: the sweep rewrites its own results without a word
  results = sweep.run_sweep(module, str(work), bootstrap=20)
  assert calls == [] and json.loads((work / "results.json").read_text()) == json.loads(
    json.dumps(results)
  )


def test_only_the_leakage_ablation_switches_the_image_split_on():
  from mdx.data import splits

  leakage = sweep.load_module(os.path.join(ROOT, "experiments", "ablations", "leakage.py"))
  with sweep.image_split_switch(leakage):
    splits.check_split_by("image")
  for name in ("imbalance.py", "unet_width.py"):
    other = sweep.load_module(os.path.join(ROOT, "experiments", "ablations", name))
    with sweep.image_split_switch(other), pytest.raises(ValueError, match="ALLOW_IMAGE_SPLIT"):
      splits.check_split_by("image")


# ------------------------------------------------------------------------------ --only and report
def test_only_some_variants_reports_them_and_says_what_it_could_not_check(tmp_path, monkeypatch):
  from mdx.train import run as runner

  module = _ablation(
    tmp_path, more=', "c": {"train.lr": 3e-3}', expect=', "c": ("delta_auroc", "higher")'
  )
  calls = []
  monkeypatch.setattr(runner, "run", _fake_training(calls, kill_at=None))
  sweep.run_sweep(module, str(tmp_path / "ab"), only=["a", "b"], bootstrap=50)
  assert calls == ["a/seed_0", "a/seed_1", "b/seed_0", "b/seed_1"]
  report = (tmp_path / "ab" / "ablation.md").read_text()
  assert "Expected 'b' to have a higher test macro AUROC than 'a'" in report
  assert "Expectations about 'c' not checked: not run (--only)." in report
  assert "| c |" not in report

  calls.clear()  # without the baseline: the table and a sentence saying why nothing is compared
  sweep.run_sweep(module, str(tmp_path / "bc"), only=["b", "c"], bootstrap=50)
  assert calls == ["b/seed_0", "b/seed_1", "c/seed_0", "c/seed_1"]
  report = (tmp_path / "bc" / "ablation.md").read_text()
  assert "| b | 2 |" in report and "| c | 2 |" in report and "Δ macro AUROC" not in report
  assert (
    "No paired comparison and expectations about 'b', 'c' not checked: the baseline 'a' was not "
    "run (--only)" in report
  )


def test_mistakes_fail_before_the_first_run_trains(tmp_path, monkeypatch):
  from mdx.train import run as runner

  calls = []
  monkeypatch.setattr(runner, "run", _fake_training(calls, kill_at=None))
  cases = [  # (ablation file's extra variants, extra expectations, overrides, error)
    ("", ', "zz": ("delta_auroc", "higher")', {}, r"\['expect'\]\['zz'\].*give a variant of"),
    ("", ', "a": ("delta_auroc", "higher")', {}, r"\['expect'\]\['a'\].*other than the baseline"),
    (
      "",
      "",
      {"train.stpes": 4},
      r"^--config.train.stpes=4: unknown config field 'train.stpes'. Did you mean 'train.steps'\?",
    ),
    ("", "", {"trian.steps": 4}, r"^--config.trian.steps=4: .*Did you mean 'train'\?"),
    ("", "", {"train.steps": "x"}, r"^--config.train.steps=x: 'x' does not fit config.train.steps"),
    (
      "",
      "",
      {"train.lr": 0.1, "train.warmup_steps": 50},
      r"^--config.train.warmup_steps=50: config.train.warmup_steps=50: must not exceed",
    ),
    # the last variant's config is wrong: found before the first variant trains
    (', "c": {"train.batch_size": 0}', "", {}, r"variant 'c': config.train.batch_size=0: must"),
  ]
  for i, (more, expect, overrides, error) in enumerate(cases):
    (tmp_path / str(i)).mkdir()  # a file of its own: no stale bytecode of the last one
    module = _ablation(tmp_path / str(i), more=more, expect=expect)
    with pytest.raises(ValueError, match=error):
      sweep.run_sweep(module, str(tmp_path / "w"), overrides=overrides)
  assert calls == [] and not (tmp_path / "w").exists()


def test_the_command_line_checks_every_run_before_starting(tmp_path, capsys):
  from mdx import commands

  path = _ablation(tmp_path).__file__
  given = [f"--config={path}", f"--workdir={tmp_path / 'w'}"]
  cases = [  # (flags, the one line's words)
    (["--config.train.stpes=4"], "Did you mean --config.train.steps?"),  # parsing the flags
    (["--config.train.warmup_steps=50"], "--config.train.warmup_steps=50: config.train.warmup"),
    (["--only=b,zz"], "--only=zz: no such variant"),
  ]
  for argv, words in cases:
    assert commands.call("sweep", given + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
  assert not (tmp_path / "w").exists()


def test_the_command_line_overrides_the_base_and_the_variants_apply_on_top(tmp_path, monkeypatch):
  from mdx import commands
  from mdx.train import run as runner

  calls, seen = [], {}
  fake = _fake_training(calls, kill_at=None)

  def run(config, workdir, mode):
    seen[os.path.relpath(workdir, tmp_path / "w")] = (config.train.steps, config.train.lr)
    return fake(config, workdir, mode)

  monkeypatch.setattr(runner, "run", run)
  path = _ablation(tmp_path).__file__
  argv = [f"--config={path}", f"--workdir={tmp_path / 'w'}", "--seeds=0", "--paired_resamples=20"]
  assert commands.call("sweep", argv + ["--config.train.steps=3", "--config.train.lr=0.5"]) == 0
  assert seen == {"a/seed_0": (3, 1e-3), "b/seed_0": (3, 2e-3)}  # each variant sets its lr
  command = (tmp_path / "w" / "ablation.md").read_text()
  assert f"./launch.sh sweep {path} --workdir=" in command and "--config.train.steps=3" in command


def test_set_reaches_fields_the_experiment_file_leaves_at_their_defaults(tmp_path):
  module = _ablation(tmp_path)
  overrides = {"model.growth_rate": 4, "data.split.test": 0.3, "eval.gradcam.images": 0}
  planned = sweep.prepare(module, str(tmp_path / "w"), overrides=overrides)
  assert [r.name for r in planned.runs] == ["a/seed_0", "a/seed_1", "b/seed_0", "b/seed_1"]
  for run in planned.runs:
    assert run.resolved.model.growth_rate == 4  # a field of the chosen model, not of the file
    assert run.resolved.data.split.test == 0.3 and run.resolved.eval.gradcam.images == 0
    assert run.resolved.seed == run.seed


# ------------------------------------------------------------------------------ prerequisites
PRETRAINING = os.path.join(ROOT, "experiments", "ablations", "pretraining.py")


def test_a_prerequisite_is_planned_first_and_its_folder_replaces_its_name(tmp_path):
  module = sweep.load_module(PRETRAINING)
  work = str(tmp_path / "w")
  overrides = {"train.steps": 2, "model.name": "densenet_small"}
  planned = sweep.prepare(module, work, overrides=overrides)
  (pre,) = planned.prerequisites
  assert pre.name == "pretrain" and pre.variant is None
  assert pre.resolved.train.steps == 2 and pre.resolved.model.name == "densenet_small"  # overrides
  assert pre.resolved.seed == 1 and pre.resolved.data.num_patients == 1500  # its own config
  init = {r.name: r.resolved.model.init_from for r in planned.runs}
  pretrained = os.path.join(work, "pretrain")
  assert init == {
    "from_scratch": "",
    "finetune_all": pretrained,
    "finetune_last_block": pretrained,
    "head_only": pretrained,
  }
  assert all(r.resolved.model.name == "densenet_small" for r in planned.runs)  # both models match
  # from scratch needs no pretraining
  assert sweep.prepare(module, work, only=["from_scratch"]).prerequisites == []
  with pytest.raises(ValueError, match=r"names \{pretrian\}, which is no prerequisite.*'pretrain'"):
    sweep.prepare(module, work, overrides={"model.init_from": "{pretrian}"})


def test_prerequisite_names_are_folders_apart_from_the_variants(tmp_path):
  path = tmp_path / "clash.py"
  path.write_text(
    _ABLATION.format(root=os.path.abspath(ROOT), more="", expect="")
    + "\n\ndef get_prerequisites():\n  return {'a': get_config()}\n"
  )
  with pytest.raises(ValueError, match=r"\['a'\] are also variant names"):
    sweep.prepare(sweep.load_module(str(path)), str(tmp_path / "w"))


def test_a_sweep_trains_its_prerequisite_once_before_the_runs_that_use_it(tmp_path, monkeypatch):
  from mdx.train import run as runner

  module = sweep.load_module(PRETRAINING)
  work = tmp_path / "w"
  calls = []
  monkeypatch.setattr(runner, "run", _fake_training(calls, kill_at=None, root=str(work)))
  results = sweep.run_sweep(module, str(work), bootstrap=20)
  variants = ["from_scratch", "finetune_all", "finetune_last_block", "head_only"]
  assert calls == ["pretrain", *variants]
  assert list(results) == variants  # the prerequisite is no row of the results
  done = json.load(open(work / "pretrain" / sweep.DONE))
  assert done["config"]["seed"] == 1 and done["wall_s"] >= 0
  assert "prerequisite pretrain included" in (work / "ablation.md").read_text()

  calls.clear()
  sweep.run_sweep(module, str(work), bootstrap=20)
  assert calls == []  # everything finished before
  os.remove(work / "finetune_all" / sweep.DONE)
  sweep.run_sweep(module, str(work), bootstrap=20)
  assert calls == ["finetune_all"]  # the finished pretraining is not trained again


# ------------------------------------------------------------------------------ model.init_from
def test_a_missing_init_from_fails_before_anything_trains_and_says_what_to_run(
  tmp_path, monkeypatch
):
  from mdx.train import run as runner

  module = sweep.load_module(PRETRAINING)
  work, missing = tmp_path / "w", str(tmp_path / "pretrained")
  calls = []
  monkeypatch.setattr(runner, "run", _fake_training(calls, kill_at=None, root=str(work)))
  with pytest.raises(
    ValueError,
    match=rf"run 'finetune_all': config.model.init_from='{missing}' does not exist; train the "
    rf"pretraining run there first \(./launch.sh train EXPERIMENT --workdir={missing}\)",
  ):
    sweep.run_sweep(module, str(work), overrides={"model.init_from": missing})
  assert calls == []
  os.makedirs(missing)  # weights there: no prerequisite is needed, every variant uses them
  sweep.run_sweep(module, str(work), overrides={"model.init_from": missing}, bootstrap=20)
  assert calls == ["from_scratch", "finetune_all", "finetune_last_block", "head_only"]
  os.rmdir(missing)  # finished runs need their weights no more
  sweep.run_sweep(module, str(work), overrides={"model.init_from": missing}, bootstrap=20)
  assert len(calls) == 4


# ------------------------------------------------------------------------------ real training
TINY = {  # seconds per run: 2 steps of a tiny model on a few 32 px phantoms
  "data.num_patients": 40,
  "data.image_size": 32,
  "data.workers": 0,
  "train.steps": 2,
  "train.batch_size": 8,
  "train.log_every": 1,
  "train.checkpoint_every": 2,
  "eval.batch_size": 16,
  "eval.bootstrap": 10,
  "eval.examples": 0,
  "eval.gradcam.findings": (),
  "eval.gradcam.overlays": 0,
}


@pytest.mark.slow
def test_imbalance_with_only_bce_and_focal_trains_both_and_writes_its_report(tmp_path):
  module = sweep.load_module(os.path.join(ROOT, "experiments", "ablations", "imbalance.py"))
  results = sweep.run_sweep(
    module, str(tmp_path), only=["bce", "focal"], overrides=TINY, seeds=[0], bootstrap=20
  )
  assert list(results) == ["bce/seed_0", "focal/seed_0"]
  assert json.load(open(tmp_path / "focal" / "seed_0" / "config.json"))["loss"]["name"] == "focal"
  report = (tmp_path / "ablation.md").read_text()
  assert "| bce | 1 |" in report and "| focal | 1 |" in report
  assert "Expected 'focal' to have a higher test macro AUROC than 'bce'" in report
  assert (
    "Expectations about 'weighted_bce', 'oversample', 'undersample' not checked: not run (--only)."
    in report
  )


@pytest.mark.slow
def test_the_pretraining_ablation_pretrains_then_fine_tunes_every_variant(tmp_path):
  module = sweep.load_module(PRETRAINING)
  overrides = {**TINY, "model.name": "densenet_small"}  # four blocks: 'from:block4' exists
  results = sweep.run_sweep(module, str(tmp_path), overrides=overrides, bootstrap=20)
  assert list(results) == ["from_scratch", "finetune_all", "finetune_last_block", "head_only"]
  pre = json.load(open(tmp_path / "pretrain" / "config.json"))
  assert (tmp_path / "pretrain" / sweep.DONE).exists()
  assert pre["model"]["name"] == "densenet_small" and pre["train"]["steps"] == 2  # overrides too
  for name in results:
    init = json.load(open(tmp_path / name / "config.json"))["model"]["init_from"]
    assert init == ("" if name == "from_scratch" else str(tmp_path / "pretrain"))
  assert "prerequisite pretrain included" in (tmp_path / "ablation.md").read_text()
