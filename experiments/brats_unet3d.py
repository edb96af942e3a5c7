"""3D U-Net on BraTS 2018-2021 (flair, t1, t1ce, t2), the three nested tumour regions.

  ./launch.sh train experiments/brats_unet3d.py --workdir=W --config.data.root=BRATS_FOLDER
  python -m mdx.main --config=experiments/brats_unet3d.py --workdir=W --mode=predict \
      --input=CASE_FOLDERS --output=OUT

data.label_mode='regions' trains whole tumour / tumour core / enhancing tumour with sigmoid outputs
(the BraTS evaluation regions); 'classes' trains the four labels with softmax (set num_classes=4).
Sized for a GPU: 128^3 patches at base width 32 need about 20 GiB in float32.
"""

from mdx.config import defaults


def get_config():
  c = defaults("segmentation")
  c.seed = 0
  c.data.source = "brats"
  c.data.root = ""
  c.data.label_mode = "regions"
  c.data.standardize = "nonzero"  # skull-stripped: statistics over the brain only
  c.data.split = dict(by="patient", test=0.15, val=0.15)
  c.data.patch_size = (128, 128, 128)
  c.data.max_background = 0.95
  c.data.foreground_rate = 0.33
  c.data.flip_axes = (0,)  # left-right: tumours occur on either side
  c.data.rotate_degrees = 10.0
  c.data.intensity_scale = 0.1
  c.data.intensity_shift = 0.1
  c.data.workers = 4
  c.model.name = "unet3d"
  c.model.num_classes = 3
  c.model.depth = 5
  c.model.base_width = 32
  c.model.norm = "instance"
  c.model.dtype = "bfloat16"
  c.loss.name = "dice_ce"
  c.loss.ce_weight = 1.0
  c.train.batch_size = 2
  c.train.steps = 40000
  c.train.lr = 1e-3
  c.train.schedule = "warmup_cosine"
  c.train.warmup_steps = 500
  c.train.checkpoint_every = 2000
  c.train.best_metric = "val_dice"
  c.eval.batch_size = 2
  c.eval.overlap = 0.5
  c.eval.examples = 8
  return c
