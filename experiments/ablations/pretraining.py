"""What pretraining buys on small data: from scratch vs fine-tune all vs the last block vs the head.

  ./launch.sh sweep experiments/ablations/pretraining.py --workdir=/tmp/mdx/ablation_pretraining

The sweep first pretrains the backbone on 1500 other phantom patients (experiments/
pretrain_phantoms.py) into DIR/pretrain, a prerequisite run (get_prerequisites below; trained once,
skipped when finished), then fine-tunes from it: each variant is experiments/finetune_phantoms.py
with model.init_from at that run ('{pretrain}') and one change. The table reports test mean AUROC
(95% CI by patient bootstrap) and the steps to reach 95% of the best validation AUROC. From scratch
trains with a higher learning rate (the one the pretraining used) so it is not handicapped by the
fine-tuning rate. The command line's --config.<field> overrides reach the pretraining too, so the
two models always match; a smoke test:

  ./launch.sh sweep experiments/ablations/pretraining.py --workdir=/tmp/mdx/pretraining_smoke \
      --config.model.name=densenet_small --config.data.image_size=32 --config.data.num_patients=40 \
      --config.train.steps=2 --config.train.batch_size=8 --config.eval.bootstrap=10
"""

import os

from mdx.config import load_experiment

_here = os.path.dirname(__file__)
_base = load_experiment(os.path.join(_here, "..", "finetune_phantoms.py"))
_pretrain = load_experiment(os.path.join(_here, "..", "pretrain_phantoms.py"))


def get_prerequisites():
  return {"pretrain": _pretrain.get_config()}


def get_config():
  c = _base.get_config()
  c.model.init_from = "{pretrain}"  # the prerequisite run's folder, DIR/pretrain
  return c


def get_sweep():
  return {
    "from_scratch": {"model.init_from": "", "model.freeze": "none", "train.lr": 1e-3},
    "finetune_all": {"model.freeze": "none"},
    "finetune_last_block": {"model.freeze": "from:block4"},
    "head_only": {"model.freeze": "head", "train.lr": 1e-3},
  }
