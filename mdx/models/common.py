"""Pieces shared by the classifiers: dtypes, BatchNorm that knows when it is frozen, freeze policies.

A classifier is a sequence of named top-level stages (e.g. 'stem', 'block1', ..., 'head'), listed in
its class attribute `stages`. A freeze policy names which stages are frozen:
  'none'            nothing frozen;
  'head'            everything but 'head' frozen;
  'from:<stage>'    every stage before <stage> frozen, <stage> and later ones trained.
The model uses the policy (its `freeze` field) to run the BatchNorm layers of frozen stages on their
running statistics; mdx.train.finetune uses the same policy to zero their optimizer updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# He-normal over fan-in, as torchvision initialises conv layers.
conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def compute_dtype(dtype: Any) -> Any:
  """'float32' | 'bfloat16' | 'float16' (or a jnp dtype) -> jnp dtype."""
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"model dtype={dtype!r} is unknown; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]
  return dtype


def frozen_stages(stages: Sequence[str], policy: str | None) -> frozenset[str]:
  """The stages a freeze policy freezes (see the module docstring)."""
  if policy in (None, "none"):
    return frozenset()
  if policy == "head":
    first = "head"
  elif isinstance(policy, str) and policy.startswith("from:"):
    first = policy[len("from:"):]
  else:
    raise ValueError(f"freeze policy {policy!r} is unknown; use 'none', 'head' or 'from:<stage>' "
                     f"with a stage of {list(stages)}")
  if first not in stages:
    raise ValueError(f"freeze policy {policy!r} names stage {first!r}, which this model does not "
                     f"have; its stages are {list(stages)}")
  return frozenset(stages[:list(stages).index(first)])


def batch_norm(train: bool, frozen: bool, axis_name: str | None, epsilon: float, dtype: Any,
               name: str | None = None) -> nn.BatchNorm:
  """BatchNorm with the mdx conventions: momentum 0.9, statistics averaged over `axis_name`.

  A frozen layer always uses (and never updates) its running statistics.
  """
  use_running = (not train) or frozen
  return nn.BatchNorm(use_running_average=use_running, axis_name=None if use_running else axis_name,
                      momentum=0.9, epsilon=epsilon, dtype=dtype, name=name)


class Head(nn.Module):
  """Global average pooling and a dense layer in float32: logits [B, num_classes] float32."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="dense")(x)
