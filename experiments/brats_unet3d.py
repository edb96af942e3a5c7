"""3D U-Net on BraTS 2018-2021 (flair, t1, t1ce, t2), the three nested tumour regions.

  ./launch.sh train experiments/brats_unet3d.py --workdir=W --config.data.root=BRATS_FOLDER
  python -m mdx.main --config=experiments/brats_unet3d.py --workdir=W --mode=predict \
      --input=CASE_FOLDERS --output=OUT

data.label_mode='regions' trains whole tumour / tumour core / enhancing tumour with sigmoid outputs
(the BraTS evaluation regions); 'classes' trains the four labels with softmax (model.num_classes
follows the label mode).
Planned from the fingerprint of the training cases (mdx.data.volume.plan: spacing, patch, batch,
network) and trained with the segmentation defaults (nnU-Net's recipe) on a GPU or TPU; only the
normalisation is set: the scans are skull-stripped, so statistics over the brain alone.
"""

from mdx.config import defaults


def get_config():
  c = defaults("segmentation")
  c.data.source = "brats"
  c.data.root = ""
  c.data.label_mode = "regions"
  c.data.standardize = "nonzero"  # skull-stripped: statistics over the brain only
  c.data.workers = 4
  c.model.name = "unet3d"
  c.model.dtype = "bfloat16"
  c.train.steps = 40000
  c.train.checkpoint_every = 2000
  return c
