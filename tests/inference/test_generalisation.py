"""The generalisation matrix on two tiny bundles and two small datasets (phantoms, and phantom films
saved as class folders under other names): every AUROC cell against scikit-learn on the bundle's own
scores computed directly with its ImageClassifier, internal values from bundle.json, findings a
dataset does not label (or labels without positives) as 'not evaluable' cells and never numbers,
one prediction per bundle x dataset, and nothing done before the output is claimed and the records
checked.

Bundle A (Effusion, Cardiomegaly, Pneumothorax; trained on 'phantoms') keeps internal bootstrap
samples, so its differences use the independent bootstrap; bundle B (Effusion, Nodule; 'nih') does
not, so its differences use the normal approximation from the two CIs.
"""

import csv
import os

import ml_collections
import numpy as np
import pytest
from bundle_fixtures import write_classifier_bundle
from PIL import Image
from sklearn.metrics import roc_auc_score

from mdx import config as config_lib
from mdx import outputs
from mdx.data.cxr import phantoms
from mdx.inference import bundle as bundle_lib
from mdx.inference import external as X
from mdx.inference import generalisation as G
from mdx.inference.classifier import ImageClassifier

STANDARDIZE = {"mode": "per_image"}
FOLDERS = {"Effusion": "Pleural Effusion", "Nodule": "Nodule"}  # phantom finding -> class folder
B_SAMPLES = 300


def _results(findings, aurocs, macro=None):
  per = {
    f: {"n": 40, "n_positive": 12, "auroc": {"value": a, "ci": [a - 0.06, a + 0.05]}}
    for f, a in zip(findings, aurocs)
  }
  test = {"n_images": 40, "n_patients": 40, "per_finding": per}
  if macro is not None:
    test["macro_auroc"] = {"value": macro, "ci": [macro - 0.04, macro + 0.04]}
  return {"settings": {"ci_level": 0.95, "bootstrap_resamples": B_SAMPLES}, "test": test}


def _bundle(path, findings, aurocs, source, samples=None, macro=None):
  """The fixture's random-weight bundle, written again with results, provenance and samples."""
  write_classifier_bundle(str(path), findings, {f: 0.5 for f in findings}, STANDARDIZE)
  b = bundle_lib.load(str(path))
  spec = {k: v for k, v in b.spec.items() if k not in ("format", "files")}
  spec["results"] = _results(findings, aurocs, macro)
  spec["provenance"] = {"data": {"source": source}}
  return bundle_lib.write(str(path), spec, b.variables, "# test", bootstrap=samples)


def _phantom_data(n=30, seed_findings=("Effusion", "Cardiomegaly", "Nodule")):
  prevalence = {f: (0.0 if f == "Nodule" else 0.4) for f in seed_findings}
  return dict(
    source="phantoms",
    num_patients=n,
    image_size=32,
    findings=list(seed_findings),
    prevalence=prevalence,
  )


def _folders(root, n=70):
  """Phantom films as class folders (one class per film), Effusion renamed 'Pleural Effusion'."""
  ext = phantoms.ChestXrayPhantoms(
    num_patients=n,
    image_size=32,
    seed=5,
    findings=tuple(FOLDERS),
    prevalence=dict.fromkeys(FOLDERS, 0.3),
  )
  files, labels = [], []
  for i in range(len(ext)):
    rec = ext[i]
    if rec["labels"].sum() > 1:
      continue
    k = int(np.argmax(rec["labels"])) if rec["labels"].sum() else None
    folder = "Normal" if k is None else FOLDERS[ext.findings[k]]
    os.makedirs(root / folder, exist_ok=True)
    name = f"{rec['patient_id']}_{i}.png"
    Image.fromarray(rec["image"][..., 0]).save(root / folder / name)
    files.append(str(root / folder / name))
    labels.append([folder == "Pleural Effusion", folder == "Nodule"])
  data = dict(
    source="folders",
    root=str(root),
    negative_class="Normal",
    patient_regex=r"^(phantom\d+)_",
    image_size=32,
  )
  return data, files, np.asarray(labels, np.float64)


def _config(data):
  return config_lib.resolve(ml_collections.ConfigDict({"data": data}))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("generalisation")
  rng = np.random.default_rng(0)
  a_findings = ("Effusion", "Cardiomegaly", "Pneumothorax")
  samples = {f"test/{f}/auroc": rng.normal(0.8, 0.03, B_SAMPLES) for f in a_findings}
  a = _bundle(tmp / "bundle_a", a_findings, (0.81, 0.77, 0.7), "phantoms", samples)
  b = _bundle(tmp / "bundle_b", ("Effusion", "Nodule"), (0.75, 0.66), "nih", macro=0.705)
  folders, files, labels = _folders(tmp / "folders")
  return {
    "a": a,
    "b": b,
    "a_samples": samples,
    "phantoms": _phantom_data(),
    "folders": folders,
    "files": files,
    "labels": labels,
    "tmp": tmp,
  }


def _rows(path):
  with open(path, newline="") as f:
    return {(r["bundle"], r["dataset"], r["finding"]): r for r in csv.DictReader(f)}


def _oracle_scores(bundle_path, images):
  clf = ImageClassifier(bundle_lib.load(bundle_path), batch_size=16)
  return clf.predict(np.stack([clf.preprocess(x) for x in images])).astype(np.float64)


@pytest.mark.xdist_group("generalisation")
def test_the_matrix_against_independent_oracles(setup, monkeypatch):
  calls = []
  predict_source = X.predict_source

  def counted(classifier, source, **kwargs):
    calls.append((classifier.bundle.path, source.name if hasattr(source, "name") else id(source)))
    return predict_source(classifier, source, **kwargs)

  monkeypatch.setattr(X, "predict_source", counted)
  out = setup["tmp"] / "matrix"
  datasets = [
    G.Dataset("ph", _config(setup["phantoms"])),
    G.Dataset("fold", _config(setup["folders"])),
  ]
  res = G.generalisation_matrix(
    [setup["a"], setup["b"]], datasets, str(out), bootstrap=200, seed=1, progress=False
  )
  assert len(calls) == 4 and len(set(calls)) == 4  # one prediction per bundle x dataset

  # Oracle scores: the phantom films as the phantom class draws them, the folders' PNGs by PIL.
  ph = phantoms.ChestXrayPhantoms(
    num_patients=30,
    image_size=32,
    seed=int(datasets[0].config.seed),
    findings=("Effusion", "Cardiomegaly", "Nodule"),
    prevalence={"Effusion": 0.4, "Cardiomegaly": 0.4, "Nodule": 0.0},
  )
  ph_images = [ph[i]["image"] for i in range(len(ph))]
  ph_labels = ph.labels()
  fold_images = [np.asarray(Image.open(f))[..., None] for f in setup["files"]]
  y_fold = setup["labels"]
  scores = {
    ("bundle_a", "ph"): _oracle_scores(setup["a"], ph_images),
    ("bundle_a", "fold"): _oracle_scores(setup["a"], fold_images),
    ("bundle_b", "ph"): _oracle_scores(setup["b"], ph_images),
    ("bundle_b", "fold"): _oracle_scores(setup["b"], fold_images),
  }
  # (bundle, dataset, finding) -> (bundle column, labels) of the evaluable cells
  evaluable = {
    ("bundle_a", "ph", "Effusion"): (0, ph_labels[:, 0]),
    ("bundle_a", "ph", "Cardiomegaly"): (1, ph_labels[:, 1]),
    ("bundle_a", "fold", "Effusion"): (0, y_fold[:, 0]),
    ("bundle_b", "ph", "Effusion"): (0, ph_labels[:, 0]),
    ("bundle_b", "fold", "Effusion"): (0, y_fold[:, 0]),
    ("bundle_b", "fold", "Nodule"): (1, y_fold[:, 1]),
  }
  rows = _rows(out / "matrix.csv")
  internal = {"bundle_a": (0.81, 0.77, 0.7), "bundle_b": (0.75, 0.66)}
  expected_macro = {}
  for (b, d, f), (j, y) in evaluable.items():
    auc = roc_auc_score(y, scores[(b, d)][:, j])
    cell = res["cells"][b][d]["findings"][f]
    assert cell["evaluable"] and cell["external"]["value"] == pytest.approx(auc, abs=1e-6)
    r = rows[(b, d, f)]
    assert r["evaluable"] == "True" and float(r["external_auroc"]) == pytest.approx(auc, abs=1e-6)
    lo, hi = float(r["external_ci_low"]), float(r["external_ci_high"])
    assert lo <= auc <= hi
    i = float(r["internal_auroc"])
    assert i == pytest.approx(internal[b][j]) and r["internal_split"] == "test"
    assert float(r["difference"]) == pytest.approx(auc - i, abs=1e-6)
    method = "independent bootstrap" if b == "bundle_a" else "normal approximation"
    assert r["difference_method"].startswith(method)
    assert float(r["difference_ci_low"]) < float(r["difference"]) < float(r["difference_ci_high"])
    expected_macro.setdefault((b, d), []).append((auc, internal[b][j], f))

  # Not evaluable: no label (A's Pneumothorax, A's Cardiomegaly on the folders), no positives (B's
  # Nodule on phantoms drawn without any): a reason, and no number in any column
  for b, d, f, why in (
    ("bundle_a", "ph", "Pneumothorax", "no label"),
    ("bundle_a", "fold", "Cardiomegaly", "no label"),
    ("bundle_a", "fold", "Pneumothorax", "no label"),
    ("bundle_b", "ph", "Nodule", "no positives"),
  ):
    cell = res["cells"][b][d]["findings"][f]
    assert not cell["evaluable"] and why in cell["reason"], cell
    r = rows[(b, d, f)]
    assert r["evaluable"] == "False" and why in r["reason"]
    for column in ("external_auroc", "external_ci_low", "difference", "difference_ci_high"):
      assert r[column] == "", (b, d, f, column)

  # Macro: the mean over the cell's evaluable findings, internal over the same findings
  for (b, d), entries in expected_macro.items():
    m = res["cells"][b][d]["macro"]
    ext = np.mean([e[0] for e in entries])
    inn = np.mean([e[1] for e in entries])
    assert m["over"] == [e[2] for e in entries]
    assert m["external"]["value"] == pytest.approx(ext, abs=1e-6)
    assert m["internal"]["value"] == pytest.approx(inn, abs=1e-9)
    assert m["difference"]["value"] == pytest.approx(ext - inn, abs=1e-6)
    r = rows[(b, d, "macro")]
    assert float(r["external_auroc"]) == pytest.approx(ext, abs=1e-6)
    assert r["dataset_label"] == ";".join(m["over"])
  # A's internal macro CI is the percentile interval of its kept samples' per-resample means
  over = res["cells"]["bundle_a"]["ph"]["macro"]
  means = np.mean([setup["a_samples"][f"test/{f}/auroc"] for f in over["over"]], 0)
  assert over["internal"]["ci"] == pytest.approx(list(np.quantile(means, [0.025, 0.975])))
  assert over["difference"]["method"].startswith("independent bootstrap")
  # B on the folders averages both its findings: its recorded macro CI, normal approximation
  mb = res["cells"]["bundle_b"]["fold"]["macro"]
  assert mb["internal"]["ci"] == pytest.approx([0.665, 0.745])
  assert mb["difference"]["method"].startswith("normal approximation")
  # B on phantoms averages Effusion alone: no recorded CI for that subset, so no interval
  mp = res["cells"]["bundle_b"]["ph"]["macro"]
  assert mp["internal"]["ci"] == [None, None] and mp["difference"]["ci"] == [None, None]

  # Rows say what each bundle was trained on; a dataset of the same source is marked
  assert [b["trained_on"] for b in res["bundles"]] == ["phantoms", "nih"]
  assert res["cells"]["bundle_a"]["ph"]["same_source"]
  assert not res["cells"]["bundle_b"]["ph"]["same_source"]
  assert rows[("bundle_a", "ph", "macro")]["same_source"] == "True"

  md = (out / "matrix.md").read_text()
  assert "| Bundle (trained on) | ph | fold |" in md
  assert "bundle_a (phantoms)" in md and "bundle_b (nih)" in md
  assert "not evaluable: the dataset has no label" in md and "same source as training" in md
  assert "(as 'Pleural Effusion')" in md and "![Macro AUROC" in md
  png = out / "figures" / "macro_auroc.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  written = set(outputs.read_manifest(str(out))["files"])
  assert {"matrix.csv", "matrix.md", "figures/macro_auroc.png"} <= written
  assert [n for n in os.listdir(out) if n.startswith(".mdx-partial")] == []


def test_a_users_file_in_out_is_refused_before_any_bundle_loads(tmp_path, monkeypatch):
  out = tmp_path / "out"
  out.mkdir()
  (out / "matrix.csv").write_text("my table")

  def never(*args, **kwargs):
    raise AssertionError("worked although the output is refused")

  monkeypatch.setattr(bundle_lib, "load", never)
  monkeypatch.setattr(G.prepare, "prepare_dataset", never)
  monkeypatch.setattr(X, "predict_source", never)
  with pytest.raises(outputs.OutputError, match="matrix.csv, which mdx did not write") as info:
    G.generalisation_matrix([str(tmp_path / "b")], [G.Dataset("d", None)], str(out))
  assert "\n" not in str(info.value) and "--overwrite" in str(info.value)
  assert (out / "matrix.csv").read_text() == "my table"
  with pytest.raises(AssertionError, match="worked"):  # overwrite: on to the bundle
    G.generalisation_matrix([str(tmp_path / "b")], [G.Dataset("d", None)], str(out), overwrite=True)


@pytest.mark.xdist_group("generalisation")
def test_every_datasets_records_are_checked_before_any_prediction(setup, tmp_path, monkeypatch):
  import shutil

  root = tmp_path / "folders"
  shutil.copytree(setup["folders"]["root"], root)
  (root / "Normal" / "phantom999_0.png").write_bytes(b"not a png")

  def never(*args, **kwargs):
    raise AssertionError("predicted before every dataset's records were checked")

  monkeypatch.setattr(X, "predict_source", never)
  datasets = [  # the good dataset first: its bundle would predict on it if checks came later
    G.Dataset("ph", _config(setup["phantoms"])),
    G.Dataset("bad", _config({**setup["folders"], "root": str(root)})),
  ]
  with pytest.raises(ValueError, match="phantom999_0.png") as info:
    G.generalisation_matrix([setup["a"]], datasets, str(tmp_path / "out"), bootstrap=0)
  assert "\n" not in str(info.value)
  assert not (tmp_path / "out" / "matrix.csv").exists()


def test_names_and_provenance():
  assert G.trained_on({"provenance": {"data": {"source": "nih"}}}) == "nih"
  assert G.trained_on({"provenance": {"config": {"data": {"source": "chexpert"}}}}) == "chexpert"
  several = {"data": {"sources": [{"source": "nih"}, {"source": "rsna"}]}}
  assert G.trained_on({"provenance": several}) == "nih + rsna"
  imported = {"imported_from": {"file": "/w/densenet121.pt"}}
  assert G.trained_on({"provenance": imported}) == "imported weights (densenet121.pt)"
  assert G.trained_on({}) == "not recorded"
  with pytest.raises(ValueError, match=r"dataset names \['x'\] are given twice"):
    G.generalisation_matrix(["b"], [G.Dataset("x", None), G.Dataset("x", None)], "/nonexistent/o")


def test_a_macro_cell_says_which_findings_it_averages_shortest_first():
  from mdx.inference.generalisation import _over

  assert _over(["A", "B", "C"], ["A", "B", "C"]) == "all 3 findings"
  assert _over(["A", "C"], ["A", "B", "C"]) == "2 of 3 findings (not B)"
  assert _over(["C"], ["A", "B", "C"]) == "1 of 3 findings: C"


def test_bundles_may_be_named_by_run_or_by_a_folder_of_runs(tmp_path):
  """A sweep that trained one model per dataset is one --bundles entry: every run's bundle, by
  run name; a run's workdir is its bundle/; anything else is one line naming it."""
  sweep = tmp_path / "per_dataset"
  for run in ("rsna", "nih"):
    write_classifier_bundle(
      str(sweep / run / "bundle"), ("Effusion",), {"Effusion": 0.5}, STANDARDIZE
    )
  (sweep / "results.md").write_text("the sweep's table")
  (sweep / "unfinished").mkdir()  # a run without a bundle yet: not a row
  single = tmp_path / "b"
  write_classifier_bundle(str(single), ("Effusion",), {"Effusion": 0.5}, STANDARDIZE)
  got = G.expand_bundles([str(single), str(sweep), str(sweep / "rsna")])
  assert got == [
    str(single),
    str(sweep / "nih" / "bundle"),
    str(sweep / "rsna" / "bundle"),
    str(sweep / "rsna" / "bundle"),
  ]
  with pytest.raises(FileNotFoundError, match=r"--bundles: .*nowhere is no bundle"):
    G.expand_bundles([str(tmp_path / "nowhere")])
