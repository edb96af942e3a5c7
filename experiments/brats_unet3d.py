"""3D U-Net on BraTS 2018-2021 (flair, t1, t1ce, t2), the three nested tumour regions.

  ./launch.sh train experiments/brats_unet3d.py --workdir=W --config.data.root=BRATS_FOLDER
  python -m mdx.main --config=experiments/brats_unet3d.py --workdir=W --mode=predict \
      --input=CASE_FOLDERS --output=OUT

data.label_mode='regions' trains whole tumour / tumour core / enhancing tumour with sigmoid outputs
(the BraTS evaluation regions); 'classes' trains the four labels with softmax (model.num_classes
follows the label mode).
Sized for a GPU: 128^3 patches at base width 32 need about 20 GiB in float32.
"""

from mdx.config import defaults

# Equal to the defaults, stated because this experiment is wrong with any other value.
PINNED = ("data.standardize",)


def get_config():
  c = defaults("segmentation")
  c.data.source = "brats"
  c.data.root = ""
  c.data.label_mode = "regions"
  c.data.standardize = "nonzero"  # skull-stripped: statistics over the brain only
  c.data.patch_size = (128, 128, 128)
  c.data.flip_axes = (0,)  # left-right: tumours occur on either side
  c.data.rotate_degrees = 10.0
  c.data.intensity_scale = 0.1
  c.data.intensity_shift = 0.1
  c.data.workers = 4
  c.model.name = "unet3d"
  c.model.depth = 5
  c.model.base_width = 32
  c.model.norm = "instance"
  c.model.dtype = "bfloat16"
  c.train.batch_size = 2
  c.train.steps = 40000
  c.train.schedule = "warmup_cosine"
  c.train.warmup_steps = 500
  c.train.checkpoint_every = 2000
  c.eval.batch_size = 2
  return c
