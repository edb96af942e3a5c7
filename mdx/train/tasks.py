"""The Task protocol: what the generic training loop needs from classification, segmentation, ...

The loop (mdx/train/loop.py) owns devices, steps, checkpoints, logging and resumption; a task owns
its records, transforms, model, loss and evaluation. Each task is one class registered in TASKS; the
loop asks it for everything. Its config (defaults and checks) is its piece in mdx.config
(config.TASKS[name]): config is resolved here (run, sweep), so it cannot ask this room.

`evaluator` is a mdx.train.loop.Evaluator: it runs the model over a split's padded batches and
returns numpy logits for the valid rows, so tasks never touch devices. `geometry`
(mdx.runtime.BatchGeometry) is the global batch and this process's share of it, decided by the loop
from the mesh.

A task is a vertical slice: its model leaves the run as a bundle of its own kind (bundle_kind, a
mdx.inference.bundle.BundleKind: the spec, the weight check, predict and the model card), and what
its report measured reaches the bundle as the Report that report returns, which mdx.train.run hands
to bundle_contents: no state kept between the two calls.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

if TYPE_CHECKING:  # the tasks' own modules import it
  from mdx.inference.bundle import BundleKind


@dataclasses.dataclass(frozen=True)
class Report:
  """What a task's report returns: the folder it wrote, and what the bundle states of the reported
  state (thresholds and calibration chosen on validation, the measured results), a value of the
  task's own that only its bundle_contents reads."""

  folder: str
  measured: Any


class Task(Protocol):
  # Which sources the task reads: mdx.data.sources.IMAGE or VOLUME.
  source_kind: ClassVar[str]
  # What its bundles are (mdx.inference.classifier.KIND, ...): bundle_contents builds that spec.
  bundle_kind: ClassVar[BundleKind]

  @classmethod
  def headline(cls, report_dir: str) -> dict[str, tuple[float, tuple | None]]:
    """The report's main test results, {column: (value, 95% CI or None)}, for sweep tables."""

  def model(self, bn_axis_name: str | None) -> Any:
    """A Flax module called as model.apply(variables, x, train=...)."""

  def sample_input(self) -> np.ndarray:
    """A zero batch [1, ...] to initialise parameters."""

  def init_variables(self, params, batch_stats) -> tuple[Any, Any]:
    """(params, batch_stats) after e.g. restoring a pretrained backbone."""

  def optimizer(self, params) -> Any:
    """An optax transform (e.g. with frozen layers)."""

  def loss(self, logits, batch: dict) -> Any:
    """Per-example loss [B]."""

  def train_data(self, geometry, start_step: int = 0) -> Any:
    """A grain IterDataset of this process's share of each global training batch, from batch
    start_step on (mdx.data.pipeline.train_dataset)."""

  def record_names(self, indices) -> list[str]:
    """Readable names (image or case ids) of source records, for messages."""

  def validate(self, evaluator) -> dict[str, float]:
    """Validation metrics, including config.train.best_metric."""

  def report(
    self,
    evaluator,
    workdir: str,
    history: list[dict],
    out_dir: str | None = None,
    overwrite: bool = False,
  ) -> Report:
    """Evaluates config.eval.split (and validation) and writes the report into out_dir (default
    WORKDIR/report) through an OutputFolder (mdx.outputs): a file there mdx did not write is
    refused unless overwrite; returns its folder and what the bundle needs of it."""

  def bundle_contents(self, evaluator, report: Report) -> tuple[dict, dict, dict]:
    """(bundle spec of bundle_kind, inference variables, bootstrap samples) of the state `report`
    evaluated, for mdx.inference.bundle.write: input and output specs, thresholds and calibration
    chosen on validation, the measured results, and the training data's provenance (never the
    data)."""


# config.task -> 'module:Class', imported lazily so one task's dependencies never load for another.
TASKS = {
  "classification": "mdx.train.classification:ClassificationTask",
  "segmentation": "mdx.train.segmentation:SegmentationTask",
}


def task_class(name: str) -> type[Task]:
  if name not in TASKS:
    raise ValueError(f"config.task={name!r} is unknown; choose one of {sorted(TASKS)}")
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def make_task(config, workdir: str | None = None) -> Task:
  """The task of config.task; `workdir` receives what building it reports (e.g. the up-front record
  check's lists of skipped and constant records, mdx.data.check)."""
  return task_class(config.task)(config, workdir=workdir)
