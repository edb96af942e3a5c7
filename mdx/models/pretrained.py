"""Pretrained weights on disk: an Orbax checkpoint of {'params', 'batch_stats'} plus
provenance.json.

DIR/checkpoint/       Orbax PyTree checkpoint, restorable in part (backbone without the head)
DIR/provenance.json   where the weights came from (model, source file and its sha256, head, ...)
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT = "checkpoint"
PROVENANCE = "provenance.json"


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def save(directory: str, variables: dict[str, Any], provenance: dict[str, Any]) -> str:
  """Writes variables ({'params': ..., 'batch_stats': ...}) and provenance; returns the
  directory."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, CHECKPOINT)
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new --output directory or delete it")
  tree = jax.tree.map(np.asarray, {k: v for k, v in variables.items() if v})
  ocp.PyTreeCheckpointer().save(path, args=ocp.args.PyTreeSave(tree))
  with open(os.path.join(directory, PROVENANCE), "w") as f:
    json.dump(provenance, f, indent=2, sort_keys=True)
  return directory


def checkpoint_path(directory: str) -> str:
  """The Orbax checkpoint inside a pretrained directory (or the directory itself if it is one)."""
  inner = os.path.join(directory, CHECKPOINT)
  if os.path.isdir(inner):
    return inner
  if os.path.isdir(directory) and os.path.exists(os.path.join(directory, "_METADATA")):
    return directory
  raise FileNotFoundError(
    f"{directory} holds no pretrained checkpoint (expected {inner}); create "
    "one with `python -m mdx.models.import_weights` or a pretraining run"
  )


def provenance(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, PROVENANCE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def shapes(directory: str) -> dict[str, Any]:
  """The checkpoint's tree of array shapes, read from metadata without loading arrays."""
  md = ocp.PyTreeCheckpointer().metadata(checkpoint_path(directory))
  tree = getattr(getattr(md, "item_metadata", md), "tree", md)
  return jax.tree.map(
    lambda m: tuple(m.shape), tree, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype")
  )


def load(directory: str, target: dict[str, Any] | None = None) -> dict[str, Any]:
  """Restores the checkpoint as numpy arrays; with `target` only that subtree (partial restore)."""
  path = checkpoint_path(directory)
  ckpt = ocp.PyTreeCheckpointer()
  if target is None:
    target = jax.tree.map(
      lambda s: np.zeros(s, np.float32), shapes(directory), is_leaf=lambda s: isinstance(s, tuple)
    )
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  return ckpt.restore(
    path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
  )
