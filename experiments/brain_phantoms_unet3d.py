"""The built-in 3D demo: a small U-Net on four-channel brain phantoms with BraTS-style tumours.

./launch.sh train experiments/brain_phantoms_unet3d.py --workdir=W
"""

from mdx.config import defaults


def get_config():
  c = defaults("segmentation")
  c.data.source = "brain_phantoms"
  c.data.num_cases = 40
  c.data.shape = (32, 32, 32)
  c.data.label_mode = "regions"
  c.data.split.test = 0.2
  c.data.split.val = 0.2
  c.data.patch_size = (16, 16, 16)
  c.data.foreground_rate = 0.5
  c.data.flip_axes = (0,)
  c.data.intensity_scale = 0.1
  c.data.intensity_shift = 0.1
  c.model.name = "unet3d"
  c.model.depth = 3
  c.model.base_width = 8
  c.model.norm = "batch"
  c.train.batch_size = 4
  c.train.steps = 300
  c.train.lr = 3e-3
  c.train.log_every = 20
  c.eval.batch_size = 4
  c.eval.examples = 4
  return c
