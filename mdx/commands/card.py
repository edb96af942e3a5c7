"""A dataset card: images, patients, studies, views, per-finding counts, sex, age, exclusions.

  python -m mdx card --config=experiments/X.py [--out=DIR] [--tables_only] [--overwrite]
  python -m mdx card --source=NAME --metadata=TABLE [--root=DIR] [--config.data.FIELD=...]
      [--out=DIR] [--overwrite]

--config: the experiment's config.data, its source built as training builds it (image files
checked under config.data.on_error; --tables_only builds it from the tables without the images),
and its train / validation / test split counts (mdx.data.splits, config.data.split). --source:
one dataset from its label table alone, no image needed: --metadata is config.data.metadata (for a
source without that field, such as mimic, the table's folder is config.data.root unless --root is
given), and any other field of the source is --config.data.FIELD=VALUE (e.g.
--config.data.uncertain=ones). In that mode (and with --tables_only) every row is kept whether its
image file exists or not (config.data.on_error='unchecked': mdx.data.card.build_from_tables), and
a source that reads its image files themselves is refused, saying why: folders and NLM (labels in
file names), SIIM by default (patients in the DICOM headers: give
--config.data.patient_id=image_id), RSNA with read_headers (give --config.data.headers=TABLE). The
card is printed, and with --out written as DIR/card.json and DIR/card.md (mdx.outputs: whole
files, a file mdx did not write refused unless --overwrite).

A user's mistake (an unknown source or field, a missing table, a bad row) is one line `error: ...`
and exit status 2 (mdx.cli).
"""

from __future__ import annotations

import difflib
import os
import re
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_dict, config_flags

from mdx import cli

FLAGS = flags.FLAGS
COMMAND = "card"
FILES = ("card.json", "card.md")


def get_config() -> ml_collections.ConfigDict:
  """The --source mode's config (this file is --config's default): every config.data field of the
  2D sources, unset, so that --config.data.FIELD=VALUE can set any of them (a value is read as a
  Python literal where it is one: 3, ['PA'], True; else as text)."""
  from mdx.data import sources

  fields = sorted(
    {f for s in sources.SOURCES.values() if s.kind == sources.IMAGE for f in s.fields} - {"source"}
  )
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict({f: config_dict.placeholder(object) for f in fields})
  c.data.split = ml_collections.ConfigDict(
    {f: config_dict.placeholder(object) for f in ("by", "test", "val")}
  )
  return c


def define_flags() -> None:
  # Without --config=EXPERIMENT this file's get_config() is the config the --config.data.FIELD
  # overrides change; config_flags applies them while defining the flag, so a misspelt field is
  # caught here, as one line, rather than as its traceback.
  given = any(a == "--config" or a.startswith("--config=") for a in sys.argv[1:])
  if not given:
    _check_overrides(sys.argv[1:])
  default = None if given else os.path.abspath(__file__)
  config_flags.DEFINE_config_file(
    "config", default, "experiment file (its config.data)", lock_config=False
  )
  flags.DEFINE_string("source", None, "a registered 2D source, described from its table alone")
  flags.DEFINE_string("metadata", None, "the source's label table (config.data.metadata)")
  flags.DEFINE_string("root", None, "the dataset folder (config.data.root)")
  flags.DEFINE_string("out", None, "folder for card.json and card.md (default: print only)")
  flags.DEFINE_bool("tables_only", False, "with --config: keep rows whose image file is missing")
  flags.DEFINE_bool("overwrite", False, "replace card.json / card.md mdx did not write")


def _check_overrides(args: list[str]) -> None:
  """Exits with one line when an override names a field that no 2D source reads."""
  config = get_config()
  known = {f"data.{f}" for f in config.data} | {f"data.split.{f}" for f in config.data.split}
  for arg in args:
    m = re.match(r"--config\.([\w.]+)", arg)
    if m and m[1] not in known:
      close = difflib.get_close_matches(m[1], sorted(known), n=1)
      hint = f" Did you mean --config.{close[0]}?" if close else ""
      sys.exit(
        cli.fail(
          f"{arg}: with --source the overrides set config.data fields of a 2D source, and none "
          f"reads {m[1]!r}.{hint}"
        )
      )


def _given_experiment() -> bool:
  path = config_flags.get_config_filename(FLAGS["config"])
  return bool(path) and os.path.abspath(path) != os.path.abspath(__file__)


def source_config(config, source: str, metadata: str | None, root: str | None):
  """The --source mode's config: config.data with the fields set on the command line only, the
  source, and --metadata / --root, resolved (mdx.config: an unknown field is an error)."""
  from mdx import config as config_lib
  from mdx.data import sources

  spec = sources.spec(source, sources.IMAGE)
  data = {k: v for k, v in config.data.items() if k != "split" and v is not None}
  data["source"] = source
  if metadata:
    if not os.path.exists(metadata):
      raise FileNotFoundError(f"--metadata={metadata} does not exist")
    if "metadata" in spec.fields:
      data["metadata"] = metadata
    elif "root" in spec.fields and not root:
      root = os.path.dirname(os.path.abspath(metadata))  # the tables sit in the dataset folder
    elif "root" not in spec.fields:
      raise ValueError(f"source {source!r} reads no --metadata table; give --root=DIR")
  if root:
    data["root"] = root
  split = {k: v for k, v in config.data.split.items() if v is not None}
  resolved = ml_collections.ConfigDict({"data": data})
  if split:
    resolved.data.split = split
  return config_lib.resolve(resolved), bool(split)


def make_card(config, tables_only: bool, with_splits: bool = True) -> dict:
  """The card of a resolved config's data: its source (from the tables alone when tables_only),
  its splits when with_splits, the readers' agreement where the source computes it."""
  from mdx.data import card, sources, splits

  data = config.data
  if tables_only:
    source, files = card.build_from_tables(data, config.seed)
  else:
    source, files = sources.make_source(data, config.seed, sources.IMAGE), None
  sets = splits.make_split(data, source, config.seed) if with_splits else None
  return card.describe(
    source,
    name=data.source,
    splits=sets,
    files=files,
    reader_agreement=card.reader_agreement(data),
  )


def write(card: dict, out: str, overwrite: bool = False) -> list[str]:
  """card.json and card.md into out through mdx.outputs (claimed first, moved in whole)."""
  from mdx import outputs
  from mdx.data import card as card_lib

  folder = outputs.OutputFolder(out, COMMAND, overwrite=overwrite, completes=("card.json",))
  folder.claim(files=FILES)
  with folder:
    outputs.write_json(folder.path("card.json"), card)
    outputs.write_text(folder.path("card.md"), card_lib.markdown(card))
    folder.commit()
  return [os.path.join(folder.folder, f) for f in FILES]


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --out=DIR")
  from mdx import config as config_lib
  from mdx.data import card as card_lib

  experiment = _given_experiment()
  if experiment == bool(FLAGS.source):
    raise ValueError("give --config=EXPERIMENT or --source=NAME --metadata=TABLE (one of them)")
  if experiment:
    if FLAGS.metadata or FLAGS.root:
      raise ValueError("--metadata and --root go with --source; set config.data in the experiment")
    card = make_card(config_lib.resolve(FLAGS.config), FLAGS.tables_only)
  else:
    config, with_splits = source_config(FLAGS.config, FLAGS.source, FLAGS.metadata, FLAGS.root)
    card = make_card(config, tables_only=True, with_splits=with_splits)
  print(card_lib.text(card), end="")
  if FLAGS.out:
    for path in write(card, FLAGS.out, FLAGS.overwrite):
      print(f"wrote {path}")
  return 0
