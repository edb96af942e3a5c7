"""Flax init/apply compiled whole, for tests: run op by op, each of a model's operations is compiled
separately (~0.2 s each on XLA:CPU). Whole is faster for the 2D zoo (a tiny DenseNet's three SGD
steps: 34 s -> 13 s). init compiles unoptimised (a tiny U-Net's: 38 s op by op, ~9 s optimised,
~2 s unoptimised); the U-Net's apply stays op by op, where later tests reuse the compiled ops."""

import jax


def init(model, x, seed: int = 0, **kwargs):
  # unoptimised: XLA:CPU's optimiser spends seconds on the initialisers' random-number code, and
  # random weights need no speed
  return jax.jit(
    lambda key, x: model.init(key, x, **kwargs),
    compiler_options={"xla_backend_optimization_level": 0},
  )(jax.random.key(seed), x)


def apply(model, variables, x, **kwargs):
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)
