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

_here = os.path.dirname(__file__)
_base = load_experiment(os.path.join(_here, "..", "ablation_nih.py"))
_phantom = load_experiment(os.path.join(_here, "imbalance.py"))


def get_config():
  c = _base.get_config()
  c.data.findings = FINDINGS
  c.loss.name = "bce"
  return c


get_sweep = _phantom.get_sweep  # the same variants as the phantom ablation


def get_report():
  return _phantom.get_report(FINDINGS)
