"""The CPU-sized phantom classifier that the course's lesson ablations start from.

experiments/ablations/{leakage,imbalance,augmentation,test_sampling}.py each take this config,
choose their findings and data size, and change one thing per variant. A tiny DenseNet on 64 px
phantoms for 200 steps: one run takes about a minute on 2 CPU cores, so a sweep of variants x 3
seeds fits in minutes. The same files scale up by flag, e.g.
  ./launch.sh sweep experiments/ablations/leakage.py --workdir=DIR --seeds=0,1,2,3,4 \\
      --config.model.name=densenet121 --config.data.image_size=128 --config.train.steps=2000
"""

from mdx.config import defaults


def get_config():
  c = defaults()
  c.data.source = "phantoms"
  c.data.num_patients = 600
  c.data.image_size = 64
  c.data.split.test = 0.25
  c.data.workers = 1
  c.model.name = "densenet_tiny"
  c.train.steps = 200
  c.train.lr = 2e-3
  c.train.log_every = 50
  c.train.checkpoint_every = 50  # also the validation interval
  c.eval.bootstrap = 200
  c.eval.examples = 0  # no example figure per run: a sweep makes dozens of runs
  c.eval.gradcam.findings = ()  # the leakage ablation asks for Grad-CAM; the others need none
  c.eval.gradcam.overlays = 0
  return c
