"""External validation end to end: a phantom-trained bundle on another phantom set saved as class
folders whose findings are renamed (the synonym table and a finding map match them) and one of
whose findings is absent (reported not evaluable); numbers against scikit-learn on scores
computed directly with the bundle's ImageClassifier; the CLI and its one-line errors.

The bundle is a densenet_tiny at 32 px whose head is fitted by logistic regression on the random
backbone's pooled features of phantom films (no training loop: seconds, and AUROCs well above 0.5).
"""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from mdx import config as config_lib
from mdx.data.cxr import chexpert, phantoms
from mdx.data.cxr import findings as F
from mdx.evaluate import calibration as C
from mdx.evaluate import classification as CL
from mdx.evaluate import thresholds as T
from mdx.inference import bundle as bundle_lib
from mdx.inference import external as X
from mdx.inference.classifier import ImageClassifier, preprocess
from mdx.models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINDINGS = ("Effusion", "Cardiomegaly", "Pneumothorax")
# Phantom finding -> class folder of the external dataset (renamed; Pneumothorax absent).
FOLDERS = {"Effusion": "Pleural Effusion", "Cardiomegaly": "Enlarged Heart", "Nodule": "Nodule"}
INPUT = {"image_size": 32, "channels": 1, "standardize": {"mode": "per_image"}}
MODEL = {"name": "densenet_tiny", "num_classes": 3, "dtype": "float32"}


# ------------------------------------------------------------------------------ finding table
def test_nih_and_chexpert_names_match_by_the_documented_table():
  m = F.match_findings(F.NIH_FINDINGS, chexpert.OBSERVATIONS)
  assert m.matched == {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",  # not 'Enlarged Cardiomediastinum'
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
  }
  assert m.how["Effusion"] == "synonym" and m.how["Edema"] == "same name"
  assert "Lung Lesion" in m.not_evaluable["Mass"] and "union" in m.not_evaluable["Mass"]
  assert "Pleural Other" in m.not_evaluable["Pleural_Thickening"]
  assert "Lung Opacity" in m.not_evaluable["Infiltration"]
  assert set(m.not_evaluable) == set(F.NIH_FINDINGS) - set(m.matched)
  assert "Enlarged Cardiomediastinum" in m.ignored and "No Finding" in m.ignored
  # case, spaces and underscores do not matter; the map wins over the table and can leave out
  m = F.match_findings(
    ["Pleural_Thickening", "Cardiomegaly", "Effusion"],
    ["pleural thickening", "Enlarged Cardiomediastinum", "EFFUSION", "Pleural Effusion"],
    {"cardiomegaly": "enlarged cardiomediastinum", "Effusion": "Pleural Effusion"},
  )
  assert m.matched == {
    "Pleural_Thickening": "pleural thickening",
    "Cardiomegaly": "Enlarged Cardiomediastinum",
    "Effusion": "Pleural Effusion",
  }
  assert m.how["Cardiomegaly"] == "finding_map" and m.ignored == ("EFFUSION",)
  m = F.match_findings(["Mass", "No Finding"], ["Mass", "No Finding"], {"Mass": None})
  assert m.matched == {} and m.not_evaluable["Mass"] == "excluded by the finding_map"
  assert "none of the other labels" in m.not_evaluable["No Finding"]  # set-relative name


def test_finding_map_errors_and_ambiguity():
  with pytest.raises(ValueError, match=r"'Hernia' is not one of the model's findings"):
    F.match_findings(["Mass"], ["Mass"], {"Hernia": "Mass"})
  with pytest.raises(ValueError, match=r"'Lesion' is not one of the dataset's findings"):
    F.match_findings(["Mass"], ["Mass"], {"Mass": "Lesion"})
  with pytest.raises(ValueError, match="matches several dataset findings"):
    F.match_findings(["Effusion"], ["Effusion ", "effusion"])
  assert X.parse_finding_map("Effusion=Pleural Effusion, Mass=") == {
    "Effusion": "Pleural Effusion",
    "Mass": None,
  }
  with pytest.raises(ValueError, match="BUNDLE_FINDING=DATASET_FINDING"):
    X.parse_finding_map("Effusion")


# ------------------------------------------------------------------------------ fixed thresholds
def test_fixed_thresholds_and_separately_calibrated_probabilities():
  rng = np.random.default_rng(0)
  n = 120
  y = (rng.random((n, 2)) < 0.4).astype(float)
  y[:5, 1] = np.nan
  raw = 1 / (1 + np.exp(-rng.normal(2 * np.nan_to_num(y) - 1, 1.0)))
  cal = np.clip(raw**2, 0, 1)  # any other probabilities
  res = CL.evaluate_classification(
    y,
    raw,
    ["A", "B"],
    threshold_policy="youden",
    thresholds=[0.6, None],
    thresholds_chosen_on="fixed in the bundle, chosen on the internal validation set",
    calibrated_probs=cal,
    calibrated_with="the bundle's calibration",
    bootstrap=30,
  )
  a, b = res["per_finding"]["A"], res["per_finding"]["B"]
  assert a["threshold"] == 0.6 and b["threshold"] is None
  assert a["confusion"]["tp"] == int(((raw[:, 0] >= 0.6) & (y[:, 0] == 1)).sum())
  assert a["confusion"]["fp"] == int(((raw[:, 0] >= 0.6) & (y[:, 0] == 0)).sum())
  assert b["metrics"]["sensitivity"]["value"] is None  # no threshold: no calls
  known = ~np.isnan(y[:, 1])
  assert b["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(y[known, 1], raw[known, 1]))
  assert a["metrics"]["brier"]["value"] == pytest.approx(brier_score_loss(y[:, 0], cal[:, 0]))
  assert a["metrics"]["ece"]["value"] == pytest.approx(
    C.expected_calibration_error(y[:, 0], cal[:, 0])
  )
  s = res["settings"]
  assert s["thresholds_fixed"] and "internal validation" in s["thresholds_chosen_on"]
  assert s["calibration_metrics_on"] == "the bundle's calibration"
  plain = CL.evaluate_classification(y, raw, ["A", "B"], bootstrap=0)
  assert (
    not plain["settings"]["thresholds_fixed"]
    and plain["settings"]["calibration_metrics_on"] is None
  )
  with pytest.raises(ValueError, match="1 thresholds for 2 findings"):
    CL.evaluate_classification(y, raw, ["A", "B"], thresholds=[0.5], bootstrap=0)


def test_auroc_difference_by_bootstrap_and_by_normal_approximation():
  rng = np.random.default_rng(1)
  internal = {"value": 0.80, "ci": [0.76, 0.84]}
  external = {"value": 0.70, "ci": [0.64, 0.76]}
  d = X.auroc_difference(internal, external, None, None)
  se = np.hypot(0.08, 0.12) / (2 * 1.959964)
  assert d["value"] == pytest.approx(-0.10)
  assert d["ci"] == pytest.approx([-0.10 - 1.959964 * se, -0.10 + 1.959964 * se], abs=1e-6)
  assert d["method"].startswith("normal approximation")
  a, b = rng.normal(0.80, 0.02, 400), rng.normal(0.70, 0.03, 500)
  d = X.auroc_difference(internal, external, a, b)
  assert d["method"].startswith("independent bootstrap")
  # the difference of independent draws has sd sqrt(0.02^2 + 0.03^2)
  assert d["ci"] == pytest.approx([-0.1 - 1.96 * 0.0361, -0.1 + 1.96 * 0.0361], abs=0.01)
  assert X.auroc_difference({"value": None}, external, None, None)["ci"] == [None, None]


# ------------------------------------------------------------------------------ end to end
def _features_fn(model, variables):
  """Pooled last feature map: the head's input (logits = features @ kernel + bias)."""

  @jax.jit
  def fn(x):
    _, state = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == "norm_final")
    return state["intermediates"]["norm_final"]["__call__"][0].mean((1, 2))

  return fn


def _random_variables(model):
  """He-normal kernels, unit BatchNorm, from numpy (faster than jitting Flax's initialisers)."""
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32), train=False)
  )
  rng = np.random.default_rng(0)

  def init(path, s):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape).astype(np.float32)
    fill = 1.0 if name in ("scale", "var") else 0.0
    return np.full(s.shape, fill, np.float32)

  return jax.tree_util.tree_map_with_path(init, dict(shapes))


def _phantoms(seed, n, findings, prevalence=0.35):
  return phantoms.ChestXrayPhantoms(
    num_patients=n,
    image_size=32,
    seed=seed,
    findings=findings,
    prevalence={f: prevalence for f in findings},
  )


def _results(res, labels):
  """evaluate_classification's dict -> a bundle's results split (as training writes it)."""
  per = {}
  for j, f in enumerate(res["findings"]):
    pf, m = res["per_finding"][f], res["per_finding"][f]["metrics"]
    per[f] = {
      "n": pf["n"],
      "n_positive": pf["n_positive"],
      "prevalence": float(np.nanmean(labels[:, j])),
      **{k: m[k] for k in ("auroc", "sensitivity", "specificity", "ppv", "npv", "brier", "ece")},
      "brier_calibrated": m["brier_platt"],
    }
  split = {
    "n_images": res["n_images"],
    "n_patients": res["n_patients"],
    "macro_auroc": res["macro"]["auroc"],
    "per_finding": per,
  }
  return split


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("external")
  model = registry.create_from_config(MODEL)
  variables = _random_variables(model)
  sets = {
    "train": _phantoms(0, 80, FINDINGS),
    "val": _phantoms(3, 40, FINDINGS),
    "test": _phantoms(2, 40, FINDINGS),
  }
  x = {
    k: np.stack([preprocess(s[i]["image"], INPUT) for i in range(len(s))]) for k, s in sets.items()
  }
  sizes = np.cumsum([0] + [len(v) for v in x.values()])
  feats = np.asarray(_features_fn(model, variables)(np.concatenate(list(x.values()))))
  feats = {k: feats[a:b] for k, a, b in zip(x, sizes[:-1], sizes[1:])}
  y = {k: s.labels() for k, s in sets.items()}
  kernel = np.zeros((feats["train"].shape[1], 3), np.float32)
  bias = np.zeros(3, np.float32)
  for j in range(3):
    lr = LogisticRegression(C=10, max_iter=3000).fit(feats["train"], y["train"][:, j])
    kernel[:, j], bias[j] = lr.coef_[0], lr.intercept_[0]
  variables["params"]["head"]["dense"] = {"kernel": kernel, "bias": bias}
  raw = {k: 1 / (1 + np.exp(-(v @ kernel + bias))) for k, v in feats.items()}
  thresholds = {
    f: T.choose_threshold(y["val"][:, j], raw["val"][:, j], "youden")
    for j, f in enumerate(FINDINGS)
  }
  maps = {
    "Effusion": C.fit_map(y["val"][:, 0], raw["val"][:, 0], "platt"),
    "Cardiomegaly": C.fit_map(y["val"][:, 1], raw["val"][:, 1], "isotonic"),
    "Pneumothorax": C.map_to_spec(None, "not calibrated"),
  }
  res = CL.evaluate_classification(
    y["test"],
    raw["test"],
    FINDINGS,
    patient_ids=sets["test"].patient_ids(),
    val_labels=y["val"],
    val_probs=raw["val"],
    bootstrap=200,
    keep_bootstrap=("auroc",),
  )
  results = {
    "settings": {"bootstrap_resamples": 200, "resampling_unit": "patient", "ci_level": 0.95},
    "test": _results(res, y["test"]),
  }
  spec = bundle_lib.classification_spec(
    MODEL,
    image_size=32,
    channels=1,
    standardize={"mode": "per_image"},
    findings=FINDINGS,
    thresholds={
      "policy": "youden",
      "description": T.describe_policy("youden"),
      "chosen_on": "validation split (phantoms)",
      "scale": "raw",
      "values": thresholds,
    },
    calibration={"method": "platt", "fitted_on": "validation split (phantoms)", "maps": maps},
    results=results,
  )
  # Internal bootstrap samples for Effusion only: Cardiomegaly falls back to the normal
  # approximation.
  samples = {"test/Effusion/auroc": res["bootstrap_samples"]["Effusion/auroc"]}
  path = bundle_lib.write(str(tmp / "bundle"), spec, variables, "card", bootstrap=samples)

  # The external dataset: other phantoms, one class folder per (renamed) finding, no Pneumothorax.
  ext = _phantoms(5, 90, tuple(FOLDERS), prevalence=0.3)
  root = tmp / "external"
  files, labels = [], []
  for i in range(len(ext)):
    rec = ext[i]
    if rec["labels"].sum() > 1:
      continue  # folders are one class per image
    k = int(np.argmax(rec["labels"])) if rec["labels"].sum() else None
    folder = "Normal" if k is None else FOLDERS[ext.findings[k]]
    os.makedirs(root / folder, exist_ok=True)
    name = f"{rec['patient_id']}_{i}.png"
    Image.fromarray(rec["image"][..., 0]).save(root / folder / name)
    files.append(str(root / folder / name))
    labels.append([folder == "Pleural Effusion", folder == "Enlarged Heart"])
  data = dict(
    source="folders",
    root=str(root),
    negative_class="Normal",
    patient_regex=r"^(phantom\d+)_",
    image_size=32,
  )
  return {
    "bundle": path,
    "results": results,
    "thresholds": thresholds,
    "data": data,
    "files": files,
    "labels": np.asarray(labels, np.float64),
    "pids": [os.path.basename(f).split("_")[0] for f in files],
    "tmp": tmp,
  }


@pytest.mark.xdist_group("external")
def test_external_validation_against_independent_oracles(setup):
  config = config_lib.resolve(ml_collections.ConfigDict({"data": setup["data"]}))
  out = setup["tmp"] / "report"
  res = X.evaluate_external(
    setup["bundle"],
    config,
    str(out),
    finding_map={"Cardiomegaly": "Enlarged Heart"},
    bootstrap=200,
    seed=3,
    batch_size=16,
    progress=False,
  )
  ext = res["external"]
  assert res["title"].startswith("External validation") and res["kind"] == "external_validation"
  assert ext["matching"]["matched"] == {
    "Effusion": "Pleural Effusion",
    "Cardiomegaly": "Enlarged Heart",
  }
  assert ext["matching"]["how"] == {"Effusion": "synonym", "Cardiomegaly": "finding_map"}
  assert "no label" in ext["matching"]["not_evaluable"]["Pneumothorax"]
  assert ext["matching"]["ignored"] == ["Nodule"]
  assert res["findings"] == ["Effusion", "Cardiomegaly"]
  # every record, patients from the file names
  assert res["n_images"] == len(setup["files"]) and res["n_patients"] == len(set(setup["pids"]))

  # Oracle: the bundle's classifier on the PNGs read by PIL, scored by scikit-learn.
  clf = ImageClassifier(bundle_lib.load(setup["bundle"]), batch_size=16)
  images = np.stack([clf.preprocess(np.asarray(Image.open(f))[..., None]) for f in setup["files"]])
  raw = clf.predict(images)[:, :2].astype(np.float64)
  cal = clf.calibrate(clf.predict(images))[:, :2]
  y = setup["labels"]
  for j, f in enumerate(["Effusion", "Cardiomegaly"]):
    m = res["per_finding"][f]["metrics"]
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y[:, j], raw[:, j]), abs=1e-6)
    assert m["auroc"]["value"] > 0.6  # the fitted head learnt something that carries over
    assert m["brier"]["value"] == pytest.approx(brier_score_loss(y[:, j], cal[:, j]), abs=1e-6)
    t = setup["thresholds"][f]
    assert res["per_finding"][f]["threshold"] == pytest.approx(t)  # the bundle's, not refitted
  t = setup["thresholds"]["Effusion"]
  cm = res["per_finding"]["Effusion"]["confusion"]
  assert cm["tp"] == int(((raw[:, 0] >= t) & (y[:, 0] == 1)).sum())
  assert cm["fn"] == int(((raw[:, 0] < t) & (y[:, 0] == 1)).sum())
  assert "internal" in res["settings"]["thresholds_chosen_on"]
  assert "platt" in res["settings"]["calibration_metrics_on"]

  # internal vs external AUROC: independent bootstrap where the bundle kept samples
  internal = setup["results"]["test"]["per_finding"]
  for f, method in (("Effusion", "independent bootstrap"), ("Cardiomegaly", "normal approx")):
    c = ext["comparison"][f]
    d = c["difference"]
    assert c["internal"]["value"] == pytest.approx(internal[f]["auroc"]["value"])
    assert d["value"] == pytest.approx(c["external"]["value"] - c["internal"]["value"])
    assert d["method"].startswith(method)
    assert d["ci"][0] < d["value"] < d["ci"][1]
  assert "Pneumothorax" not in ext["comparison"]

  html = (out / "report.html").read_text()
  md = (out / "report.md").read_text()
  for text in ("External validation", "not evaluable", "Pleural Effusion", "Nodule"):
    assert text in html and text in md
  ext_prev = f"{y[:, 0].mean():.3f} ({int(y[:, 0].sum())}/{len(y)})"
  int_prev = f"{internal['Effusion']['n_positive'] / internal['Effusion']['n']:.3f}"
  assert ext_prev in md and int_prev in md
  assert "independent bootstrap" in md and "normal approximation" in md
  for name in ("auroc_internal_external.png", "roc.png", "reliability.png"):
    assert (out / "figures" / name).exists()
  assert (out / "calibrated.csv").exists()
  written = json.loads((out / ".mdx-outputs.json").read_text())["files"]  # all staged, committed
  assert {"report.html", "metrics.json", "figures/auroc_internal_external.png"} <= set(written)
  assert [n for n in os.listdir(out) if n.startswith(".mdx-partial")] == []
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["external"]["comparison"]["Effusion"]["difference"]["value"] == pytest.approx(
    ext["comparison"]["Effusion"]["difference"]["value"]
  )


@pytest.mark.xdist_group("external")
def test_a_corrupt_external_file_stops_it_before_any_prediction_or_is_skipped(
  setup, tmp_path, monkeypatch
):
  """External validation checks every record first, as training does (mdx.data.prepare): a corrupt
  file is one error naming it before anything is predicted, or with on_error='skip' is left out,
  listed in out_dir/skipped_records.csv and counted in the report."""
  import shutil

  root = tmp_path / "external"
  shutil.copytree(setup["data"]["root"], root)
  bad = root / "Normal" / "phantom999_0.png"
  bad.write_bytes(b"not a png")
  data = {**setup["data"], "root": str(root)}
  predict_source = X.predict_source

  def no_prediction(*args, **kwargs):
    raise AssertionError("predicted before the records were checked")

  monkeypatch.setattr(X, "predict_source", no_prediction)
  config = config_lib.resolve(ml_collections.ConfigDict({"data": data}))
  with pytest.raises(ValueError, match="phantom999_0.png") as info:
    X.evaluate_external(setup["bundle"], config, str(tmp_path / "raise"), bootstrap=0)
  assert "\n" not in str(info.value) and "on_error='skip'" in str(info.value)
  assert "phantom999_0.png" in (tmp_path / "raise" / "bad_records.csv").read_text()

  monkeypatch.setattr(X, "predict_source", predict_source)
  config = config_lib.resolve(ml_collections.ConfigDict({"data": {**data, "on_error": "skip"}}))
  out = tmp_path / "skip"
  res = X.evaluate_external(
    setup["bundle"],
    config,
    str(out),
    finding_map={"Cardiomegaly": "Enlarged Heart"},
    bootstrap=0,
    batch_size=16,
    progress=False,
  )
  assert res["n_images"] == len(setup["files"])  # every good record, the bad one left out
  assert res["external"]["dataset"]["skipped"] == 1
  assert "phantom999_0.png" in (out / "skipped_records.csv").read_text()
  assert "1 files skipped" in (out / "report.md").read_text()


def test_a_users_file_in_out_is_refused_before_the_bundle_loads_or_predicts(tmp_path, monkeypatch):
  from mdx import outputs

  out = tmp_path / "out"
  out.mkdir()
  (out / "metrics.json").write_text("my metrics")

  def never(*args, **kwargs):
    raise AssertionError("worked although the output is refused")

  monkeypatch.setattr(bundle_lib, "load", never)
  monkeypatch.setattr(X.prepare, "prepare_dataset", never)
  monkeypatch.setattr(X, "predict_source", never)
  with pytest.raises(outputs.OutputError, match="metrics.json, which mdx did not write") as info:
    X.evaluate_external(str(tmp_path / "bundle"), None, str(out))
  assert "\n" not in str(info.value) and "--overwrite" in str(info.value)
  assert os.listdir(out) == ["metrics.json"] and (out / "metrics.json").read_text() == "my metrics"
  with pytest.raises(AssertionError, match="worked"):  # --overwrite: on to the bundle
    X.evaluate_external(str(tmp_path / "bundle"), None, str(out), overwrite=True)


def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "mdx", "evaluate", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu", MDX_COMPILATION_CACHE=""),
  )


@pytest.mark.xdist_group("external")
@pytest.mark.slow
def test_cli_external_mode_and_its_errors(setup):
  exp = setup["tmp"] / "external_folders.py"
  d = setup["data"]
  exp.write_text(
    "from mdx.config import defaults\n\n\n"
    "def get_config():\n"
    "  c = defaults()\n" + "".join(f"  c.data.{k} = {v!r}\n" for k, v in d.items()) + "  return c\n"
  )
  out = setup["tmp"] / "cli"
  proc = _cli(
    f"--bundle={setup['bundle']}",
    f"--config={exp}",
    f"--out={out}",
    "--finding_map=Cardiomegaly=Enlarged Heart",
    "--bootstrap=20",
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (out / "report.html").exists() and proc.stdout.strip().endswith("report.html")
  res = json.loads((out / "metrics.json").read_text())
  assert set(res["external"]["matching"]["matched"]) == {"Effusion", "Cardiomegaly"}

  proc = _cli(
    f"--bundle={setup['bundle']}",
    f"--config={exp}",
    f"--config.data.root={setup['tmp'] / 'nowhere'}",
    f"--out={setup['tmp'] / 'bad'}",
  )
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:") and "nowhere" in lines[0], proc.stderr


def test_a_synthetic_source_is_located_by_its_seed(monkeypatch):
  """Whether the seed is part of where the data is comes from the source's fact (generated by mdx
  from the seed), not from its name."""
  import dataclasses

  from mdx.data import sources

  src = _phantoms(0, 4, FINDINGS)
  config = ml_collections.ConfigDict({"seed": 7, "data": {"source": "phantoms", "num_patients": 4}})
  assert X._dataset_description(config, src)["location"] == {"num_patients": 4, "seed": 7}
  config.data.source = "nih"
  assert X._dataset_description(config, src)["location"] == {"num_patients": 4}
  generated = dataclasses.replace(sources.SOURCES["nih"], synthetic=True)
  monkeypatch.setitem(sources.SOURCES, "nih", generated)
  assert X._dataset_description(config, src)["location"]["seed"] == 7
