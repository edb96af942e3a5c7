"""mdx entry point: python -m mdx.main --config=experiments/X.py --workdir=DIR --mode=train|eval|predict

Overrides: --config.train.steps=20 --config.data.image_size=64 ...  A run writes its resolved config into
the workdir; running train again on the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import logging as logging_std

from absl import app, flags, logging
from ml_collections import config_flags

from mdx.train.run import prepare_workdir, run  # noqa: F401  (the flag-free API, re-exported)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file with get_config().",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the report.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                          "train (then evaluate and report), eval (report from the best checkpoint), "
                          "or predict (files in --input -> --output).")
_INPUT = flags.DEFINE_string("input", None, "predict: a folder of input files.")
_OUTPUT = flags.DEFINE_string("output", None, "predict: the folder to write predictions into.")
_DISTRIBUTED = flags.DEFINE_bool("jax_distributed", False,
                                 "Call jax.distributed.initialize() (multi-host TPU/GPU).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of Orbax and grain (each save/restore logs a dozen lines); keeps warnings."""

  def filter(self, record) -> bool:
    return record.levelno >= logging_std.WARNING or not any(
        part in record.pathname for part in ("/orbax/", "/grain/"))


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides look like "
                         "--config.train.steps=20")
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()
  out = run(_CONFIG.value, _WORKDIR.value, _MODE.value, _INPUT.value, _OUTPUT.value)
  if out:
    print(f"mdx: {_MODE.value} done; see {out}", flush=True)


if __name__ == "__main__":
  app.run(main)
