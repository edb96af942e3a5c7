"""Check an experiment's data before training: `python -m mdx.data.cli.check --config=X.py`.

Opens and decodes every record of config.data's source once (mdx.data.check: unreadable files,
NaN/Inf, constant images), as training does before its first step, and prints what it found and how
long it took; the results go into the check cache, so the training that follows decodes nothing.
--cold decodes everything into a scratch cache instead (a first run's time; the user's cache is
left as it was). Exit status 0 when every
record is usable, 1 when some are not (listed in --out, default the check cache folder); a user's
mistake is one `error:` line and status 2 (mdx.cli).
"""

from __future__ import annotations

import os
import tempfile

from absl import flags
from ml_collections import config_flags

from mdx import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program: importing this module (next to prepare, which defines
  --config too) leaves the global flags alone."""
  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=False)
  flags.DEFINE_bool("cold", False, "Decode everything again (a first run's time).")
  flags.DEFINE_string("out", None, "Folder for bad_records.csv / constant_records.csv.")


def main(argv) -> int:
  del argv
  from mdx import config as config_lib
  from mdx.data import check, sources

  config = config_lib.resolve(FLAGS.config)
  source = sources.make_source(config.data, config.seed)
  if not check.is_checkable(source):
    print(f"{config.data.source}: records are generated in memory; nothing to check")
    return 0
  cache = tempfile.mkdtemp(prefix="mdx-check-cold-") if FLAGS.cold else None
  out = FLAGS.out or None
  if out:
    os.makedirs(out, exist_ok=True)
  try:
    _, result = check.check_source(source, config.data.source, on_error="skip", workdir=out,
                                   cache_dir=cache)  # fmt: skip
  finally:
    if cache:
      import shutil

      shutil.rmtree(cache, ignore_errors=True)
  print(
    f"{result.name}: {result.total} records checked in {result.seconds:.2f} s "
    f"({result.decoded} decoded, {result.total - result.decoded} from the cache): "
    f"{len(result.bad)} unusable, {len(result.constant)} constant"
  )
  return 1 if len(result.bad) else 0


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["config"])
  cli.run(main)
