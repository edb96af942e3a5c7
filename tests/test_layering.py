"""Imports run downward, between every room of mdx, with no exemptions.

The rooms: the packages and top-level modules of mdx (runtime, cli, jsonio, outputs, losses, config,
data, models, inference, evaluate, train, commands). Each sits on a level and imports only rooms on
lower levels:

  commands                  every entry point (python -m mdx COMMAND): may import everything
  train                     the loop, the tasks' training, run and sweep: resolve configs
  config                    the closed config: what tasks, sources, models and evaluate declare
  inference                 bundles, predictors, predict on files, external validation
  evaluate                  metrics, reports, calibration, Grad-CAM, model card sections
  data | models | losses    the library's base: none of the three imports another
  cli | runtime | jsonio |  one-line errors, devices, JSON of numbers, whole and owned output
  outputs                   files: nothing of mdx

So config never imports train (a task's config is its piece in mdx.config, as its bundle kind is
its piece in inference), inference reads evaluate and not the other way round, and nothing imports
commands but the front door (mdx/__main__.py) and the mdx.main shim, which import nothing else.
The room-level graph, computed from every import statement (at module level or inside a function),
must also be acyclic: a cycle is named with the imports that make it. Library rooms hold no entry
points: no `if __name__ == "__main__":` and no absl flag definitions outside mdx/commands.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

MDX = pathlib.Path(__file__).resolve().parents[1] / "mdx"
LEVELS = [
  ("commands",),
  ("train",),
  ("config",),
  ("inference",),
  ("evaluate",),
  ("data", "models", "losses"),
  ("cli", "runtime", "jsonio", "outputs"),
]
LEVEL = {room: i for i, rooms in enumerate(LEVELS) for room in rooms}
FRONT_DOORS = ("__main__", "main")  # python -m mdx COMMAND, python -m mdx.main: commands only
ENTRY_POINTS = {MDX / "__main__.py", MDX / "main.py"}


def _room(path: pathlib.Path) -> str:
  return path.relative_to(MDX).parts[0].removesuffix(".py")


def _files() -> list[pathlib.Path]:
  return sorted(MDX.rglob("*.py"))


def test_every_room_has_a_level():
  rooms = {_room(p) for p in _files()} - {"__init__", *FRONT_DOORS}
  missing = sorted(rooms - set(LEVEL))
  assert not missing, f"rooms without a level: {missing} (add them to LEVELS and the docstring)"


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
  """(mdx module or package imported, line) of every import statement, functions included."""
  names = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names += [(node.module, node.lineno)]
      names += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
  return [(n, line) for n, line in names if n.startswith("mdx.")]


def _imported_room(name: str) -> str | None:
  """The room of an imported mdx name: mdx.train.run -> train, mdx.config -> config."""
  head = name.split(".")[1]
  return head if head in LEVEL or head in FRONT_DOORS else None


def room_graph() -> dict[str, dict[str, list[str]]]:
  """room -> {room it imports: ['path:line', ...]} over every file of mdx."""
  graph: dict[str, dict[str, list[str]]] = {}
  for path in _files():
    here = _room(path)
    for name, line in _imports(path):
      there = _imported_room(name)
      if there is not None and there != here:
        where = f"{path.relative_to(MDX.parent)}:{line}"
        graph.setdefault(here, {}).setdefault(there, []).append(where)
  return graph


def find_cycle(edges: dict[str, set[str]] | dict[str, dict]) -> list[str] | None:
  """A cycle of the directed graph as [a, b, ..., a], or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in sorted(edges):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_rooms_import_each_other_without_a_cycle():
  graph = room_graph()
  cycle = find_cycle(graph)
  if cycle:
    steps = [f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:])]
    pytest.fail("rooms import each other in a cycle: " + "; ".join(steps))


def module_graph(room: str) -> dict[str, dict[str, list[str]]]:
  """module -> {module of the same room it imports: ['path:line', ...]} (imports inside functions
  included; a package's __init__ is left out, as it only names its modules)."""
  files = [p for p in _files() if _room(p) == room and p.name != "__init__.py"]
  modules = {".".join(p.relative_to(MDX.parent).with_suffix("").parts): p for p in files}
  graph: dict[str, dict[str, list[str]]] = {}
  for module, path in modules.items():
    for name, line in _imports(path):
      if name in modules and name != module:
        where = f"{path.relative_to(MDX.parent)}:{line}"
        graph.setdefault(module, {}).setdefault(name, []).append(where)
  return graph


def test_the_modules_of_data_import_each_other_without_a_cycle():
  """Inside mdx.data, too, dependencies run one way (sources -> image.tfds_builders, which is
  handed the raw source's build function rather than importing the registry back)."""
  graph = module_graph("data")
  assert "mdx.data.image.tfds_builders" in graph.get("mdx.data.sources", {})
  cycle = find_cycle(graph)
  if cycle:
    steps = [f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:])]
    pytest.fail("modules of mdx.data import each other in a cycle: " + "; ".join(steps))


@pytest.mark.parametrize("room", sorted(LEVEL))
def test_a_room_imports_only_lower_levels(room):
  bad = [
    f"{there} ({', '.join(lines)})"
    for there, lines in room_graph().get(room, {}).items()
    if there in FRONT_DOORS or LEVEL[there] <= LEVEL[room]
  ]
  assert not bad, f"{room} (level {LEVELS[LEVEL[room]]}) imports {bad}"


def test_only_the_front_doors_import_commands_and_they_import_nothing_else():
  graph = room_graph()
  for door in FRONT_DOORS:
    assert set(graph.get(door, {})) <= {"commands"}, (door, graph.get(door))
  importers = sorted(r for r, out in graph.items() if "commands" in out)
  assert set(importers) <= set(FRONT_DOORS), f"{importers} import mdx.commands"


def _defines_flags(node: ast.AST) -> bool:
  """A call to absl's or ml_collections' flag definitions (flags.DEFINE_*, DEFINE_config_file,
  mark_flags_as_required...)."""
  if not isinstance(node, ast.Call):
    return False
  fn = node.func
  name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
  return name.startswith("DEFINE_") or name.startswith("mark_flag")


def _is_main_guard(node: ast.AST) -> bool:
  return (
    isinstance(node, ast.If)
    and isinstance(node.test, ast.Compare)
    and isinstance(node.test.left, ast.Name)
    and node.test.left.id == "__name__"
  )


def test_library_rooms_hold_no_entry_points():
  bad = []
  for path in _files():
    if path in ENTRY_POINTS or _room(path) == "commands":
      continue
    tree = ast.parse(path.read_text())
    where = path.relative_to(MDX.parent)
    bad += [f"{where}:{n.lineno} __main__ guard" for n in tree.body if _is_main_guard(n)]
    bad += [f"{where}:{n.lineno} defines a flag" for n in ast.walk(tree) if _defines_flags(n)]
  assert not bad, f"entry points outside mdx/commands: {bad}"


@pytest.mark.slow  # starts a Python process per room: the full tier
def test_no_higher_room_is_loaded_at_run_time():
  """Importing every module of a room, level by level from the bottom, loads no module of a room
  above it (lazy imports inside functions included: config resolves each task's defaults)."""
  order = [room for rooms in reversed(LEVELS) for room in rooms]
  code = f"""
import importlib, pkgutil, sys
LEVEL = {LEVEL!r}
for room in {order!r}:
  module = importlib.import_module('mdx.' + room)
  for m in pkgutil.walk_packages(getattr(module, '__path__', []), 'mdx.' + room + '.'):
    importlib.import_module(m.name)
  if room == 'config':
    for task in module.TASKS:
      module.resolve(module.defaults(task))
  above = sorted(
    k for k in sys.modules
    if k.startswith('mdx.') and LEVEL.get(k.split('.')[1], -1) < LEVEL[room]
  )
  if above:
    print(room, 'loads', above)
"""
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=MDX.parent
  )
  assert out.stdout.strip() == "", out.stdout


def test_the_rules_catch_what_they_forbid(tmp_path):
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
  bad = tmp_path / "bad.py"
  bad.write_text(
    "from mdx.train import loop\nfrom absl import flags\n\n\ndef f():\n"
    "  flags.DEFINE_string('x', None, '')\n\n\nif __name__ == '__main__':\n  f()\n"
  )
  tree = ast.parse(bad.read_text())
  assert _imported_room(_imports(bad)[0][0]) == "train" and LEVEL["train"] < LEVEL["data"]
  assert any(_defines_flags(n) for n in ast.walk(tree))
  assert any(_is_main_guard(n) for n in tree.body)
