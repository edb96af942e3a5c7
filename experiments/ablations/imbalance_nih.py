"""Rare findings on real films: plain BCE vs weighted BCE vs resampling vs focal loss (NIH sample).

  ./launch.sh sweep experiments/ablations/imbalance_nih.py \
      --workdir=/tmp/mdx/ablation_imbalance_nih --results_page=docs/ablations.md

The variants of the phantom imbalance ablation (imbalance.py) on the 856-film NIH sample, with four
rare findings (3-4% of the films) spread over many patients: Nodule (36 films of 25 patients), Mass
(34 of 12), Fibrosis (29 of 18) and Pleural_Thickening (26 of 15). The sample's other rare findings
belong to a handful of patients (Edema: 21 of its 26 films are one patient's, Pneumothorax 20 of
33), so a split by patient leaves their test sets with no positive or one patient's films. 'bce'
(the baseline) is the plain loss; 'weighted_bce' weighs each finding's positives and negatives
equally; 'oversample' repeats positive films up to 10x per epoch towards 1:1 and 'undersample'
keeps only as many all-negative films as films with a finding, both with plain BCE; 'focal' is the
focal loss (gamma 2, alpha 0.25). The table gives per-finding test AUROC, the sensitivity at the
threshold chosen on validation and the calibration (ECE, 10 bins), macro over findings.
"""

import os

from mdx.config import load_experiment

SEEDS = (0, 1, 2)
FINDINGS = ("Nodule", "Mass", "Fibrosis", "Pleural_Thickening")

_base = load_experiment(os.path.join(os.path.dirname(__file__), "..", "ablation_nih.py"))


def get_config():
  c = _base.get_config()
  c.data.findings = FINDINGS
  c.loss.name = "bce"
  return c


def get_sweep():
  return {
    "bce": {},
    "weighted_bce": {"loss.name": "weighted_bce"},
    "oversample": {"data.resample": {"mode": "oversample", "ratio": 1.0, "max_repeat": 10}},
    "undersample": {"data.resample": {"mode": "undersample", "ratio": 1.0}},
    "focal": {"loss.name": "focal"},
  }


def get_report():
  rescued = ("delta_auroc", "higher")
  return dict(
    baseline="bce",
    claim="a weighted loss or resampling rescues rare findings that a plain loss neglects.",
    columns=[
      *[(f"AUROC {f}", f"{f}/auroc") for f in FINDINGS],
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
