"""The fingerprint of an experiment's 3D dataset and the plan derived from it, without training:

  python -m mdx fingerprint --config=EXPERIMENT [--output=FILE] [--plan_output=FILE] [--overwrite]
  (./launch.sh fingerprint --config=EXPERIMENT ...)

Builds config.data's volume source and splits it as a run does (every case checked under
config.data.on_error, mdx.data.prepare; the training cases plan, as in a run), reads each case once
into its fingerprint (mdx.data.volume.fingerprint: spacing, shape, class volumes, foreground
intensities), cached beside the record check's cache (MDX_CHECK_CACHE, default
~/.cache/mdx/checks; empty turns both off) so a second call reads no scan, and prints a summary
and the plan (mdx.data.volume.plan: spacing, patch x batch, pooling and widths, normalisation, each
with why). The plan is made as a run of the experiment would make it: the experiment's modality
(config.data.modality, else the source's), its memory budget (config.data.plan.memory_gb, else the
backend's default) and the fields it sets itself (data.spacing, data.patch_size, train.batch_size,
model.base_width / max_width / strides / depth, data.standardize) as overrides.

--output writes the fingerprint and --plan_output the plan as JSON, whole or not at all, and never
over a file mdx did not write unless --overwrite (mdx.outputs). A user's mistake (not a volume
source, a missing folder, an impossible override) is one line `error: ...` and exit status 2.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
COMMAND = "fingerprint"


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", None, "experiment file (its config.data)", lock_config=False
  )
  flags.DEFINE_string("output", None, "JSON file for the fingerprint (default: print only)")
  flags.DEFINE_string("plan_output", None, "JSON file for the plan (default: print only)")
  flags.DEFINE_bool("overwrite", False, "replace output files mdx did not write")
  flags.mark_flags_as_required(["config"])


def run(config, progress: bool = True) -> tuple[dict, dict]:
  """(fingerprint, plan) of a resolved config's volume dataset (the module docstring)."""
  import jax

  from mdx.data import prepare, sources
  from mdx.data.volume import plan

  sources.spec(config.data.source, sources.VOLUME)  # a 2D source: one line naming the choices
  # the training cases of the run's split, as the run plans from them
  dataset = prepare.prepare_dataset(config.data, config.seed, sources.VOLUME)
  return plan.plan_dataset(
    config, dataset.source, dataset.splits["train"], jax.default_backend(), progress=progress
  )


def _folder(path: str, overwrite: bool):
  """(OutputFolder of path's folder, file name), the file claimed (refused before any work)."""
  from mdx import outputs

  path = os.path.abspath(os.path.expanduser(path))
  folder = outputs.OutputFolder(os.path.dirname(path), COMMAND, overwrite=overwrite)
  name = os.path.basename(path)
  folder.claim(files=[name])
  return folder, name


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --output=FILE")
  from mdx import config as config_lib
  from mdx.data.volume import fingerprint, plan

  wanted = [(FLAGS.output, fingerprint.write, 0), (FLAGS.plan_output, plan.write, 1)]
  # claimed before the dataset is read: a refusal costs no reading
  targets = [
    (*_folder(path, FLAGS.overwrite), write, which) for path, write, which in wanted if path
  ]
  results = run(config_lib.resolve(FLAGS.config))
  print("\n".join(fingerprint.summary(results[0])))
  print("plan:")
  print("\n".join(f"  {line}" for line in plan.describe(results[1])))
  for folder, name, write, which in targets:
    with folder:
      write(results[which], folder.path(name))
      folder.commit()
    print(f"wrote {os.path.join(folder.folder, name)}")
  return 0
