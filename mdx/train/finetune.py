"""Transfer learning: restore a pretrained backbone under a new head, and freeze stages through
optax.

config.model.init_from names a pretrained directory (python -m mdx.models.import_weights, or a
pretraining run's workdir); config.model.freeze is a policy over the model's stages:
  'none'            train everything;
  'head'            train only the head;
  'from:<stage>'    freeze every stage before <stage> (e.g. 'from:block4': the last dense block,
                    the final norm and the head train).
Frozen parameters get zero updates (optax.multi_transform with set_to_zero); the model, built with
the same `freeze` field, runs the BatchNorm layers of frozen stages on their running statistics,
so frozen parameters and statistics stay bit-identical to the checkpoint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from mdx.models import common, pretrained

HEAD = "head"


# ------------------------------------------------------------------------------ restoring
def resolve_checkpoint(path: str) -> str:
  """An Orbax PyTree directory holding 'params' and 'batch_stats' at its top.

  Accepts a pretrained directory (DIR/checkpoint), a run's workdir (its best or latest
  checkpoint's 'state'), a run's step directory (DIR/<step>/state), or the PyTree directory itself.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"config.model.init_from={path!r} is not a directory; give a pretrained "
      "directory (python -m mdx.models.import_weights) or a run's workdir"
    )
  if os.path.isdir(os.path.join(path, pretrained.CHECKPOINT)):
    return os.path.join(path, pretrained.CHECKPOINT)
  if os.path.isdir(os.path.join(path, "state")):
    return os.path.join(path, "state")
  runs = os.path.join(path, "checkpoints")
  if os.path.isdir(runs):
    path = runs
  steps = sorted(
    int(d)
    for d in os.listdir(path)
    if d.isdigit() and os.path.isdir(os.path.join(path, d, "state"))
  )
  if steps:
    step = _best_step(path, steps)
    return os.path.join(path, str(step), "state")
  if os.path.exists(os.path.join(path, "_METADATA")):
    return path
  raise FileNotFoundError(
    f"no pretrained checkpoint in {path}: expected {pretrained.CHECKPOINT}/, "
    "checkpoints/<step>/state or an Orbax PyTree directory"
  )


def _best_step(directory: str, steps: list[int]) -> int:
  """The step with the highest saved val_auroc (the run's best), else the latest.

  Orbax keeps a step's metrics in its own `metrics` item; a read-only manager with best_fn reads
  them.
  """
  import orbax.checkpoint as ocp

  options = ocp.CheckpointManagerOptions(
    best_fn=lambda metrics: metrics.get("val_auroc", -np.inf), best_mode="max", read_only=True
  )
  best = ocp.CheckpointManager(os.path.abspath(directory), options=options).best_step()
  return best if best in steps else steps[-1]


def _checkpoint_shapes(path: str) -> dict[tuple[str, ...], tuple[int, ...]]:
  import orbax.checkpoint as ocp

  md = ocp.PyTreeCheckpointer().metadata(path)
  tree = getattr(getattr(md, "item_metadata", md), "tree", md)
  tree = {k: tree[k] for k in ("params", "batch_stats") if k in tree}
  flat = traverse_util.flatten_dict(tree, is_leaf=lambda _, v: hasattr(v, "shape"))
  return {k: tuple(v.shape) for k, v in flat.items()}


def restore_backbone(
  params: Any, batch_stats: Any, checkpoint_dir: str, exclude: Sequence[str] = (HEAD,)
) -> tuple[Any, Any]:
  """Fills every variable of the model but the head (`exclude`) from a pretrained checkpoint.

  Every backbone variable must be in the checkpoint with its shape, and every backbone weight of
  the checkpoint must be in the model, else a ValueError lists what does not fit. One difference is
  bridged: a stem convolution pretrained on 3 channels applied to 1 (or any other count) gets
  kernel.sum(input axis) / C repeated C times, which gives the same response to a gray image.
  """
  import orbax.checkpoint as ocp

  path = resolve_checkpoint(checkpoint_dir)
  have = _checkpoint_shapes(path)
  model = traverse_util.flatten_dict({"params": params, "batch_stats": batch_stats})
  model = {k: v for k, v in model.items() if k[1] not in exclude}
  have_backbone = {k: s for k, s in have.items() if k[1] not in exclude}
  missing = [k for k in model if k not in have]
  extra = [k for k in have_backbone if k not in model]
  adapt, wrong = [], []
  for k in model:
    if k in have and tuple(model[k].shape) != have[k]:
      m, c = tuple(model[k].shape), have[k]
      if k[-1] == "kernel" and len(m) == 4 and m[:2] + m[3:] == c[:2] + c[3:] and k[1] == "stem":
        adapt.append(k)
      else:
        wrong.append(f"{'/'.join(k)}: checkpoint {c} vs model {m}")
  if missing or extra or wrong:
    parts = []
    for title, items in (
      ("model variables missing from the checkpoint", missing),
      ("checkpoint weights the model does not have", extra),
    ):
      if items:
        parts.append(
          f"  {len(items)} {title}: "
          + ", ".join("/".join(k) for k in items[:15])
          + (" ..." if len(items) > 15 else "")
        )
    if wrong:
      parts.append(f"  {len(wrong)} shape mismatches: " + "; ".join(wrong[:15]))
    raise ValueError(
      f"the checkpoint {path} does not fit the model's backbone "
      "(is config.model.name the architecture it was trained or imported as?):\n" + "\n".join(parts)
    )
  target = traverse_util.unflatten_dict({k: np.zeros(have[k], np.float32) for k in model})
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  restored = ocp.PyTreeCheckpointer().restore(
    path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
  )
  flat = traverse_util.flatten_dict(restored)
  for k in adapt:
    c = model[k].shape[2]
    flat[k] = np.repeat(flat[k].sum(2, keepdims=True) / c, c, axis=2)
    logging.info("Stem kernel %s adapted from %d to %d input channels", "/".join(k), have[k][2], c)
  out = traverse_util.flatten_dict({"params": params, "batch_stats": batch_stats})
  for k, v in flat.items():
    out[k] = jnp.asarray(v, dtype=out[k].dtype)
  out = traverse_util.unflatten_dict(out)
  return out["params"], out.get("batch_stats", {})


# ------------------------------------------------------------------------------ freezing
def stage_order(names: Sequence[str]) -> list[str]:
  """Orders top-level stage names from input to output when the model's own list is not at hand
  (jit returns dicts with sorted keys): stem, then numbered stages (blockN before transitionN),
  then the rest (norm_final, top), then head."""

  def key(name: str):
    if name == "stem":
      return (0, 0, 0, name)
    if name == HEAD:
      return (3, 0, 0, name)
    m = re.fullmatch(r"([a-z_]+?)_?(\d+)", name)
    if m:
      return (1, int(m[2]), 0 if m[1] in ("block", "layer", "stage") else 1, name)
    return (2, 0, 0, name)

  return sorted(names, key=key)


def trainable_labels(params: Any, policy: str | None, stages: Sequence[str] | None = None) -> Any:
  """A pytree like params of 'train' / 'freeze' for a freeze policy (module docstring).

  `stages` is the model's ordered stage list (model.stages); without it the order of
  stage_order(params.keys()) is used.
  """
  stages = tuple(stages) if stages is not None else tuple(stage_order(list(params)))
  unknown = set(params) - set(stages)
  if unknown:
    raise ValueError(f"params have top-level modules {sorted(unknown)} not among stages {stages}")
  frozen = common.frozen_stages(stages, policy)
  return {
    name: jax.tree.map(lambda _: "freeze" if name in frozen else "train", sub)  # noqa: B023 (used at once)
    for name, sub in params.items()
  }


def freeze(optimizer: optax.GradientTransformation, labels: Any) -> optax.GradientTransformation:
  """`optimizer` on 'train' leaves, zero updates on 'freeze' leaves."""
  return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)
