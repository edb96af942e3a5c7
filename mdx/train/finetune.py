"""Transfer learning: restore a pretrained backbone under a new head, and freeze stages through
optax.

config.model.init_from names where the weights are, by a relative or absolute path: an
import (python -m mdx import_weights --output=DIR), a run's workdir (its best checkpoint by
the run's own train.best_metric), one of its checkpoints/<step> folders, a bundle, or an Orbax
PyTree checkpoint (resolve_checkpoint); from a run that kept an average of its weights
(train.ema_decay) the average is read, the weights it validated and bundled.
config.model.freeze is a policy over the model's stages:
  'none'            train everything;
  'head'            train only the head;
  'from:<stage>'    freeze every stage before <stage> (e.g. 'from:block4': the last dense block,
                    the final norm and the head train).
Frozen parameters get zero updates (optax.multi_transform with set_to_zero); the model, built with
the same `freeze` field, runs the BatchNorm layers of frozen stages on their running statistics,
so frozen parameters and statistics stay bit-identical to the checkpoint.
"""

from __future__ import annotations

import json
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
from mdx.train import optim

HEAD = "head"


# ------------------------------------------------------------------------------ restoring
def resolve_checkpoint(path: str) -> str:
  """The absolute Orbax PyTree directory holding 'params' and 'batch_stats' at its top, for any
  of the sources config.model.init_from accepts (relative or absolute, ~ expanded):

    DIR/checkpoint/               an import (python -m mdx import_weights --output=DIR)
    DIR/bundle.json, variables/   a bundle (mdx.inference.bundle): its variables
    DIR/checkpoints/<step>/state  a run's workdir: the best step by the run's own
                                  train.best_metric (DIR/config.json), else the latest
    <step>/state                  one step of a run (WORKDIR/checkpoints/<step>)
    <step>/state under DIR        a run's checkpoints/ folder itself (as a workdir)
    DIR/_METADATA                 an Orbax PyTree checkpoint
  """
  from mdx.inference import bundle as bundle_lib

  given = path
  path = os.path.abspath(os.path.expanduser(path))
  where = f"config.model.init_from={given!r}" + (f" ({path})" if path != given else "")
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"{where} is not a directory; give an import_weights --output folder, a run's workdir, "
      "a run's checkpoints/<step> folder, a bundle or an Orbax PyTree checkpoint"
    )
  if os.path.isdir(os.path.join(path, pretrained.CHECKPOINT)):
    return os.path.join(path, pretrained.CHECKPOINT)
  if os.path.isfile(os.path.join(path, bundle_lib.SPEC)):
    try:  # the digests bundle.json records: swapped or damaged weights are refused here too
      return bundle_lib.checked_variables(path)
    except (OSError, ValueError) as e:
      raise type(e)(f"{where}: {e}") from e
  if os.path.isdir(os.path.join(path, "state")):
    return os.path.join(path, "state")
  workdir = path
  if os.path.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  elif os.path.basename(path) == "checkpoints":
    workdir = os.path.dirname(path)
  steps = sorted(
    int(d)
    for d in os.listdir(path)
    if d.isdigit() and os.path.isdir(os.path.join(path, d, "state"))
  )
  if steps:
    step = _best_step(path, steps, _best_metric(workdir))
    logging.info("config.model.init_from: step %d of %s", step, path)
    return os.path.join(path, str(step), "state")
  if path != workdir:
    raise FileNotFoundError(
      f"{where} is a run's workdir with no complete checkpoint in {path}; train it first "
      "(or give a checkpoints/<step> folder)"
    )
  if pretrained.is_orbax_tree(path):
    return path
  raise FileNotFoundError(
    f"{where} is not a pretrained checkpoint: expected an import_weights --output folder "
    f"({pretrained.CHECKPOINT}/), a run's workdir (checkpoints/<step>/state), a run's step folder "
    f"(state/), a bundle ({bundle_lib.SPEC}, {bundle_lib.VARIABLES}/) or an Orbax PyTree "
    "checkpoint (_METADATA)"
  )


def _best_metric(workdir: str) -> str | None:
  """The run's train.best_metric from the config it wrote (WORKDIR/config.json), or None."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      metric = json.load(f).get("train", {}).get("best_metric")
  except (OSError, ValueError, AttributeError):
    logging.warning("%s is unreadable; fine-tuning from the run's latest checkpoint", path)
    return None
  return metric if isinstance(metric, str) else None


def _best_step(directory: str, steps: Sequence[int], metric: str | None = "val_auroc") -> int:
  """Of a run's kept `steps` (in `directory`, its checkpoints/ folder), the intact one with the
  highest saved `metric` (higher is better, as the run's own CheckpointManager keeps it), else the
  latest intact one. A damaged step (checkpoint.step_damage) is passed over with a warning naming
  its file: init_from only reads the run, so it is left where it is for train or eval to set
  aside."""
  from mdx.train import checkpoint

  intact = []
  for step in steps:
    damage = checkpoint.step_damage(os.path.join(directory, str(step)))
    if damage:
      logging.warning("config.model.init_from: step %d passed over: %s %s", step, *damage)
    else:
      intact.append(step)
  if not intact:
    raise ValueError(
      f"config.model.init_from: every checkpoint in {directory} is damaged (steps {list(steps)}); "
      "give another run, or one step's folder you trust"
    )
  latest = max(intact)
  if not metric:
    return latest
  found = {}
  for step in intact:
    v = (checkpoint.saved_metrics(os.path.join(directory, str(step))) or {}).get(metric)
    if isinstance(v, (int, float)) and np.isfinite(v):
      found[step] = float(v)
  if not found:
    logging.warning(
      "No checkpoint in %s has a saved %s; fine-tuning from the latest, step %d",
      directory,
      metric,
      latest,
    )
    return latest
  return max(found, key=lambda step: (found[step], step))  # a tie: the later step


def _checkpoint_shapes(path: str) -> tuple[dict[tuple[str, ...], tuple[int, ...]], tuple[str, ...]]:
  """({('params' | 'batch_stats', ...): shape}, where the weights are) of the checkpoint at
  `path`, from its metadata. The weights are 'params', or the average a run kept of them
  (train.ema_decay: optim.saved_average_key), which is what that run validated and bundled."""
  tree = pretrained.tree_metadata(path)
  if "params" not in tree:
    raise ValueError(
      f"the checkpoint {path} has no 'params' at its top (it holds {sorted(tree)}); "
      "config.model.init_from must hold a model's variables"
    )
  average = optim.saved_average_key(tree.get("opt_state"))
  weights = ("opt_state", *average) if average else ("params",)
  node = tree
  for key in weights:
    node = node[key]
  tree = {"params": node, **({"batch_stats": tree["batch_stats"]} if "batch_stats" in tree else {})}
  flat = traverse_util.flatten_dict(tree, is_leaf=lambda _, v: hasattr(v, "shape"))
  return {k: tuple(v.shape) for k, v in flat.items()}, weights


def restore_backbone(
  params: Any, batch_stats: Any, checkpoint_dir: str, exclude: Sequence[str] = (HEAD,)
) -> tuple[Any, Any]:
  """Fills every variable of the model but the head (`exclude`) from a pretrained checkpoint.

  Every backbone variable must be in the checkpoint with its shape, and every backbone weight of
  the checkpoint must be in the model, else a ValueError lists what does not fit. One difference is
  bridged: a stem convolution pretrained on 3 channels applied to 1 (or any other count) gets
  kernel.sum(input axis) / C repeated C times, which gives the same response to a gray image.
  """
  path = resolve_checkpoint(checkpoint_dir)
  have, weights = _checkpoint_shapes(path)
  if weights != ("params",):
    logging.info("config.model.init_from: the run's average of its weights (train.ema_decay)")
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
  # partial: the backbone only, the weights read from where the checkpoint keeps them
  where = {"params": weights, "batch_stats": ("batch_stats",)}
  target = traverse_util.unflatten_dict(
    {(*where[k[0]], *k[1:]): np.zeros(have[k], np.float32) for k in model}
  )
  restored = traverse_util.flatten_dict(pretrained.load(path, target))
  flat = {k: restored[(*where[k[0]], *k[1:])] for k in model}
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
  (jit returns dicts with sorted keys): stem, then numbered stages (blockN before transitionN;
  Inception's mixed5b, mixed5c, ... by number, then letter), then the rest (norm_final, top), then
  head."""

  def key(name: str):
    if name == "stem":
      return (0, 0, 0, name)
    if name == HEAD:
      return (3, 0, 0, name)
    m = re.fullmatch(r"([a-z_]+?)_?(\d+)[a-z]?", name)
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
