"""Augmentation on a small training set: none vs the chest preset vs the preset plus lr flips.

  ./launch.sh sweep experiments/ablations/augmentation.py --workdir=/tmp/mdx/ablation_augmentation \
      --results_page=docs/ablations.md

About 600 training films (250 patients; the rest of the 600 patients are validation and a large test
set). 'chest_xray' (the baseline) is the label-preserving chest preset (small rotation, zoom, shift,
exposure; mdx.data.augment); 'none' trains on the films as they are; 'chest_xray_lr_flip' adds
left-right flips, which break a chest film's label in the clinic (a mirrored film shows
dextrocardia). The phantoms have no lateralised finding, so here a flip only shows the model
mirrored anatomy that the test set never has.
"""

import os

from mdx.config import load_experiment

SEEDS = (0, 1, 2)
FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax")  # NIH prevalences

_base = load_experiment(os.path.join(os.path.dirname(__file__), "..", "ablation_phantoms.py"))


def get_config():
  c = _base.get_config()
  c.data.num_patients = 600
  c.data.split = dict(by="patient", test=0.4, val=0.15)
  c.data.findings = FINDINGS
  c.data.augment = "chest_xray"
  return c


def get_sweep():
  return {
    "chest_xray": {},
    "none": {"data.augment": None},
    "chest_xray_lr_flip": {"data.augment": "chest_xray_lr_flip"},
  }


def get_report():
  return dict(
    baseline="chest_xray",
    claim=(
      "label-preserving augmentation helps a small training set; a label-breaking one "
      "(left-right flips of chest films) hurts."
    ),
    columns=[
      ("test macro AUROC", "macro/auroc"),
      *[(f"AUROC {f}", f"{f}/auroc") for f in FINDINGS],
    ],
    figure=["macro/auroc"],
    expect={"none": ("delta_auroc", "lower"), "chest_xray_lr_flip": ("delta_auroc", "lower")},
  )
