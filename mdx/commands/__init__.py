"""Every entry point of mdx, one module per command: flags in, library calls out.

  python -m mdx COMMAND [flags]        (./launch.sh COMMAND ... runs the same)

The library rooms (data, models, train, inference, evaluate) hold no entry points and define no
flags: a feature is found in its room, its command line here. Nothing in mdx imports this room
except the front door (mdx/__main__.py) and the mdx.main shim (`python -m mdx.main` = main).

A command module has main(argv) and, when it takes absl flags, define_flags(): the flags are
defined only for the command that runs (absl's flags are global, and several commands have a
--config, --workdir or --out of their own). Every flag is spelled with underscores
(--patient_column). `local` takes its arguments as they are (N COMMAND...), without flags.
A user's mistake is one line `error: ...` and exit status 2 (mdx.cli).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from absl import app, flags

from mdx import cli

# name -> what it does (the front door's usage lists them in this order)
COMMANDS = {
  "main": "train, eval, export or predict with a run: --config=X.py --workdir=DIR --mode=...",
  "predict": "a bundle on new files: --bundle=DIR --input=PATH --output=DIR",
  "evaluate": "predictions CSVs (--labels, --probs), or a bundle on an external dataset (--bundle)",
  "sweep": "every variant x seed of an ablation and its report: --config=ABLATION --workdir=DIR",
  "prepare": "a real dataset's records ahead of training: --config=X.py",
  "check": "every record of an experiment's data decoded once: --config=X.py",
  "split": "a metadata CSV into patient-level train / validation / test CSVs",
  "audit": "the patients, images and findings two or more sets share (exit 1 on a leak)",
  "consensus": "a reference standard from several readers' CSVs, with their kappas",
  "findings": "the canonical finding list and every dataset's mapping onto it",
  "card": "a dataset card: images, patients, views, findings, sex and age: --config=X.py",
  "fingerprint": "a 3D dataset's fingerprint and the plan derived from it: --config=X.py",
  "crossval": "k folds of a segmentation experiment, out-of-fold results and their ensemble",
  "generalisation": "bundles x datasets: external AUROC table and heat-map: --bundles --datasets",
  "import_weights": "Keras .h5, PyTorch or safetensors weights into a pretrained checkpoint",
  "from_weights": "published classifier weights into a bundle",
  "export_model": "a bundle's network as ONNX or StableHLO: --bundle=DIR --format=onnx|stablehlo",
  "local": "N COMMAND...: the command as N joined processes on this machine",
}
PROGRAM = "python -m mdx"


def usage() -> str:
  width = max(map(len, COMMANDS))
  lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
  return f"usage: {PROGRAM} COMMAND [flags]   ({PROGRAM} COMMAND --help lists its flags)\n" + (
    "\n".join(lines)
  )


def load(name: str) -> ModuleType:
  """The command's module; a ValueError naming the commands for an unknown name."""
  if name not in COMMANDS:
    raise ValueError(f"no command {name!r}; the commands are {', '.join(COMMANDS)}")
  return importlib.import_module(f"{__name__}.{name}")


def run(name: str, argv: list[str]) -> None:
  """Runs command `name` as a program (argv: its flags and arguments) and exits with its status."""
  try:
    module = load(name)
  except ValueError as e:
    sys.exit(cli.fail(f"{e} ({PROGRAM} lists them)"))
  sys.argv = [f"{PROGRAM} {name}", *argv]  # what the command was given (sweep records it)
  if not hasattr(module, "define_flags"):
    sys.exit(cli.call(module.main, argv))
  define_debug_flag()
  before = set(flags.FLAGS)
  module.define_flags()
  for flag in sorted(set(flags.FLAGS) - before):  # --help shows them, and the command's docstring
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[flag])
  sys.modules["__main__"].__doc__ = module.__doc__
  run_program(module.main, sys.argv)


def define_debug_flag() -> None:
  """--debug, once: every command's (and bench's) traceback switch, also MDX_DEBUG=1 (mdx.cli)."""
  if "debug" not in flags.FLAGS:
    flags.DEFINE_bool("debug", False, f"Tracebacks for user errors too (also {cli.DEBUG_ENV}=1).")


def run_program(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> None:
  """absl's app.run(main) with --debug and one-line user errors, in the flags (cli.parse_flags)
  and in main (cli.call); argv: [program, flags and arguments...], default sys.argv. The benches
  in benchmarks/ run through it too."""
  define_debug_flag()
  app.run(
    lambda argv: _exit_if_joined(cli.call(main, argv)), argv=argv, flags_parser=cli.parse_flags
  )


def _joined() -> bool:
  """Whether this process joined others through jax.distributed."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import distributed

    return distributed.global_state.client is not None
  except (ImportError, AttributeError):
    return False


def _exit_if_joined(status: Any) -> Any:
  """A joined process that stops on a user error exits at once: jax's shutdown waits at a barrier
  for every peer (minutes, when they are still training or waiting at a collective), and the
  launcher (mdx local, srun --kill-on-bad-exit) stops the peers when this one ends."""
  if status == 2 and _joined():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)
  return status


@contextlib.contextmanager
def _logging_levels_kept() -> Iterator[None]:
  """Parsing absl flags sets the root and 'absl' loggers' levels from --verbosity (WARNING by
  default): a command called in a test's process must not silence the INFO logs of the tests that
  run after it there."""
  import logging

  loggers = [logging.getLogger(), logging.getLogger("absl")]
  levels = [logger.level for logger in loggers]
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


@contextlib.contextmanager
def _defined(module: ModuleType) -> Iterator[None]:
  """The command's flags in absl's FLAGS for the block, then removed (with the overrides a config
  flag added while parsing), and --debug back at its default."""
  before = set(flags.FLAGS)
  define_debug_flag()
  module.define_flags()
  try:
    yield
  finally:
    for flag in set(flags.FLAGS) - before - {"debug"}:
      delattr(flags.FLAGS, flag)
    flags.FLAGS["debug"].unparse()


def call(name: str, argv: list[str]) -> int:
  """Runs command `name` in this process as `python -m mdx NAME *argv` would (tests): returns its
  exit status, with a user's mistake printed as the one `error:` line and status 2. The flags it
  defines are removed afterwards, so commands with flags of the same name can be called one after
  the other."""
  module = load(name)
  if not hasattr(module, "define_flags"):
    return int(cli.call(module.main, argv) or 0)
  was_parsed, given = flags.FLAGS.is_parsed(), sys.argv
  with _defined(module), _logging_levels_kept():
    try:
      sys.argv = [f"{PROGRAM} {name}", *argv]
      rest = cli.parse_flags(sys.argv)
      status = cli.call(module.main, rest)
    except SystemExit as e:  # a flag mistake: parse_flags printed its line
      status = e.code
    finally:
      sys.argv = given
      if not was_parsed:
        flags.FLAGS.unparse_flags()
  return int(status or 0)


# ------------------------------------------ commands that run an experiment file (sweep, crossval)
def experiment_and_overrides(argv: list[str]) -> tuple[str, dict[str, Any]]:
  """(the experiment file's path, the --config.<field>=value overrides) of a command whose
  --config is an ml_collections config-file flag; a stray positional argument is a usage error
  naming the override form."""
  from ml_collections import config_flags

  if len(argv) > 1:
    raise app.UsageError(
      f"unexpected arguments {argv[1:]}; overrides look like --config.train.steps=5"
    )
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  return path, dict(config_flags.get_override_values(flags.FLAGS["config"]))


def command_line(name: str, path: str) -> str:
  """The command as the user gave it, for a report: './launch.sh NAME EXPERIMENT --flags...'
  (the experiment as launch.sh takes it, first and without --config=)."""
  import shlex

  given = [shlex.quote(a) for a in sys.argv[1:] if not a.startswith("--config=")]
  return " ".join([f"./launch.sh {name}", path, *given])
