"""What U-Net width buys on the brain phantoms: base_width 4 vs 8 vs 16 (3D segmentation sweep).

  ./launch.sh sweep experiments/ablations/unet_width.py --workdir=/tmp/mdx/ablation_unet_width

Each variant is experiments/brain_phantoms_unet3d.py with one change; the table reports the test
mean Dice and per-region Dice (whole tumour, tumour core, enhancing), the best validation Dice and
the steps to reach 95% of it.
"""

import os

from mdx.config import load_experiment

_base = load_experiment(os.path.join(os.path.dirname(__file__), "..", "brain_phantoms_unet3d.py"))


def get_config():
  return _base.get_config()


def get_sweep():
  return {f"width_{w}": {"model.base_width": w} for w in (4, 8, 16)}
