"""The command line: config errors, workdir errors, the resolved config written to the workdir.

Tests that start `python -m mdx.main` are marked slow (a JAX import each); the messages they print
are also checked in-process here.
"""

import os
import subprocess
import sys

import ml_collections
import pytest

from mdx import cli
from mdx import config as config_lib
from mdx.train import run as runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, **env):
  return subprocess.run(
    [sys.executable, "-m", "mdx.main", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
  )


def test_unknown_config_field_in_an_experiment_file_names_it():
  c = ml_collections.ConfigDict({"train": {"stpes": 10}})
  with pytest.raises(ValueError, match=r"unknown config field 'train.stpes'.*'train.steps'"):
    config_lib.resolve(c)


def test_unknown_top_level_field():
  with pytest.raises(ValueError, match="unknown config field 'sed'"):
    config_lib.resolve(ml_collections.ConfigDict({"sed": 1}))


def test_resolve_keeps_defaults_and_applies_changes():
  c = config_lib.resolve(
    ml_collections.ConfigDict({"train": {"steps": 7}, "data": {"image_size": 32}})
  )
  assert c.train.steps == 7 and c.train.batch_size == 32  # merged, not replaced
  assert c.data.image_size == 32 and c.data.source == "phantoms"


@pytest.mark.slow
def test_unknown_override_flag_is_rejected(tmp_path):
  proc = run_main(
    "--config=experiments/tiny_phantoms.py", f"--workdir={tmp_path}", "--config.train.stpes=3"
  )
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert lines == [
    "error: --config.train.stpes=3: the experiment's config has no field 'stpes'. Did you mean "
    "--config.train.steps? Check the spelling, or set the field in the experiment file (an "
    "override changes a field it has)"
  ]


def _attribute_error(fn) -> AttributeError:
  with pytest.raises(AttributeError) as e:
    fn()
  return e.value


def test_a_typo_override_is_one_clean_line():
  """ml_collections raises AttributeError(KeyError('\\'stpes\\'\\nDid you mean...')): its str()
  is a repr with escaped quotes and a literal \\n."""
  c = ml_collections.ConfigDict({"train": {"steps": 1}})
  error = _attribute_error(lambda: c.train.stpes)
  line = cli._unknown_field(error, ["--config=x.py", "--config.train.stpes=4"])
  assert line.startswith(
    "--config.train.stpes=4: the experiment's config has no field 'stpes'. "
    "Did you mean --config.train.steps?"
  )
  assert "\\" not in line and "\n" not in line
  assert cli.one_line(error) == '\'stpes\' Did you mean "steps" instead of "stpes"?'


def test_a_typo_read_inside_an_experiment_file_names_its_line(tmp_path):
  experiment = tmp_path / "typo.py"
  experiment.write_text(
    "from mdx.config import defaults\n\n\n"
    "def get_config():\n"
    "  c = defaults()\n"
    "  c.train.steps = c.train.stpes + 1\n"
    "  return c\n"
  )
  module = config_lib.load_experiment(str(experiment))
  error = _attribute_error(module.get_config)
  line = cli._unknown_field(error, [f"--config={experiment}", "--config.train.steps=3"])
  assert line == (
    f"{experiment}:6: the config has no field 'stpes'. Did you mean 'steps'? Fields are declared "
    "in mdx/config.py"
  )
  assert cli.one_line(line) == line


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  with pytest.raises(NotADirectoryError, match="is a file"):
    runner.prepare_workdir(str(f))
  with pytest.raises(FileNotFoundError, match="is a file, not a run's folder"):
    runner.run(None, str(f), "eval")


@pytest.mark.slow
def test_workdir_that_is_a_file_on_the_command_line(tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  proc = run_main("--config=experiments/tiny_phantoms.py", f"--workdir={f}")
  assert proc.returncode != 0 and "is a file, not a directory" in proc.stderr


@pytest.mark.slow
def test_predict_needs_no_config_and_the_other_modes_say_they_do(tmp_path):
  proc = run_main(
    "--mode=predict", f"--workdir={tmp_path}/w", f"--input={tmp_path}", f"--output={tmp_path}/o"
  )
  assert proc.returncode == 2 and "has no bundle/ folder" in proc.stderr, proc.stderr[-2000:]
  proc = run_main("--mode=eval", f"--workdir={tmp_path}/w")
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and lines == [
    "error: --mode=eval needs --config=experiments/X.py (only --mode=predict runs without one)"
  ]
  proc = run_main("--config=experiments/tiny_phantoms.py", "--mode=eval", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "has no config.json (it was never trained)" in proc.stderr
  trained = config_lib.load_experiment(os.path.join(ROOT, "experiments/tiny_phantoms.py"))
  config = trained.get_config()
  config.data.num_patients = 300
  runner.write_config(config_lib.resolve(config), str(tmp_path))
  proc = run_main(
    "--config=experiments/tiny_phantoms.py",
    "--mode=export",
    f"--workdir={tmp_path}",
    "--config.data.image_size=64",
    "--config.eval.bootstrap=5",
  )
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith(
    f"error: config.data.image_size=64 on the command line, 32 in {tmp_path}/config.json: export "
    "uses the run's config; only eval.*"
  )


def test_unknown_data_field_for_the_chosen_source_names_it():
  c = config_lib.defaults()
  c.data.imag_size = 64  # a typo: phantoms and the pipeline read data.image_size
  with pytest.raises(ValueError, match=r"unknown config field 'data.imag_size'.*'data.image_size'"):
    config_lib.resolve(c)
  c = config_lib.defaults()
  c.data.source = "nih"
  c.data.metadata = "x.csv"
  c.data.patient_regex = "p(\\d+)"  # a folders field, not an NIH one
  with pytest.raises(ValueError, match="unknown config field 'data.patient_regex'"):
    config_lib.resolve(c)


# ------------------------------------------------------------------------------ a closed config
@pytest.mark.parametrize(
  "section, field, close",
  [
    ("data", "imag_size", "image_size"),
    ("model", "nmae", "name"),
    ("loss", "nmae", "name"),
    ("train", "stpes", "steps"),
    ("eval", "bootstrp", "bootstrap"),
    ("data.split", "tset", "test"),
    ("eval.gradcam", "layr", "layer"),
    ("data.resample", "ratoi", "ratio"),
  ],
)
def test_a_typo_in_any_section_names_the_field(section, field, close):
  c = config_lib.defaults()
  node = c
  for part in section.split("."):
    node = node[part]
  node[field] = 1
  with pytest.raises(
    ValueError,
    match=rf"unknown config field '{section}.{field}'.*"
    rf"Did you mean '{section}.{close}'",
  ):
    config_lib.resolve(c)


def test_a_model_field_typo_and_a_field_of_another_model():
  c = config_lib.defaults()
  c.model.growth_rte = 12
  with pytest.raises(ValueError, match="'model.growth_rte'.*'model.growth_rate'"):
    config_lib.resolve(c)
  c = config_lib.defaults()
  c.model.base_width = 8  # a U-Net field on a DenseNet
  with pytest.raises(ValueError, match="unknown config field 'model.base_width'"):
    config_lib.resolve(c)
  c.model.name = "unet3d"  # a classifier's fine-tuning policy means nothing to a U-Net
  with pytest.raises(ValueError, match=r"model 'unet3d' has no field\(s\) \['freeze'\]"):
    config_lib.resolve(c)


def test_a_3d_source_field_typo_is_an_error():
  c = config_lib.defaults("segmentation")
  c.data.rotate_degress = 10.0  # rotate_degrees
  with pytest.raises(ValueError, match="'data.rotate_degress'.*'data.rotate_degrees'"):
    config_lib.resolve(c)
  c = config_lib.defaults("segmentation")
  c.data.num_case = 10  # brain_phantoms reads num_cases
  with pytest.raises(ValueError, match="'data.num_case'.*'data.num_cases'"):
    config_lib.resolve(c)
  c = config_lib.defaults("segmentation")
  c.data.source = "nih"  # a 2D source for a 3D task
  with pytest.raises(ValueError, match="source='nih' is unknown for volume tasks"):
    config_lib.resolve(c)


def test_segmentation_defaults_are_its_own():
  c = config_lib.resolve(config_lib.defaults("segmentation"))
  assert c.train.best_metric == "val_dice" and c.loss.name == "dice_ce" and c.model.name == "unet3d"
  assert "gradcam" not in c.eval and "image_size" not in c.data and "patch_size" in c.data
  assert "patch_size" not in config_lib.defaults().data and "gradcam" in config_lib.defaults().eval


def test_num_classes_is_the_sources_number_unless_set():
  """model.num_classes defaults to None: resolve fills in the number of the source's findings (or a
  volume source's classes or regions) when config.data tells them, keeps a number equal to it, and
  refuses one that differs, in one line naming both."""
  assert config_lib.defaults().model.num_classes is None
  assert config_lib.defaults("segmentation").model.num_classes is None
  assert config_lib.resolve(config_lib.defaults()).model.num_classes == 14  # phantoms: NIH's 14
  c = config_lib.defaults()
  c.data.findings = ("Mass", "Nodule")
  assert config_lib.resolve(c).model.num_classes == 2
  c.model.num_classes = 2
  assert config_lib.resolve(c).model.num_classes == 2
  c.model.num_classes = 14
  with pytest.raises(ValueError) as info:
    config_lib.resolve(c)
  assert str(info.value) == (
    "config.model.num_classes=14 but source 'phantoms' has 2 findings ['Mass', 'Nodule']; "
    "leave model.num_classes unset to take the source's"
  )
  for source, fields, n in (
    ("nih", {}, 14),
    ("nih", {"findings": ("Effusion",)}, 1),
    ("chexpert", {}, 5),
    ("folders", {"classes": ("NORMAL", "PNEUMONIA"), "negative_class": "NORMAL"}, 1),
    ("folders", {"root": "/data/kermany"}, None),  # the listed folders tell: the task counts
  ):
    c = config_lib.defaults()
    c.data.source = source
    c.data.update(fields)
    assert config_lib.resolve(c).model.num_classes == n, (source, fields)
  seg = config_lib.defaults("segmentation")
  seg.data.patch_size = (16, 16, 16)
  assert config_lib.resolve(seg).model.num_classes == 3  # brain phantoms: three regions
  seg.data.label_mode = "classes"
  assert config_lib.resolve(seg).model.num_classes == 4
  seg.data.source = "msd"
  del seg.data["label_mode"]
  assert config_lib.resolve(seg).model.num_classes is None  # its dataset.json tells
  seg.data.class_names = ("background", "lesion")
  seg.model.num_classes = 3
  with pytest.raises(ValueError, match=r"num_classes=3 but source 'msd' has 2 outputs"):
    config_lib.resolve(seg)


@pytest.mark.parametrize("value", [0, -1, "3", 2.0, True])
def test_an_impossible_num_classes_is_one_line(value):
  c = config_lib.defaults()
  c.model.num_classes = value
  with pytest.raises(ValueError, match=r"config.model.num_classes=.*whole number >= 1, or None"):
    config_lib.resolve(c)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("train.batch_size", 0, r"config.train.batch_size=0: must be a whole number >= 1"),
    ("train.steps", -3, r"config.train.steps=-3: must be a whole number >= 1"),
    ("train.lr", -1.0, r"config.train.lr=-1.0: must be a number > 0"),
    ("train.lr", 0.0, r"config.train.lr=0.0: must be a number > 0"),
    ("eval.batch_size", 0, r"config.eval.batch_size=0"),
    ("data.image_size", 7, r"config.data.image_size=7 is below the 32 px"),
    ("data.split.test", 1.5, r"config.data.split.test=1.5"),
    ("eval.split", "tset", r"config.eval.split='tset' is unknown"),
    ("loss.name", "dice", r"config.loss.name='dice' is unknown"),
    ("loss.focal_alpha", 1.5, r"config.loss.focal_alpha=1.5 must be in \[0, 1\]"),
    ("eval.threshold", "yuoden", r"yuoden"),
  ],
)
def test_impossible_values_are_one_line_errors_before_anything_is_built(field, value, message):
  c = config_lib.defaults()
  *path, leaf = field.split(".")
  node = c
  for part in path:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ValueError, match=message) as info:
    config_lib.resolve(c)
  assert "\n" not in str(info.value)


def test_impossible_segmentation_values():
  c = config_lib.defaults("segmentation")
  c.model.depth = 3  # a network set by hand (unset, the plan fits it to the patch)
  c.data.patch_size = (12, 16, 16)  # depth 3 pools twice: sides must be multiples of 4... 12 is
  config_lib.resolve(c)
  c.data.patch_size = (10, 16, 16)
  with pytest.raises(ValueError, match=r"patch_size=\(10, 16, 16\) must be three whole sides"):
    config_lib.resolve(c)
  c.model.depth = None
  c.model.strides = ((1, 2, 2), (2, 2, 2))  # per axis: multiples of (2, 4, 4)
  c.data.patch_size = (6, 12, 16)
  config_lib.resolve(c)
  c.data.patch_size = (6, 12, 18)
  with pytest.raises(ValueError, match=r"multiples of \(2, 4, 4\)"):
    config_lib.resolve(c)
  c = config_lib.defaults("segmentation")
  c.data.spacing = (1.0, 0.0, 1.0)
  with pytest.raises(ValueError, match="spacing=.* must be three positive millimetres"):
    config_lib.resolve(c)
  c = config_lib.defaults("segmentation")
  c.data.rotate_degrees = 10.0  # read with augment=None only
  with pytest.raises(ValueError, match="augment=None"):
    config_lib.resolve(c)
  c = config_lib.defaults("segmentation")
  c.eval.overlap = 1.0
  with pytest.raises(ValueError, match="overlap=1.0 must be in"):
    config_lib.resolve(c)


@pytest.mark.slow
def test_config_errors_on_the_command_line_stop_before_training(tmp_path):
  proc = run_main(
    "--config=experiments/tiny_phantoms.py",
    f"--workdir={tmp_path}/w",
    "--config.train.batch_size=0",
  )
  assert proc.returncode != 0
  assert "config.train.batch_size=0: must be a whole number >= 1" in proc.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
  proc = run_main(
    "--config=experiments/tiny_phantoms.py", f"--workdir={tmp_path}/w", "--config.eval.bootstrp=5"
  )
  assert proc.returncode != 0 and "bootstrp" in proc.stderr


@pytest.mark.slow
def test_a_typo_in_an_experiment_file_is_one_line_before_anything_runs(tmp_path):
  experiment = tmp_path / "typo.py"
  experiment.write_text(
    "from mdx.config import defaults\n\n\n"
    "def get_config():\n"
    "  c = defaults('segmentation')\n"
    "  c.data.rotate_degress = 10.0\n"
    "  return c\n"
  )
  proc = run_main(f"--config={experiment}", f"--workdir={tmp_path}/w")
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "'data.rotate_degress'" in lines[0]
  assert "Did you mean 'data.rotate_degrees'?" in lines[0] and "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
@pytest.mark.parametrize(
  "flag, env, message",
  [
    ((), {"MDX_ACCELERATOR": "tpu"}, "MDX_ACCELERATOR=tpu asks for a TPU but JAX sees only cpu"),
    (("--accelerator=cuda",), {}, "--accelerator=cuda asks for a GPU but JAX sees only cpu"),
  ],
)
def test_a_run_that_asks_for_an_accelerator_stops_when_jax_sees_only_cpus(
  tmp_path, flag, env, message
):
  """JAX falls back to the host CPU when its TPU/CUDA build is missing; a run that asked for the
  accelerator (./launch.sh sets MDX_ACCELERATOR to what it detects) must stop with the install
  command instead of training on the CPU."""
  proc = run_main("--config=experiments/tiny_phantoms.py", f"--workdir={tmp_path}/w", *flag, **env)
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  install = "'.[tpu]'" if "tpu" in message else "'.[cuda]'"
  assert f"pip install -e {install}" in lines[0] and "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "w")
