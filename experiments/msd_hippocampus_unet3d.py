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

# Equal to the defaults, stated because this experiment is wrong with any other value.
PINNED = ("data.flip_axes",)


def get_config():
  c = defaults("segmentation")
  c.data.source = "msd"
  c.data.root = ""
  c.data.class_names = ("background", "anterior", "posterior")
  c.data.cache = True
  c.data.on_error = "raise"  # or "skip": drop unreadable/NaN cases, listed in the workdir
  c.data.standardize = (
    "per_channel"  # MRI crops: z-score per channel over the whole scan (nnU-Net's choice)
  )
  c.data.split.test = 0.0
  c.data.split.val = 0.2
  c.data.patch_size = (32, 48, 32)
  c.data.flip_axes = ()  # anterior/posterior are defined by direction: no flips
  c.data.rotate_degrees = 10.0
  c.data.intensity_scale = 0.1
  c.data.intensity_shift = 0.1
  c.model.name = "unet3d"
  c.model.depth = 3
  c.model.base_width = 8
  c.model.norm = "batch"
  c.model.conv_impl = "auto"
  c.loss.include_background = False
  c.train.batch_size = 4
  c.train.steps = 1200
  c.train.lr = 3e-3
  c.train.log_every = 20
  c.train.checkpoint_every = 300
  c.eval.batch_size = 4
  c.eval.split = "validation"
  c.eval.examples = 4
  return c
