"""Input pipeline speed: images/s from records to augmented, standardised batches.

  python benchmarks/input_pipeline.py --config=experiments/nih_course_sample.py [--batches=20]
      [--batch-size=16] [--workers=0,N]

Runs the training pipeline's stages (mdx.data.pipeline's LoadRecord and finalize, the config's
augmentation and standardisation, batching, grain worker processes) twice
per worker count: reading the prepared ArrayRecord files (config.data.prepared_dir; prepare them
first) and decoding the original image files. Worker count 0 means all work in the main process
(one core); N grain worker processes (default: all cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np


def _config(path):
  spec = importlib.util.spec_from_file_location("experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def measure(config, prepared: bool, workers: int, batches: int, batch_size: int) -> float:
  import grain

  from mdx.data import augment, pipeline, sources
  data = config.data
  data.prepared_dir = data.prepared_dir if prepared else ""
  source = sources.make_source(data, config.seed)
  transforms = augment.make(data.augment, data.image_size) + augment.standardize(data.standardize)
  # The training pipeline's stages (pipeline.LoadRecord -> augment -> standardise -> finalize ->
  # batch -> grain workers), built here with the seed set before the random maps.
  order = np.random.default_rng(config.seed).permutation(np.resize(np.arange(len(source)),
                                                                   (batches + 3) * batch_size))
  ds = grain.MapDataset.source(order).seed(config.seed).map(pipeline.LoadRecord(source, data.image_size))
  for t in transforms:
    ds = ds.random_map(t) if isinstance(t, grain.transforms.RandomMap) else ds.map(t)
  ds = ds.map(pipeline.finalize).batch(batch_size, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if workers else 2, prefetch_buffer_size=2))
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
  it = iter(ds)
  for _ in range(2):  # warm-up: worker start and first decodes
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch["image"].shape[0] == batch_size
  return batches * batch_size / elapsed


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="experiments/nih_course_sample.py")
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--workers", default=f"0,{os.cpu_count()}")
  args = p.parse_args()
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags; they must count as parsed before workers start
  base = _config(args.config)
  print(f"config {args.config}: {base.data.source}, image_size {base.data.image_size}, "
        f"augment {base.data.augment}, {os.cpu_count()} cores")
  for workers in [int(w) for w in args.workers.split(",")]:
    for prepared in (True, False):
      rate = measure(_config(args.config), prepared, workers, args.batches, args.batch_size)
      print(f"workers={workers:2d} {'prepared records' if prepared else 'original files  '}: "
            f"{rate:8.1f} images/s")


if __name__ == "__main__":
  main()
