"""The course's lesson ablations on real films: the 856-image NIH ChestX-ray14 sample at 64 px.

experiments/ablations/{leakage,imbalance}_nih.py start from this config: the real sample of
experiments/nih_64px.py (219 patients, up to 10 films each, so a split by image puts the same
patient in training and test) trained exactly as the phantom ablations train
(experiments/ablation_phantoms.py: the tiny DenseNet, its rate and evaluation), so the real-data
tables sit beside the phantom ones with the films changed, and 600 steps instead of 200: ~35 epochs
of the ~560 training films, long enough for a model to start remembering patients (at 200 steps it
had not learned the findings either: test macro AUROC 0.64).

This is a small sample (a test set of ~170 films holds 5-30 positives per finding), so the tables
carry wide intervals; they show what a lesson looks like on real films at this size, and the same
files scale to the full NIH release by --config.data.metadata/images and train's overrides.
"""

import os

from mdx.config import load_experiment

_films = load_experiment(os.path.join(os.path.dirname(__file__), "nih_64px.py"))


def get_config():
  c = _films.get_config()
  # experiments/ablation_phantoms.py's training, but for the steps
  c.model.name = "densenet_tiny"
  c.train.steps = 600
  c.train.lr = 2e-3
  c.train.log_every = 50
  c.train.checkpoint_every = 150  # also the validation interval
  c.eval.examples = 0  # no example figure per run: a sweep makes dozens of runs
  c.eval.gradcam.findings = ()
  c.eval.gradcam.overlays = 0
  return c
