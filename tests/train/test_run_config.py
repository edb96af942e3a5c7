"""A run owns its config: eval, export and a resumed train read WORKDIR/config.json, take only the
fields they may change from the command line and refuse an override of anything the run was trained
with; every path in a config is absolute once resolved.

The unit tests write config.json (and empty checkpoint folders) themselves, no training; the slow
tests train 2 steps.
"""

import glob
import json
import logging
import os

import ml_collections
import pytest

from mdx import config as config_lib
from mdx.train import run as runner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(**data) -> ml_collections.ConfigDict:
  c = config_lib.load_experiment(os.path.join(ROOT, "experiments/tiny_phantoms.py")).get_config()
  c.data.update(data)
  return c


def trained_workdir(tmp_path, config, checkpoints=()) -> str:
  """A workdir as train leaves its config: config.json of the resolved config, and a folder for
  each of `checkpoints` (the steps a resumed train finds; their contents are not read here)."""
  work = tmp_path / "run"
  work.mkdir()
  runner.write_config(config_lib.resolve(config), str(work))
  for step in checkpoints:
    (work / "checkpoints" / str(step)).mkdir(parents=True)
  return str(work)


# ------------------------------------------------------------------------ the JSON round trip
def _experiments():
  return sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))


@pytest.mark.parametrize("path", _experiments(), ids=os.path.basename)
def test_every_experiment_survives_its_config_json(tmp_path, path):
  """config.json read back resolves and equals the run's config field by field, tuples included."""
  resolved = config_lib.resolve(config_lib.load_experiment(path).get_config())
  runner.write_config(resolved, str(tmp_path))
  back = runner.load_run_config(str(tmp_path))
  assert back.to_dict() == resolved.to_dict()
  assert runner.flat_config(back) == runner.flat_config(resolved)


def test_round_trip_of_none_nested_dicts_tuples_and_lists(tmp_path):
  c = tiny(findings=["Mass", "Nodule"], prevalence={"Mass": 0.3, "Nodule": 0.2}, augment=None)
  c.data.split = dict(by="patient", test=0.25, val=0.2)
  c.data.resample = dict(mode="oversample", ratio=1.0)
  c.eval.gradcam.findings = ("Mass",)
  resolved = config_lib.resolve(c)
  runner.write_config(resolved, str(tmp_path))
  back = runner.load_run_config(str(tmp_path))
  assert back.data.augment is None and back.data.split.test == 0.25
  assert back.data.resample.to_dict() == {"mode": "oversample", "ratio": 1.0}
  assert back.eval.gradcam.findings == ("Mass",) and back.data.findings == ("Mass", "Nodule")
  # a list and its tuple are the same value: config.json cannot tell them apart
  assert runner.flat_config(back) == runner.flat_config(resolved)
  flat = runner.flat_config(back)
  assert flat["data.split.by"] == "patient" and flat["data.prevalence.Mass"] == 0.3
  assert flat["data.augment"] is None and flat["data.findings"] == ["Mass", "Nodule"]


def test_segmentation_round_trip(tmp_path):
  c = config_lib.defaults("segmentation")
  c.data.patch_size = (16, 16, 16)
  c.data.flip_axes = ()
  resolved = config_lib.resolve(c)
  runner.write_config(resolved, str(tmp_path))
  back = runner.load_run_config(str(tmp_path))
  assert back.to_dict() == resolved.to_dict() and back.data.patch_size == (16, 16, 16)
  assert runner.run_config(str(tmp_path), c, None).to_dict() == resolved.to_dict()


# ------------------------------------------------------------------------ what eval may change
def test_eval_takes_the_runs_data_not_the_experiment_files(tmp_path):
  """Trained with --config.data.num_patients=300; eval with the plain experiment file."""
  work = trained_workdir(tmp_path, tiny(num_patients=300))
  config = runner.run_config(work, tiny(), overrides={})
  assert config.data.num_patients == 300 and config.data.image_size == 32


def test_an_override_that_changes_the_run_is_refused_naming_both_values(tmp_path):
  work = trained_workdir(tmp_path, tiny(num_patients=300))
  with pytest.raises(ValueError) as e:
    runner.run_config(work, tiny(num_patients=2000), {"data.num_patients": 2000})
  message = str(e.value)
  assert message.startswith(
    "config.data.num_patients=2000 on the command line, 300 in "
    f"{os.path.join(work, 'config.json')}: eval uses the run's config; only eval.*"
  )
  assert "\n" not in message
  with pytest.raises(ValueError, match=r"config.data.image_size=128 on the command line, 32 in"):
    runner.run_config(work, tiny(image_size=128), {"data.image_size": 128}, mode="export")
  c = tiny()
  c.train.steps = 9
  with pytest.raises(ValueError, match=r"config.train.steps=9 .* 6 in .*export uses the run's"):
    runner.run_config(work, c, {"train.steps": 9}, mode="export")
  c = tiny()
  c.data.split.test = 0.3  # a nested field: named by its full path
  with pytest.raises(ValueError, match=r"config.data.split.test=0.3 on the command line, 0.2 in"):
    runner.run_config(work, c, {"data.split.test": 0.3})


def test_an_override_equal_to_the_runs_value_is_fine(tmp_path):
  work = trained_workdir(tmp_path, tiny(num_patients=300))
  config = runner.run_config(work, tiny(num_patients=300), {"data.num_patients": 300})
  assert config.data.num_patients == 300


def test_evaluation_fields_come_from_the_command_line(tmp_path):
  trained = tiny(num_patients=300)
  trained.eval.bootstrap = 50
  work = trained_workdir(tmp_path, trained)
  c = tiny()
  c.eval.split = "val"  # report on another split
  c.eval.gradcam.images = 0
  c.data.workers = 2  # loader processes give the same batches
  config = runner.run_config(work, c, {"eval.split": "val", "eval.gradcam.images": 0})
  assert config.eval.split == "val" and config.eval.gradcam.images == 0
  assert config.eval.bootstrap == 20  # the experiment file's eval section, not the run's
  assert config.data.workers == 2 and config.data.num_patients == 300
  c.eval.split = "tset"  # still checked
  with pytest.raises(ValueError, match=r"config.eval.split='tset' is unknown"):
    runner.run_config(work, c, {"eval.split": "tset"})


def test_the_flag_free_api_compares_every_field(tmp_path):
  """Without `overrides`, the config passed is what the caller means: all of it must match."""
  work = trained_workdir(tmp_path, tiny(num_patients=300))
  assert runner.run_config(work, tiny(num_patients=300)).data.num_patients == 300
  with pytest.raises(ValueError, match=r"config.data.num_patients=60 on the command line, 300 in"):
    runner.run_config(work, tiny())
  c = tiny(num_patients=300, source="phantoms")
  del c.data["num_patients"]
  c.seed = 3
  with pytest.raises(ValueError, match=r"config.data.num_patients=not set .* 300 in .*also seed"):
    runner.run_config(work, c)


def test_an_unset_num_classes_is_the_runs_counted_one(tmp_path):
  """A source only the data can count (class folders listed from data.root) leaves
  model.num_classes unset in the resolved config; the run counted it into config.json, and eval or
  a resumed train with the experiment file (flag-free API: every field counts as typed) takes the
  run's number, while a typed number that differs is refused."""
  c = tiny(source="folders", root=str(tmp_path / "folders"), negative_class="NORMAL")
  del c.data["num_patients"]
  assert config_lib.resolve(c).model.num_classes is None
  counted = config_lib.resolve(c)
  counted.model.num_classes = 2  # as the task counts it (mdx.config.resolve_num_classes)
  work = tmp_path / "run"
  work.mkdir()
  runner.write_config(counted, str(work))
  (work / "checkpoints" / "3").mkdir(parents=True)
  assert runner.run_config(str(work), c).model.num_classes == 2
  assert runner.train_config(str(work), c).model.num_classes == 2
  c.model.num_classes = 3
  with pytest.raises(ValueError, match=r"config.model.num_classes=3 on the command line, 2 in"):
    runner.train_config(str(work), c)


def test_another_task_is_refused(tmp_path):
  work = trained_workdir(tmp_path, tiny())
  with pytest.raises(ValueError, match=r"config.task='segmentation' on the command line"):
    runner.run_config(work, config_lib.defaults("segmentation"), {})


def test_without_config_json_eval_and_export_stop_in_one_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  for mode in ("eval", "export"):
    with pytest.raises(FileNotFoundError, match=r"has no config.json \(it was never trained\)"):
      runner.run(tiny(), str(empty), mode)
  missing = tmp_path / "missing"
  with pytest.raises(FileNotFoundError, match=r"missing does not exist: eval and export use"):
    runner.run(tiny(), str(missing), "eval")
  assert not missing.exists()  # not created by a command that cannot run
  (empty / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"config.json is not JSON"):
    runner.run(tiny(), str(empty), "eval")
  (empty / "config.json").write_text('{"train": {"stpes": 4}}')
  with pytest.raises(ValueError, match=r"config.json: unknown config field 'train.stpes'"):
    runner.run(tiny(), str(empty), "eval")


def test_predict_needs_no_config_and_creates_no_workdir(tmp_path):
  missing = tmp_path / "missing"
  with pytest.raises(FileNotFoundError, match="has no bundle/ folder"):
    runner.run(None, str(missing), "predict", str(tmp_path), str(tmp_path / "out"))
  assert not missing.exists()


# ------------------------------------------------------------- what a resumed train may change
def _messages(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records]


def test_train_on_a_new_workdir_uses_the_command_line(tmp_path):
  config = runner.train_config(str(tmp_path / "new"), tiny(num_patients=300), {})
  assert config.data.num_patients == 300
  assert not (tmp_path / "new").exists()  # nothing built yet


def test_a_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path, caplog):
  """config.json without a finished checkpoint (a save in flight is a *.orbax-checkpoint-tmp-*
  folder): nothing was trained, so the command's config is the run's."""
  work = trained_workdir(tmp_path, tiny(num_patients=300))
  os.makedirs(os.path.join(work, "checkpoints", "3.orbax-checkpoint-tmp-1712345678"))
  with caplog.at_level(logging.INFO):
    config = runner.train_config(work, tiny(image_size=64), {"data.image_size": 64})
  assert config.data.num_patients == 60 and config.data.image_size == 64
  assert any(
    "holds config.json but no checkpoint" in m
    and "starts a new run with this command's config" in m
    for m in _messages(caplog)
  )
  with pytest.raises(ValueError, match=r"train on .* needs a config: it holds no run to resume"):
    runner.train_config(work)


def test_resumed_train_takes_the_runs_config_and_logs_what_the_file_differs_in(tmp_path, caplog):
  """Trained with --config.data.num_patients=300 --config.train.steps=9; train again with the plain
  experiment file: the run goes on with its own data and length."""
  trained = tiny(num_patients=300)
  trained.train.steps = 9
  work = trained_workdir(tmp_path, trained, checkpoints=(3, 6))
  with caplog.at_level(logging.INFO):
    config = runner.train_config(work, tiny(), overrides={})
  assert config.data.num_patients == 300 and config.train.steps == 9
  lines = [m for m in _messages(caplog) if m.startswith("train resumes the run")]
  assert lines == [
    f"train resumes the run with its config {os.path.join(work, 'config.json')}; the experiment "
    "file differs in data.num_patients=60 (run: 300), train.steps=6 (run: 9) (the run's values "
    "kept)"
  ]
  assert not [m for m in _messages(caplog) if m.startswith("train.steps")]  # not changed


def test_resumed_train_refuses_an_override_that_changes_the_run(tmp_path):
  work = trained_workdir(tmp_path, tiny(num_patients=300), checkpoints=(6,))
  with pytest.raises(ValueError) as e:
    runner.train_config(work, tiny(num_patients=2000), {"data.num_patients": 2000})
  assert str(e.value) == (
    f"config.data.num_patients=2000 on the command line, 300 in {work}/config.json: train resumes "
    "the run's checkpoints with its config; only eval.*, data.workers, data.prefetch, train.steps, "
    "train.log_every, train.keep_last, train.async_checkpoints may change on resume (drop the "
    "override, or train a new run in another --workdir)"
  )
  for field, value, shown in (
    ("data.image_size", 64, "64 on the command line, 32 in"),
    ("train.lr", 0.01, "0.01 on the command line, 0.001 in"),
    ("train.batch_size", 16, "16 on the command line, 8 in"),
    ("train.checkpoint_every", 2, "2 on the command line, 3 in"),
    ("model.name", "densenet121", "'densenet121' on the command line, 'densenet_tiny' in"),
    ("seed", 1, "1 on the command line, 0 in"),
  ):
    c = tiny(num_patients=300)
    section, _, leaf = field.rpartition(".")
    (c[section] if section else c)[leaf] = value
    with pytest.raises(ValueError, match=rf"^config\.{field}={shown} .*may change on resume"):
      runner.train_config(work, c, {field: value})
  c = tiny(num_patients=300)
  c.data.split.test = 0.3
  with pytest.raises(ValueError, match=r"config.data.split.test=0.3 on the command line, 0.2 in"):
    runner.train_config(work, c, {"data.split.test": 0.3})
  with pytest.raises(ValueError, match=r"config.task='segmentation' .*another --workdir"):
    runner.train_config(work, config_lib.defaults("segmentation"), {})


def test_resumed_train_takes_the_fields_a_resume_may_change(tmp_path, caplog):
  trained = tiny(num_patients=300)
  trained.eval.bootstrap = 50
  work = trained_workdir(tmp_path, trained, checkpoints=(6,))
  c = tiny()
  c.train.steps, c.train.log_every, c.train.keep_last, c.train.async_checkpoints = 12, 3, 1, "off"
  c.data.workers, c.data.prefetch = 2, 4
  typed = {"train.steps": 12, "train.log_every": 3, "train.keep_last": 1}
  typed.update({"train.async_checkpoints": "off", "data.workers": 2, "data.prefetch": 4})
  with caplog.at_level(logging.INFO):
    config = runner.train_config(work, c, typed)
  assert (config.train.steps, config.train.log_every, config.train.keep_last) == (12, 3, 1)
  assert config.train.async_checkpoints == "off"
  assert (config.data.workers, config.data.prefetch) == (2, 4)
  assert config.data.num_patients == 300  # not typed: the run's
  assert config.eval.bootstrap == 20  # eval.* as eval takes it: this command's config
  (line,) = [m for m in _messages(caplog) if m.startswith("train resumes the run")]
  assert "from this command's config: data.prefetch=4 (run: 2), data.workers=2 (run: 0)" in line
  assert "eval.bootstrap=20 (run: 50)" in line and "train.steps=12 (run: 6)" in line
  kept = "the experiment file differs in data.num_patients=60 (run: 300) (the run's values kept)"
  assert line.endswith(kept)


def test_a_longer_run_says_what_its_schedule_does(tmp_path, caplog):
  """The schedule is a function of train.steps at the optimizer's restored step count: a cosine
  run extended from 6 to 9 steps goes on at the 9-step curve's rate for step 6, not from 0."""
  work = trained_workdir(tmp_path, tiny(), checkpoints=(3, 6))
  c = tiny()
  c.train.steps = 9
  with caplog.at_level(logging.INFO):
    runner.train_config(work, c, {"train.steps": 9})
  (line,) = [m for m in _messages(caplog) if m.startswith("train.steps 6 -> 9")]
  assert line == (
    "train.steps 6 -> 9: the run continues from its latest checkpoint (step 6), and its cosine "
    "learning-rate schedule is now laid over 9 steps: from step 7 the rate follows the 9-step "
    "curve (0.00025 there, where the 6-step schedule the checkpoint was trained with gave 0) down "
    "to 0 at step 9, so this is not the run 9 steps from the start would have been (this run's "
    "first 6 steps followed the 6-step curve)"
  )


def test_a_longer_constant_rate_run_and_a_shorter_one(tmp_path, caplog):
  trained = tiny()
  trained.train.schedule = "constant"
  work = trained_workdir(tmp_path, trained, checkpoints=(6,))
  c = tiny()
  c.train.schedule, c.train.steps = "constant", 10
  with caplog.at_level(logging.INFO):
    assert runner.train_config(work, c, {"train.steps": 10}).train.steps == 10
    c.train.steps = 4
    assert runner.train_config(work, c, {"train.steps": 4}).train.steps == 4
  lines = [m for m in _messages(caplog) if m.startswith("train.steps 6 -> ")]
  assert lines == [
    "train.steps 6 -> 10: the run continues from its latest checkpoint (step 6) to step 10; its "
    "learning rate is constant (0.001), so these steps train as a 10-step run from the start "
    "would have",
    "train.steps 6 -> 4: the run's latest checkpoint (step 6) is at or past it, so nothing is "
    "trained; the report and bundle come from its kept checkpoints",
  ]


def test_the_flag_free_api_resumes_only_the_same_run(tmp_path):
  """A sweep resuming an interrupted run passes its config without `overrides`: every field it
  gives counts, so a changed variant is refused instead of continuing other checkpoints."""
  work = trained_workdir(tmp_path, tiny(num_patients=300), checkpoints=(3,))
  assert runner.train_config(work, tiny(num_patients=300)).data.num_patients == 300
  with pytest.raises(ValueError, match=r"config.data.num_patients=60 on the command line, 300 in"):
    runner.train_config(work, tiny())
  longer = tiny(num_patients=300)
  longer.train.steps = 9
  assert runner.train_config(work, longer).train.steps == 9
  assert runner.train_config(work).data.num_patients == 300  # no config: the run's own


def test_the_readme_pair_resumes_with_the_runs_config(tmp_path):
  """./launch.sh train experiments/cxr_phantoms.py --workdir=runs/a --config.train.steps=1000
  --config.data.image_size=128, then python -m mdx.main --config=experiments/cxr_phantoms.py
  --workdir=runs/a --mode=train: the 128 px, 1000-step run, not the file's 64 px and 400 steps."""
  experiment = os.path.join(ROOT, "experiments/cxr_phantoms.py")
  trained = config_lib.load_experiment(experiment).get_config()
  trained.train.steps, trained.data.image_size = 1000, 128
  work = trained_workdir(tmp_path, trained, checkpoints=(100, 200))
  config = runner.train_config(work, config_lib.load_experiment(experiment).get_config(), {})
  assert (config.data.image_size, config.train.steps) == (128, 1000)
  assert config.to_dict() == config_lib.resolve(trained).to_dict()


def test_a_damaged_config_json_beside_checkpoints_is_one_line(tmp_path):
  work = trained_workdir(tmp_path, tiny(), checkpoints=(3,))
  with open(os.path.join(work, "config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError) as e:
    runner.train_config(work, tiny(), {})
  assert "config.json is not JSON" in str(e.value) and "\n" not in str(e.value)
  assert str(e.value).endswith(
    "the run's checkpoints were trained with it: restore it, or train a new run in another "
    "--workdir"
  )


def test_a_refused_train_leaves_the_workdir_as_it_was(tmp_path):
  """Refused in run() before the workdir is locked, the config rewritten or the data opened."""
  work = trained_workdir(tmp_path, tiny(num_patients=300), checkpoints=(6,))
  before = sorted(os.listdir(work)), open(os.path.join(work, "config.json")).read()
  with pytest.raises(ValueError, match=r"config.data.num_patients=2000 on the command line, 300"):
    runner.run(tiny(num_patients=2000), work, "train", overrides={"data.num_patients": 2000})
  assert (sorted(os.listdir(work)), open(os.path.join(work, "config.json")).read()) == before


# ------------------------------------------------------------------------ paths
def test_relative_paths_are_absolute_once_resolved(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  c = config_lib.defaults()
  c.data.source = "folders"
  c.data.root = "data/films"
  c.data.prepared_dir = ""
  c.model.init_from = "~/weights/densenet"
  c.data.split.lists_dir = "lists"
  resolved = config_lib.resolve(c)
  assert resolved.data.root == str(tmp_path / "data" / "films")
  assert resolved.model.init_from == os.path.join(os.path.expanduser("~"), "weights", "densenet")
  assert resolved.data.split.lists_dir == str(tmp_path / "lists")
  assert resolved.data.prepared_dir == ""  # empty stays empty
  assert config_lib.resolve(resolved).to_dict() == resolved.to_dict()  # once is enough
  c = config_lib.defaults()
  c.data.source = "nih"
  c.data.metadata, c.data.images, c.data.prepared_dir = "a.csv", "./imgs/", None
  resolved = config_lib.resolve(c)
  assert (resolved.data.metadata, resolved.data.images) == (
    str(tmp_path / "a.csv"),
    str(tmp_path / "imgs"),
  )
  assert resolved.data.prepared_dir is None


def test_relative_paths_reach_config_json_absolute(tmp_path, monkeypatch):
  """train writes config.json before it opens the data: a relative root that does not exist is
  recorded, and reported, as the absolute folder it means."""
  monkeypatch.chdir(tmp_path)
  c = config_lib.defaults()
  c.data.update(source="folders", root="films", image_size=32)
  c.model.name = "densenet_tiny"
  c.model.init_from = "pretrained"
  with pytest.raises(FileNotFoundError, match=f"config.data.root={tmp_path / 'films'} is not"):
    runner.run(c, "work", "train")
  written = json.loads((tmp_path / "work" / "config.json").read_text())
  assert written["data"]["root"] == str(tmp_path / "films")
  assert written["model"]["init_from"] == str(tmp_path / "pretrained")


# ------------------------------------------------------------------------ end to end
def _split_sizes(config) -> dict[str, int]:
  from mdx.data import sources, splits

  resolved = config_lib.resolve(config)
  source = sources.make_source(resolved.data, resolved.seed)
  return {k: len(v) for k, v in splits.make_split(resolved.data, source, resolved.seed).items()}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_eval_of_a_run_trained_with_overrides_reports_the_run(tmp_path):
  """Train with --config.data.num_patients and eval with the plain experiment file, through the
  function mdx.main calls: the report and bundle describe the run's split; an override of the image
  size is refused before anything is evaluated."""
  from mdx.inference import bundle as bundle_lib

  work = str(tmp_path / "run")
  trained = tiny(num_patients=40)
  trained.train.steps, trained.train.checkpoint_every = 2, 2
  trained.eval.bootstrap, trained.eval.examples, trained.eval.gradcam.images = 5, 0, 0
  runner.run(trained, work, "train")
  spec = bundle_lib.load(os.path.join(work, "bundle")).spec
  splits = spec["provenance"]["data"]["splits"]
  assert splits == _split_sizes(trained) != _split_sizes(tiny())  # 40 patients, not the file's 60

  plain = tiny()
  plain.eval.bootstrap, plain.eval.examples, plain.eval.gradcam.images = 5, 0, 0
  report = runner.run(plain, work, "eval", overrides={})
  spec = bundle_lib.load(os.path.join(work, "bundle")).spec
  assert spec["provenance"]["data"]["splits"] == splits
  assert spec["provenance"]["config"]["data"]["num_patients"] == 40
  assert spec["input"]["image_size"] == 32
  assert os.path.exists(os.path.join(report, "metrics.json"))

  before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(work, "bundle", "*"))}
  bigger = tiny(image_size=64)
  with pytest.raises(ValueError, match=r"config.data.image_size=64 on the command line, 32 in"):
    runner.run(bigger, work, "eval", overrides={"data.image_size": 64})
  assert {p: os.path.getmtime(p) for p in before} == before  # nothing rewritten


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_again_resumes_the_run_with_its_config(tmp_path, caplog):
  """Train 2 steps with --config.data.num_patients=40, then train again with the plain experiment
  file and --config.train.steps=3, through the function mdx.main calls: the run goes on from step 2
  on its own 40 patients; an override of the image size is refused before anything is built."""
  from mdx.inference import bundle as bundle_lib

  def light(c):
    c.eval.bootstrap, c.eval.examples, c.eval.gradcam.images = 5, 0, 0
    return c

  work = str(tmp_path / "run")
  trained = light(tiny(num_patients=40))
  trained.train.steps, trained.train.checkpoint_every = 2, 2
  runner.run(trained, work, "train")
  assert runner.checkpoint_steps(work) == [2]

  longer = light(tiny())
  longer.train.steps = 3
  with caplog.at_level(logging.INFO):
    runner.run(longer, work, "train", overrides={"train.steps": 3})
  messages = _messages(caplog)
  assert "Resumed from step 2 of " + work in messages
  assert any(m.startswith("train.steps 2 -> 3: the run continues from") for m in messages)
  assert runner.checkpoint_steps(work) == [2, 3]
  written = runner.load_run_config(work)
  assert (written.data.num_patients, written.train.steps) == (40, 3)
  assert written.train.checkpoint_every == 2  # the run's, not the file's 3
  spec = bundle_lib.load(os.path.join(work, "bundle")).spec
  assert spec["provenance"]["data"]["splits"] == _split_sizes(trained)  # 40 patients, not 60
  history = [json.loads(line) for line in open(os.path.join(work, "history.jsonl"))]
  assert [h["step"] for h in history if "train_loss" in h] == [2, 3]  # step 2 once: resumed

  def stamps():  # every folder and file, hidden ones too (.mdx.lock): a lock taken changes one
    return {
      os.path.join(top, name): os.stat(os.path.join(top, name)).st_mtime_ns
      for top, folders, files in os.walk(work)
      for name in [".", *folders, *files]
    }

  before = stamps()
  with pytest.raises(ValueError, match=r"config.data.image_size=64 on the command line, 32 in"):
    runner.run(light(tiny(image_size=64)), work, "train", overrides={"data.image_size": 64})
  assert stamps() == before  # nothing written, nothing locked
