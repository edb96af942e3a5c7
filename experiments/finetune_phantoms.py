"""Fine-tuning a pretrained backbone on a small phantom set (120 patients, seed 0).

config.model.init_from says where the backbone comes from, by a relative or an absolute path: the
pretraining run's workdir (experiments/pretrain_phantoms.py: its best checkpoint by that run's own
train.best_metric), one of its checkpoints/<step> folders, a bundle, or weights imported with
python -m mdx import_weights. The head is always new (14 findings). config.model.freeze picks
what trains: 'none', 'head', or 'from:<stage>' for any stage of the model (DenseNet-121's stem,
block1, transition1, ..., block4, norm_final, head): 'from:block4' trains the last dense block, the
final norm and the head.

  ./launch.sh train experiments/pretrain_phantoms.py --workdir=runs/pretrain_phantoms
  ./launch.sh train experiments/finetune_phantoms.py --workdir=runs/finetune_phantoms \
      --config.model.init_from=runs/pretrain_phantoms --config.model.freeze=from:block4

From Keras's ImageNet DenseNet-121 (a file you have; its stem, made for 3 channels, is summed over
them for the 1-channel phantoms, which gives a gray image the same response):

  python -m mdx import_weights --model=densenet121 --source=keras_h5 \
      --input=densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 --output=weights/dn121
  ./launch.sh train experiments/finetune_phantoms.py --workdir=runs/ft \
      --config.model.init_from=weights/dn121 --config.model.freeze=head
"""

import os

from mdx.config import load_experiment

PRETRAINED = "runs/pretrain_phantoms"  # relative to where the run starts (launch.sh: the repo)

# The pretraining's config: the same model and the same image handling (size, standardisation,
# augmentation), which fine-tuning needs, on other patients.
_pretrain = load_experiment(os.path.join(os.path.dirname(__file__), "pretrain_phantoms.py"))


def get_config():
  c = _pretrain.get_config()
  c.seed = 0  # other phantom patients than the pretraining's (seed 1)
  c.data.num_patients = 120
  c.data.split.test = 0.25
  c.data.split.val = 0.2
  c.model.init_from = PRETRAINED
  c.train.steps = 300
  c.train.lr = 3e-4
  c.train.checkpoint_every = 25  # also the validation interval: steps-to-reach resolution
  return c
