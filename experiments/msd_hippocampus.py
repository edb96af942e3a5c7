"""MSD Task04 hippocampus (anterior / posterior), planned from the data as nnU-Net plans it.

  ./launch.sh train experiments/msd_hippocampus.py --workdir=W --config.data.root=DIR
  ./launch.sh predict --bundle=W/bundle --input=SCANS --output=OUT

Nothing but the source and where it is: the fingerprint of the training cases decides spacing,
patch, batch, network and normalisation (WORKDIR/plan.json; `./launch.sh fingerprint
--config=experiments/msd_hippocampus.py --config.data.root=DIR` prints the plan without training),
and the segmentation defaults are nnU-Net's recipe (mdx.config). Any planned field can be set by
flag, e.g. --config.model.base_width=16 or --config.data.patch_size='(32,48,32)'.
"""

from mdx.config import defaults


def get_config():
  c = defaults("segmentation")
  c.data.source = "msd"
  c.data.root = ""
  c.data.cache = True  # 207 small cases stay in memory
  c.data.split.test = 0.0
  c.data.split.val = 0.2
  c.eval.split = "validation"
  c.train.steps = 3000  # ~35 min on 2 CPU cores (README, "3D segmentation")
  c.train.checkpoint_every = 250  # also the validation interval
  return c
