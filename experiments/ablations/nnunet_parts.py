"""What each part of nnU-Net's recipe brings on MSD hippocampus (README, "3D segmentation").

  ./launch.sh sweep experiments/ablations/nnunet_parts.py --workdir=/tmp/mdx/nnunet_parts \
      --config.data.root=DIR

'planned' is experiments/msd_hippocampus.py as it is; 'no_deep_supervision' trains the same plan
with the full-resolution output alone in the loss; 'no_augmentation' without nnU-Net's spatial
and intensity augmentations (the left-right mirror stays: it is the source's, not nnU-Net's).
Test-time mirroring and post-processing need no training of their own: every run's report
measures its validation Dice plain, mirrored and post-processed ("Inference, part by part").
"""

import os

from mdx.config import load_experiment

_here = os.path.dirname(__file__)
_base = load_experiment(os.path.join(_here, "..", "msd_hippocampus.py"))


def get_config():
  return _base.get_config()


def get_sweep():
  return {
    "planned": {},
    "no_deep_supervision": {"model.deep_supervision": False},
    "no_augmentation": {"data.augment": None},
  }
