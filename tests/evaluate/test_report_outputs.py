"""Reports are written whole and never over a file mdx did not write (issue 24): the evaluate
command refuses a user's file before any work, --overwrite replaces it, a run into its own earlier
output replaces it quietly, a failure midway or a full disk leaves the earlier complete report, and
ids a spreadsheet would run as formulas land neutralised yet pair when read back."""

import csv
import errno
import json
import os

import numpy as np
import pytest

from mdx import outputs
from mdx.evaluate import classification as CL
from mdx.evaluate import plots, report, run_report
from mdx.evaluate import predictions as P
from mdx.evaluate import segmentation as seg

FINDINGS = ["Mass", "Nodule"]


def _predictions(tmp_path, n=40, seed=0, ids=None):
  rng = np.random.default_rng(seed)
  y = (rng.random((n, 2)) < 0.4).astype(np.float64)
  y[:2] = [[1, 0], [0, 1]]  # both findings have positives and negatives
  p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, y.shape), 0, 1)
  ids = ids or [f"s{i}" for i in range(n)]
  labels = P.write_csv(str(tmp_path / "labels_in.csv"), ids, y, FINDINGS)
  probs = P.write_csv(str(tmp_path / "probs_in.csv"), ids, p, FINDINGS)
  return labels, probs


@pytest.fixture
def cli():
  from mdx import commands

  return lambda *args: commands.call("evaluate", list(args))  # python -m mdx evaluate ARGS


def _files(folder) -> dict[str, bytes]:
  """Every file under folder (relative path -> bytes), the manifest included."""
  out = {}
  for dirpath, _, names in os.walk(folder):
    for name in names:
      full = os.path.join(dirpath, name)
      out[os.path.relpath(full, folder)] = open(full, "rb").read()
  return out


def _no_staging(folder) -> bool:
  return not [n for n in os.listdir(folder) if n.startswith(outputs.STAGING)]


def test_a_users_report_is_refused_before_any_work_and_overwrite_replaces_it(
  tmp_path, cli, capsys, monkeypatch
):
  labels, probs = _predictions(tmp_path)
  out = tmp_path / "out"
  out.mkdir()
  mine = b"<html>my own notes</html>"
  (out / "report.html").write_bytes(mine)

  def never(*args, **kwargs):
    raise AssertionError("the evaluation ran although its output is refused")

  with monkeypatch.context() as m:  # nothing is read or computed before the refusal
    m.setattr(P, "read_predictions", never)
    m.setattr(CL, "evaluate_classification", never)
    assert cli(f"--labels={labels}", f"--probs={probs}", f"--out={out}", "--bootstrap=0") == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  assert str(out / "report.html") in err and "--overwrite" in err
  assert _files(out) == {"report.html": mine}  # byte-identical, nothing beside it

  # a user's figure is refused the same way
  (out / "report.html").unlink()
  (out / "figures").mkdir()
  (out / "figures" / "roc.png").write_bytes(b"my plot")
  assert cli(f"--labels={labels}", f"--probs={probs}", f"--out={out}", "--bootstrap=0") == 2
  assert str(out / "figures" / "roc.png") in capsys.readouterr().err
  assert (out / "figures" / "roc.png").read_bytes() == b"my plot"

  (out / "report.html").write_bytes(mine)
  args = (f"--labels={labels}", f"--probs={probs}", f"--out={out}", "--bootstrap=0")
  assert cli(*args, "--overwrite") == 0
  html = (out / "report.html").read_text()
  assert "my own notes" not in html and "Mass" in html
  assert (out / "figures" / "roc.png").read_bytes()[:4] == b"\x89PNG"
  manifest = json.loads((out / outputs.MANIFEST).read_text())["files"]
  assert {"report.html", "metrics.json", "report.md", "figures/roc.png"} <= set(manifest)
  assert _no_staging(out)


def test_a_second_evaluate_replaces_its_own_report_quietly(tmp_path, cli, capsys, caplog):
  labels, probs = _predictions(tmp_path)
  out = tmp_path / "out"
  base = (f"--labels={labels}", f"--probs={probs}", f"--out={out}", "--bootstrap=0")
  assert cli(*base, "--title=first") == 0
  capsys.readouterr()
  caplog.clear()
  assert cli(*base, "--title=second") == 0
  assert "error" not in capsys.readouterr().err
  assert not [r for r in caplog.records if r.levelname == "WARNING"]
  assert json.loads((out / "metrics.json").read_text())["title"] == "second"
  assert "second" in (out / "report.html").read_text()
  manifest = json.loads((out / outputs.MANIFEST).read_text())["files"]
  for rel, entry in manifest.items():  # the manifest states the files as they are now
    assert outputs.digest(str(out / rel)) == entry["sha256"], rel
  assert _no_staging(out)


def test_a_failure_midway_leaves_the_earlier_report_untouched(tmp_path, cli, capsys, monkeypatch):
  labels, probs = _predictions(tmp_path)
  out = tmp_path / "out"
  base = (f"--labels={labels}", f"--probs={probs}", f"--out={out}", "--bootstrap=0")
  assert cli(*base) == 0
  before = _files(out)

  def broken(*args, **kwargs):
    raise RuntimeError("a bug while drawing")

  monkeypatch.setattr(plots, "confusion_png", broken)  # drawn after roc, pr and reliability
  with pytest.raises(RuntimeError, match="a bug while drawing"):  # a bug shows its traceback
    report.evaluate_and_report(
      str(out), labels=np.eye(2)[[0, 1, 0, 1]], probs=np.full((4, 2), 0.5), findings=FINDINGS
    )
  assert _files(out) == before and _no_staging(out)


def test_a_full_disk_is_one_line_and_leaves_the_earlier_report(tmp_path, cli, capsys, monkeypatch):
  labels, probs = _predictions(tmp_path)
  out = tmp_path / "out"
  base = (f"--labels={labels}", f"--probs={probs}", f"--out={out}", "--bootstrap=0")
  assert cli(*base) == 0
  before = _files(out)
  capsys.readouterr()
  real = report._render_html

  def full(*args, **kwargs):  # the disk fills while the report is written (figures are in)
    real(*args, **kwargs)
    raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.html"))

  monkeypatch.setattr(report, "_render_html", full)
  assert cli(*base) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: no space left writing ") and err.count("\n") == 1, err
  assert _files(out) == before and _no_staging(out)
  # in a library call it is the same OutputError
  with pytest.raises(outputs.OutputError, match="no space left"):
    report.evaluate_and_report(
      str(out), labels=np.eye(2)[[0, 1, 0, 1]], probs=np.full((4, 2), 0.5), findings=FINDINGS
    )
  assert _files(out) == before and _no_staging(out)


def test_an_interrupted_report_is_reported_and_its_partial_files_removed(tmp_path, caplog):
  out = tmp_path / "out"
  staging = out / f"{outputs.STAGING}-p0"
  staging.mkdir(parents=True)  # what a killed run leaves: partial files, nothing final
  (staging / ".started").write_text(json.dumps({"command": "evaluate", "pid": 4242}))
  (staging / "metrics.json").write_text("{")
  report.evaluate_and_report(
    str(out), labels=np.eye(2)[[0, 1, 0, 1]], probs=np.full((4, 2), 0.5), findings=FINDINGS
  )
  said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
  assert "interrupted" in said and "4242" in said
  assert json.loads((out / "metrics.json").read_text())["n_images"] == 4 and _no_staging(out)


def test_formula_like_ids_land_neutralised_and_pair_when_read_back(tmp_path):
  ids = ["=1+2.png", "@SUM(A1).png", "-2+3", "+x.png", "plain.png", "-0.5"]
  y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], np.float64)
  p = np.linspace(0.1, 0.9, 12).reshape(6, 2)
  out = tmp_path / "out"
  report.write_report(
    str(out),
    CL.evaluate_classification(y, p, FINDINGS, bootstrap=0),
    labels=y,
    probs=p,
    findings=FINDINGS,
    ids=ids,
    patient_ids=["=cmd|' /C calc'!A0"] * 3 + ["p2"] * 3,
    calibrated_probs=p,
  )
  want = ["'=1+2.png", "'@SUM(A1).png", "'-2+3", "'+x.png", "plain.png", "-0.5"]
  for name in ("labels.csv", "probs.csv", "calibrated.csv"):
    rows = list(csv.reader(open(out / name, newline="")))
    assert [r[0] for r in rows[1:]] == want, name
  assert list(csv.reader(open(out / "labels.csv")))[1][1] == "'=cmd|' /C calc'!A0"
  # mdx's own files pair, and read back as the ids were
  back = P.read_predictions(
    str(out / "labels.csv"), str(out / "probs.csv"), patient_column="patient_id"
  )
  assert back.ids.tolist() == ids and back.patient_ids[0] == "=cmd|' /C calc'!A0"
  np.testing.assert_array_equal(back.probs, p)
  # a user's own labels CSV (raw ids) pairs with mdx's neutralised probs.csv
  mine = tmp_path / "mine.csv"
  with open(mine, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", *FINDINGS])
    w.writerows([i, *map(int, row)] for i, row in zip(ids[::-1], y[::-1]))
  paired = P.read_predictions(str(mine), str(out / "probs.csv"))
  np.testing.assert_array_equal(paired.probs, p[::-1])


def test_the_layout_names_every_file_a_report_writes(tmp_path):
  """The claim before the work and the writer cannot drift: every file written lies in the
  layout's files or folders, and its completion files are among them."""
  from PIL import Image

  y = np.eye(2)[[0, 1, 0, 1]]
  p = np.full((4, 2), 0.5)
  curve = tmp_path / "curve.png"
  Image.new("RGB", (4, 4)).save(curve)
  cases = [
    ({}, report.layout("evaluation", ids=False, copied=False)),
    (
      {"ids": list("abcd"), "calibrated_probs": p, "extra_figures": [("c", str(curve))]},
      report.layout("evaluation"),
    ),
  ]
  for i, (more, layout) in enumerate(cases):
    out = tmp_path / str(i)
    result = CL.evaluate_classification(y, p, FINDINGS, bootstrap=0)
    report.write_report(str(out), result, labels=y, probs=p, findings=FINDINGS, **more)
    written = set(_files(out)) - {outputs.MANIFEST}
    stray = [f for f in written if f not in layout.files and f.split("/")[0] not in layout.folders]
    assert not stray and set(layout.completes) <= written, (stray, layout)
  per_case = {"c1": seg.case_metrics(np.ones((4, 4, 2), int), np.ones((4, 4, 2), int), ["bg", "t"])}
  drawn = tmp_path / "c1.png"
  Image.new("RGB", (4, 4)).save(drawn)
  history = [{"step": 1, "loss": 1.0, "val_dice": 0.5}]
  out = tmp_path / "seg"
  run_report.segmentation_run_report(
    str(out), split="test", per_case=per_case, history=history, overlays=[str(drawn)]
  )
  layout = report.layout("segmentation")
  written = set(_files(out)) - {outputs.MANIFEST}
  assert all(f in layout.files or f.split("/")[0] in layout.folders for f in written), written
  with pytest.raises(ValueError, match="needs its split"):
    report.layout("classification")


def test_a_segmentation_report_refuses_a_users_file_and_keeps_the_old_one_on_failure(
  tmp_path, monkeypatch
):
  names = ["bg", "t"]
  per_case = {"c1": seg.case_metrics(np.ones((4, 4, 2), int), np.ones((4, 4, 2), int), names)}
  out = tmp_path / "report"
  out.mkdir()
  (out / "report.md").write_text("my notes")
  with pytest.raises(outputs.OutputError, match="report.md, which mdx did not write"):
    run_report.segmentation_run_report(str(out), split="test", per_case=per_case, history=[])
  assert os.listdir(out) == ["report.md"]
  (out / "report.md").unlink()
  run_report.segmentation_run_report(str(out), split="test", per_case=per_case, history=[])
  before = _files(out)

  def broken(*args, **kwargs):
    raise RuntimeError("a bug")

  monkeypatch.setattr(seg, "write_report", broken)  # after metrics.json was staged
  with pytest.raises(RuntimeError):
    run_report.segmentation_run_report(str(out), split="test", per_case=per_case, history=[])
  assert _files(out) == before and _no_staging(out)
