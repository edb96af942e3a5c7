"""A run's bundle predicts what the run evaluated, and works without the training data.

Classifier: a tiny DenseNet trained on a folder dataset of PNGs; the bundle's raw scores on the test
files equal the run's test_predictions.csv. Segmenter: a tiny U-Net on an MSD-layout folder; the
bundle's sliding-window probabilities equal the task's own evaluation. Both are exported at another
step too. An export that would replace a file mdx did not write is refused before anything is
restored or evaluated.
"""

import csv
import json
import os

import numpy as np
import pytest
from fixture_files import write_msd
from PIL import Image

from mdx import config as config_lib
from mdx import outputs
from mdx.inference import bundle as bundle_lib
from mdx.inference import segmenter
from mdx.inference.classifier import ImageClassifier
from mdx.inference.segmenter import VolumeSegmenter
from mdx.train import loop, tasks
from mdx.train import run as runner


def _folder_dataset(root, n=24, size=40):
  """NORMAL/ and OPACITY/ 8-bit PNGs: an opacity is a bright disc at a random place."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:size, :size]
  for i in range(n):
    cls = "OPACITY" if i % 2 else "NORMAL"
    image = rng.normal(90, 20, (size, size))
    if cls == "OPACITY":
      cy, cx = rng.integers(10, size - 10, 2)
      image += 120 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 36)
    os.makedirs(os.path.join(root, cls), exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
      os.path.join(root, cls, f"p{i:03d}.png")
    )


def _classifier_config(root):
  c = config_lib.defaults()
  c.data.source = "folders"
  c.data.root = root
  c.data.negative_class = "NORMAL"
  c.data.image_size = 32
  c.data.workers = 0
  c.data.split = dict(by="patient", test=0.25, val=0.25)
  c.model.name = "densenet_tiny"  # num_classes unset: the task counts the folders' findings
  c.train.batch_size = 8
  c.train.steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.eval.batch_size = 8
  c.eval.examples = 2
  c.eval.gradcam.findings = ()
  c.eval.bootstrap = 10
  return c


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_a_refused_export_fails_before_the_run_is_built_or_restored(tmp_path, monkeypatch):
  """--output names a folder holding a user's model_card.md (or a report.md in its -report
  sibling): the export stops on it before the task is built, so before any checkpoint is restored
  or anything evaluated; nothing is written into either folder."""
  data = str(tmp_path / "data")
  _folder_dataset(data, n=4)
  work = str(tmp_path / "work")
  os.makedirs(work)
  runner.write_config(config_lib.resolve(_classifier_config(data)), work)  # a run's config

  def built(*args, **kwargs):
    raise AssertionError("the export went on to build the run")

  monkeypatch.setattr(tasks, "make_task", built)
  out = tmp_path / "exported"
  out.mkdir()
  (out / "model_card.md").write_text("my card\n")
  with pytest.raises(outputs.OutputError, match=r"exported/model_card.md, which mdx did not write"):
    runner.run(None, work, "export", output_dir=str(out))
  os.remove(out / "model_card.md")
  report = tmp_path / "exported-report"
  report.mkdir()
  (report / "report.md").write_text("my notes\n")
  with pytest.raises(outputs.OutputError, match=r"exported-report/report.md, which mdx did not"):
    runner.run(None, work, "export", output_dir=str(out))
  assert os.listdir(out) == [] and os.listdir(report) == ["report.md"]
  # with overwrite the claim lets it through: it goes on to build the run
  with pytest.raises(AssertionError, match="went on to build"):
    runner.run(None, work, "export", output_dir=str(out), overwrite=True)


@pytest.mark.slow  # trains a run
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_classifier_bundle_equals_the_run_and_travels(tmp_path, monkeypatch):
  data = str(tmp_path / "data")
  _folder_dataset(data)
  c = _classifier_config(data)
  work = str(tmp_path / "work")
  report = runner.run(c, work, "train")

  bundle = bundle_lib.load(os.path.join(work, "bundle"))
  spec = bundle.spec
  assert spec["output"]["findings"] == ["OPACITY"]
  # model.num_classes was left to the source, which only the listed folders tell: config.json
  # and the bundle state the number the model was built with
  assert config_lib.resolve(c).model.num_classes is None
  assert json.load(open(f"{work}/config.json"))["model"]["num_classes"] == 1
  assert spec["model"]["num_classes"] == 1
  assert spec["provenance"]["config"]["model"]["num_classes"] == 1
  assert spec["thresholds"]["chosen_on"].startswith("validation split")
  assert spec["calibration"]["method"] == "platt"
  assert spec["provenance"]["step"] == json.load(open(f"{work}/evaluated_checkpoint.json"))["step"]
  assert spec["provenance"]["data"]["splits"] == {"train": 12, "validation": 6, "test": 6}
  assert len(spec["provenance"]["data"]["fingerprint"]) == 64
  test = spec["results"]["test"]["per_finding"]["OPACITY"]
  metrics = json.load(open(os.path.join(report, "metrics.json")))
  assert test["auroc"] == metrics["per_finding"]["OPACITY"]["metrics"]["auroc"]
  assert "OPACITY" in open(os.path.join(work, "bundle", bundle_lib.CARD)).read()
  assert set(bundle.bootstrap()) == {"test/OPACITY/auroc"}

  # The bundle's raw scores on the test files are the run's own test predictions.
  rows = _read_csv(os.path.join(report, "test_predictions.csv"))
  classifier = ImageClassifier(bundle)
  x = np.stack([classifier.read(os.path.join(data, r["image_id"])) for r in rows])
  raw = classifier.predict(x)[:, 0]
  run = np.array([float(r["OPACITY"]) for r in rows])
  assert np.abs(raw - run).max() < 1e-5  # the CSV keeps 6 decimals

  # Predict through the workdir needs only the bundle: the data folder is gone.
  os.rename(data, str(tmp_path / "moved"))
  c.data.root = ""
  out = runner.run(c, work, "predict", str(tmp_path / "moved"), str(tmp_path / "out"))
  predicted = {r["path"]: r for r in _read_csv(os.path.join(out, "predictions.csv"))}
  for r, score in zip(rows, raw):
    p = predicted[r["image_id"]]
    assert abs(float(p["OPACITY raw"]) - score) < 1e-5
    assert abs(float(p["OPACITY"]) - classifier.calibrate(score[None, None])[0, 0]) < 1e-5

  # export's default folder names the best step: a user's file there is refused once that step is
  # restored, before anything is evaluated; with overwrite it is replaced and a user's note stays
  os.rename(str(tmp_path / "moved"), data)  # export evaluates: the data is back
  step = spec["provenance"]["step"]
  default = os.path.join(work, f"bundle-step-{step}")
  os.makedirs(default)
  with open(os.path.join(default, "bundle.json"), "w") as f:
    f.write("{}")
  with open(os.path.join(default, "APPROVED.txt"), "w") as f:
    f.write("ok\n")

  def evaluated(*args, **kwargs):
    raise AssertionError("the export evaluated before refusing")

  with monkeypatch.context() as m:
    m.setattr(runner, "report", evaluated)
    with pytest.raises(outputs.OutputError, match=r"bundle.json, which mdx did not write"):
      runner.run(None, work, "export")
  assert runner.run(None, work, "export", overwrite=True) == default
  assert bundle_lib.load(default).spec["provenance"]["step"] == step
  assert open(os.path.join(default, "APPROVED.txt")).read() == "ok\n"


@pytest.mark.slow  # trains a run
def test_segmenter_bundle_equals_the_run_and_exports_any_step(tmp_path):
  write_msd(str(tmp_path / "data"), np.diag([1.0, 1.2, 0.8, 1.0]))
  # the planned experiment: deep supervision in training, mirroring and post-processing in bundles
  c = config_lib.load_experiment("experiments/msd_hippocampus.py").get_config()
  c.data.root = str(tmp_path / "data")
  c.data.split = dict(by="patient", test=0.34, val=0.34)
  c.model.base_width, c.model.depth = 2, 2
  c.data.patch_size = (8, 8, 8)
  # the fixture's folder name tells no MSD task: its classes and mirror axes are stated
  c.data.class_names = ("background", "anterior", "posterior")
  c.data.flip_axes = (0,)
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 4, 2, 2
  c.eval.examples = 0
  c.eval.split = "test"
  work = str(tmp_path / "work")
  runner.run(c, work, "train")
  bundle = bundle_lib.load(os.path.join(work, "bundle"))
  assert bundle.spec["output"]["class_names"] == ["background", "anterior", "posterior"]
  assert set(bundle.spec["results"]) == {"test", "validation"}

  resolved = config_lib.resolve(c)
  task = tasks.make_task(resolved)
  _, evaluator, step = loop.restore_for_eval(resolved, work, task)
  assert step == bundle.spec["provenance"]["step"]
  seg = VolumeSegmenter(bundle)
  assert (
    bundle.spec["input"]["mirror_axes"] == [0] and bundle.spec["model"]["deep_supervision"] is False
  )
  assert not any(k.startswith("head_ds") for k in bundle.variables["params"])
  decision = bundle.spec["output"]["postprocess"]
  assert set(decision["largest_component"]) <= {"anterior", "posterior"}
  for i in task.splits["test"]:
    record = task.source[int(i)]
    expected = segmenter.postprocess(
      task.predict_volume(evaluator, record, mirror=True), decision, task.class_names
    )
    np.testing.assert_array_equal(seg.predict(record["image"], record["spacing"]), expected)

  # export writes a bundle of any kept step, with its own report
  other = 2 if step != 2 else 4
  out = runner.run(c, work, "export", step=other)
  assert out == os.path.join(work, f"bundle-step-{other}")
  assert bundle_lib.load(out).spec["provenance"]["step"] == other
  assert os.path.exists(out + "-report/metrics.json")
  with pytest.raises(ValueError, match="--step=3"):
    runner.run(c, work, "export", step=3)
