"""Patient overlap between sets inflates test results (the necklace): split by patient vs by image.

  ./launch.sh sweep experiments/ablations/leakage.py --workdir=/tmp/mdx/ablation_leakage \
      --results_page=docs/ablations.md

Every phantom patient wears a necklace with a bead pattern of their own (a stand-in for a tag, a
piece of jewellery or the same scanner marker on every film) and has several studies; the chronic
findings below belong to the patient (present on all of a patient's films or none). 'patient_split'
(the baseline) keeps each patient in one set. 'image_split' deals films out at random, the common
mistake: most test patients then have other films in training, and a model that remembers a
patient (by the necklace or the patient's anatomy) can read the finding off them. The table gives
the test macro AUROC, how many patients train and test share (the leakage audit still reports
them), and, from Grad-CAM on positive test films, how often the heat-map peak falls within 4 px of
the necklace, beside the share of the image that zone covers (what a randomly placed peak would
hit). The paired comparison uses the test films both splits put in their test set.

The image split is impossible from a normal config: ALLOW_IMAGE_SPLIT = True below is the explicit
switch (mdx.train.sweep turns on mdx.data.splits.image_split_allowed, with a loud warning).
The chronic findings' prevalence is raised to 15% so that a CPU-sized test set holds positives.
"""

import os

from mdx.config import load_experiment

ALLOW_IMAGE_SPLIT = True  # this ablation exists to show the leak; nothing else may split by image
SEEDS = (0, 1, 2)
FINDINGS = ("Cardiomegaly", "Emphysema", "Fibrosis", "Pleural_Thickening")  # chronic: per patient

_base = load_experiment(os.path.join(os.path.dirname(__file__), "..", "ablation_phantoms.py"))


def get_config():
  c = _base.get_config()
  c.data.num_patients = 400
  c.data.findings = FINDINGS
  c.data.prevalence = {f: 0.15 for f in FINDINGS}
  c.eval.gradcam.findings = FINDINGS
  c.eval.gradcam.images = 32
  return c


def get_sweep():
  return split_sweep(get_config())


def split_sweep(config) -> dict:
  """The variants: config's own split (by patient) and the same split by image."""
  split = config.data.split.to_dict()
  return {
    "patient_split": {},
    "image_split": {"data.split": {**split, "by": "image"}},
  }


def get_report():
  necklace = "gradcam/all/peak_within_4px_of_necklace"
  return dict(
    baseline="patient_split",
    claim="patient overlap between training and test sets inflates test performance.",
    columns=[
      ("test macro AUROC", "macro/auroc"),
      ("patients in train & test", "audit/train&test/patients"),
      ("Grad-CAM peak within 4 px of necklace", necklace),
      ("necklace zone share (chance)", "gradcam/all/necklace_share_within_4px"),
    ],
    figure=["macro/auroc", necklace],
    expect={
      "image_split": [("macro/auroc", "higher"), ("delta_auroc", "higher"), (necklace, "higher")]
    },
  )
