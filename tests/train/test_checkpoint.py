"""Checkpoint retention and best-step selection survive a restart (what --mode=eval relies on)."""

import jax.numpy as jnp
import numpy as np
import optax

from mdx.train import checkpoint
from mdx.train.state import create_state


def test_keeps_last_k_and_the_best_and_finds_the_best_after_reopening(tmp_path):
  params = {"w": jnp.ones(3)}
  tx = optax.sgd(0.1)
  manager = checkpoint.make_manager(str(tmp_path), keep_last=2, best_metric="val_auroc")
  for step, auroc in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7)]:
    state = create_state({"w": jnp.full(3, float(step))}, {}, tx, seed=0)
    checkpoint.save(manager, step, state, None, {"val_auroc": auroc})
  reopened = checkpoint.make_manager(str(tmp_path), keep_last=2, best_metric="val_auroc")
  assert reopened.all_steps() == [2, 3, 4]
  assert checkpoint.best_or_latest_step(reopened) == 2  # not the latest (4)
  template = create_state(params, {}, tx, seed=0)
  restored = checkpoint.restore(reopened, 2, template)
  np.testing.assert_array_equal(restored.params["w"], np.full(3, 2.0))


def test_finetune_restores_from_the_best_step_of_a_run(tmp_path):
  from mdx.train import finetune

  tx = optax.sgd(0.1)
  manager = checkpoint.make_manager(str(tmp_path), keep_last=1, best_metric="val_auroc")
  for step, auroc in [(1, 0.8), (2, 0.6), (3, 0.7)]:
    checkpoint.save(
      manager, step, create_state({"w": jnp.ones(2)}, {}, tx, 0), None, {"val_auroc": auroc}
    )
  assert finetune._best_step(str(tmp_path), [1, 3]) == 1
