"""The task interface: what the generic training loop needs from classification, segmentation, ...

The loop (mdx/train/loop.py) owns devices, steps, checkpoints, logging and resumption; a task owns its
data, model, loss and evaluation. A task is built from the resolved config and offers:

  model(bn_axis_name) -> flax module called as model.apply(variables, x, train=...)
  sample_input() -> numpy batch [1, ...] used to initialise parameters
  init_variables(params, batch_stats) -> (params, batch_stats)   e.g. restore a pretrained backbone
  optimizer(params) -> optax transform                            e.g. with frozen layers
  loss(logits, batch) -> per-example loss [B]
  train_data(process_index, process_count) -> grain IterDataset of per-process batches (dicts)
  validate(evaluator) -> {metric: float}, including config.train.best_metric
  finalize(evaluator, workdir, history) -> path of the report     (test evaluation, report)

`evaluator` is a mdx.train.loop.Evaluator: it runs the model over a split's padded batches and returns
numpy logits for the valid rows, so tasks never touch devices.
"""

from __future__ import annotations

import importlib

# config.task -> 'module:Class', imported lazily so one task's dependencies never load for another.
TASKS = {
    "classification": "mdx.train.classification:ClassificationTask",
    "segmentation": "mdx.train.segmentation:SegmentationTask",
}


def make_task(config):
  if config.task not in TASKS:
    raise ValueError(f"config.task={config.task!r} is unknown; choose one of {sorted(TASKS)}")
  module, cls = TASKS[config.task].split(":")
  return getattr(importlib.import_module(module), cls)(config)
