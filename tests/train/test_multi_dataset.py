"""Training across datasets (experiments/multi_cxr_phantoms.py): two phantom 'hospitals' in one
stream by their weights, split by patient within each, reported per dataset and pooled, and the
bundle names both with their fingerprints."""

import csv
import json
import os

import numpy as np
import pytest
from absl import flags
from sklearn.metrics import roc_auc_score

from mdx import config as config_lib
from mdx.runtime import BatchGeometry
from mdx.train.classification import PER_DATASET_FILE, ClassificationTask

flags.FLAGS.mark_as_parsed()
EXPERIMENT = os.path.join(
  os.path.dirname(__file__), "..", "..", "experiments", "multi_cxr_phantoms.py"
)


def experiment():
  return config_lib.load_experiment(EXPERIMENT).get_config()


def test_the_stream_draws_the_datasets_by_weight_and_splits_within_each():
  c = experiment()
  c.data.sources[0]["weight"], c.data.sources[1]["weight"] = 3.0, 1.0
  task = ClassificationTask(config_lib.resolve(c))
  names = task.datasets
  train = task.splits["train"]
  total = len(train)
  assert task.epochs.counts == (round(total * 0.75), round(total * 0.25))
  it = iter(task.train_data(BatchGeometry(c.train.batch_size)))
  ids = np.concatenate([next(it)["index"] for _ in range(total // c.train.batch_size)])
  share_a = np.mean(names[ids] == "hospital_a")
  assert abs(share_a - 0.75) < 0.08, share_a  # the first epoch: exactly 3:1 up to rounding
  # hospital B labels three findings: the others are unknown (nan) in its records
  b = names == "hospital_b"
  known = [f for f in task.findings if not np.isnan(task.labels[b, task.findings.index(f)]).all()]
  assert known == ["Cardiomegaly", "Effusion", "Pneumothorax"]
  assert not np.isnan(task.labels[~b]).any()
  for name in ("hospital_a", "hospital_b"):  # each dataset has its own validation and test
    for split in ("train", "validation", "test"):
      assert (names[task.splits[split]] == name).any(), (name, split)
  pids = task.patient_ids
  assert not set(pids[task.splits["train"]]) & set(pids[task.splits["test"]])


def _table(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.slow  # trains a run
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_trains_reports_per_dataset_and_pooled_and_the_bundle_names_every_source(tmp_path):
  from mdx.inference import bundle as bundle_lib
  from mdx.inference.classifier import ImageClassifier
  from mdx.train import run as runner

  c = experiment()
  c.train.steps = 4
  c.train.checkpoint_every = 2
  c.eval.gradcam.findings = ()
  work = str(tmp_path / "work")
  report = runner.run(c, work, "train")

  per = json.load(open(os.path.join(work, PER_DATASET_FILE)))["splits"]
  assert set(per) == {"test", "validation"}
  metrics = json.load(open(os.path.join(report, "metrics.json")))
  assert per["test"]["pooled"]["macro_auroc"] == metrics["macro"]["auroc"]["value"]
  # each dataset's test AUROC, recomputed with scikit-learn from the report's own predictions
  probs = _table(os.path.join(report, "test_predictions.csv"))
  labels = {r["id"]: r for r in _table(os.path.join(report, "labels.csv"))}
  for name in ("hospital_a", "hospital_b"):
    mine = [r for r in probs if r["image_id"].startswith(f"{name}:")]
    entry = per["test"][name]
    assert entry["n_images"] == len(mine)
    assert entry["n_patients"] == len({r["patient_id"] for r in mine})
    for finding, numbers in entry["per_finding"].items():
      y = np.array([float(labels[r["image_id"]][finding]) for r in mine])
      p = np.array([float(r[finding]) for r in mine])
      assert not np.isnan(y).any() and numbers["n_known"] == len(y)
      if 0 < y.sum() < len(y):
        assert abs(numbers["auroc"] - roc_auc_score(y, p)) < 1e-4  # the CSV keeps 6 decimals
      else:
        assert numbers["auroc"] is None
  # hospital B is reported on the three findings it labels only
  assert list(per["test"]["hospital_b"]["per_finding"]) == [
    "Cardiomegaly",
    "Effusion",
    "Pneumothorax",
  ]
  history = [json.loads(line) for line in open(os.path.join(work, "history.jsonl"))]
  assert any("val_auroc_hospital_b" in h for h in history)

  spec = bundle_lib.load(os.path.join(work, "bundle")).spec
  data = spec["provenance"]["data"]
  assert data["source"] == "mixture"
  listed = data["sources"]
  assert [s["name"] for s in listed] == ["hospital_a", "hospital_b"]
  assert all(len(s["fingerprint"]) == 64 for s in listed)
  assert listed[0]["fingerprint"] != listed[1]["fingerprint"]
  assert sum(s["n_train"] for s in listed) == data["splits"]["train"]
  assert listed[1]["findings_unlabelled"] == [
    f for f in spec["output"]["findings"] if f not in ("Cardiomegaly", "Effusion", "Pneumothorax")
  ]
  assert listed[1]["config"]["num_patients"] == 40 and listed[0]["weight"] == 1.0
  # the bundle predicts on a film without the training data
  classifier = ImageClassifier(bundle_lib.load(os.path.join(work, "bundle")))
  film = np.random.default_rng(0).integers(0, 255, (40, 36, 1)).astype(np.uint8)
  out = classifier.predict(classifier.preprocess(film)[None])
  assert out.shape == (1, 14) and np.all((out >= 0) & (out <= 1))
