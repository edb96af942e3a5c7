"""How every command line of mdx reports a user's mistake: one line `error: ...` on stderr and exit
status 2, instead of a traceback with the useful sentence at its bottom.

A user error is what the person typing the command can fix: a ValueError (a bad value, a file in
the wrong format), a missing, existing or misplaced file (FileNotFoundError, FileExistsError,
IsADirectoryError, NotADirectoryError, PermissionError), a flag mistake (absl's flags.Error,
app.UsageError; on the flag line only, an ml_collections override of a field the config lacks, or
a field the experiment file reads that its config lacks: KeyError, AttributeError, TypeError).
Anything else is a bug and keeps its traceback. --debug or MDX_DEBUG=1 prints the traceback of a
user error too (then the same line, the same status).

  cli.parse_flags(argv) absl's flag parser with these errors (mdx.commands.run_program: absl's
                        app.run with --debug for every command of `python -m mdx COMMAND`)
  cli.call(fn, ...)     fn's user errors as the line and status 2

With several processes (mdx local, a TPU VM) each process that meets the mistake prints its line.
Imports nothing of mdx and defines no flag (--debug is mdx.commands'): every command and bench
(benchmarks/) uses it, and a library room may use one_line for a message.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from absl import app, flags

DEBUG_ENV = "MDX_DEBUG"
USER_ERRORS: tuple[type[BaseException], ...] = (
  ValueError,
  FileNotFoundError,
  FileExistsError,
  IsADirectoryError,
  NotADirectoryError,
  PermissionError,
  app.UsageError,
)


def _message(error: BaseException | str) -> str:
  """The error's own words. str(KeyError('x')) is the repr "'x'" (escaped quotes, a literal \\n),
  and ml_collections raises AttributeError(KeyError(...)): take the message such errors hold."""
  while isinstance(error, (KeyError, AttributeError)) and len(error.args) == 1:
    inner = error.args[0]
    if isinstance(inner, BaseException):
      error = inner
    elif isinstance(inner, str) and isinstance(error, KeyError):
      return inner
    else:
      break
  return str(error)


def one_line(error: BaseException | str) -> str:
  """The message on one line: lines stripped and joined; a KeyError's quotes removed; the type's
  name when there is no message."""
  text = _message(error)
  text = " ".join(line.strip() for line in text.splitlines() if line.strip())
  if not text and isinstance(error, BaseException):
    text = type(error).__name__
  return text


def fail(error: BaseException | str) -> int:
  """Prints `error: <one line>` on stderr; returns the exit status 2."""
  print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
  return 2


def debugging(requested: bool = False) -> bool:
  """--debug (absl's flag when defined and parsed, or `requested`) or MDX_DEBUG=1."""
  if requested or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
    return True
  try:
    return bool(flags.FLAGS["debug"].value) if "debug" in flags.FLAGS else False
  except flags.Error:  # not parsed yet
    return False


def report(error: BaseException, debug: bool = False) -> int:
  """The one line for a user error (after its traceback when debugging); returns 2."""
  if debugging(debug):
    traceback.print_exception(error, file=sys.stderr)
  return fail(error)


def call(fn: Callable[..., Any], *args: Any, debug: bool = False, **kwargs: Any) -> Any:
  """fn(*args, **kwargs), or 2 after one `error:` line when it raises a user error."""
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:
    return report(e, debug)


# ------------------------------------------------------------------------------------------ absl
def _missing_config_files() -> str | None:
  """A config-file flag (ml_collections) naming a file that does not exist: config_flags defers
  that error to the first use of the config, with a multi-line message."""
  from ml_collections import config_flags

  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if flag.name != name:  # a short alias
      continue
    try:
      path = config_flags.get_config_filename(flag).split(":", 1)[0]  # 'file.py:argument'
    except (TypeError, flags.Error):  # not a config flag, or not given
      continue
    if path and not os.path.isfile(path):
      return _no_config_file(name, path)
  return None


def _no_config_file(name: str, path: str) -> str:
  return (
    f"--{name}={path}: the experiment file does not exist (relative paths start at "
    f"{os.getcwd()}); give an experiments/*.py file"
  )


def _config_load_error(e: OSError, argv: list[str]) -> str:
  """config_flags' error for a --config file that is not there, raised while an override is
  applied to it (before the flag knows its file name)."""
  m = re.search(r"No such file or directory: '([^']*)'", str(e))
  if m:
    for arg in argv:
      flag = re.fullmatch(r"--(\w+)=(.*)", arg)
      if flag and flag[2].split(":", 1)[0] == m[1]:
        return _no_config_file(flag[1], m[1])
  return _missing_config_files() or one_line(e)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a flag mistake (a missing required flag, a bad value, an override of a
  config field that does not exist, a --config file that is not there) is one `error:` line and
  exit status 2. So is a mistake in the experiment file itself, named FILE:LINE: a syntax error,
  an import that fails, an exception raised by its code (its get_config())."""
  debug = debugging(_debug_in(argv))
  try:
    rest = flags.FLAGS(argv)
    missing = _missing_config_files()
    if missing:
      raise FileNotFoundError(missing)
    _raise_deferred_config_error()
  except SyntaxError as e:  # the experiment file (or a file it imports) does not parse
    sys.exit(_flag_mistake(e, _syntax_error(e), debug))
  except FileNotFoundError as e:
    sys.exit(_flag_mistake(e, _experiment_error(e, argv) or one_line(e), debug))
  except flags.UnrecognizedFlagError as e:
    sys.exit(_flag_mistake(e, f"{one_line(e)}; --helpfull lists the flags", debug))
  except (flags.Error, TypeError, ValueError) as e:  # config_flags wraps the file's own ValueError
    sys.exit(_flag_mistake(e, _experiment_error(e, argv) or one_line(e), debug))
  except (AttributeError, KeyError) as e:  # config_flags: an override of a field the file lacks,
    sys.exit(_flag_mistake(e, _unknown_field(e, argv), debug))  # or the file reads one
  except OSError as e:  # an override applied to a config file that failed to load
    sys.exit(_flag_mistake(e, _experiment_error(e, argv) or _config_load_error(e, argv), debug))
  except Exception as e:  # raised by the experiment file's code or imports: the user's, one line
    line = _experiment_error(e, argv, code_only=True)
    if line is None:  # raised inside mdx or a library: a bug, with its traceback
      raise
    sys.exit(_flag_mistake(e, line, debug))
  return rest


def experiment_file_error(error: BaseException, path: str) -> str | None:
  """The one line for `error` raised while loading the experiment file `path` that a command
  reads itself (not through --config, e.g. generalisation's --datasets): 'FILE:LINE: message' for
  a syntax error or one its own code raised; None for an error raised deeper (a bug there)."""
  if isinstance(error, SyntaxError):
    return _syntax_error(error)
  return _experiment_error(error, [f"--config={path}"], code_only=True)


def _syntax_error(error: SyntaxError) -> str:
  where = f"{error.filename}:{error.lineno}" if error.filename else "the experiment file"
  return f"{where}: {error.msg} ({type(error).__name__}); fix the file"


def _raise_deferred_config_error() -> None:
  """config_flags keeps an OSError raised while loading an experiment file (an open() of a missing
  file in get_config()) for the first use of the config, where it would be a traceback: raise it
  now, while the flags are parsed."""
  for name in list(flags.FLAGS):
    try:
      value = flags.FLAGS[name].value
    except (flags.Error, AttributeError):
      continue
    if type(value).__name__ == "_ErrorConfig":  # ml_collections' stand-in for a failed load
      raise vars(value)["_error"]


def _experiment_error(error: BaseException, argv: list[str], code_only: bool = False) -> str | None:
  """'FILE:LINE: message (Type)' when `error` (or an exception it was raised from) came from an
  experiment file given on the command line, else None. code_only: only when that file's own
  code raised it (its last frame outside Python's import machinery), or an import in it failed;
  an exception raised deeper, inside mdx or a library it called, is a bug there."""
  files = _experiment_files(argv)
  for raised in _chain(error):
    frames = _frames(raised)
    mine = [(name, line) for name, line in frames if os.path.abspath(name) in files]
    if not mine:
      continue
    own = [f for f in frames if not f[0].startswith("<frozen")]
    if code_only and not isinstance(raised, ImportError) and own[-1] != mine[-1]:
      return None
    name, line = mine[-1]
    fix = "fix the file"
    if isinstance(raised, ModuleNotFoundError):
      fix = "install the module or fix the import"
    return f"{name}:{line}: {one_line(raised)} ({type(raised).__name__}); {fix}"
  return None


def _experiment_files(argv: list[str]) -> set[str]:
  files = set()
  for arg in argv:
    flag = re.fullmatch(r"--\w+=(.+\.py)(:.*)?", arg)
    if flag:
      files.add(os.path.abspath(flag[1]))
  return files


def _chain(error: BaseException | None) -> list[BaseException]:
  """error and the exceptions it was raised from or during, innermost (the original) first."""
  chain: list[BaseException] = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain[::-1]


def _frames(error: BaseException) -> list[tuple[str, int]]:
  tb, out = error.__traceback__, []
  while tb is not None:
    out.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
    tb = tb.tb_next
  return out


def _flag_mistake(error: BaseException, line: str, debug: bool) -> int:
  if debug:
    traceback.print_exception(error, file=sys.stderr)
  return fail(line)


def _unknown_field(error: BaseException, argv: list[str]) -> str:
  """config_flags says only the key ('stpes', and ml_collections' guess): name the experiment
  file's line that reads it, or else the override flag that sets it."""
  text = _message(error)
  m = re.match(r"""\s*'([^']*)'\s*(?:Did you mean "([^"]*)")?""", text)
  where = _experiment_line(error, argv)
  if not m:  # not ml_collections' missing field: another mistake in the file, in its own words
    return f"{where}: {one_line(text)}" if where else f"--config: {one_line(text)}"
  key, guess = m[1], m[2]
  if where:
    hint = f" Did you mean {guess!r}?" if guess else ""
    return f"{where}: the config has no field {key!r}.{hint} Fields are declared in mdx/config.py"
  for arg in argv:
    flag = re.match(r"--(\w+)\.([\w.]+)", arg)
    if flag and key in flag[2].split("."):
      path = flag[2].split(".")
      hint = ""
      if guess:
        path[path.index(key)] = guess
        hint = f" Did you mean --{flag[1]}.{'.'.join(path)}?"
      return (
        f"{arg}: the experiment's config has no field {key!r}.{hint} Check the "
        "spelling, or set the field in the experiment file (an override changes a field it has)"
      )
  return f"the experiment's config has no field {key!r}." + (
    f" Did you mean {guess!r}?" if guess else ""
  )


def _experiment_line(error: BaseException, argv: list[str]) -> str | None:
  """'FILE:LINE' of the frame in a --flag=FILE.py experiment file where `error` was raised (a
  typo read inside get_config()), or None."""
  files = set()
  for arg in argv:
    flag = re.fullmatch(r"--\w+=(.+\.py)(:.*)?", arg)
    if flag:
      files.add(os.path.abspath(flag[1]))
  where = None
  for raised in (error, error.__context__):
    tb = raised.__traceback__ if raised is not None else None
    while tb is not None:
      name = tb.tb_frame.f_code.co_filename
      if os.path.abspath(name) in files:
        where = f"{name}:{tb.tb_lineno}"
      tb = tb.tb_next
    if where:
      return where
  return None


def _debug_in(argv: list[str]) -> bool:
  """--debug on a command line that did not parse."""
  return any(re.fullmatch(r"--debug(=(true|1|yes))?", a, re.IGNORECASE) for a in argv)
