"""Grain pipelines: records -> float images -> augment -> standardize -> batches.

Training reads an endless, deterministic stream of record positions: epoch e is a permutation of the
training records (or a resampled list of them) drawn from (seed, e). Global batch g is positions
[g*G, (g+1)*G); process p of P takes every P-th position, so the global batch is the same set of records
whatever the number of hosts. Random augmentation draws from grain's per-element rng (seed, position), so
the numbers do not depend on worker count or scheduling, and the iterator's state (a position) is all a
checkpoint needs to resume with exactly the batches an uninterrupted run would have seen.

Evaluation reads each record of a split once, in order, and pads the last global batch with masked rows
(mask 0) so shapes stay static and nothing is dropped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from mdx.data.cxr import images

# --------------------------------------------------------------------------------------------------
# Per-record transforms (plain callables: grain pickles them into worker processes).


def to_float_image(image: np.ndarray, image_size: int | None) -> np.ndarray:
  """uint8/uint16/float [H, W] or [H, W, C] -> float32 [S, S, C] in [0, 1].

  Integer films are resized by area averaging (mdx.data.cxr.images.resize) before conversion; float
  images bilinearly.
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {image.shape}")
  resize = bool(image_size) and image.shape[:2] != (image_size, image_size)
  if resize and image.dtype in (np.uint8, np.uint16):
    image, resize = images.resize(image, image_size), False
  image = images.to_float(image)
  if resize:
    channels = [np.asarray(Image.fromarray(image[..., c], mode="F").resize(
        (image_size, image_size), Image.BILINEAR)) for c in range(image.shape[-1])]
    image = np.stack(channels, -1)
  return image


@dataclasses.dataclass(frozen=True)
class LoadRecord:
  """Reads record `index` of the source and returns it with a float image."""
  source: Any
  image_size: int

  def __call__(self, index) -> dict:
    record = self.source[int(index)]
    return {"image": to_float_image(record["image"], self.image_size),
            "labels": np.asarray(record["labels"], np.float32),
            "index": np.int64(index)}


@dataclasses.dataclass(frozen=True)
class LoadEvalRecord:
  """Like LoadRecord for a (record index, valid) pair; padded rows get mask 0."""
  load: LoadRecord

  def __call__(self, item) -> dict:
    index, valid = item
    record = self.load(index)
    record["mask"] = np.float32(valid)
    return record


def finalize(record: dict) -> dict:
  """Unknown labels (nan) become 0 with label_mask 0, so the loss can leave them out."""
  labels = record["labels"]
  known = ~np.isnan(labels)
  out = dict(record)
  out["labels"] = np.where(known, labels, 0.0).astype(np.float32)
  out["label_mask"] = known.astype(np.float32)
  return out


def _add_transforms(ds, transforms: Sequence[Any]):
  for t in transforms:
    if isinstance(t, grain.transforms.RandomMap):
      ds = ds.random_map(t)
    else:
      ds = ds.map(t)
  return ds


# --------------------------------------------------------------------------------------------------
# The endless training stream.


class EpochStream:
  """Random-access record positions, epoch after epoch from epoch_fn(e), enough epochs to cover
  `positions` reads (a source for grain)."""

  def __init__(self, epoch_fn: Callable[[int], np.ndarray], positions: int):
    self._epoch_fn = epoch_fn
    first = np.asarray(epoch_fn(0), np.int64)
    self.epoch_len = len(first)
    if self.epoch_len == 0:
      raise ValueError("the training split is empty after resampling; check the split and the "
                       "resample policy")
    self._cache: dict[int, np.ndarray] = {0: first}
    self.num_epochs = math.ceil(positions / self.epoch_len) + 1

  def _epoch(self, e: int) -> np.ndarray:
    if e not in self._cache:
      if len(self._cache) > 2:
        self._cache.clear()
      indices = np.asarray(self._epoch_fn(e), np.int64)
      if len(indices) != self.epoch_len:
        raise ValueError(f"epoch {e} has {len(indices)} records but epoch 0 had {self.epoch_len}; "
                         "a resample policy must give epochs of equal length")
      self._cache[e] = indices
    return self._cache[e]

  def __len__(self) -> int:
    return self.epoch_len * self.num_epochs

  def __getitem__(self, k: int) -> int:
    e, j = divmod(int(k), self.epoch_len)
    return int(self._epoch(e)[j])

  def __getstate__(self):
    return {**self.__dict__, "_cache": {}}


@dataclasses.dataclass(frozen=True)
class ShuffledEpochs:
  """Epoch e = a permutation of `indices` drawn from (seed, e)."""
  indices: np.ndarray
  seed: int

  def __call__(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.indices)


@dataclasses.dataclass(frozen=True)
class ResampledEpochs:
  """Epoch e = indices[resampled_indices(labels[indices], policy, seed, e)] (see mdx.data.resample)."""
  indices: np.ndarray
  labels: np.ndarray
  policy: dict
  seed: int
  findings: tuple[str, ...] | None = None

  def __call__(self, epoch: int) -> np.ndarray:
    from mdx.data import resample
    picked = resample.resampled_indices(self.labels[self.indices], self.policy, self.seed, epoch,
                                        findings=self.findings)
    return self.indices[np.asarray(picked, np.int64)]


def train_dataset(source, indices: np.ndarray, *, batch_size: int, steps: int, image_size: int,
                  transforms: Sequence[Any] = (), seed: int = 0, resample_policy: dict | None = None,
                  process_index: int = 0, process_count: int = 1, workers: int = 0,
                  prefetch: int = 2) -> grain.IterDataset:
  """Per-process batches of the training stream. batch_size is the GLOBAL batch."""
  if batch_size % process_count:
    raise ValueError(f"global batch {batch_size} does not divide over {process_count} processes")
  local_batch = batch_size // process_count
  indices = np.asarray(indices, np.int64)
  if resample_policy:
    epoch_fn = ResampledEpochs(indices, source.labels(), dict(resample_policy), seed,
                               tuple(source.findings))
  else:
    epoch_fn = ShuffledEpochs(indices, seed)
  stream = EpochStream(epoch_fn, positions=steps * batch_size)
  # The seed comes first: grain derives each random map's per-element rng from it and the position.
  ds = grain.MapDataset.source(stream).seed(seed)[process_index::process_count]
  ds = ds.map(LoadRecord(source, image_size))
  ds = _add_transforms(ds, transforms).map(finalize)
  ds = ds.batch(local_batch, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if workers else 2,
                                            prefetch_buffer_size=prefetch))
  if workers:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=prefetch),
                        worker_init_fn=exit_with_parent)
  return it


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Runs in each grain worker: exit as soon as the training process is gone.

  A training process killed with SIGKILL (preemption, OOM killer, a scheduler) cannot stop its
  workers; without this they live on as orphans, holding CPU, memory and the job's output pipes.
  """
  del worker_index, worker_count
  import os
  import threading
  import time

  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(0)

  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def eval_positions(num_records: int, global_batch: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions 0..n-1 padded to a multiple of the global batch, and their validity."""
  padded = max(1, math.ceil(num_records / global_batch)) * global_batch
  pos = np.arange(padded)
  return np.minimum(pos, max(num_records - 1, 0)), pos < num_records


def eval_dataset(source, indices: np.ndarray, *, batch_size: int, image_size: int,
                 transforms: Sequence[Any] = (), process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """Every record of `indices` once, in order, in per-process shares of padded global batches."""
  indices = np.asarray(indices, np.int64)
  if len(indices) == 0:
    raise ValueError("the evaluation split is empty")
  if batch_size % process_count:
    raise ValueError(f"eval batch {batch_size} does not divide over {process_count} processes")
  local = batch_size // process_count
  pos, valid = eval_positions(len(indices), batch_size)
  # Process p takes rows [p*local, (p+1)*local) of every global batch.
  rows = pos.reshape(-1, process_count, local)[:, process_index].ravel()
  row_valid = valid.reshape(-1, process_count, local)[:, process_index].ravel()
  items = [(int(indices[r]), bool(v)) for r, v in zip(rows, row_valid)]
  ds = grain.MapDataset.source(items).map(LoadEvalRecord(LoadRecord(source, image_size)))
  ds = _add_transforms(ds, transforms).map(finalize).batch(local)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
