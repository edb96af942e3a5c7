"""Prepare fast records for an experiment: `python -m mdx prepare --config=experiments/X.py`
(./launch.sh prepare CONFIG).

Decodes every image of config.data's source once, resizes it to config.data.image_size and writes
TFDS ArrayRecord files into config.data.prepared_dir (with TFDS's progress bar). Runs that set
prepared_dir then read these records instead of the original files; a run that finds them missing
prepares them itself, so this command is for doing it ahead (before a sweep, on a login node, or
to see the time it takes). A user's mistake (a config typo, a missing data root) is one line
`error: ...` and exit status 2 (mdx.cli).
"""

from __future__ import annotations

import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=False)
  flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; give --config=experiments/X.py")
  from mdx import config as config_lib
  from mdx.data import sources
  from mdx.data.image import file_source

  config = config_lib.resolve(FLAGS.config)  # a typo in the experiment is an error here too
  if not config.data.get("prepared_dir"):
    raise app.UsageError(
      "config.data.prepared_dir is not set: say where the records should go "
      f"(e.g. --config.data.prepared_dir={file_source.records_dir() or '~/.cache/mdx/records'})"
    )
  start = time.perf_counter()
  result = sources.prepare(config.data, config.seed)
  if not result["built"]:
    print(f"{result['records']} records already prepared in {result['dir']}")
    return
  print(
    f"prepared {result['records']} records ({result['skipped']} unreadable images skipped) in "
    f"{result['dir']} in {time.perf_counter() - start:.1f} s"
  )
