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


# --- three datasets in their published layouts (experiments/multi_cxr_real.py on tiny fixtures)

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "multi_cxr_real.py")
RSNA_FINDINGS = ["Pneumonia", "Lung Opacity", "No Finding"]


def _weighted_auroc(y, p, w):
  """scikit-learn's AUROC of the known labels, each row counted w times; nan with one class."""
  known = ~np.isnan(y) & (w > 0)
  y, p, w = y[known], p[known], w[known]
  if not (w[y == 1].sum() > 0 and w[y == 0].sum() > 0):
    return np.nan
  return roc_auc_score(y, p, sample_weight=w)


def _first(folder, suffix):
  """The first file named *suffix under folder (walked in sorted order)."""
  return next(
    os.path.join(d, f)
    for d, _, fs in sorted(os.walk(folder))
    for f in sorted(fs)
    if f.endswith(suffix)
  )


def _real_layout_config(tmp_path):
  """multi_cxr_real's config with its files pointed at tiny fixtures in the same layouts (and its
  model, image size and steps shrunk): every field it sets must be one the sources read."""
  from data.real_layouts import write_nih_patients, write_rsna_films, write_siim_images

  metadata, images = write_nih_patients(tmp_path / "nih", n_patients=30)
  files = {
    "nih": {"metadata": metadata, "images": images},
    "rsna": write_rsna_films(tmp_path / "rsna", n_films=30),
    "siim": write_siim_images(tmp_path / "siim", n_patients=24),
  }
  c = config_lib.load_experiment(REAL).get_config()
  for entry in c.data.sources:
    assert set(files[entry["source"]]) <= set(entry), entry  # the experiment names each file
    entry.update(files[entry["source"]], prepared_dir="")  # the fixtures' own files, decoded
  c.data.image_size = 32
  c.data.split.test = 0.25
  c.data.split.val = 0.25
  c.model.name = "densenet_tiny"
  c.train.batch_size = 8
  c.train.steps = 4
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.eval.batch_size = 16
  c.eval.bootstrap = 20
  c.eval.examples = 0
  c.eval.gradcam.findings = ()
  return c, files


@pytest.mark.slow  # trains a run on DICOM and PNG fixtures
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nih_rsna_siim_in_their_layouts_train_report_per_dataset_with_cis_and_predict(tmp_path):
  from mdx.evaluate import bootstrap as B
  from mdx.inference import predict_files
  from mdx.train import run as runner

  c, files = _real_layout_config(tmp_path)
  work = str(tmp_path / "work")
  report = runner.run(c, work, "train")

  per = json.load(open(os.path.join(work, PER_DATASET_FILE)))
  metrics = json.load(open(os.path.join(report, "metrics.json")))
  test = per["splits"]["test"]
  assert set(test) == {"pooled", "nih", "rsna", "siim"}
  # pooled: the report's own numbers, interval included
  assert test["pooled"]["macro_auroc"] == metrics["macro"]["auroc"]["value"]
  assert test["pooled"]["macro_auroc_ci"] == metrics["macro"]["auroc"]["ci"]
  assert per["settings"]["bootstrap_resamples"] == {"test": 20, "validation": 0}
  # each dataset reports the findings it labels, and only those
  from mdx.data.cxr.findings import NIH_FINDINGS

  assert list(test["nih"]["per_finding"]) == list(NIH_FINDINGS)
  assert list(test["rsna"]["per_finding"]) == RSNA_FINDINGS
  assert list(test["siim"]["per_finding"]) == ["Pneumothorax"]

  probs = _table(os.path.join(report, "test_predictions.csv"))
  labels = {r["id"]: r for r in _table(os.path.join(report, "labels.csv"))}
  findings = [f for f in probs[0] if f not in ("image_id", "patient_id")]
  for name, entry in ((n, test[n]) for n in ("nih", "rsna", "siim")):
    mine = [r for r in probs if r["image_id"].startswith(f"{name}:")]
    assert entry["n_images"] == len(mine) > 0
    patients = [r["patient_id"] for r in mine]
    assert entry["n_patients"] == len(set(patients))
    # a finding the dataset does not label is unknown (nan) on its records, never negative
    for f in findings:
      column = [float(labels[r["image_id"]][f] or "nan") for r in mine]
      assert np.isnan(column).all() == (f not in entry["per_finding"]), (name, f)
    # AUROC and its patient-bootstrap interval, recomputed with scikit-learn on the same resamples
    reported = list(entry["per_finding"])
    y = np.array([[float(labels[r["image_id"]][f] or "nan") for f in reported] for r in mine])
    p = np.array([[float(r[f]) for f in reported] for r in mine])
    resamples = np.concatenate(list(B.resample_weights(patients, len(mine), 20, c.seed)))
    samples = np.array(
      [[_weighted_auroc(y[:, j], p[:, j], w) for j in range(len(reported))] for w in resamples]
    )
    defined = 0
    for j, f in enumerate(reported):
      numbers = entry["per_finding"][f]
      point = _weighted_auroc(y[:, j], p[:, j], np.ones(len(mine)))
      if np.isnan(point):
        assert numbers["auroc"] is None
        continue
      defined += 1
      assert abs(numbers["auroc"] - point) < 1e-4  # the CSV keeps 6 decimals
      ok = samples[:, j][np.isfinite(samples[:, j])]
      if len(ok) >= 10:
        np.testing.assert_allclose(numbers["auroc_ci"], np.quantile(ok, [0.025, 0.975]), atol=1e-3)
    assert defined, f"{name}: no finding with both classes in its test split; enlarge the fixture"
    finite = np.isfinite(samples)
    macro = np.where(finite.any(1), np.where(finite, samples, 0).sum(1) / finite.sum(1).clip(1), 0)
    macro = macro[finite.any(1)]
    np.testing.assert_allclose(
      entry["macro_auroc_ci"], np.quantile(macro, [0.025, 0.975]), atol=1e-3
    )
  # validation: point values per dataset, no intervals (the training curves' numbers)
  assert "macro_auroc_ci" not in per["splits"]["validation"]["rsna"]

  # the bundle predicts on films of each layout without the training data
  films = tmp_path / "films.csv"
  listed = [
    os.path.join(files["rsna"]["images"], sorted(os.listdir(files["rsna"]["images"]))[0]),
    _first(files["siim"]["images"], ".dcm"),
    _first(files["nih"]["images"], ".png"),
  ]
  films.write_text("path\n" + "\n".join(listed) + "\n")
  summary = predict_files.predict(
    os.path.join(work, "bundle"), str(films), str(tmp_path / "out"), progress=False
  )
  assert summary["predicted"] == 3 and summary["errors"] == 0
  rows = _table(os.path.join(str(tmp_path / "out"), "predictions.csv"))
  assert [r["path"] for r in rows] == listed
  for r in rows:
    assert all(0 <= float(r[f]) <= 1 for f in findings)
