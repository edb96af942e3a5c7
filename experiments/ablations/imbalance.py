"""Rare findings: plain BCE vs weighted BCE vs resampling vs focal loss.

  ./launch.sh sweep experiments/ablations/imbalance.py --workdir=/tmp/mdx/ablation_imbalance \
      --results_page=docs/ablations.md

Four findings at their NIH prevalences (2-5%). 'bce' (the baseline) is the plain loss;
'weighted_bce' weighs each finding's positives and negatives equally (mdx.losses); 'oversample'
repeats positive films up to 10x per epoch towards 1:1 and 'undersample' keeps only as many
all-negative films as films with a finding (mdx.data.resample), both with plain BCE; 'focal' is
the focal loss (gamma 2, alpha 0.25; mdx.losses.focal_loss). The table gives per-finding test AUROC,
the sensitivity at the threshold chosen on validation (Youden) and the calibration (ECE, 10 bins) of
the raw scores, macro over findings.
"""

import os

from mdx.config import load_experiment

SEEDS = (0, 1, 2)
FINDINGS = ("Cardiomegaly", "Edema", "Emphysema", "Pneumothorax")  # NIH: 2.5%, 2%, 2%, 5%

_base = load_experiment(os.path.join(os.path.dirname(__file__), "..", "ablation_phantoms.py"))


def get_config():
  c = _base.get_config()
  c.data.num_patients = 1200
  c.data.image_size = 48
  c.data.findings = FINDINGS
  c.loss.name = "bce"
  c.train.steps = 150
  return c


def get_sweep():
  return {
    "bce": {},
    "weighted_bce": {"loss.name": "weighted_bce"},
    "oversample": {"data.resample": {"mode": "oversample", "ratio": 1.0, "max_repeat": 10}},
    "undersample": {"data.resample": {"mode": "undersample", "ratio": 1.0}},
    "focal": {"loss.name": "focal"},
  }


def get_report(findings=FINDINGS):
  """The table: per-finding test AUROC of `findings` (imbalance_nih.py passes its own)."""
  rescued = ("delta_auroc", "higher")
  return dict(
    baseline="bce",
    claim="a weighted loss or resampling rescues rare findings that a plain loss neglects.",
    columns=[
      *[(f"AUROC {f}", f"{f}/auroc") for f in findings],
      ("sensitivity (val threshold)", "macro/sensitivity"),
      ("ECE", "macro/ece"),
    ],
    figure=["macro/sensitivity", "macro/ece"],
    expect={
      "weighted_bce": [rescued, ("macro/ece", "higher")],
      "oversample": [rescued, ("macro/ece", "higher")],
      "undersample": [rescued],
      "focal": [rescued],
    },
  )
