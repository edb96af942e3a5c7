"""A run owns its config: eval and export read WORKDIR/config.json, take only the evaluation fields
from the command line and refuse an override of anything the run was trained with; every path in a
config is absolute once resolved.

The unit tests write config.json themselves (no training); the one slow test trains 2 steps.
"""

import glob
import json
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


def trained_workdir(tmp_path, config) -> str:
  """A workdir as train leaves its config: config.json of the resolved config."""
  work = tmp_path / "run"
  work.mkdir()
  runner.write_config(config_lib.resolve(config), str(work))
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
