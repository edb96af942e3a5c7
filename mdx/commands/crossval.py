"""k-fold cross-validation of a segmentation experiment and the ensemble of its folds.

  python -m mdx crossval --config=EXPERIMENT --workdir=DIR [--folds=5] [--config.FIELD=V]
  (./launch.sh crossval EXPERIMENT --workdir=DIR [--folds=5] ...)

Trains fold i of k into DIR/fold_i (config.data.split = kfold, fold i held out; an interrupted
cross-validation resumes: finished folds are kept, the interrupted one continues from its
checkpoint), pools the folds' out-of-fold metrics into DIR/crossval/ (metrics.json, results.md:
Dice, HD95 and NSD per fold and pooled) and writes DIR/bundle, the ensemble of the folds, whose
predict averages their probabilities (mdx.train.crossval). --config.<field>=value overrides the
experiment as for train. A user's mistake is one line `error: ...` and exit status 2 (mdx.cli),
before the first fold trains.
"""

from __future__ import annotations

import jax
from absl import flags
from ml_collections import config_flags

from mdx import commands, runtime
from mdx import config as config_lib
from mdx.train import crossval

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Segmentation experiment (--config.<field>=value overrides it).",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "Directory of the folds' runs, results and ensemble.")
  flags.DEFINE_integer("folds", 5, "Number of folds (k); each holds out one k-th of the cases.")
  flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace files in --workdir's crossval/ or bundle/ that mdx did not write.",
  )
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  path, overrides = commands.experiment_and_overrides(argv)
  module = config_lib.load_experiment(path)
  runtime.join_processes()  # a no-op unless started by ./launch.sh local N
  runtime.quiet_library_logs()
  runtime.require_accelerator()
  out = crossval.run_crossval(
    module,
    FLAGS.workdir,
    FLAGS.folds,
    overrides=overrides,
    command=commands.command_line("crossval", path),
    overwrite=FLAGS.overwrite,
  )
  if jax.process_index() == 0:
    print(open(f"{FLAGS.workdir}/{crossval.RESULTS}/results.md").read())
    print(f"ensemble bundle: {out['bundle']}")
