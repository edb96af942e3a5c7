"""The report end to end: metrics.json against sklearn, files and links, the CLI and its errors."""

import json
import os
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mdx.evaluate import classification as CL
from mdx.evaluate import predictions as P
from mdx.evaluate import thresholds as T
from mdx.evaluate.report import evaluate_and_report

FINDINGS = ["Mass", "Hernia"]


def _data(seed, n=60):
  rng = np.random.default_rng(seed)
  y = np.zeros((n, 2))
  y[:, 0] = rng.random(n) < 0.4
  y[rng.random(n) < 0.15, 0] = np.nan  # unknown labels
  p = np.clip(np.round(rng.normal(0.3 + 0.35 * np.nan_to_num(y), 0.2), 2), 0, 1)  # ties
  return y, p  # Hernia: no positives at all


def test_report_files_and_numbers(tmp_path):
  y, p = _data(0)
  vy, vp = _data(1)
  curve = tmp_path / "loss.png"
  from PIL import Image

  Image.new("RGB", (20, 10), "red").save(curve)
  out = tmp_path / "eval"
  pids = np.arange(60) // 2
  res = evaluate_and_report(
    str(out),
    labels=y,
    probs=p,
    findings=FINDINGS,
    patient_ids=pids,
    ids=[f"im{i}" for i in range(60)],
    val_labels=vy,
    val_probs=vp,
    bootstrap=50,
    seed=1,
    extra_figures=[("loss curve", str(curve))],
    title="tiny",
    prevalence=0.1,
  )
  for name in [
    "metrics.json",
    "report.md",
    "report.html",
    "labels.csv",
    "probs.csv",
    "figures/roc.png",
    "figures/pr.png",
    "figures/reliability.png",
    "figures/confusion.png",
  ]:
    assert (out / name).exists(), name
  text = (out / "metrics.json").read_text()
  assert "NaN" not in text
  assert json.loads(text) == res
  known = ~np.isnan(y[:, 0])
  mass = res["per_finding"]["Mass"]
  assert mass["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(y[known, 0], p[known, 0]))
  lo, hi = mass["metrics"]["auroc"]["ci"]
  assert lo < mass["metrics"]["auroc"]["value"] < hi
  assert mass["n"] == known.sum() and mass["n_unknown"] == (~known).sum()
  assert mass["threshold"] == T.choose_threshold(
    vy[:, 0], vp[:, 0], "youden"
  )  # chosen on validation
  assert "ppv_at_prevalence" in mass["metrics"] and "ece_platt" in mass["metrics"]
  hernia = res["per_finding"]["Hernia"]
  assert hernia["metrics"]["auroc"] == {"value": None, "ci": [None, None]}
  # Validation has no Hernia positives either: Youden cannot pick a threshold.
  assert hernia["threshold"] is None and hernia["metrics"]["specificity"]["value"] is None
  # Macro skips the undefined finding; micro pools all known labels.
  assert res["macro"]["auroc"]["value"] == pytest.approx(mass["metrics"]["auroc"]["value"])
  ky = np.r_[y[known, 0], y[:, 1]]
  kp = np.r_[p[known, 0], p[:, 1]]
  assert res["micro"]["auroc"]["value"] == pytest.approx(roc_auc_score(ky, kp))
  assert res["settings"]["thresholds_chosen_on"] == "validation set"
  assert res["settings"]["bootstrap_resamples"] == 50 and res["settings"]["seed"] == 1
  assert res["n_patients"] == 30
  md = (out / "report.md").read_text()
  html = (out / "report.html").read_text()
  assert "| Mass |" in md and "undefined" in md and "Youden" in md
  for link in re.findall(r"src='([^']+)'", html) + re.findall(r"\]\(([^)]+)\)", md):
    assert not os.path.isabs(link) and (out / link).exists(), link
  assert "loss curve" in html and any("extra/" in src for src in re.findall(r"src='([^']+)'", html))
  # The written CSVs are re-readable and give the same predictions.
  pred = P.read_predictions(
    str(out / "labels.csv"), str(out / "probs.csv"), id_column="id", patient_column="patient_id"
  )
  np.testing.assert_array_equal(pred.labels, y)
  np.testing.assert_allclose(pred.probs, p)


def test_patient_bootstrap_ignores_duplicated_studies():
  """Every study seen twice under one patient id: the same information, so the same CIs."""
  y, p = _data(2)
  base = CL.evaluate_classification(
    y, p, FINDINGS, patient_ids=np.arange(60), bootstrap=100, seed=3
  )
  dup = CL.evaluate_classification(
    np.repeat(y, 2, 0),
    np.repeat(p, 2, 0),
    FINDINGS,
    patient_ids=np.repeat(np.arange(60), 2),
    bootstrap=100,
    seed=3,
  )
  naive = CL.evaluate_classification(
    np.repeat(y, 2, 0), np.repeat(p, 2, 0), FINDINGS, bootstrap=100, seed=3
  )
  for m in ("auroc", "sensitivity", "brier"):
    a, b = base["per_finding"]["Mass"]["metrics"][m], dup["per_finding"]["Mass"]["metrics"][m]
    assert a["value"] == pytest.approx(b["value"])
    np.testing.assert_allclose(a["ci"], b["ci"])
  w_dup = np.diff(dup["per_finding"]["Mass"]["metrics"]["auroc"]["ci"])[0]
  w_naive = np.diff(naive["per_finding"]["Mass"]["metrics"]["auroc"]["ci"])[0]
  assert w_naive < 0.85 * w_dup  # treating duplicates as independent shrinks the interval


def test_without_validation_the_report_says_thresholds_are_optimistic():
  y, p = _data(4)
  res = CL.evaluate_classification(y, p, FINDINGS, threshold_policy="sensitivity=0.9", bootstrap=0)
  assert "optimistic" in res["settings"]["thresholds_chosen_on"]
  assert res["per_finding"]["Mass"]["metrics"]["sensitivity"]["value"] >= 0.9
  assert res["per_finding"]["Mass"]["metrics"]["auroc"]["ci"] == [None, None]
  fixed = CL.evaluate_classification(y, p, FINDINGS, threshold_policy=0.5, bootstrap=0)
  hernia = fixed["per_finding"]["Hernia"]["metrics"]
  assert hernia["sensitivity"]["value"] is None  # no positives: undefined, not 0
  assert hernia["specificity"]["value"] == pytest.approx((p[:, 1] < 0.5).mean())
  with pytest.raises(ValueError, match=r"probs\[0, 1\] \(Hernia\)"):
    CL.evaluate_classification(y, np.where(np.arange(2) == 1, 1.5, p), FINDINGS, bootstrap=0)


@pytest.fixture
def cli():
  from mdx import commands

  return lambda *args: commands.call("evaluate", list(args))  # python -m mdx evaluate ARGS


def test_cli_writes_the_report_and_reports_bad_csvs(tmp_path, cli, capsys):
  y, p = _data(5)
  ids = [f"s{i}" for i in range(60)]
  lp = P.write_csv(
    str(tmp_path / "l.csv"),
    ids,
    y,
    FINDINGS,
    id_column="study",
    patient_ids=[f"p{i // 3}" for i in range(60)],
    patient_column="subject",
  )
  pp = P.write_csv(str(tmp_path / "p.csv"), ids[::-1], p[::-1], FINDINGS, id_column="study")
  out = tmp_path / "out"
  assert (
    cli(
      f"--labels={lp}",
      f"--probs={pp}",
      f"--out={out}",
      "--patient_column=subject",
      "--bootstrap=20",
      "--seed=2",
    )
    == 0
  )
  res = json.loads((out / "metrics.json").read_text())
  known = ~np.isnan(y[:, 0])
  assert res["per_finding"]["Mass"]["metrics"]["auroc"]["value"] == pytest.approx(
    roc_auc_score(y[known, 0], p[known, 0])
  )
  assert res["n_patients"] == 20 and res["settings"]["resampling_unit"] == "patient"
  assert (out / "report.html").exists()
  bad = tmp_path / "bad.csv"
  bad.write_text(pp and open(pp).read().replace("s3,", "s3x,", 1))
  assert cli(f"--labels={lp}", f"--probs={bad}", f"--out={out}", "--patient_column=subject") == 2
  assert "ids do not match" in capsys.readouterr().err


def test_cli_compares_two_models(tmp_path, cli):
  rng = np.random.default_rng(9)
  n = 200
  y = np.zeros((n, 1))
  y[n // 2 :] = 1
  good = 1 / (1 + np.exp(-rng.normal(3 * y - 1.5, 1.0)))
  bad = 1 / (1 + np.exp(-rng.normal(0.3 * y, 1.0)))
  ids = [f"s{i}" for i in range(n)]
  lp = P.write_csv(str(tmp_path / "l.csv"), ids, y, ["Mass"])
  ap = P.write_csv(str(tmp_path / "a.csv"), ids, good, ["Mass"])
  bp = P.write_csv(str(tmp_path / "b.csv"), ids, bad, ["Mass"])
  out = tmp_path / "cmp"
  assert (
    cli(
      f"--labels={lp}", f"--probs={ap}", f"--compare_probs={bp}", f"--out={out}", "--bootstrap=200"
    )
    == 0
  )
  res = json.loads((out / "metrics.json").read_text())
  e = res["comparison"]["findings"]["Mass"]
  assert e["diff"] == pytest.approx(
    roc_auc_score(y[:, 0], good[:, 0]) - roc_auc_score(y[:, 0], bad[:, 0])
  )
  assert e["delong"]["p_value"] < 0.001 and e["paired_bootstrap"]["ci"][0] > 0
  assert "Comparison with" in (out / "report.md").read_text()
