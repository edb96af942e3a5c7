"""Patient overlap between sets, on real films: split by patient vs by image (NIH sample).

  ./launch.sh sweep experiments/ablations/leakage_nih.py --workdir=/tmp/mdx/ablation_leakage_nih \
      --results_page=docs/ablations.md

The phantom leakage ablation (leakage.py) plants a per-patient necklace; here nothing is planted.
The 856-film NIH sample has 116 patients with two to ten films, and many findings persist across a
patient's follow-ups, so a split by image (the common mistake) puts most of a patient's films in
training and the rest in test. 'patient_split' (the baseline) keeps each patient in one set. The
table gives the test macro AUROC over the four most frequent findings of the sample, how many
patients train and test share, and the paired difference on the test films both splits tested.

ALLOW_IMAGE_SPLIT = True is the explicit switch that lets this file split by image (mdx.train.sweep
turns on mdx.data.splits.image_split_allowed, with a loud warning).
"""

import os

from mdx.config import load_experiment

ALLOW_IMAGE_SPLIT = True  # this ablation exists to show the leak; nothing else may split by image
SEEDS = (0, 1, 2, 3, 4)
FINDINGS = ("Effusion", "Infiltration", "Atelectasis", "Cardiomegaly")  # 151, 143, 82, 59 films

_here = os.path.dirname(__file__)
_base = load_experiment(os.path.join(_here, "..", "ablation_nih.py"))
_phantom = load_experiment(os.path.join(_here, "leakage.py"))


def get_config():
  c = _base.get_config()
  c.data.findings = FINDINGS
  return c


def get_sweep():
  return _phantom.split_sweep(get_config())  # the phantom ablation's two splits


def get_report():
  return dict(
    baseline="patient_split",
    claim="patient overlap between training and test sets inflates test performance.",
    columns=[
      ("test macro AUROC", "macro/auroc"),
      *[(f"AUROC {f}", f"{f}/auroc") for f in FINDINGS],
      ("patients in train & test", "audit/train&test/patients"),
    ],
    figure=["macro/auroc", "audit/train&test/patients"],
    expect={"image_split": [("macro/auroc", "higher"), ("delta_auroc", "higher")]},
  )
