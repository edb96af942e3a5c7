"""The segmentation task end to end on tiny fixtures: train, report, predict NIfTIs with the input
affine."""

import importlib.util
import json
import os

import nibabel as nib
import numpy as np
import pytest
from fixture_files import write_msd
from scipy import ndimage

from mdx.inference import segmenter
from mdx.runtime import BatchGeometry
from mdx.train import run as runner
from mdx.train import segmentation


@pytest.fixture(autouse=True)
def check_cache(tmp_path, monkeypatch):
  """The record checks (mdx.data.check) cache into the test's folder, not the user's ~/.cache."""
  monkeypatch.setenv("MDX_CHECK_CACHE", str(tmp_path / "check_cache"))


AFFINE = np.array([[-1.0, 0, 0, 20], [0, 1.2, 0, -3], [0, 0, 0.8, 7], [0, 0, 0, 1]])


def _config(name):
  spec = importlib.util.spec_from_file_location(
    name, os.path.join(os.path.dirname(__file__), "..", "..", "experiments", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _tiny(c, steps=2):
  c.model.base_width = 2
  c.model.depth = 2
  c.data.patch_size = (8, 8, 8)
  c.data.rotate_degrees = 0.0
  c.train.steps = steps
  c.train.log_every = 1
  c.train.checkpoint_every = steps
  c.eval.examples = 1
  return c


@pytest.mark.slow
def test_msd_train_report_and_predict(tmp_path):
  """The planned experiment (nothing set but the source and its root) plans, trains, reports and
  bundles; predict segments scans at their own spacing and grid."""
  write_msd(str(tmp_path / "data"), AFFINE)
  c = _tiny(_config("msd_hippocampus"))
  c.model.depth = c.data.patch_size = None  # the plan's: a whole fixture scan per patch
  c.data.root = str(tmp_path / "data")
  c.data.class_names = ("background", "anterior", "posterior")  # no MSD task in the folder name
  c.data.flip_axes = (0,)
  c.data.split.val = 0.34
  work = str(tmp_path / "work")
  report = runner.run(c, work, "train")
  plan = json.load(open(os.path.join(work, "plan.json")))
  assert plan["target_spacing"] == pytest.approx([1.0, 1.2, 0.8])  # the fixture's spacing
  stated = json.load(open(os.path.join(work, "config.json")))
  assert stated["data"]["patch_size"] == plan["patch_size"]  # config.json states the plan's
  assert stated["model"]["strides"] == plan["strides"] and stated["model"]["base_width"] == 2
  metrics = json.load(open(os.path.join(report, "metrics.json")))
  assert metrics["summary"]["num_cases"] == 2 and metrics["summary"]["split"] == "validation"
  assert set(metrics["summary"]["per_class"]) == {"background", "anterior", "posterior"}
  assert 0.0 <= metrics["summary"]["mean_dice"] <= 1.0
  assert set(metrics["summary"]["inference"]["mean_dice"]) >= {"plain", "mirrored"}
  assert any(f.endswith(".png") for f in os.listdir(os.path.join(report, "overlays")))
  assert json.loads(open(os.path.join(work, "history.jsonl")).readlines()[-1])["step"] == 2
  # a resume plans nothing anew: the fields left None take the run's planned values
  c.train.steps = 4
  runner.run(c, work, "train")
  assert json.loads(open(os.path.join(work, "history.jsonl")).readlines()[-1])["step"] == 4
  assert json.load(open(os.path.join(work, "plan.json")))["patch_size"] == plan["patch_size"]
  scans = tmp_path / "scans"
  scans.mkdir()
  img = nib.load(str(tmp_path / "data/imagesTr/hippocampus_001.nii.gz"))
  odd = np.asarray(img.dataobj)[:9, :13, :7]  # not a multiple of the window: padded and cropped
  nib.save(nib.Nifti1Image(odd, AFFINE), str(scans / "scan_a.nii.gz"))
  # the same anatomy on another grid: 0.8 x 1.5 x 1.0 mm, resampled to the plan's and back
  other = np.diag([0.8, 1.5, 1.0, 1.0])
  finer = ndimage.zoom(np.asarray(img.dataobj, np.float32), (1.0 / 0.8, 1.2 / 1.5, 0.8), order=1)
  nib.save(nib.Nifti1Image(finer, other), str(scans / "scan_b.nii.gz"))
  # predict goes through the run's bundle: the training data may be gone and the config lack it
  os.rename(tmp_path / "data", tmp_path / "data_moved")
  c.data.root = ""
  out = runner.run(c, work, "predict", str(scans), str(tmp_path / "out"))
  pred = nib.load(os.path.join(out, "scan_a.nii.gz"))
  assert pred.shape == (9, 13, 7)
  np.testing.assert_allclose(pred.affine, AFFINE)
  assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
  pred = nib.load(os.path.join(out, "scan_b.nii.gz"))
  assert pred.shape == finer.shape  # on the scan's own grid
  np.testing.assert_allclose(pred.affine, other)


def test_phantom_regions_task_loss_and_label_conversion():
  c = _tiny(_config("brain_phantoms_unet3d"))
  c.data.num_cases = 5
  c.data.shape = (16, 16, 16)
  from mdx import config as config_lib

  task = segmentation.SegmentationTask(config_lib.resolve(c))
  assert task.activation == "sigmoid" and task.regions
  b = task.config.train.batch_size  # the plan's: at least 2
  assert b >= 2 and task.plan["batch_size"] == b
  batch = next(iter(task.train_data(BatchGeometry(b))))
  assert batch["image"].shape == (b, 8, 8, 8, 4) and batch["label"].shape == (b, 8, 8, 8, 3)
  logits = np.where(batch["label"] > 0, 20.0, -20.0).astype(np.float32)
  assert np.all(np.asarray(task.loss(logits, batch)) < 1e-3)  # perfect prediction: ~0 loss
  regions = np.zeros((2, 2, 1, 3), np.uint8)
  regions[0, 0] = [1, 0, 0]
  regions[0, 1] = [1, 1, 0]
  regions[1, 0] = [1, 1, 1]
  np.testing.assert_array_equal(segmenter.regions_to_labels(regions)[..., 0], [[2, 1], [4, 0]])
  with pytest.raises(ValueError, match="num_classes"):
    c.model.num_classes = 4
    segmentation.SegmentationTask(config_lib.resolve(c))


_SCRIPT = r"""
import os, sys, importlib.util
import numpy as np
from absl import flags
flags.FLAGS.mark_as_parsed()
import jax
from flax import traverse_util
from mdx import config as config_lib
from mdx import runtime
from mdx.train import loop, tasks
runtime.join_processes()  # several processes when started by mdx.local
runtime.enable_compilation_cache()
spec = importlib.util.spec_from_file_location("cfg", "experiments/brain_phantoms_unet3d.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
c = m.get_config()
c.data.num_cases, c.data.shape, c.data.patch_size = 6, (16, 16, 16), (8, 8, 8)
c.model.base_width, c.model.depth = 2, 2
c.train.batch_size = c.eval.batch_size = 4  # one example per device of 4 (the plan's may be 2)
c.train.steps, c.train.checkpoint_every, c.train.log_every = 2, 100, 1
c.train.optimizer, c.train.lr = "sgd", 0.05  # linear in the gradient: tests/train/test_training.py
c.eval.after_train = False
c = config_lib.resolve(c)
result = loop.train(c, sys.argv[1], tasks.make_task(c))
state = getattr(result, "state", result)
host = runtime.to_host({"p": state.params, "b": state.batch_stats})
if jax.process_index() == 0:
  np.savez(sys.argv[2], **traverse_util.flatten_dict(host, sep="/"))
"""


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_device(tmp_path):
  """Data-parallel U-Net training (BatchNorm synchronised over 'data') on 2 processes x 2 devices
  (mdx.local) equals the 1-device run: so it equals 1 process x 4 devices too, to the same
  tolerance (without synchronised statistics, 4 devices in any arrangement would differ from 1)."""
  import subprocess
  import sys

  root = os.path.join(os.path.dirname(__file__), "..", "..")
  script = tmp_path / "run.py"
  script.write_text(_SCRIPT)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  out = str(tmp_path / "p1.npz")
  subprocess.run(
    [sys.executable, str(script), str(tmp_path / "w1"), out],
    cwd=root,
    env=env,
    check=True,
    capture_output=True,
  )
  outs = [np.load(out)]
  out = str(tmp_path / "p2x2.npz")
  subprocess.run(
    [sys.executable, "-m", "mdx", "local", "2", sys.executable, str(script), str(tmp_path / "w2x2")]
    + [out],
    cwd=root,
    env=dict(os.environ, MDX_LOCAL_DEVICES="2", JAX_PLATFORMS="cpu"),
    check=True,
    capture_output=True,
  )
  outs.append(np.load(out))
  one, two = outs
  assert set(one.files) == set(two.files) and any(k.startswith("b/") for k in one.files)
  for k in one.files:
    np.testing.assert_allclose(two[k], one[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_label_mode_comes_from_the_source_not_from_a_config_lookup():
  """An experiment that leaves data.label_mode out gets the source's default (regions) and a
  sigmoid head to match, not region labels under a softmax."""
  from mdx import config as config_lib

  c = _tiny(_config("brain_phantoms_unet3d"))
  c.data.num_cases = 5
  c.data.shape = (16, 16, 16)
  del c.data["label_mode"]
  task = segmentation.SegmentationTask(config_lib.resolve(c))
  assert task.source.label_mode == "regions" and task.regions and task.activation == "sigmoid"
  c.data.label_mode = "classes"
  c.model.num_classes = 4
  task = segmentation.SegmentationTask(config_lib.resolve(c))
  assert not task.regions and task.activation == "softmax"


def test_a_flip_the_source_forbids_is_a_config_error():
  """Which flips keep a scan plausible and its labels true is the source's fact (BraTS-like
  brains: left-right only); MSD cannot say, so its experiment decides."""
  from mdx import config as config_lib

  c = _tiny(_config("brain_phantoms_unet3d"))
  c.data.flip_axes = (0, 2)
  with pytest.raises(ValueError, match=r"flip_axes=\(0, 2\) flips along axis 2.*'brain_phantoms'"):
    config_lib.resolve(c)
  c.data.flip_axes = (0,)
  config_lib.resolve(c)
  c = _config("msd_hippocampus_unet3d")
  c.data.flip_axes = (1, 2)
  config_lib.resolve(c)


def test_the_bundle_states_what_report_returned_and_the_sources_label_values():
  """bundle_contents is a function of the Report it is given (no state left by report), and the
  label values written to disk are the source's: BraTS-style classes write enhancing tumour as 4."""
  from types import SimpleNamespace

  from mdx import config as config_lib
  from mdx.inference import bundle as bundle_lib
  from mdx.train import tasks

  c = _tiny(_config("brain_phantoms_unet3d"))
  c.data.num_cases, c.data.shape = 5, (16, 16, 16)
  c.data.label_mode, c.model.num_classes = "classes", 4
  task = segmentation.SegmentationTask(config_lib.resolve(c))
  per_class = {n: {"dice": 0.5, "sensitivity": 0.6, "specificity": 0.9} for n in task.class_names}
  summary = {"num_cases": 2, "mean_dice": 0.5, "per_class": per_class}
  state = SimpleNamespace(params={"w": np.zeros(2)}, batch_stats={})
  reported = tasks.Report("/somewhere/report", {"validation": summary})
  spec, variables, samples = task.bundle_contents(SimpleNamespace(state=state), reported)
  assert spec["task"] == task.bundle_kind.task == "segmentation"
  assert spec["output"]["label_values"] == [0, 1, 2, 4]
  assert set(spec["results"]) == {"validation"} and spec["results"]["validation"]["n_cases"] == 2
  # the training state's parameters but the deep-supervision heads (the bundle predicts without)
  assert variables["params"] == {k: v for k, v in state.params.items() if "head_ds" not in k}
  assert samples == {} and spec["model"]["deep_supervision"] is False
  bundle_lib.check_spec({"format": bundle_lib.FORMAT, **spec}, "test")
  other = tasks.Report("/elsewhere", {"test": {**summary, "mean_dice": 0.25}})
  again, _, _ = task.bundle_contents(SimpleNamespace(state=state), other)
  assert set(again["results"]) == {"test"} and again["results"]["test"]["mean_dice"] == 0.25


def test_num_classes_left_unset_is_counted_from_the_msd_dataset_json(tmp_path):
  """An MSD folder names its classes in dataset.json, which resolve does not read: model.num_classes
  stays unset until the task has built the source and counts them (in place); the data goes
  through mdx.data.prepare (every case checked, split by case)."""
  from mdx import config as config_lib

  root = tmp_path / "data"
  write_msd(str(root), AFFINE, n=3)
  labels = {"0": "background", "1": "anterior", "2": "posterior"}
  (root / "dataset.json").write_text(json.dumps({"labels": labels}))
  c = _tiny(_config("msd_hippocampus_unet3d"))
  del c.data["class_names"]
  c.data.root = str(root)
  c.data.split.val = 0.34
  c = config_lib.resolve(c)
  assert c.model.num_classes is None
  task = segmentation.SegmentationTask(c)
  assert task.class_names == tuple(labels.values()) and c.model.num_classes == 3
  assert task.record_check.total == 3 and sorted(task.splits) == ["test", "train", "validation"]
  assert len(task.splits["validation"]) == 1 and len(task.splits["test"]) == 0
  c.model.num_classes = 4
  with pytest.raises(ValueError, match=r"num_classes=4 but source 'msd' has 3 outputs"):
    segmentation.SegmentationTask(c)
