"""The one data path of every task: record positions -> load -> transforms -> batches, with grain.

A task supplies two picklable callables and a list of grain transforms: `load(index) -> dict` reads
record `index` of its source (a 2D film: mdx.data.image.records; a 3D case:
mdx.data.volume.transforms), and the transforms (augmentation, standardisation, the last one shaping
the batch fields) run after it. Sharding by process, epochs, resampling, seeded random maps,
batching, worker processes and the iterator's checkpointable state live here once.

Training reads an endless, deterministic stream of record positions: epoch e is a permutation of the
training records (or a resampled list of them) drawn from (seed, e). Global batch g is positions
[g*G, (g+1)*G); process p of P takes every P-th position, so the global batch is the same set of
records whatever the number of hosts. Random augmentation draws from grain's per-element rng
(seed, position), so the numbers do not depend on worker count or scheduling. The stream's position
after step s is therefore s global batches, whatever the process count: a resumed run starts the
stream at its checkpoint's step (start_step) and sees exactly the batches an uninterrupted run would
have seen, with as many processes as it likes (a per-process iterator state would pin the count).

Evaluation reads each record of a split once, in order, and pads the last global batch with masked
rows (mask 0) so shapes stay static and nothing is dropped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np


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
      raise ValueError(
        "the training split is empty after resampling; check the split and the resample policy"
      )
    self._cache: dict[int, np.ndarray] = {0: first}
    self.num_epochs = math.ceil(positions / self.epoch_len) + 1

  def _epoch(self, e: int) -> np.ndarray:
    if e not in self._cache:
      if len(self._cache) > 2:
        self._cache.clear()
      indices = np.asarray(self._epoch_fn(e), np.int64)
      if len(indices) != self.epoch_len:
        raise ValueError(
          f"epoch {e} has {len(indices)} records but epoch 0 had {self.epoch_len}; "
          "a resample policy must give epochs of equal length"
        )
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
  """Epoch e = indices[resampled_indices(labels[indices], policy, seed, e)]
  (see mdx.data.resample)."""

  indices: np.ndarray
  labels: np.ndarray
  policy: dict
  seed: int
  findings: tuple[str, ...] | None = None

  def __call__(self, epoch: int) -> np.ndarray:
    from mdx.data import resample

    picked = resample.resampled_indices(
      self.labels[self.indices], self.policy, self.seed, epoch, findings=self.findings
    )
    return self.indices[np.asarray(picked, np.int64)]


def epochs(
  indices: np.ndarray,
  seed: int,
  resample_policy: dict | None = None,
  labels: np.ndarray | None = None,
  findings: tuple[str, ...] | None = None,
) -> Callable[[int], np.ndarray]:
  """The epoch function of a training split: shuffled, or resampled by `resample_policy` (which
  needs the source's labels [N, C])."""
  indices = np.asarray(indices, np.int64)
  if resample_policy:
    return ResampledEpochs(indices, labels, dict(resample_policy), seed, findings)
  return ShuffledEpochs(indices, seed)


@dataclasses.dataclass(frozen=True)
class MixedEpochs:
  """Epoch e draws counts[k] records from dataset k: the next records of its own epochs
  (parts[k], shuffled or resampled within the dataset; epoch e uses its epochs e*m .. e*m+m-1, m
  the fewest that hold counts[k]), all shuffled together by (seed, e). So a dataset with less than
  its share of records is repeated, one with more is subsampled (different records each epoch),
  and every epoch has sum(counts) records."""

  parts: tuple[Callable[[int], np.ndarray], ...]
  counts: tuple[int, ...]
  seed: int

  def __call__(self, epoch: int) -> np.ndarray:
    drawn = []
    for fn, count in zip(self.parts, self.counts):
      length = len(fn(0))
      m = math.ceil(count / length)
      own = np.concatenate([np.asarray(fn(epoch * m + j), np.int64) for j in range(m)])
      drawn.append(own[:count])
    return np.random.default_rng([self.seed, epoch, 0x313]).permutation(np.concatenate(drawn))


def mixed_epochs(
  groups: Sequence[np.ndarray],
  weights: Sequence[float],
  seed: int,
  resample_policy: dict | None = None,
  labels: np.ndarray | None = None,
  findings: tuple[str, ...] | None = None,
) -> MixedEpochs:
  """The epoch function of a training split drawn from several datasets in proportion to
  `weights` (groups[k]: dataset k's training record indices): each epoch as long as the datasets'
  own epochs together, dataset k's share weights[k] / sum(weights) of it (at least one record).
  A resample policy applies within each dataset (its classes' frequencies are its own)."""
  if len(groups) != len(weights) or not groups:
    raise ValueError(f"{len(groups)} datasets but {len(weights)} weights")
  if any(not w > 0 for w in weights):
    raise ValueError(f"mixture weights {list(weights)} must all be > 0")
  parts = []
  for k, group in enumerate(groups):
    if len(group) == 0:
      raise ValueError(f"dataset {k} of the mixture has no training records")
    parts.append(epochs(group, seed + k, resample_policy, labels, findings))
  total = sum(len(fn(0)) for fn in parts)
  share = np.asarray(weights, np.float64) / float(np.sum(weights))
  counts = tuple(max(1, int(round(total * s))) for s in share)
  return MixedEpochs(tuple(parts), counts, seed)


def train_dataset(
  load: Callable[[int], dict],
  epoch_fn: Callable[[int], np.ndarray],
  *,
  batch_size: int,
  steps: int,
  transforms: Sequence[Any] = (),
  seed: int = 0,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  workers: int = 0,
  prefetch: int = 2,
) -> grain.IterDataset:
  """Per-process batches of the training stream from global batch `start_step` on (the step a run
  resumes from). batch_size is the GLOBAL batch.

  load: record index -> dict (picklable: it runs in worker processes); transforms: grain Maps and
  RandomMaps applied in order after it.
  """
  if batch_size % process_count:
    raise ValueError(f"global batch {batch_size} does not divide over {process_count} processes")
  stream = EpochStream(epoch_fn, positions=steps * batch_size)
  # The seed comes first: grain derives each random map's per-element rng from it and the position.
  # Records are loaded and augmented BEFORE the dataset is sliced by process (a lazy view: each
  # process still loads only its own), so a record's random crop or flip depends on its position in
  # the global stream, not in this process's share: any process count sees the same batches.
  ds = _add_transforms(grain.MapDataset.source(stream).seed(seed).map(load), transforms)
  ds = ds[process_index::process_count].batch(batch_size // process_count, drop_remainder=True)
  ds = ds[start_step:]  # lazy: nothing before the resumed step is loaded
  it = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=1 if workers else 2, prefetch_buffer_size=prefetch)
  )
  if workers:
    it = it.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch),
      worker_init_fn=exit_with_parent,
    )
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


@dataclasses.dataclass(frozen=True)
class LoadEvalRecord:
  """`load` for a (record index, valid) pair: padded rows get mask 0."""

  load: Callable[[int], dict]

  def __call__(self, item) -> dict:
    index, valid = item
    record = self.load(index)
    record["mask"] = np.float32(valid)
    return record


def eval_dataset(
  load: Callable[[int], dict],
  indices: np.ndarray,
  *,
  batch_size: int,
  transforms: Sequence[Any] = (),
  process_index: int = 0,
  process_count: int = 1,
) -> grain.IterDataset:
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
  ds = grain.MapDataset.source(items).map(LoadEvalRecord(load))
  ds = _add_transforms(ds, transforms).batch(local)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
