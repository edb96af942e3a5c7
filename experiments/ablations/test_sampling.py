"""Test-set sampling for rare findings: a random test set vs test-first with 50% positives.

  ./launch.sh sweep experiments/ablations/test_sampling.py \
      --workdir=/tmp/mdx/ablation_test_sampling --results_page=docs/ablations.md

Four findings at their NIH prevalences (2-5%). 'random' (the baseline) draws 5% of the patients
for test and 5% for validation; 'test_first' samples the test set first, then validation, each
about 5% of the films with at least 50% of them positive for one of the findings (the course's
recipe; mdx.data.splits.test_first_split). The table gives each finding's test positives and the
width of its AUROC's 95% CI (patient bootstrap); it also shows what the recipe costs: the positive
labels left for training. The paired AUROC comparison can only use the few test films both
samplings chose.
"""

import os

from mdx.config import load_experiment

SEEDS = (0, 1, 2)
FINDINGS = ("Cardiomegaly", "Edema", "Emphysema", "Pneumothorax")  # NIH: 2.5%, 2%, 2%, 5%

_base = load_experiment(os.path.join(os.path.dirname(__file__), "..", "ablation_phantoms.py"))


def get_config():
  c = _base.get_config()
  c.data.num_patients = 2000
  c.data.split = dict(by="patient", test=0.05, val=0.05)
  c.data.findings = FINDINGS
  return c


def get_sweep():
  first = {"by": "test_first", "test_size": 0.05, "val_size": 0.05, "min_positive_share": 0.5}
  return {"random": {}, "test_first": {"data.split": first}}


def get_report():
  width = [(f"CI width {f}", f"{f}/auroc/ci_width") for f in FINDINGS]
  return dict(
    baseline="random",
    claim=(
      "a test set sampled with a minimum share of positives gives tighter intervals for rare "
      "findings than a random one."
    ),
    columns=[
      ("test positives per finding", "macro/n_positive"),
      *width,
      ("training positives", "split/train/positives"),
    ],
    figure=[key for _, key in width[:3]],
    expect={"test_first": [(key, "lower") for _, key in width]},
  )
