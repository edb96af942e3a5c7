"""Pretrained weights on disk: an Orbax checkpoint of {'params', 'batch_stats'} plus
provenance.json.

DIR/checkpoint/       Orbax PyTree checkpoint, restorable in part (backbone without the head)
DIR/provenance.json   where the weights came from (model, source file and its sha256, head, ...)

Every path is made absolute before Orbax sees it: orbax-checkpoint 0.12 cannot read a relative one
(its metadata() logs a warning and returns a StepMetadata without the tree), and a user types
relative paths (--config.model.init_from=weights/dn121).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT = "checkpoint"
PROVENANCE = "provenance.json"


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


def is_orbax_tree(path: str) -> bool:
  """Whether `path` is an Orbax PyTree checkpoint (a folder with its _METADATA file)."""
  return os.path.isfile(os.path.join(path, "_METADATA"))


def checkpoint_path(directory: str) -> str:
  """The Orbax checkpoint inside a pretrained directory (or the directory itself if it is one),
  absolute."""
  directory = os.path.abspath(os.path.expanduser(directory))
  inner = os.path.join(directory, CHECKPOINT)
  if os.path.isdir(inner):
    return inner
  if is_orbax_tree(directory):
    return directory
  raise FileNotFoundError(
    f"{directory} holds no pretrained checkpoint (expected {inner}); create "
    "one with `python -m mdx import_weights` or a pretraining run"
  )


def provenance(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, PROVENANCE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def tree_metadata(path: str) -> dict[str, Any]:
  """The nested dict of array metadata (.shape, .dtype) of the Orbax PyTree checkpoint at `path`,
  read without loading arrays.

  Orbax releases wrap the tree differently: a plain dict (older), a TreeMetadata with .tree, or a
  StepMetadata whose .item_metadata is one (0.12); the tree is unwrapped from any of them.
  """
  path = os.path.abspath(os.path.expanduser(path))
  try:
    md = ocp.PyTreeCheckpointer().metadata(path)
  except Exception as e:  # Orbax raises many types for a missing or damaged checkpoint
    raise ValueError(
      f"{path}: Orbax cannot read this checkpoint's metadata ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''}); is it a complete Orbax PyTree checkpoint?"
    ) from None
  tree = md
  for _ in range(4):  # StepMetadata -> TreeMetadata -> dict
    if isinstance(tree, Mapping) or tree is None:
      break
    inner = getattr(tree, "item_metadata", None)
    tree = inner if inner is not None else getattr(tree, "tree", None)
  if not isinstance(tree, Mapping):
    raise ValueError(
      f"{path}: orbax-checkpoint {ocp.__version__} returned no array metadata for it (got "
      f"{type(md).__name__}); is it a complete Orbax PyTree checkpoint?"
    )
  return dict(tree)


def shapes(directory: str) -> dict[str, Any]:
  """The checkpoint's tree of array shapes, read from metadata without loading arrays."""
  return jax.tree.map(
    lambda m: tuple(m.shape),
    tree_metadata(checkpoint_path(directory)),
    is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
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
