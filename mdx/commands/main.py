"""A run's command: train, eval, export or predict.

  python -m mdx main --config=experiments/X.py --workdir=DIR --mode=train|eval|export|predict
  (./launch.sh train|eval|export CONFIG --workdir=DIR, and the older python -m mdx.main)

Overrides: --config.train.steps=20 --config.data.image_size=64 ...  A run writes its resolved config
into the workdir (WORKDIR/config.json), and every later command on that workdir uses it, not the
experiment file's: train again resumes from the latest checkpoint with the run's config, and may
change only eval.*, data.workers, data.prefetch, train.steps (extending the run: the learning-rate
schedule is laid over the new count), train.log_every, train.keep_last and train.async_checkpoints;
eval and export only eval.*, data.workers and data.prefetch. An override of anything else the run
was trained with is an error naming both values. predict reads only WORKDIR/bundle and needs no
--config.
A user's mistake (a config typo, a missing data root) is one line `error: ...` and exit status 2
(mdx.cli); --debug or MDX_DEBUG=1 shows its traceback.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from mdx import config as config_lib
from mdx import runtime
from mdx.runtime import quiet_library_logs
from mdx.train.run import run  # the flag-free API behind this command line

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment file with get_config() (not needed by --mode=predict). On a workdir that holds a "
    "run, every mode uses the run's WORKDIR/config.json: only overrides of eval.* and the loader "
    "(and, when train resumes it, train.steps and the logging and checkpoint-keeping settings) "
    "apply over it.",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the report.")
  flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval", "export", "predict"],
    "train (then report and bundle the best checkpoint), eval (report and bundle the best "
    "checkpoint again), export (a bundle of checkpoint --step), or predict (the run's bundle on "
    "--input, written to --output; needs no training data).",
  )
  flags.DEFINE_string("input", None, "predict: a file, a folder or a CSV list of files.")
  flags.DEFINE_string(
    "output", None, "predict: the folder for predictions; export: the bundle folder."
  )
  flags.DEFINE_integer("step", None, "export: the checkpoint step (default: the best).")
  flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace files mdx did not write where this command writes (export: the bundle folder and its "
    "-report; eval and train: WORKDIR/bundle and report; predict: --output). Without it such a "
    "file is refused in one line before any work; a user's other files there are always kept.",
  )
  flags.DEFINE_bool(
    "jax_distributed",
    False,
    "Join a multi-host run found by jax (TPU VM, SLURM); ./launch.sh local needs no flag.",
  )
  flags.DEFINE_string(
    "accelerator",
    None,
    "auto | cpu | cuda | tpu: stop with an error unless JAX runs on it (default "
    "$MDX_ACCELERATOR, which ./launch.sh sets to the accelerator it detects).",
  )
  flags.mark_flags_as_required(["workdir"])  # --config too, except for --mode=predict (main)


def main(argv):
  quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(
      f"unexpected arguments {argv[1:]}; overrides look like --config.train.steps=20"
    )
  mode = FLAGS.mode
  if FLAGS.config is None and mode != "predict":
    raise app.UsageError(
      f"--mode={mode} needs --config=experiments/X.py (only --mode=predict runs without one)"
    )
  runtime.join_processes(FLAGS.jax_distributed)  # ./launch.sh local N, a TPU VM or SLURM
  runtime.require_accelerator(FLAGS.accelerator)
  config, overrides = None, None
  if FLAGS.config is not None and mode != "predict":  # predict reads only the run's bundle
    # A config mistake raises ValueError here, before anything is built: one line (run_program).
    config = config_lib.resolve(FLAGS.config)
    # The fields typed as --config.X=...: on a workdir that holds a run, those that would change
    # it are refused (train resuming, eval, export); the experiment file's other values yield.
    overrides = dict(config_flags.get_override_values(flags.FLAGS["config"]))
  from mdx.train import loop

  try:
    out = run(
      config,
      FLAGS.workdir,
      mode,
      FLAGS.input,
      FLAGS.output,
      FLAGS.step,
      overrides,
      overwrite=FLAGS.overwrite,
    )
  except loop.Preempted as e:  # a clean stop: the checkpoint is saved, a restart resumes
    print(f"mdx: {e}", flush=True)
    sys.exit(0)
  if out:
    print(f"mdx: {mode} done; see {out}", flush=True)
