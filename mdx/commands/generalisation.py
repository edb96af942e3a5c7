"""The generalisation matrix: every bundle on every dataset, with each bundle's thresholds and
calibration as shipped (mdx.inference.generalisation):

python -m mdx generalisation --bundles=A,B,... --datasets=X.py,Y.py,... --out=DIR
    [--names=x,y,...] [--bootstrap=N] [--seed=S] [--batch_size=B] [--overwrite]

--bundles may name a run's workdir (its bundle/) or a folder of runs, such as a sweep that
trained one model per dataset (every run's bundle, by run name). --datasets are experiment files
whose config.data names each dataset (every record is evaluated, no split; records are checked
first); --names label them (default: each file's name without .py).
Rows are the bundles, labelled by what their provenance says they were trained on.

Writes DIR/matrix.csv (one row per bundle x dataset x finding, 'macro' included), DIR/matrix.md
(rows = bundles, columns = datasets: external AUROC with its 95% CI, the bundle's internal AUROC and
the CI of the difference; findings a dataset does not label are 'not evaluable') and
DIR/figures/macro_auroc.png (the macro AUROC heat map), whole: a file in DIR that mdx did not write
is refused, naming it, before any bundle is read, unless --overwrite. It runs as several processes
too (python -m mdx local N python -m mdx generalisation ...; --jax_distributed on a TPU VM or under
SLURM): each predicts its share of every dataset, process 0 writes. A user's mistake is one line
'error: ...' and exit status 2.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags, logging

from mdx import cli, runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list(
    "bundles",
    None,
    "Bundles of trained classifiers (the rows): bundle folders, runs' workdirs, or a folder of "
    "runs (a sweep's: one model per dataset) for every run's bundle.",
  )
  flags.DEFINE_list(
    "datasets", None, "Experiment files whose config.data names each dataset (the columns)."
  )
  flags.DEFINE_list("names", None, "Column names, one per --datasets (default: the file names).")
  flags.DEFINE_string("out", None, "Output folder for matrix.csv, matrix.md and the heat map.")
  flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace files in --out that mdx did not write; without it they are refused before any work.",
  )
  flags.DEFINE_integer("bootstrap", 1000, "Patient bootstrap resamples per cell (0: no CIs).")
  flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")
  flags.DEFINE_integer(
    "batch_size", None, "Images per prediction batch on each process (default 8 per device)."
  )
  flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() (every worker of a TPU VM, SLURM)."
  )


def dataset_config(path: str):
  """The resolved config of an experiment file; a mistake in it is one ValueError naming the file
  and line (in the words --config's parser uses: mdx.cli)."""
  from mdx import config as config_lib

  try:
    config = config_lib.load_experiment(path).get_config()
  except Exception as e:
    line = cli.experiment_file_error(e, path)
    if line is None:  # a missing file is already one line; raised inside mdx: a bug, traceback
      raise
    raise ValueError(line) from None
  try:
    return config_lib.resolve(config)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def main(argv) -> int:
  from mdx.inference import generalisation as G

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  for name in ("bundles", "datasets", "out"):
    if not FLAGS[name].value:
      raise app.UsageError(f"--{name} is required")
  files = FLAGS.datasets
  names = FLAGS.names or [os.path.splitext(os.path.basename(f))[0] for f in files]
  if len(names) != len(files):
    raise app.UsageError(
      f"--names gives {len(names)} names for {len(files)} --datasets; give one per dataset"
    )
  # Before any work: a user's file where the matrix goes is one line naming it (the library claims
  # again, on every process, before it loads a bundle).
  G.claim(FLAGS.out, FLAGS.overwrite)
  runtime.quiet_library_logs()
  runtime.join_processes(FLAGS.jax_distributed)  # mdx local's processes join here
  runtime.enable_compilation_cache()
  runtime.require_accelerator()  # $MDX_ACCELERATOR, as ./launch.sh sets it
  datasets = [G.Dataset(n, dataset_config(f)) for n, f in zip(names, files)]
  matrix = G.generalisation_matrix(
    G.expand_bundles(FLAGS.bundles),
    datasets,
    FLAGS.out,
    bootstrap=FLAGS.bootstrap,
    seed=FLAGS.seed,
    batch_size=FLAGS.batch_size,
    overwrite=FLAGS.overwrite,
  )
  if jax.process_index() != 0:  # process 0 wrote the matrix and says so
    return 0
  for row, cells in matrix["cells"].items():
    for column, cell in cells.items():
      m = cell["macro"]
      logging.info(
        "%s on %s: macro AUROC %s [%s, %s] over %s",
        row,
        column,
        m["external"]["value"],
        *m["external"]["ci"],
        ", ".join(m["over"]) or "no evaluable finding",
      )
  print(os.path.join(FLAGS.out, G.REPORT))
  return 0
