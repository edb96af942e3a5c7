"""Every experiment file resolves, and sets only what differs from what it starts from.

An experiment starts from mdx.config.defaults(task), or from another experiment's config
(mdx.config.load_experiment), and should state only its changes: a restated default hides which
values are the experiment's choice and stops following the defaults when they change. The check
records every assignment get_config() makes and fails on one whose value the field already had,
except
  data.source and model.name, which say what an experiment is about (and decide which of its other
    fields exist), so they are stated even when they are the defaults;
  the fields an experiment lists in PINNED: equal to the defaults, but the experiment is wrong with
    any other value (e.g. no flips where left and right are labels), so a change of the defaults
    must not reach it.
"""

import glob
import os

import ml_collections
import pytest

import mdx.config
from mdx.config import load_experiment, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))
_MISSING = object()
IDENTITY = ("data.source", "model.name")


def _plain(value):
  """ConfigDicts and dicts as dicts, tuples and lists as lists: values compared as config.json has
  them."""
  if isinstance(value, (dict, ml_collections.ConfigDict)):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _restated(path: str, old, new) -> list[str]:
  """The fields of an assignment `path = new` whose value was already `old` (a dict assigned to a
  section is checked key by key)."""
  if old is _MISSING:  # a field the starting config lacks (e.g. a source's): a real change
    return []
  if isinstance(new, (dict, ml_collections.ConfigDict)) and isinstance(
    old, ml_collections.ConfigDict
  ):
    return [
      field
      for key, value in new.items()
      for field in _restated(f"{path}.{key}", old[key] if key in old else _MISSING, value)
    ]
  if path in IDENTITY or _plain(old) != _plain(new):
    return []
  return [path]


class _Recorder:
  """A ConfigDict that logs each assignment restating a field's current value."""

  def __init__(self, config, prefix: str, log: list):
    object.__setattr__(self, "_config", config)
    object.__setattr__(self, "_prefix", prefix)
    object.__setattr__(self, "_log", log)

  def _wrap(self, name, value):
    if isinstance(value, ml_collections.ConfigDict):
      return _Recorder(value, f"{self._prefix}{name}.", self._log)
    return value

  def _set(self, name, value):
    old = self._config[name] if name in self._config else _MISSING
    self._log.extend(_restated(f"{self._prefix}{name}", old, value))
    self._config[name] = value

  def __getattr__(self, name):
    return self._wrap(name, getattr(self._config, name))

  def __getitem__(self, name):
    return self._wrap(name, self._config[name])

  __setattr__ = __setitem__ = _set

  def update(self, *args, **kwargs):
    for name, value in dict(*args, **kwargs).items():
      self._set(name, value)


def _recorded(path: str, monkeypatch) -> tuple[ml_collections.ConfigDict, list[str], tuple]:
  """(experiment's config, its restated fields, its PINNED): defaults() hands out recorders, so an
  experiment built on another one (load_experiment inside it) is recorded from its first
  assignment."""
  log: list[str] = []
  real_defaults = mdx.config.defaults
  with monkeypatch.context() as patch:  # undone before resolve(), which calls defaults() too
    patch.setattr(
      mdx.config, "defaults", lambda *a, **k: _Recorder(real_defaults(*a, **k), "", log)
    )
    module = load_experiment(path)
    config = module.get_config()
  config = config._config if isinstance(config, _Recorder) else config
  return config, log, tuple(getattr(module, "PINNED", ()))


def test_the_experiments_are_found():
  assert len(EXPERIMENTS) >= 10, EXPERIMENTS


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_an_experiment_resolves_and_restates_nothing(path, monkeypatch):
  config, restated, pinned = _recorded(path, monkeypatch)
  assert set(pinned) <= set(restated), f"PINNED names fields the experiment does not pin: {pinned}"
  restated = [field for field in restated if field not in pinned]
  assert not restated, (
    f"{os.path.relpath(path, ROOT)} sets fields to the values they already have (the task's "
    f"defaults, or the experiment it builds on); drop these lines: {restated}"
  )
  resolved = resolve(config)
  assert resolved.task in ("classification", "segmentation")


def test_the_recorder_catches_a_restated_default(monkeypatch):
  log: list[str] = []
  c = _Recorder(mdx.config.defaults(), "", log)
  c.seed = 0
  c.train.steps = 601
  c.data.split = dict(by="patient", test=0.2)
  c.data.num_patients = 10  # not among the task's defaults: a change
  c.model.name = "densenet121"  # what the experiment trains: stated even as the default
  assert log == ["seed", "data.split.by"]
