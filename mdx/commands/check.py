"""Check an experiment's data before training: `python -m mdx check --config=X.py`
(./launch.sh check CONFIG).

Opens and decodes every record of config.data's source once (mdx.data.check: unreadable files,
NaN/Inf, constant images), as training does before its first step, and prints what it found, how
long it took and what a run of this experiment would do with it (its config.data.on_error: 'raise'
stops before step 1, 'skip' trains without them). The results go into the check cache, so the
training that follows decodes nothing. --cold decodes everything into a scratch cache instead (a
first run's time; the user's cache is left as it was). Unusable records are listed in
bad_records.csv and constant ones in constant_records.csv, in --out (default: the check cache
folder, with the data's digest in the file name). Exit status 0 when every record is usable, 1 when
some are not; a user's mistake is one `error:` line and status 2 (mdx.cli). A source with
config.data.prepared_dir set is checked from its records, prepared first if they are missing.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "experiment file", lock_config=False)
  flags.DEFINE_bool("cold", False, "Decode everything again (a first run's time).")
  flags.DEFINE_string("out", None, "Folder for bad_records.csv / constant_records.csv.")
  flags.mark_flags_as_required(["config"])


def report(config, out: str | None = None, cold: bool = False) -> tuple[str, int]:
  """-> (what to print, exit status) for a resolved config: the check's findings and what a run
  would do with them."""
  from mdx.data import check, sources
  from mdx.data.image.file_source import config_get

  source = sources.make_source(config.data, config.seed)
  if not check.is_checkable(source):
    return f"{config.data.source}: records are generated in memory; nothing to check", 0
  name = str(getattr(source, "name", None) or config.data.source)  # as the run names it
  on_error = config_get(config.data, "on_error", "raise")
  if out:
    os.makedirs(out, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="mdx-check-cold-") if cold else None
  try:
    result = check.scan(source, name, cache_dir=scratch)
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)
  bad, constant = result.bad, result.constant
  lines = [
    f"{result.name}: {result.total} records checked in {result.seconds:.2f} s "
    f"({result.decoded} decoded, {result.total - result.decoded} from the cache): "
    f"{len(bad)} unusable, {len(constant)} constant"
  ]
  if len(bad):  # listed outside the scratch cache, which is gone by now
    listing = check.write_list(result, bad, "bad_records.csv", out)
    if on_error == "skip" and len(bad) < result.total:
      then = (
        "a run leaves them out (config.data.on_error='skip') and lists them in "
        "WORKDIR/skipped_records.csv"
      )
    elif on_error == "skip":
      then = "a run stops: no record is usable; fix the data folder (config.data.root / images)"
    else:
      then = (
        "a run stops on them before step 1 (config.data.on_error='raise'): remove or replace "
        "these files, or set config.data.on_error='skip' to train without them"
      )
    lines.append(f"unusable: {check.examples(result, bad)}; all are listed in {listing}; {then}")
  if len(constant):
    listing = check.write_list(result, constant, "constant_records.csv", out)
    lines.append(
      f"constant (a warning, they are trained on): {check.examples(result, constant)}; all are "
      f"listed in {listing}"
    )
  return "\n".join(lines), 1 if len(bad) else 0


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; give --config=experiments/X.py")
  from mdx import config as config_lib

  text, status = report(config_lib.resolve(FLAGS.config), FLAGS.out or None, FLAGS.cold)
  print(text)
  return status
