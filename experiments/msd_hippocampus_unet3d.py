"""3D U-Net on MSD Task04 hippocampus (anterior / posterior), configured by hand: the baseline the
planned experiments/msd_hippocampus.py is measured against (README, "3D segmentation").

  ./launch.sh train experiments/msd_hippocampus_unet3d.py --workdir=W \
      --config.data.root=../shared/data/msd_task04_hippocampus
  python -m mdx.main --config=experiments/msd_hippocampus_unet3d.py --workdir=W --mode=predict \
      --input=SCANS --output=OUT

Sized for a shared 2-core CPU (base width 8, 32x48x32 patches covering most of a ~35x51x35 scan);
on a GPU raise model.base_width to 32 and train.steps. Every choice the planner would make, and
nnU-Net's recipe (SGD with a poly schedule, deep supervision, its augmentations, test-time
mirroring, post-processing), is set by hand here to what this experiment used before plans.
"""

from mdx.config import defaults


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
  c.data.spacing = "native"
  c.data.augment = None
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
  c.model.deep_supervision = False
  c.train.batch_size = 4
  c.train.steps = 1200
  c.train.schedule = "cosine"
  c.train.log_every = 20
  c.train.checkpoint_every = 300
  c.eval.batch_size = 4
  c.eval.split = "validation"
  c.eval.examples = 4
  c.eval.mirror = False
  c.eval.postprocess = False
  return c
