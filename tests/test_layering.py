"""Imports run downward: runtime (and cli, the one-line errors of every entry point) imports
nothing of mdx; data, models, inference and evaluate never
import train (nor main or config, which sit above the tasks). Command-line tools (any cli/ folder,
and a room's __main__.py, e.g. python -m mdx.evaluate --bundle=... --config=...) are entry points
like main: they may resolve a config, and nothing imports them."""

import ast
import pathlib
import subprocess
import sys

import pytest

MDX = pathlib.Path(__file__).resolve().parents[1] / "mdx"
# room -> the mdx packages and modules it must not import (directly or through what it imports)
FORBIDDEN = {
  "runtime": ("mdx.",),
  "cli": ("mdx.",),  # every room's entry point uses mdx.cli's one-line errors
  "data": ("mdx.train", "mdx.main", "mdx.config", "mdx.models", "mdx.evaluate", "mdx.inference"),
  "models": ("mdx.train", "mdx.main", "mdx.config", "mdx.data", "mdx.evaluate", "mdx.inference"),
  "inference": ("mdx.train", "mdx.main", "mdx.config"),
  "evaluate": ("mdx.train", "mdx.main", "mdx.config"),
}


def _files(room: str) -> list[pathlib.Path]:
  path = MDX / f"{room}.py"
  if path.exists():
    return [path]
  return [
    p
    for p in sorted((MDX / room).rglob("*.py"))
    if "cli" not in p.parts and p.name != "__main__.py"  # entry points (see the docstring)
  ]


def _imported(path: pathlib.Path) -> list[str]:
  names = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
  return names


def _bad(name: str, forbidden) -> bool:
  return any(
    name == f.rstrip(".") or name.startswith(f if f.endswith(".") else f + ".") for f in forbidden
  )


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_no_upward_import_statement(room):
  for path in _files(room):
    bad = [n for n in _imported(path) if _bad(n, FORBIDDEN[room])]
    assert not bad, f"{path.relative_to(MDX.parent)} imports {bad}"


def test_no_upward_import_at_run_time():
  """Importing every module of the lower rooms loads nothing of train (nor main)."""
  code = (
    "import sys, pkgutil, importlib\n"
    "import mdx.runtime\n"
    "for room in ('data', 'models', 'inference', 'evaluate'):\n"
    "  pkg = importlib.import_module('mdx.' + room)\n"
    "  for m in pkgutil.walk_packages(pkg.__path__, 'mdx.' + room + '.'):\n"
    "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
    "print(sorted(k for k in sys.modules if k.startswith(('mdx.train', 'mdx.main'))))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout


def test_the_rule_catches_an_upward_import(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from mdx.train import loop\n")
  assert _bad(_imported(bad)[0], FORBIDDEN["data"])
