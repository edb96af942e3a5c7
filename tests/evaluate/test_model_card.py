"""The model card says what the spec measured (with CIs), 'undefined' where a number has no value,
and derives its known limits from the numbers; it renders all three kinds of bundle spec."""

from mdx.inference import bundle

MODEL = {"name": "densenet121", "num_classes": 2, "dtype": "float32"}


def _m(value, lo=None, hi=None):
  return {"value": value, "ci": [lo, hi]}


def _split(n_images, hernia_positives, hernia_auroc):
  return {
    "n_images": n_images,
    "n_patients": n_images // 2,
    "macro_auroc": _m(0.79, 0.70, 0.85),
    "per_finding": {
      "Atelectasis": {
        "n": n_images,
        "n_positive": 30,
        "prevalence": 0.25,
        "auroc": _m(0.812, 0.751, 0.866),
        "sensitivity": _m(0.7, 0.62, 0.78),
        "specificity": _m(0.81, 0.75, 0.86),
        "ppv": _m(0.55, 0.47, 0.63),
        "npv": _m(0.9, 0.86, 0.93),
        "brier": _m(0.14, 0.12, 0.16),
        "ece": _m(0.21, 0.18, 0.24),
        "ece_calibrated": _m(0.04, 0.02, 0.06),
      },
      "Hernia": {
        "n": n_images,
        "n_positive": hernia_positives,
        "prevalence": hernia_positives / n_images,
        "auroc": hernia_auroc,
        "sensitivity": _m(None),  # undefined: no call was positive
        "specificity": _m(0.98, 0.96, 0.99),
        "ppv": {"value": 0.2, "ci": None},
        # npv missing: not measured
        "brier": _m(0.02, 0.01, 0.03),
        "ece": _m(0.3, 0.2, 0.4),
        "ece_calibrated": _m(0.01, 0.0, 0.02),
      },
    },
  }


def _trained_spec():
  findings = ["Atelectasis", "Hernia"]
  return bundle.classification_spec(
    MODEL,
    image_size=128,
    channels=1,
    standardize={"mode": "per_image"},
    findings=findings,
    thresholds={
      "policy": "youden",
      "description": "Youden's J on validation",
      "chosen_on": "validation",
      "scale": "raw",
      "values": {"Atelectasis": 0.4321, "Hernia": None},
    },
    calibration={
      "method": "platt",
      "fitted_on": "validation",
      "maps": {
        "Atelectasis": {"kind": "platt", "a": 1.25, "b": -0.5},
        "Hernia": {"kind": "identity", "reason": "validation labels lack positives"},
      },
    },
    results={
      "settings": {
        "bootstrap_resamples": 200,
        "resampling_unit": "patient",
        "ci_level": 0.95,
        "seed": 0,
      },
      "validation": _split(40, 0, _m(None)),
      "test": _split(120, 3, _m(0.5, 0.1, 0.95)),
    },
    provenance={
      "config": {"seed": 0, "data": {"source": "phantoms"}, "loss": {"name": "weighted_bce"}},
      "mdx_version": "0.1.0",
      "git_commit": "abc123",
      "git_dirty": True,
      "created": "2025-01-02T03:04:05+00:00",
      "step": 600,
      "workdir": "/runs/x",
      "data": {
        "source": "phantoms",
        "fingerprint": "f00d",
        "n_records": 800,
        "n_patients": 400,
        "splits": {"train": 640, "validation": 40, "test": 120},
        "split_by": "patient",
        "train_prevalence": {"Atelectasis": 0.24, "Hernia": 0.012},
      },
    },
  )


def _section(card: str, title: str) -> str:
  return card.split(f"## {title}")[1].split("\n## ")[0]


def _row(text: str, first_cell: str) -> str:
  return next(line for line in text.splitlines() if line.startswith(f"| {first_cell} |"))


def test_trained_classifier_numbers_cis_undefined_and_limits():
  card = bundle.render_card(_trained_spec())
  assert card.startswith("# Model card: densenet121, multi-label image classification")
  assert "Research use only" in card and "not a medical device" in card
  results = _section(card, "Results")
  assert "200 bootstrap resamples by patient" in results
  test = results.split("### Test")[1]
  assert "120 images of 60 patients; macro AUROC 0.790 [0.700, 0.850]" in test
  assert "0.812 [0.751, 0.866]" in _row(test, "Atelectasis")
  hernia = _row(test, "Hernia")
  cells = [c.strip() for c in hernia.strip("|").split("|")]
  # Finding, n, positives, prevalence, AUROC, sensitivity, specificity, PPV, NPV
  assert cells[:3] == ["Hernia", "120", "3"]
  assert cells[4] == "0.500 [0.100, 0.950]"
  assert cells[5] == "undefined" and cells[7] == "0.200 [CI undefined]"
  assert cells[8] == "not measured"
  assert "0.000" not in hernia
  assert "0.210 [0.180, 0.240]" in test and "0.040 [0.020, 0.060]" in test  # ECE raw, calibrated
  assert "chosen on this validation set" in results.split("### Test")[0]
  assert "| Atelectasis | 0.4321 |" in _section(card, "Operating thresholds")
  assert "| Hernia | none (no call) |" in _section(card, "Operating thresholds")
  calibration = _section(card, "Calibration")
  assert "a = 1.25, b = -0.5" in calibration
  assert "identity (not calibrated: validation labels lack positives)" in calibration
  data = _section(card, "Data")
  assert "train 640, validation 40, test 120; split by patient" in data and "`f00d`" in data
  assert "| Hernia | 0.012 |" in data
  limits = _section(card, "Known limits")
  assert "Few test positives" in limits and "Hernia (3)" in limits
  assert "Atelectasis (30)" not in limits
  assert "Synthetic data" in limits and "Internal validation only" in limits
  assert "python -m mdx evaluate --bundle" in limits
  assert "Wide 95% CIs" in limits and "Hernia (AUROC)" in limits
  assert "AUROC undefined on the validation set" in limits
  assert "Raw scores are inflated" in limits and "calibrated" in limits
  assert "Small validation set (40 images < 100)" in limits
  assert "Uncommitted code" in limits
  provenance = _section(card, "Provenance")
  assert "abc123 (with uncommitted changes)" in provenance and "Training step: 600" in provenance
  assert "<details>" in provenance and '"weighted_bce"' in provenance


def test_real_source_with_many_positives_is_not_flagged():
  spec = _trained_spec()
  spec["provenance"]["data"]["source"] = "nih"
  spec["provenance"]["config"] = {"loss": {"name": "bce"}, "data": {"source": "nih"}}
  spec["provenance"]["git_dirty"] = False
  for split in ("validation", "test"):
    spec["results"][split] = _split(400, 40, _m(0.9, 0.85, 0.94))
  limits = _section(bundle.render_card(spec), "Known limits")
  for flag in ("Synthetic", "Few test", "Wide", "inflated", "Small validation", "Uncommitted"):
    assert flag not in limits, flag
  assert "Internal validation only" in limits and "frontal chest radiographs" in (
    bundle.render_card(spec)
  )


def test_imported_weights_without_results():
  spec = bundle.classification_spec(
    MODEL,
    image_size=224,
    channels=1,
    standardize={"mode": "dataset", "mean": [0.5], "std": [1 / 2048 - 1e-6]},
    findings=["Atelectasis", "Consolidation"],
    provenance={
      "imported_from": {
        "file": "/w/xrv.pt",
        "sha256": "deadbeef",
        "format": "torch",
        "model": "densenet121",
      }
    },
  )
  card = bundle.render_card({"format": bundle.FORMAT, **spec})
  assert "(imported weights)" in card.splitlines()[0]
  assert "Atelectasis, Consolidation" in card
  assert "Not measured" in _section(card, "Results")
  assert "No training data is recorded" in _section(card, "Data") and "deadbeef" in card
  assert _section(card, "Operating thresholds").strip().startswith("None")
  assert "equals the raw score" in _section(card, "Calibration")
  limits = _section(card, "Known limits")
  assert "No thresholds and no calibration" in limits and "Not validated in mdx" in limits
  assert "Internal validation" not in limits
  assert "judging by the findings, chest radiographs" in card
  assert "mean [0.5]" in card


def test_segmentation_card():
  spec = bundle.segmentation_spec(
    {"name": "unet3d", "num_classes": 3},
    channels=4,
    standardize="nonzero",
    patch_size=(32, 32, 32),
    overlap=0.5,
    batch_size=2,
    class_names=["whole tumor", "tumor core", "enhancing tumor"],
    label_mode="regions",
    label_values=[2, 1, 4],
    results={
      "validation": {
        "n_cases": 8,
        "mean_dice": 0.61,
        "per_class": {
          "whole tumor": {"dice": 0.83, "sensitivity": 0.85, "specificity": 0.99},
          "tumor core": {"dice": 0.41, "sensitivity": 0.5, "specificity": 0.995},
          "enhancing tumor": {"dice": None, "sensitivity": None, "specificity": 0.999},
        },
      }
    },
    provenance={"data": {"source": "brain_phantoms", "n_records": 32}},
  )
  card = bundle.render_card(spec)
  assert card.startswith("# Model card: unet3d, 3D segmentation")
  assert "whole tumor = 2, tumor core = 1, enhancing tumor = 4" in card
  assert "32 x 32 x 32" in card
  validation = _section(card, "Results")
  assert "8 scans; mean Dice 0.610" in validation
  assert "| whole tumor | 0.830 | 0.850 | 0.990 |" in validation
  assert "| enhancing tumor | undefined | undefined | 0.999 |" in validation
  limits = _section(card, "Known limits")
  assert "Synthetic data" in limits and "Few validation scans (8 < 20)" in limits
  assert "Dice undefined on the validation set" in limits and "tumor core (0.410)" in limits
  assert "Operating thresholds" not in card


def test_empty_specs_render():
  for spec in (
    {},
    bundle.classification_spec(MODEL, image_size=64, channels=3, standardize={}, findings=["a"]),
    bundle.segmentation_spec(
      {"name": "unet3d", "num_classes": 1},
      channels=1,
      standardize="per_channel",
      patch_size=(16, 16, 16),
      overlap=0.25,
      batch_size=1,
      class_names=["fg"],
      label_mode="classes",
      label_values=[1],
    ),
  ):
    card = bundle.render_card(spec)
    assert "## Known limits" in card and "## Provenance" in card
    assert "not measured" in card.lower()


def test_modality_and_synthetic_data_are_the_sources_facts(monkeypatch):
  """The card reads what the data was from the source the spec names (mdx.data.sources), so a
  new source needs no entry here."""
  import dataclasses

  from mdx.data import sources

  spec = _trained_spec()
  spec["provenance"]["data"]["source"] = "nih"
  card = bundle.render_card(spec)
  assert "- Input: frontal chest radiographs (NIH ChestX-ray14)." in card
  assert "Synthetic data" not in _section(card, "Known limits")
  simulated = dataclasses.replace(
    sources.SOURCES["nih"], modality="simulated films of a new kind", synthetic=True
  )
  monkeypatch.setitem(sources.SOURCES, "simulated", simulated)
  spec["provenance"]["data"]["source"] = "simulated"
  card = bundle.render_card(spec)
  assert "- Input: simulated films of a new kind." in card
  assert "trained and tested on `simulated`, images mdx generates" in _section(card, "Known limits")
  spec["provenance"]["data"]["source"] = "elsewhere"  # not registered: said so, not guessed
  assert "images of data source 'elsewhere' (modality not recorded)" in bundle.render_card(spec)
  # across datasets: each dataset's modality, and synthetic when any of them is
  spec["provenance"]["data"]["source"] = "mixture"
  spec["provenance"]["data"]["sources"] = [
    {"name": "a", "source": "nih", "modality": "frontal chest radiographs (NIH ChestX-ray14)"},
    {"name": "b", "source": "simulated", "modality": "simulated films of a new kind"},
  ]
  card = bundle.render_card(spec)
  want = "a: frontal chest radiographs (NIH ChestX-ray14); b: simulated films of a new kind"
  assert f"- Input: {want}." in card
  assert "Synthetic data" in _section(card, "Known limits")
  spec["provenance"]["data"]["sources"][1]["source"] = "nih"
  assert "Synthetic data" not in _section(bundle.render_card(spec), "Known limits")


def test_the_training_datas_dataset_card_is_under_data():
  from mdx.data import card as card_lib

  dataset = {
    "source": "nih",
    "images": 800,
    "patients": 300,
    "studies": None,
    "views": {"PA": 500, "AP": 300},
    "findings": {
      "Atelectasis": {"positive": 190, "negative": 600, "unknown": 10, "prevalence": 190 / 790}
    },
    "sex": None,
    "age": None,
    "excluded": {"views": 12},
    "skipped": 0,
  }
  spec = _trained_spec()
  spec["provenance"]["data"]["card"] = dataset
  data = bundle.render_card(spec).split("\n## Data\n")[1].split("\n## ")[0]
  assert "### Dataset card: nih" in data
  assert "Images 800; patients 300; studies not recorded." in data
  assert "Views: PA 500, AP 300." in data and "Left out: views 12" in data
  assert "| Atelectasis | 190 | 600 | 10 | 0.241 |" in data
  assert card_lib.markdown(dataset, level=3) in data  # the card's own rendering, not a second one
  assert "Dataset card" not in _section(bundle.render_card(_trained_spec()), "Data")
