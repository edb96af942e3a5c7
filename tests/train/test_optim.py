"""Learning-rate schedules and optimizers from config.train, against hand-computed values."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mdx.train import optim


def _train(**kw):
  base = dict(
    lr=0.01,
    steps=10,
    warmup_steps=0,
    schedule="constant",
    optimizer="sgd",
    weight_decay=0.0,
    grad_clip=0.0,
  )
  return ml_collections.ConfigDict({**base, **kw})


def test_poly_schedule_values():
  # nnU-Net's: lr * (1 - step / steps) ** 0.9
  sched = optim.make_schedule(_train(schedule="poly"))  # poly_exponent unset: 0.9
  for step, want in ((0, 0.01), (5, 0.01 * 0.5**0.9), (9, 0.01 * 0.1**0.9), (10, 0.0), (12, 0.0)):
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-6, atol=1e-12)
  sched = optim.make_schedule(_train(schedule="poly", poly_exponent=2.0, lr=1.0, steps=4))
  np.testing.assert_allclose([float(sched(s)) for s in range(5)], [1, 0.5625, 0.25, 0.0625, 0])
  with pytest.raises(ValueError, match="config.train.poly_exponent"):
    optim.make_schedule(_train(schedule="poly", poly_exponent=0.0))
  with pytest.raises(ValueError, match="config.train.schedule='linear'"):
    optim.make_schedule(_train(schedule="linear"))


def _sgd_by_hand(p, grads, lr, momentum, wd):
  """torch.optim.SGD(nesterov=True, dampening=0) as its documentation defines it."""
  buf = None
  for g in grads:
    d = g + wd * p
    buf = d if buf is None else momentum * buf + d
    p = p - lr * (d + momentum * buf)
  return p


def _run(tx, p, grads):
  params = {"w": jnp.asarray(p, jnp.float32)}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params["w"])


P0 = np.array([1.0, -2.0, 0.5])
GRADS = [np.array([0.3, -0.1, 0.2]), np.array([-0.4, 0.2, 0.1]), np.array([0.1, 0.1, -0.3])]


@pytest.mark.parametrize("momentum,wd", [(0.99, 3e-5), (0.9, 0.0), (0.5, 0.1)])
def test_nesterov_sgd_with_torch_weight_decay_by_hand(momentum, wd):
  cfg = _train(lr=0.1, momentum=momentum, weight_decay=wd)
  if momentum == 0.9:
    del cfg["momentum"]  # unset: 0.9
  got = _run(optim.make_optimizer(cfg), P0, GRADS)
  # float32 against float64 over three steps of O(1) numbers: ~1e-7
  np.testing.assert_allclose(got, _sgd_by_hand(P0, GRADS, 0.1, momentum, wd), rtol=1e-5)


def test_sgd_step_matches_torch():
  torch = pytest.importorskip("torch")
  w = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float64))
  opt = torch.optim.SGD([w], lr=0.1, momentum=0.99, nesterov=True, weight_decay=0.1)
  for g in GRADS:
    w.grad = torch.tensor(g)
    opt.step()
  cfg = _train(lr=0.1, momentum=0.99, weight_decay=0.1)
  np.testing.assert_allclose(_run(optim.make_optimizer(cfg), P0, GRADS), w.detach(), rtol=1e-5)


def test_clip_comes_before_the_decay_and_adamw_keeps_decoupled_decay():
  # one step, no momentum: p - lr * (clip(g) + wd * p); the clip sees the gradient alone
  cfg = _train(lr=1.0, momentum=0.0, weight_decay=0.5, grad_clip=1.0)
  g = np.array([3.0, 4.0, 0.0])  # norm 5 -> (0.6, 0.8, 0)
  got = _run(optim.make_optimizer(cfg), P0, [g])
  np.testing.assert_allclose(got, P0 - (g / 5 + 0.5 * P0), rtol=1e-6)
  # adamw: the first Adam step is lr * sign(g) (m / sqrt(v) = g / |g|), the decay lr * wd * p
  cfg = _train(optimizer="adamw", lr=0.1, weight_decay=0.5)
  got = _run(optim.make_optimizer(cfg), P0, [GRADS[0]])
  # float32's 1 - 0.999 is off by 1.3e-5 relative, sqrt halves it: 0.1 * 6.5e-6 = 6.5e-7 on the
  # step; a missing or coupled decay would be off by >= 0.01
  np.testing.assert_allclose(got, P0 - 0.1 * (np.sign(GRADS[0]) + 0.5 * P0), atol=3e-6)
  with pytest.raises(ValueError, match="config.train.momentum"):
    optim.make_optimizer(_train(momentum=1.0))
