"""python -m mdx generalisation, called in this process as the front door runs it: the matrix of a
tiny bundle on two phantom datasets named by --names, against scikit-learn; and its one-line
errors, a user's file in --out refused before any bundle is read or anything predicted."""

import csv

import numpy as np
import pytest
from bundle_fixtures import write_classifier_bundle
from sklearn.metrics import roc_auc_score

from mdx import commands
from mdx.data.cxr import phantoms
from mdx.inference import bundle as bundle_lib
from mdx.inference import external as X
from mdx.inference.classifier import ImageClassifier

FINDINGS = ("Effusion", "Cardiomegaly")
EXPERIMENT = """from mdx.config import defaults


def get_config():
  c = defaults()
  c.seed = {seed}
  c.data.source = "phantoms"
  c.data.num_patients = 24
  c.data.image_size = 32
  c.data.findings = {findings!r}
  return c
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("generalisation_command")
  bundle = write_classifier_bundle(
    str(tmp / "bundle"), FINDINGS, dict.fromkeys(FINDINGS, 0.5), {"mode": "per_image"}
  )
  first, second = tmp / "first.py", tmp / "second.py"
  first.write_text(EXPERIMENT.format(seed=1, findings=["Effusion", "Cardiomegaly", "Nodule"]))
  second.write_text(EXPERIMENT.format(seed=2, findings=["Effusion", "Mass"]))
  return {"bundle": bundle, "first": str(first), "second": str(second), "tmp": tmp}


def test_the_command_writes_the_matrix(files, capsys):
  out = files["tmp"] / "matrix"
  status = commands.call(
    "generalisation",
    [
      f"--bundles={files['bundle']}",
      f"--datasets={files['first']},{files['second']}",
      "--names=one,two",
      f"--out={out}",
      "--bootstrap=20",
    ],
  )
  captured = capsys.readouterr()
  assert status == 0, captured.err[-2000:]
  assert captured.out.strip().endswith("matrix.md")
  with open(out / "matrix.csv", newline="") as f:
    rows = {(r["dataset"], r["finding"]): r for r in csv.DictReader(f)}
  clf = ImageClassifier(bundle_lib.load(files["bundle"]))
  for name, seed, findings in (
    ("one", 1, ("Effusion", "Cardiomegaly", "Nodule")),
    ("two", 2, ("Effusion", "Mass")),
  ):
    ph = phantoms.ChestXrayPhantoms(num_patients=24, image_size=32, seed=seed, findings=findings)
    raw = clf.predict(np.stack([clf.preprocess(ph[i]["image"]) for i in range(len(ph))]))
    y = ph.labels()
    aucs = []
    for j, f in enumerate(FINDINGS):
      if f not in findings:
        assert rows[(name, f)]["evaluable"] == "False" and rows[(name, f)]["external_auroc"] == ""
        continue
      auc = roc_auc_score(y[:, findings.index(f)], raw[:, j])
      assert float(rows[(name, f)]["external_auroc"]) == pytest.approx(auc, abs=1e-6)
      aucs.append(auc)
    assert float(rows[(name, "macro")]["external_auroc"]) == pytest.approx(np.mean(aucs), abs=1e-6)
    # no internal results in this bundle: no difference, said rather than invented
    assert (
      rows[(name, "macro")]["internal_auroc"] == "" and rows[(name, "macro")]["difference"] == ""
    )
  md = (out / "matrix.md").read_text()
  assert "| Bundle (trained on) | one | two |" in md and "bundle (not recorded)" in md
  assert (out / "figures" / "macro_auroc.png").exists()


def test_a_users_file_in_out_is_refused_before_anything_is_read(
  files, tmp_path, capsys, monkeypatch
):
  out = tmp_path / "out"
  out.mkdir()
  (out / "matrix.md").write_text("my notes")

  def never(*args, **kwargs):
    raise AssertionError("worked although the output is refused")

  monkeypatch.setattr(bundle_lib, "load", never)
  monkeypatch.setattr(X, "predict_source", never)
  args = [f"--bundles={files['bundle']}", f"--datasets={files['first']}", f"--out={out}"]
  assert commands.call("generalisation", args) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("error: generalisation would replace")
  assert "matrix.md, which mdx did not write" in err[0] and "--overwrite" in err[0]
  assert (out / "matrix.md").read_text() == "my notes"


@pytest.mark.parametrize(
  "args, says",
  [
    (["--names=a,b"], "--names gives 2 names for 1 --datasets"),
    (["--datasets=/nonexistent/x.py"], "/nonexistent/x.py does not exist"),
    (["--datasets={bug}"], "{bug}:3: division by zero (ZeroDivisionError); fix the file"),
    (["--datasets={bad_field}"], "{bad_field}: "),
    (["--bundles=/nonexistent/bundle"], "/nonexistent/bundle"),
  ],
)
def test_mistakes_are_one_line(files, tmp_path, capsys, args, says):
  bug = tmp_path / "bug.py"
  bug.write_text("def get_config():\n  steps = 10\n  return steps / 0\n")
  bad_field = tmp_path / "bad_field.py"
  bad_field.write_text(
    "from mdx.config import defaults\n\n\ndef get_config():\n  c = defaults()\n"
    "  c.data.source = 'phantoms'\n  c.data.nmu_patients = 3\n  return c\n"
  )
  given = {"bundles": files["bundle"], "datasets": files["first"], "out": str(tmp_path / "o")}
  for a in args:
    key, value = a[2:].split("=", 1)
    given[key] = value.format(bug=bug, bad_field=bad_field)
  status = commands.call("generalisation", [f"--{k}={v}" for k, v in given.items()])
  err = capsys.readouterr().err.splitlines()
  assert status == 2 and len(err) == 1 and err[0].startswith("error: "), err
  assert says.format(bug=bug, bad_field=bad_field) in err[0]
