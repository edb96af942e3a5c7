"""Flax init/apply compiled whole, for tests: run op by op, each of a model's operations is compiled
separately (~0.2 s each on XLA:CPU). Whole is faster for the 2D zoo (a tiny DenseNet's three SGD
steps: 34 s -> 13 s); the 3D U-Net's tests stay op by op, where later tests reuse the compiled ops
and one whole compile takes ~9 s."""

import jax


def init(model, x, seed: int = 0, **kwargs):
  return jax.jit(lambda key, x: model.init(key, x, **kwargs))(jax.random.key(seed), x)


def apply(model, variables, x, **kwargs):
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)
