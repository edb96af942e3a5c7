"""Every registered task implements the Task protocol, resolves its own defaults and brings its
bundle kind: the kind is registered under its task name, so a bundle of it loads, predicts and
gets a model card without any reader testing the task's name."""

import dataclasses
import inspect

import pytest

from mdx import config as config_lib
from mdx.data import sources
from mdx.inference import bundle as bundle_lib
from mdx.train import tasks

PROTOCOL = sorted(
  {name for name in vars(tasks.Task) if not name.startswith("_")} | set(tasks.Task.__annotations__)
)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_task_implements_the_protocol(name):
  cls = tasks.task_class(name)
  missing = [member for member in PROTOCOL if not hasattr(cls, member)]
  assert not missing, f"{cls.__name__} lacks {missing}"
  assert cls.source_kind in (sources.IMAGE, sources.VOLUME)
  assert callable(cls.bundle_contents)  # every task's model leaves its run as a bundle
  config = config_lib.resolve(config_lib.defaults(name))
  assert config.task == name
  assert sources.spec(config.data.source).kind == cls.source_kind


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_task_brings_a_registered_bundle_kind(name):
  kind = tasks.task_class(name).bundle_kind
  assert isinstance(kind, bundle_lib.BundleKind)
  assert bundle_lib.kind(kind.task) is kind  # what load, predict and the card look up
  unset = [f.name for f in dataclasses.fields(kind) if getattr(kind, f.name) is None]
  assert set(unset) <= {"sniff", "check_options"}, unset
  assert {"model", "input"} <= set(kind.required)  # the weight check and check_spec read them
  assert "standardize" in kind.required["input"]
  assert kind.suffixes and all(s.startswith(".") and s == s.lower() for s in kind.suffixes)
  # what predict can pass on (engine: the backend that runs the network, mdx.inference.engines)
  assert set(kind.options) <= {"gradcam", "gradcam_layer", "engine"}
  # what the report measured reaches the bundle as an argument, not as state of the task
  assert "report" in inspect.signature(tasks.task_class(name).bundle_contents).parameters


def test_every_bundle_kind_is_registered_under_its_task():
  for task in bundle_lib.KINDS:
    assert bundle_lib.kind(task).task == task
  with pytest.raises(ValueError, match="bundle task 'detection' is unknown"):
    bundle_lib.kind("detection")


def test_an_unknown_task_is_named():
  with pytest.raises(ValueError, match="config.task='detection' is unknown"):
    tasks.task_class("detection")
