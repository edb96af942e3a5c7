"""The ablation report: the paired comparison against the baseline is the paired patient bootstrap
of mdx.evaluate.bootstrap, seeds are averaged, and the table, paragraph and results page say what
the numbers show."""

import numpy as np
import pytest

from mdx.evaluate import ablation
from mdx.evaluate import bootstrap as B
from mdx.evaluate import predictions as P

FINDINGS = ("A", "B")


def _test_set(seed, n=120, skill=1.0, extra=0):
  """Predictions of a model whose scores separate the classes by `skill` (same images per seed)."""
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, 2)) < 0.3).astype(float)
  noise = np.random.default_rng([seed, int(skill * 100)]).normal(size=(n, 2))
  probs = 1 / (1 + np.exp(-(skill * (2 * labels - 1) + noise)))
  ids = np.array([f"img{i:04d}" for i in range(n)])
  pids = np.array([f"p{i // 3}" for i in range(n)])
  if extra:  # images only this run evaluated (e.g. another split): left out of the pairing
    more = _test_set(seed + 99, extra, skill)
    return P.Predictions(
      np.r_[ids, [f"zz{i}" for i in range(extra)]],
      FINDINGS,
      np.r_[labels, more.labels],
      np.r_[probs, more.probs],
      np.r_[pids, more.patient_ids],
    )
  return P.Predictions(ids, FINDINGS, labels, probs, pids)


def _run(test, **measures):
  return ablation.Run({"macro/auroc": 0.0, **measures}, test)


def test_one_seed_is_the_paired_patient_bootstrap_on_the_shared_images():
  base, variant = _test_set(0, skill=0.5), _test_set(0, skill=1.5, extra=30)
  got = ablation.paired_difference({0: _run(variant)}, {0: _run(base)}, n_resamples=300, seed=0)
  assert got["shared_images"] == {0: 120}
  for j in range(2):  # one finding at a time, against the bootstrap module's own comparison
    one = ablation.paired_difference(
      {
        0: _run(
          P.Predictions(
            variant.ids, ("A",), variant.labels[:, [j]], variant.probs[:, [j]], variant.patient_ids
          )
        )
      },
      {
        0: _run(
          P.Predictions(base.ids, ("A",), base.labels[:, [j]], base.probs[:, [j]], base.patient_ids)
        )
      },
      n_resamples=300,
    )
    ref = B.paired_bootstrap_auroc(
      base.labels[:, j], variant.probs[:120, j], base.probs[:, j], base.patient_ids, 300, 0
    )
    assert one["diff"] == pytest.approx(ref["diff"])
    assert one["ci"] == pytest.approx([ref["ci_low"], ref["ci_high"]])
    assert one["p_value"] == pytest.approx(ref["p_value"])
  assert got["diff"] > 0 and got["ci"][0] > 0  # the better model wins on the same images


def test_seeds_are_averaged_and_other_labels_on_shared_images_are_refused():
  base = {s: _run(_test_set(s, skill=0.8)) for s in (0, 1)}
  variant = {s: _run(_test_set(s, skill=1.2)) for s in (0, 1)}
  got = ablation.paired_difference(variant, base, n_resamples=200)
  assert got["diff"] == pytest.approx(np.mean(list(got["per_seed"].values())))
  assert got["ci"][0] <= got["diff"] <= got["ci"][1]
  other = _test_set(5)
  with pytest.raises(ValueError, match="other labels"):
    ablation.paired_difference({0: _run(other)}, {0: base[0]}, n_resamples=10)


def test_measurements_flatten_a_run():
  entry = {"value": 0.8, "ci": [0.7, 0.9]}
  metrics = {
    "n_images": 10,
    "per_finding": {"A": {"n_positive": 3, "metrics": {"auroc": entry}}},
    "macro": {"auroc": entry, "ece": {"value": None, "ci": [None, None]}},
    "micro": {},
  }
  gradcam = {"A": {"images": 3, "peak_x": 1.0}, "B": {"images": 1, "peak_x": 0.0, "layer": "l"}}
  audit = {
    "sets": {"train": {"images": 8, "positives": {"A": 2, "B": 1}}},
    "pairs": {"train&test": {"patients": 4, "images": 0}},
  }
  m = ablation.measurements(metrics, gradcam, audit)
  assert m["A/auroc"] == 0.8 and m["A/auroc/ci_width"] == pytest.approx(0.2)
  assert m["macro/ece"] is None and "macro/ece/ci_width" not in m
  assert m["gradcam/all/peak_x"] == 0.75  # weighted by each finding's images
  assert m["audit/train&test/patients"] == 4 and m["split/train/positives"] == 3


def test_report_table_paragraph_and_results_page(tmp_path):
  runs = {
    "base": {
      s: _run(_test_set(s, skill=0.6), **{"macro/auroc": 0.70 + s / 100, "n": 3, "w": 0.0})
      for s in (0, 1)
    },
    "better": {s: _run(_test_set(s, skill=2.0), **{"macro/auroc": 0.90 + s / 100}) for s in (0, 1)},
    "worse": {s: _run(_test_set(s, skill=0.1), **{"macro/auroc": 0.55 + s / 100}) for s in (0, 1)},
  }
  spec = dict(
    baseline="base",
    claim="better is better.",
    columns=[("test AUROC", "macro/auroc"), ("count", "n"), ("width", "w")],
    expect={"better": ("delta_auroc", "higher"), "worse": [("macro/auroc", "higher")]},
  )
  written = ablation.write_report(
    str(tmp_path),
    "demo",
    runs,
    spec,
    command="./launch.sh sweep demo.py",
    wall="1 min",
    n_resamples=100,
  )
  lines = written["markdown"].splitlines()
  row = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
  assert "| 0.705 ± 0.007 | 3.0 ± 0.0 | 0.000 ± 0.000 | baseline |" in row["base"]
  assert "| 0.905 ± 0.007 | n/a | n/a |" in row["better"]  # not measured for that variant
  assert "| 120 |" in row["better"]  # the shared test images per seed
  text = ablation.paragraph(written["summary"], written["spec"])
  assert "Lesson: better is better." in text
  assert "'better' to have a higher test macro AUROC" in text and "it shows up" in text
  assert "went the other way in every seed" in text  # 'worse' did not do what was expected
  assert (tmp_path / "ablation.png").stat().st_size > 0 and (tmp_path / "ablation.json").exists()
  page = tmp_path / "docs" / "ablations.md"
  page.parent.mkdir()
  page.write_text("# Ablations\n\nIntro.\n")
  for _ in range(2):  # a second sweep replaces its section
    ablation.update_results_page(str(page), "demo", written)
  text = page.read_text()
  assert text.startswith("# Ablations\n\nIntro.") and text.count("## demo") == 1
  assert "](ablations/demo.png)" in text and (page.parent / "ablations" / "demo.png").exists()
  with pytest.raises(ValueError, match="baseline"):
    ablation.check_spec({"baseline": "nope"}, list(runs))


def test_a_report_over_some_variants_checks_the_spec_against_all_and_leaves_out_the_rest():
  spec = dict(
    baseline="base",
    expect={"better": ("delta_auroc", "higher"), "worse": [("macro/auroc", "lower")]},
  )
  variants = ["base", "better", "worse"]
  got = ablation.check_spec(spec, variants, ["base", "better"])
  assert got["paired"] and got["expect"] == {"better": [("delta_auroc", "higher")]}
  assert got["unchecked"] == ["worse"]
  got = ablation.check_spec(spec, variants, ["better", "worse"])  # every expectation needs 'base'
  assert not got["paired"] and got["expect"] == {} and got["unchecked"] == ["better", "worse"]
  # a typo in the spec is found whatever runs, so a sweep can refuse it before it trains
  with pytest.raises(ValueError, match=r"\['expect'\]\['nope'\].*give a variant of"):
    ablation.check_spec({"expect": {"nope": ("delta_auroc", "higher")}}, variants, ["base"])
  with pytest.raises(ValueError, match="other than the baseline"):
    ablation.check_spec({"expect": {"base": ("delta_auroc", "higher")}}, variants)
  with pytest.raises(ValueError, match=r"\['zz'\] are not among"):
    ablation.check_spec(spec, variants, ["base", "zz"])


def test_without_the_baseline_the_report_has_its_table_and_says_why_nothing_is_compared(tmp_path):
  runs = {
    v: {s: _run(_test_set(s, skill=k), **{"macro/auroc": k / 3}) for s in (0, 1)}
    for v, k in (("better", 2.0), ("worse", 0.1))
  }
  spec = dict(baseline="base", expect={"better": ("delta_auroc", "higher")})
  written = ablation.write_report(
    str(tmp_path),
    "demo",
    runs,
    spec,
    command="sweep --only=better,worse",
    wall="1 s",
    n_resamples=20,
    variants=["base", "better", "worse"],
  )
  text = written["markdown"]
  assert "| better | 2 | 0.667 ± 0.000 |" in text and "Δ macro AUROC" not in text
  assert (
    "No paired comparison and expectations about 'better' not checked: the baseline 'base' was "
    "not run (--only); add it to --only to compare." in text
  )
  assert all(s["vs_baseline"] is None for s in written["summary"].values())
  assert (tmp_path / "ablation.png").stat().st_size > 0


def test_no_difference_is_said_as_such():
  same = {s: _run(_test_set(s), **{"macro/auroc": 0.7}) for s in (0, 1)}
  runs = {"base": same, "copy": same}
  spec = ablation.check_spec(
    {"expect": {"copy": [("delta_auroc", "higher"), ("macro/auroc", "lower")]}}, list(runs)
  )
  text = ablation.paragraph(ablation.summarize(runs, spec, n_resamples=20), spec)
  assert "+0.000; it did not show up: no difference." in text
  assert "it did not show up: no difference in any seed." in text
