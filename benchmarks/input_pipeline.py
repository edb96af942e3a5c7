"""Input pipeline speed: images/s from records to augmented, standardised batches.

  python benchmarks/input_pipeline.py --config=experiments/nih_course_sample.py [--batches=20]
      [--batch_size=16] [--workers=0,N]

Runs the classification task's training stream (mdx.data.pipeline with the task's record loading,
augmentation, standardisation, batching and grain worker processes: the batches training sees) twice
per worker count: reading the prepared ArrayRecord files (config.data.prepared_dir; prepared on
first use) and decoding the original image files. Worker count 0 means all work in the main
process (one core); N grain worker processes (default: all cores).
"""

from __future__ import annotations

import argparse
import os
import time


def _config(path):
  from mdx import config as config_lib

  return config_lib.load_experiment(path).get_config()


def measure(config, prepared: bool, workers: int, batches: int, batch_size: int) -> float:
  """Images/s of the classification task's own training stream (a single process's batches)."""
  from mdx import config as config_lib
  from mdx.runtime import BatchGeometry
  from mdx.train.classification import ClassificationTask

  config.data.prepared_dir = config.data.prepared_dir if prepared else ""
  config.data.workers = workers
  config.train.batch_size = batch_size
  config.train.steps = batches + 2
  task = ClassificationTask(config_lib.resolve(config))
  it = iter(task.train_data(BatchGeometry(batch_size)))
  for _ in range(2):  # warm-up: worker start and first decodes
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch["image"].shape[0] == batch_size
  return batches * batch_size / elapsed


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--config", default="experiments/nih_course_sample.py")
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--workers", default=f"0,{os.cpu_count()}")
  args = p.parse_args()
  from absl import flags

  # grain reads absl flags; they must count as parsed before workers start
  flags.FLAGS.mark_as_parsed()
  base = _config(args.config)
  print(
    f"config {args.config}: {base.data.source}, image_size {base.data.image_size}, "
    f"augment {base.data.augment}, {os.cpu_count()} cores"
  )
  for workers in [int(w) for w in args.workers.split(",")]:
    for prepared in (True, False):
      rate = measure(_config(args.config), prepared, workers, args.batches, args.batch_size)
      print(
        f"workers={workers:2d} {'prepared records' if prepared else 'original files  '}: "
        f"{rate:8.1f} images/s"
      )


if __name__ == "__main__":
  main()
