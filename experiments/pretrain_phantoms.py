"""Pretraining inside mdx: a backbone trained on a large phantom set, to be fine-tuned elsewhere.

The pretraining data are 1500 phantom patients drawn with seed 1; experiments/finetune_phantoms.py
fine-tunes on 120 other patients (seed 0), the small-data case where pretraining should pay off.
The run's workdir is the pretrained checkpoint: fine-tuning points config.model.init_from at it
(mdx.train.finetune restores the backbone of its best checkpoint by this run's train.best_metric,
and builds a new head); its checkpoints/<step> folders and its bundle/ work too.

  ./launch.sh train experiments/pretrain_phantoms.py --workdir=runs/pretrain_phantoms
  ./launch.sh train experiments/finetune_phantoms.py --workdir=runs/finetune_phantoms \
      --config.model.init_from=runs/pretrain_phantoms
"""

from mdx.config import defaults


def get_config():
  c = defaults()
  c.seed = 1
  c.data.source = "phantoms"
  c.data.num_patients = 1500
  c.data.image_size = 64
  c.data.split.test = 0.1
  c.data.split.val = 0.1
  c.data.augment = "chest_xray"
  c.data.workers = 1
  c.model.name = "densenet121"  # densenet_small: same stages, CPU-sized
  c.eval.bootstrap = 200
  return c
