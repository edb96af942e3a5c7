"""Every registered task implements the Task protocol and resolves its own defaults."""

import pytest

from mdx import config as config_lib
from mdx.data import sources
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


def test_an_unknown_task_is_named():
  with pytest.raises(ValueError, match="config.task='detection' is unknown"):
    tasks.task_class("detection")
