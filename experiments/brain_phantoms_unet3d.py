"""The built-in 3D demo: a small U-Net on four-channel brain phantoms with BraTS-style tumours.

./launch.sh train experiments/brain_phantoms_unet3d.py --workdir=W

Planned from the phantoms' fingerprint (mdx.data.volume.plan) and trained with the segmentation
defaults (nnU-Net's recipe), within a small memory budget so that it trains in minutes on a CPU.
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
  c.data.foreground_rate = 0.5
  c.data.plan.memory_gb = 0.05  # a demo's budget: 32^3 patches at base width 8
  c.model.base_width = 8
  c.model.name = "unet3d"
  c.model.norm = "batch"
  c.train.steps = 300
  c.train.log_every = 20
  c.eval.examples = 4
  return c
