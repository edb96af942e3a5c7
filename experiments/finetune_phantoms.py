"""Fine-tuning a pretrained backbone on a small phantom set (120 patients, seed 0).

config.model.init_from is the pretraining run's workdir (experiments/pretrain_phantoms.py) or an
imported checkpoint (python -m mdx.models.import_weights); config.model.freeze picks what trains:
'none', 'head', or 'from:block4' (the last dense block, the final norm and the head).

  ./launch.sh train experiments/finetune_phantoms.py --workdir=/tmp/mdx/finetune_phantoms \
      --config.model.init_from=/tmp/mdx/pretrain_phantoms --config.model.freeze=from:block4
"""

from mdx.config import defaults

PRETRAINED = "/tmp/mdx/pretrain_phantoms"


def get_config():
  c = defaults()
  c.seed = 0
  c.data.source = "phantoms"
  c.data.num_patients = 120
  c.data.image_size = 64
  c.data.split = dict(by="patient", test=0.25, val=0.2)
  c.data.augment = "chest_xray"
  c.data.standardize = "per_image"
  c.data.workers = 1
  c.model.name = "densenet121"  # must be the pretrained architecture
  c.model.num_classes = 14
  c.model.init_from = PRETRAINED
  c.model.freeze = "none"
  c.train.batch_size = 32
  c.train.steps = 300
  c.train.lr = 3e-4
  c.train.schedule = "cosine"
  c.train.log_every = 10
  c.train.checkpoint_every = 25  # also the validation interval: steps-to-reach resolution
  c.eval.bootstrap = 200
  return c
