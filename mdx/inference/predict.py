"""Batched prediction on the device mesh: a compiled forward pass with running BatchNorm statistics.

The batch is split over the mesh's 'data' axis and each device runs the model on its rows under
shard_map (as the training steps do), so a model's reshapes never see a sharded batch axis. Used by
whole-scan sliding windows (mdx.inference.sliding_window) and any task that predicts outside the
training loop. read_ahead decodes the next chunk of inputs on threads while the model runs on this
one (predict on files, external validation).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mdx import runtime

ACTIVATIONS = ("softmax", "sigmoid", "none")


def make_predict_step(model, mesh: Mesh, input_key: str = "image"):
  """Returns jit(predict)(variables, batch) -> logits, sharded like the batch.

  variables: {'params', 'batch_stats'} (or anything with those attributes, e.g. a TrainState).
  """

  def local_predict(variables: Any, batch: dict[str, Any]):
    params, stats = (
      (variables["params"], variables.get("batch_stats", {}))
      if isinstance(variables, dict)
      else (variables.params, variables.batch_stats)
    )
    return model.apply({"params": params, "batch_stats": stats}, batch[input_key], train=False)

  return jax.jit(
    jax.shard_map(
      local_predict, mesh=mesh, in_specs=(P(), P(runtime.DATA)), out_specs=P(runtime.DATA)
    ),
    compiler_options=runtime.compiler_options(),
  )


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
  """Logits [..., K] -> probabilities by 'softmax' (exclusive classes), 'sigmoid' or 'none'."""
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation={activation!r}; choose one of {ACTIVATIONS}")
  if activation == "none":
    return np.asarray(logits)
  return np.asarray(
    jax.nn.softmax(logits, -1) if activation == "softmax" else jax.nn.sigmoid(logits)
  )


def make_predict_fn(
  model, mesh: Mesh, activation: str = "softmax", input_key: str = "image"
) -> Callable[[Any, np.ndarray], np.ndarray]:
  """(variables, images [B, ...] numpy) -> numpy probabilities [B, ..., K] on every host.

  B must be a multiple of the mesh's device count (runtime.check_batch says which). On a global
  mesh B is the global batch (each process passes its rows, all get every row back); on a
  runtime.local_mesh it is this process's batch and nothing is exchanged with other processes."""
  step = make_predict_step(model, mesh, input_key)

  def predict(variables, images: np.ndarray) -> np.ndarray:
    logits = step(variables, runtime.shard_batch({input_key: images}, mesh))
    return activate(np.asarray(runtime.to_host(logits)), activation)

  return predict


def read_ahead(
  read: Callable[[Any], Any], chunks: Sequence[Sequence[Any]], workers: int
) -> Iterator[tuple[Sequence[Any], list[tuple[Any, Exception | None]]]]:
  """Yields (chunk, [(read(item), None) or (None, the exception)]) in order, with the next chunk
  already being read on `workers` threads: memory holds two chunks, and decoding overlaps the
  model. A failing item is the caller's to report; the others are still read."""

  def safe(item):
    try:
      return read(item), None
    except Exception as e:  # any per-item failure belongs to that item (file, record)
      return None, e

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    submit = lambda chunk: [pool.submit(safe, item) for item in chunk]
    pending = submit(chunks[0]) if len(chunks) else []
    for i, chunk in enumerate(chunks):
      current, pending = pending, (submit(chunks[i + 1]) if i + 1 < len(chunks) else [])
      yield chunk, [f.result() for f in current]
