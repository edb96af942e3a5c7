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


# --- the weights' average (train.ema_decay) ---


def test_params_average_is_the_debiased_exponential_average_of_the_weights_by_hand():
  """After t updates: sum_i d**(t-i) p_i / sum_i d**(t-i) over the weights p_1..p_t each update
  left (no weight on the initialisation); the training itself is untouched."""
  decay, lr = 0.9, 0.1
  tx = optim.with_params_average(optax.sgd(lr), decay)
  params = {"w": jnp.asarray(P0, jnp.float32)}
  state = tx.init(params)
  seen = []
  for g in GRADS:
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    seen.append(np.asarray(params["w"], np.float64))
    t = len(seen)
    w = decay ** np.arange(t - 1, -1, -1)
    want = (w[:, None] * np.stack(seen)).sum(0) / w.sum()
    # float32 running form against the float64 closed form, a few roundings per step
    np.testing.assert_allclose(optim.averaged_params(state)["w"], want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(params["w"], _run(optax.sgd(lr), P0, GRADS), rtol=0, atol=0)
  assert int(state[-1].count) == len(GRADS)


def test_params_average_off_keeps_the_optimizer_and_its_state():
  tx = optax.adam(1e-3)
  assert optim.with_params_average(tx, 0.0) is tx
  assert optim.averaged_params(tx.init({"w": jnp.zeros(2)})) is None
  from mdx import config as config_lib

  c = config_lib.defaults()
  c.train.ema_decay = 1.0  # refused with the config, before any work starts
  with pytest.raises(ValueError, match="config.train.ema_decay=1.0"):
    config_lib.resolve(c)


def test_params_average_survives_a_checkpoint_and_is_what_the_evaluator_holds(tmp_path):
  """Resuming continues the average (it is in the checkpointed optimizer state), and an Evaluator
  given the state evaluates the average, not the weights as trained."""
  from mdx import runtime
  from mdx.train import checkpoint, loop
  from mdx.train.state import create_state

  tx = optim.with_params_average(optax.sgd(0.1), 0.5)
  state = create_state({"w": jnp.asarray(P0, jnp.float32)}, {}, tx, seed=0)
  for g in GRADS:
    grads = {"w": jnp.asarray(g, jnp.float32)}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
  manager = checkpoint.make_manager(str(tmp_path), keep_last=1, best_metric="val_dice")
  checkpoint.save(manager, 3, state, None, {"val_dice": 0.5})
  manager.wait_until_finished()
  template = create_state({"w": jnp.zeros(3)}, {}, tx, seed=0)
  restored = checkpoint.restore(manager, 3, template)
  average = np.asarray(optim.averaged_params(state.opt_state)["w"])
  np.testing.assert_array_equal(optim.averaged_params(restored.opt_state)["w"], average)
  assert not np.allclose(average, state.params["w"])

  mesh = runtime.make_mesh()
  evaluator = loop.Evaluator(
    lambda *a, **k: None, lambda *a: None, mesh, runtime.batch_geometry(1, mesh)
  )
  evaluator.state = restored
  np.testing.assert_array_equal(evaluator.state.params["w"], average)
  plain = create_state({"w": jnp.ones(3)}, {}, optax.sgd(0.1), seed=0)
  evaluator.state = plain
  assert evaluator.state is plain

  # fine-tuning from the run (model.init_from) reads the weights it validated: the average
  from mdx.train import finetune

  params, _ = finetune.restore_backbone({"w": jnp.zeros(3)}, {}, str(tmp_path), exclude=())
  np.testing.assert_array_equal(params["w"], average)


def test_saved_average_key_finds_the_average_only_where_a_run_kept_one():
  """Checkpoint trees save tuples as dicts keyed '0', '1', ...; the average is the last entry's."""
  leaf = np.zeros(2)
  adam = {"0": {"count": leaf, "mu": {"w": leaf}, "nu": {"w": leaf}}}
  assert optim.saved_average_key(adam) is None
  assert optim.saved_average_key({}) is None and optim.saved_average_key(None) is None
  chained = {"0": adam, "1": {"count": leaf, "average": {"w": leaf}}}
  assert optim.saved_average_key(chained) == ("1", "average")
  ten = {**{str(i): {"count": leaf} for i in range(10)}, "10": chained["1"]}  # '10' after '9'
  assert optim.saved_average_key(ten) == ("10", "average")
