"""3D U-Net benchmark beside MONAI's BasicUNet: train-step and forward patches/s, in one run.

  python benchmarks/unet3d.py --patch=64,64,64 --batch=2 --base_width=16 --norm=batch \
      --variants=mdx,slices,native_conv --monai

Both networks have five levels (BasicUNet's fixed depth): two 3x3x3 convolution-norm-ReLU layers
per level with widths base_width * (1, 2, 4, 8, 16), 2x max pooling down, 2x transposed
convolutions up, skip connections by concatenation and a 1x1x1 convolution to the logits;
convolutions carry a bias only without normalisation. One difference remains: BasicUNet's last
up-convolution keeps 2 * base_width channels where mdx halves them to base_width, so MONAI's
network has slightly more parameters (the table shows both counts). The train step is SGD on the
softmax cross-entropy of every voxel; timing as benchmarks/classifiers.py (turns, median round,
paired ratios to the last contestant: MONAI).

Variants:
  mdx               conv_impl='auto' (on CPU, 3x3x3 convolutions as one 2D convolution with the
                    depth offsets' kernels stacked up to 16 output channels, three 2D ones
                    on depth slices above), mdx's XLA options;
  slices            every 3x3x3 convolution as three 2D ones on depth slices;
  native_conv       XLA's own 3D convolution;
  xla_cpu_defaults  mdx's convolutions with XLA's default options.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import optax
import race  # benchmarks/race.py: this script's folder is on sys.path
from absl import app, flags

from mdx import runtime
from mdx.models import registry
from mdx.models.unet3d import NORMS

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags, defined only when this runs as a program."""
  flags.DEFINE_list("patch", ["64", "64", "64"], "patch D,H,W (multiples of 16)")
  flags.DEFINE_integer("batch", 2, "patches per step")
  flags.DEFINE_integer("base_width", 16, "channels of the first level")
  flags.DEFINE_enum("norm", "batch", list(NORMS), "normalisation after each convolution")
  flags.DEFINE_integer("classes", 3, "output classes")
  flags.DEFINE_string("dtype", "float32", "mdx compute dtype (params stay float32)")
  flags.DEFINE_integer("steps", 1, "steps per timing")
  flags.DEFINE_integer("repeats", 5, "rounds of timings; the median is reported")
  flags.DEFINE_bool("monai", True, "also time MONAI's BasicUNet")
  flags.DEFINE_integer("threads", 0, "torch threads (0: one per CPU core)")
  flags.DEFINE_list("variants", ["mdx"], "mdx variants (see the module docstring)")


# variant -> (race.VARIANTS variant, UNet3D kwargs)
VARIANTS = {
  "mdx": ("mdx", {}),
  "slices": ("mdx", {"conv_impl": "slices"}),
  "native_conv": ("mdx", {"conv_impl": "native"}),
  "xla_cpu_defaults": ("xla_cpu_defaults", {}),
}


def mdx_contestant(patch, batch, width, norm, classes, dtype, variant="mdx") -> dict:
  bench_variant, kwargs = VARIANTS[variant]
  model = registry.create(
    "unet3d", num_classes=classes, dtype=dtype, depth=5, base_width=width, norm=norm, **kwargs
  )
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, *patch, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, classes, (batch, *patch)), jnp.int32)
  ce = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  c = race.jax_contestant(model, x, y, ce, bench_variant, model="unet3d")
  return dict(c, variant=variant)


def monai_contestant(patch, batch, width, norm, classes, threads) -> dict:
  import monai
  import torch
  from monai.networks.nets import BasicUNet

  torch_norm = {
    "batch": ("batch", {}),
    "group": ("group", {"num_groups": 8}),  # mdx: min(8, width) groups
    "instance": ("instance", {"affine": True}),
    "none": None,
  }[norm]
  model = BasicUNet(
    spatial_dims=3,
    in_channels=1,
    out_channels=classes,
    features=(width, 2 * width, 4 * width, 8 * width, 16 * width, width),
    act="relu",
    norm=torch_norm,
    bias=norm == "none",
    dropout=0.0,
    upsample="deconv",
  )
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(batch, 1, *patch, generator=gen)
  y = torch.randint(0, classes, (batch, *patch), generator=gen)
  c = race.torch_contestant(model, x, y, torch.nn.CrossEntropyLoss(), threads, model="unet3d")
  return dict(c, variant=f"monai {monai.__version__}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --patch=64,64,64")
  unknown = [v for v in FLAGS.variants if v not in VARIANTS]
  if unknown:
    raise ValueError(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)}")
  if len(FLAGS.patch) != 3 or not all(p.isdigit() and int(p) % 16 == 0 for p in FLAGS.patch):
    raise ValueError(f"--patch={','.join(FLAGS.patch)}: give D,H,W, each a multiple of 16")
  patch = tuple(map(int, FLAGS.patch))
  threads = FLAGS.threads or os.cpu_count()
  args = (patch, FLAGS.batch, FLAGS.base_width, FLAGS.norm, FLAGS.classes)
  contestants = [mdx_contestant(*args, FLAGS.dtype, v) for v in FLAGS.variants]
  if FLAGS.monai:
    contestants.append(monai_contestant(*args, threads))
  race.race(contestants, FLAGS.batch, FLAGS.steps, FLAGS.repeats)
  print(
    f"patch={patch} batch={FLAGS.batch} base_width={FLAGS.base_width} norm={FLAGS.norm} "
    f"dtype={FLAGS.dtype} torch threads={threads if FLAGS.monai else '-'} "
    f"malloc: {runtime.allocator()}"
  )
  print(
    f"{'variant':<18}{'params':>11}{'compile s':>11}{'fwd patch/s':>13}{'vs monai':>10}"
    f"{'train patch/s':>15}{'vs monai':>10}"
  )
  for c in contestants:
    fwd = f"{c['fwd_vs_last']:10.2f}" if FLAGS.monai else f"{'-':>10}"
    train = f"{c['vs_last']:10.2f}" if FLAGS.monai else f"{'-':>10}"
    print(
      f"{c['variant']:<18}{c['params']:>11,}{c['compile_s']:>11.1f}{c['forward']:>13.2f}{fwd}"
      f"{c['train']:>15.2f}{train}",
      flush=True,
    )


if __name__ == "__main__":
  from mdx import commands

  define_flags()
  commands.run_program(main)
