"""3D U-Net on MSD Task04 hippocampus (anterior / posterior), split by case into train and
validation.

  ./launch.sh train experiments/msd_hippocampus_unet3d.py --workdir=W \
      --config.data.root=../shared/data/msd_task04_hippocampus
  python -m mdx.main --config=experiments/msd_hippocampus_unet3d.py --workdir=W --mode=predict \
      --input=SCANS --output=OUT

Sized for a shared 2-core CPU (base width 8, 32x48x32 patches covering most of a ~35x51x35 scan);
on a GPU raise model.base_width to 32 and train.steps.
"""

from mdx.config import defaults


def get_config():
  c = defaults("segmentation")
  c.seed = 0
  c.data.source = "msd"
  c.data.root = ""
  c.data.class_names = ("background", "anterior", "posterior")
  c.data.cache = True
  c.data.on_error = "raise"  # or "skip": drop unreadable/NaN cases, listed in the workdir
  c.data.standardize = (
    "per_channel"  # MRI crops: z-score per channel over the whole scan (nnU-Net's choice)
  )
  c.data.split = dict(by="patient", test=0.0, val=0.2)
  c.data.patch_size = (32, 48, 32)
  c.data.max_background = 0.95
  c.data.foreground_rate = 0.33
  c.data.flip_axes = ()  # anterior/posterior are defined by direction: no flips
  c.data.rotate_degrees = 10.0
  c.data.intensity_scale = 0.1
  c.data.intensity_shift = 0.1
  c.data.workers = 0
  c.model.name = "unet3d"
  c.model.num_classes = 3
  c.model.depth = 3
  c.model.base_width = 8
  c.model.norm = "batch"
  c.model.conv_impl = "auto"
  c.loss.name = "dice_ce"
  c.loss.ce_weight = 1.0
  c.loss.include_background = False
  c.train.batch_size = 4
  c.train.steps = 1200
  c.train.lr = 3e-3
  c.train.schedule = "cosine"
  c.train.log_every = 20
  c.train.checkpoint_every = 300
  c.train.best_metric = "val_dice"
  c.eval.batch_size = 4
  c.eval.overlap = 0.5
  c.eval.split = "validation"
  c.eval.examples = 4
  return c
