"""Every command line (python -m mdx COMMAND, mdx.commands; the one-line errors of mdx.cli): a
user's mistake is one line `error: ...` on stderr and exit status 2, no traceback; MDX_DEBUG=1 adds
the traceback (same line, same status); a bug keeps its traceback.

The subprocesses (a JAX import each, no model compiled) run concurrently in one fixture.
"""

import concurrent.futures
import os
import subprocess
import sys

import pytest

from mdx import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cases(tmp) -> dict[str, tuple[list[str], list[str]]]:
  """name -> (python's arguments: every command of the front door, the mdx.main shim and a bench;
  what the one line must name)."""
  text = os.path.join(tmp, "weights.txt")
  with open(text, "w") as f:
    f.write("not weights\nat all\n")
  nope = os.path.join(tmp, "nowhere")
  work = os.path.join(tmp, "work")
  nih = "experiments/nih_64px.py"
  missing_csv = os.path.join(nope, "Data_Entry.csv")
  mdx = ["-m", "mdx"]
  return {
    "main_missing_config": (
      [*mdx, "main", f"--config={nope}/x.py", f"--workdir={work}"],
      [f"--config={nope}/x.py", "does not exist"],
    ),
    "main_missing_data": (
      [
        *mdx,
        "main",
        f"--config={nih}",
        f"--workdir={work}",
        f"--config.data.metadata={missing_csv}",
        "--config.data.prepared_dir=",
      ],
      [missing_csv],
    ),
    "main_shim": (  # python -m mdx.main, as before the front door
      ["-m", "mdx.main", f"--config={nih}", f"--workdir={work}", "--config.train.stpes=2"],
      ["--config.train.stpes=2", "Did you mean --config.train.steps?"],
    ),
    "no_such_command": ([*mdx, "trian"], ["no command 'trian'", "main, predict"]),
    "prepare": (
      [*mdx, "prepare", f"--config={nih}", f"--config.data.metadata={missing_csv}"],
      [missing_csv],
    ),
    "check": ([*mdx, "check", f"--config={nih}", "--config.data.mtadata=x"], ["'mtadata'"]),
    "split": (
      [*mdx, "split", f"--metadata={missing_csv}", f"--out={tmp}/split"],
      [missing_csv, "does not exist"],
    ),
    "split_old_flag": (  # dashes were the old spelling: the flag parser names the new one
      [*mdx, "split", f"--metadata={missing_csv}", f"--out={tmp}/split", "--test-size=10"],
      ["test-size"],
    ),
    "audit": ([*mdx, "audit", missing_csv, f"{nope}/b.csv"], [missing_csv]),
    "consensus": (
      [*mdx, "consensus", f"--out={tmp}/c", missing_csv, f"{nope}/b.csv"],
      [missing_csv, "does not exist"],
    ),
    "evaluate": (
      [*mdx, "evaluate", f"--labels={missing_csv}", f"--probs={text}", f"--out={tmp}/e"],
      [missing_csv],
    ),
    "sweep": (
      [*mdx, "sweep", "--config=experiments/ablations/imbalance.py", f"--workdir={work}"]
      + ["--config.train.steps=2", "--only=nosuch"],
      ["--only=nosuch: no such variant"],
    ),
    "import_weights_keras_h5": (
      [*mdx, "import_weights", "--model=densenet_tiny", "--source=keras_h5"]
      + [f"--input={text}", f"--output={tmp}/w"],
      [text, "is not a Keras .h5 (HDF5) weight file"],
    ),
    "import_weights_torch": (
      [*mdx, "import_weights", "--model=densenet_tiny", "--source=torch"]
      + [f"--input={text}", f"--output={tmp}/w"],
      [text, "is not a PyTorch file"],
    ),
    "from_weights": (
      [*mdx, "from_weights", "--model=densenet_tiny", "--source=torch", f"--input={text}"]
      + [f"--output={tmp}/b", "--findings=A", "--image_size=32"],
      [text, "is not a PyTorch file"],
    ),
    "predict": (
      [*mdx, "predict", f"--bundle={nope}", f"--input={tmp}", f"--output={tmp}/p"],
      [f"bundle {nope}", "does not exist"],
    ),
    "local": ([*mdx, "local", "2", "nosuch-program"], ["command 'nosuch-program' not found"]),
    "bench": (
      ["benchmarks/classifiers.py", "--models=densenet_nosuch"],
      ["'densenet_nosuch' is unknown"],
    ),
  }


def _run(args: list[str], debug: bool) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in (cli.DEBUG_ENV, "MDX_ACCELERATOR")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, MDX_COMPILATION_CACHE="")
  if debug:
    env[cli.DEBUG_ENV] = "1"
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
  )


# MDX_DEBUG=1 on one case of each path: the flag parser, a command's main, a command without
# flags (local). The other commands go through the same mdx.cli functions.
DEBUGGED = ["main_missing_config", "main_missing_data", "local"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(name, debug) -> (expected words, the finished process), all run four at a time."""
  cases = _cases(str(tmp_path_factory.mktemp("cli")))
  keys = [(n, True) for n in DEBUGGED] + [(n, False) for n in cases]  # the slowest start first
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = {(n, d): pool.submit(_run, cases[n][0], d) for n, d in keys}
    return {(n, d): (cases[n][1], f.result()) for (n, d), f in futures.items()}


NAMES = list(_cases("/tmp"))


@pytest.mark.xdist_group("cli_errors")
@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_user_error_is_one_line_and_status_2(runs, name):
  words, proc = runs[name, False]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.xdist_group("cli_errors")
@pytest.mark.slow
@pytest.mark.parametrize("name", DEBUGGED)
def test_mdx_debug_shows_the_traceback_and_the_same_line(runs, name):
  _, quiet = runs[name, False]
  _, proc = runs[name, True]
  assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr, proc.stderr
  line = [x for x in quiet.stderr.splitlines() if x.startswith("error:")]
  assert [x for x in proc.stderr.splitlines() if x.startswith("error:")] == line


def test_a_bug_keeps_its_traceback(capsys):
  assert cli.call(lambda: int("x")) == 2  # ValueError: the user's
  assert capsys.readouterr().err == "error: invalid literal for int() with base 10: 'x'\n"
  with pytest.raises(KeyError):  # not a user error: it propagates, traceback and all
    cli.call(lambda: {}["x"])
  with pytest.raises(AttributeError):
    cli.call(lambda: None.x)


def test_one_line_joins_lines_and_unquotes_key_errors():
  assert cli.one_line(ValueError("a\n    b\n\n  c")) == "a b c"
  assert cli.one_line(KeyError("'field' is not there")) == "'field' is not there"
  assert cli.one_line(KeyError("x")) == "x"
  assert cli.one_line(FileNotFoundError()) == "FileNotFoundError"


def test_front_door_lists_the_commands(capsys):
  from mdx import commands

  assert "consensus" in commands.usage() and "from_weights" in commands.usage()
  with pytest.raises(ValueError, match="no command 'trian'; the commands are main, predict"):
    commands.load("trian")
  # in-process calls define a command's flags and remove them: two commands with a --config each
  assert commands.call("check", ["--config=experiments/nope.py"]) == 2
  assert commands.call("audit", ["--config=experiments/nope.py"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2 and all(e.startswith("error: --config=experiments/nope.py") for e in err)


# ---------------------------------------------------------------- mistakes in the experiment file
EXPERIMENT_MISTAKES = {
  # name: (the experiment file, the line it must print after 'error: FILE:')
  "syntax": (
    "import ml_collections\n\n\ndef get_config(:\n  return ml_collections.ConfigDict()\n",
    "4: invalid syntax (SyntaxError); fix the file",
  ),
  "indentation": (
    "def get_config():\n\treturn 1\n  x = 2\n",
    "3: unindent does not match any outer indentation level (IndentationError); fix the file",
  ),
  "missing_module": (
    "import ml_collections\nimport mdx_no_such_module\n\n\ndef get_config():\n  return None\n",
    "2: No module named 'mdx_no_such_module' (ModuleNotFoundError); install the module or fix "
    "the import",
  ),
  "raised_in_get_config": (
    "def get_config():\n  steps = 10\n  return steps / 0\n",
    "3: division by zero (ZeroDivisionError); fix the file",
  ),
  "value_error_in_get_config": (  # config_flags re-raises it with a traceback in the message
    "def get_config():\n  raise ValueError('image_size must be even')\n",
    "2: image_size must be even (ValueError); fix the file",
  ),
  "missing_file_read_by_get_config": (  # config_flags defers an OSError to the config's first use
    "def get_config():\n  return open('/nonexistent/mdx/base.json').read()\n",
    "2: [Errno 2] No such file or directory: '/nonexistent/mdx/base.json' (FileNotFoundError); "
    "fix the file",
  ),
}


@pytest.mark.parametrize("name", sorted(EXPERIMENT_MISTAKES))
def test_a_mistake_in_the_experiment_file_is_one_line_with_its_file_and_line(
  tmp_path, capsys, name
):
  from mdx import commands

  text, line = EXPERIMENT_MISTAKES[name]
  path = tmp_path / "x.py"
  path.write_text(text)
  assert commands.call("check", [f"--config={path}"]) == 2
  err = capsys.readouterr().err
  assert err == f"error: {path}:{line}\n"


def test_an_experiment_file_mistake_shows_its_traceback_with_mdx_debug(
  tmp_path, capsys, monkeypatch
):
  from mdx import commands

  monkeypatch.setenv(cli.DEBUG_ENV, "1")
  path = tmp_path / "x.py"
  path.write_text("def get_config():\n  return 1 / 0\n")
  assert commands.call("check", [f"--config={path}"]) == 2
  err = capsys.readouterr().err
  assert "Traceback (most recent call last)" in err and f'File "{path}", line 2' in err
  assert (
    err.splitlines()[-1] == f"error: {path}:2: division by zero (ZeroDivisionError); fix the file"
  )


def test_an_error_raised_inside_a_library_the_experiment_calls_keeps_its_traceback(tmp_path):
  """Not the file's own code and not a user error type: a bug below it, shown whole."""
  from mdx import commands

  path = tmp_path / "x.py"
  path.write_text("import fractions\n\n\ndef get_config():\n  return fractions.Fraction(1, 0)\n")
  with pytest.raises(ZeroDivisionError):
    commands.call("check", [f"--config={path}"])


@pytest.mark.parametrize(
  "source, install",
  [
    ("torch", "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"),
    ("safetensors", "pip install safetensors"),
  ],
)
def test_import_weights_without_its_reader_installed_names_the_install_command(
  tmp_path, capsys, monkeypatch, source, install
):
  """A default install has neither torch nor safetensors (simulated: None in sys.modules makes
  `import torch` raise ModuleNotFoundError): one line naming the command that installs it, before
  the weight file is read or the output folder made."""
  from mdx import commands

  monkeypatch.setitem(sys.modules, source, None)
  weights = tmp_path / "w.bin"
  weights.write_bytes(b"not read")
  out = tmp_path / "out"
  argv = ["--model=densenet_tiny", f"--source={source}", f"--input={weights}", f"--output={out}"]
  assert commands.call("import_weights", argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: --source={source} reads the file with ")
  assert err.rstrip().endswith(f"install it with: {install}") and not out.exists()
