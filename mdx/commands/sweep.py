"""Run every variant of an ablation, each with several seeds, and report them together.

  python -m mdx sweep --config=experiments/ablations/X.py --workdir=DIR [--config.train.steps=2]
      [--only=a,b] [--seeds=0,1,2] [--results_page=docs/ablations.md] [--paired_resamples=N]
  (./launch.sh sweep experiments/ablations/X.py --workdir=DIR ...)

--config is the ablation file (get_config(), get_sweep(), ...; see mdx.train.sweep), and its
overrides are train's: --config.<field>=value changes the base config that get_config() returns
(ml_collections checks the field and parses the value by its type), the variants apply on top of
it, and the same overrides reach every prerequisite run (get_prerequisites()), so
--config.train.steps=2 makes a smoke test of a whole sweep. A user's mistake (a missing ablation
file, an unknown field, a value a run cannot use, a results.md of your own in --workdir) is one
line `error: ...` and exit status 2 (mdx.cli), before the first run trains; --overwrite replaces
such a file.
"""

from __future__ import annotations

import os

import jax
from absl import flags
from ml_collections import config_flags

from mdx import commands, runtime
from mdx.train import sweep

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Ablation file with get_config() (the base; --config.<field>=value overrides it) and "
    "get_sweep() (the variants, applied on top).",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "Directory holding one workdir per variant.")
  flags.DEFINE_list("only", None, "Run only these variants (default: all).")
  flags.DEFINE_float("reach", 0.95, "Report the first step reaching this share of the best.")
  flags.DEFINE_list(
    "seeds", None, "Seeds per variant, e.g. 0,1,2 (default: the ablation file's SEEDS)."
  )
  flags.DEFINE_string(
    "results_page", None, "Also put the ablation report into this page, e.g. docs/ablations.md."
  )
  flags.DEFINE_integer(
    "paired_resamples", 1000, "Patient resamples of the paired comparison against the baseline."
  )
  flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace results.md, results.json or ablation.* in --workdir that mdx did not write (without "
    "it they are refused before the first run trains).",
  )
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  # The user's mistakes first, before any process joins or device starts (one line: mdx.cli).
  path, overrides = commands.experiment_and_overrides(argv)
  module = sweep.load_module(path)
  with sweep.image_split_switch(module):  # every run checked before any trains (or joins)
    planned = sweep.prepare(
      module,
      FLAGS.workdir,
      only=FLAGS.only,
      overrides=overrides,
      seeds=FLAGS.seeds,
      overwrite=FLAGS.overwrite,
    )
  runtime.join_processes()  # a no-op unless started by ./launch.sh local N
  runtime.quiet_library_logs()
  runtime.require_accelerator()
  sweep.run_sweep(
    module,
    FLAGS.workdir,
    only=FLAGS.only,
    reach=FLAGS.reach,
    overrides=overrides,
    seeds=FLAGS.seeds,
    command=commands.command_line("sweep", path),
    results_page=FLAGS.results_page,
    bootstrap=FLAGS.paired_resamples,
    planned=planned,
    overwrite=FLAGS.overwrite,
  )
  if jax.process_index() == 0:
    print(open(os.path.join(FLAGS.workdir, "results.md")).read())
    report = os.path.join(FLAGS.workdir, "ablation.md")
    if os.path.exists(report):
      print(open(report).read())
