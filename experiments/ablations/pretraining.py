"""What pretraining buys on small data: from scratch vs fine-tune all vs the last block vs the head.

  ./launch.sh train experiments/pretrain_phantoms.py --workdir=/tmp/mdx/pretrain_phantoms
  ./launch.sh sweep experiments/ablations/pretraining.py --workdir=/tmp/mdx/ablation_pretraining

Each variant is experiments/finetune_phantoms.py with one change; the table reports test mean
AUROC (95% CI by patient bootstrap) and the steps to reach 95% of the best validation AUROC.
From scratch trains with a higher learning rate (the one the pretraining used) so it is not
handicapped by the fine-tuning rate.
"""

import os

from mdx.config import load_experiment

_base = load_experiment(os.path.join(os.path.dirname(__file__), "..", "finetune_phantoms.py"))


def get_config():
  return _base.get_config()


def get_sweep():
  return {
    "from_scratch": {"model.init_from": "", "model.freeze": "none", "train.lr": 1e-3},
    "finetune_all": {"model.freeze": "none"},
    "finetune_last_block": {"model.freeze": "from:block4"},
    "head_only": {"model.freeze": "head", "train.lr": 1e-3},
  }
