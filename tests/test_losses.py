"""Losses against their definitions, computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdx import losses


def _logit(p):
  return math.log(p / (1 - p))


@pytest.mark.parametrize(
  "p,y,gamma,alpha,expected",
  [
    # -alpha_t (1 - p_t)^gamma log(p_t), p_t = p for a positive, 1 - p for a negative
    (0.5, 1, 2.0, 0.25, 0.25 * 0.5**2 * math.log(2)),
    (0.5, 0, 2.0, 0.25, 0.75 * 0.5**2 * math.log(2)),
    (0.75, 1, 2.0, 0.25, 0.25 * 0.25**2 * -math.log(0.75)),
    (0.75, 0, 2.0, 0.25, 0.75 * 0.75**2 * -math.log(0.25)),
    (0.9, 0, 1.0, 0.5, 0.5 * 0.9 * -math.log(0.1)),
    (0.2, 1, 0.0, 0.5, 0.5 * -math.log(0.2)),  # gamma 0, alpha 1/2: half the BCE
  ],
)
def test_focal_loss_equals_its_definition(p, y, gamma, alpha, expected):
  out = losses.focal_loss(jnp.array([[_logit(p)]]), jnp.array([[float(y)]]), gamma, alpha)
  np.testing.assert_allclose(np.asarray(out), [expected], rtol=1e-5)


def test_focal_loss_sums_known_classes_and_keeps_gradients_finite():
  logits = jnp.array([[0.0, _logit(0.75), 3.0]])
  labels = jnp.array([[1.0, 0.0, 1.0]])
  mask = jnp.array([[1.0, 1.0, 0.0]])  # the third label is unknown
  out = losses.focal_loss(logits, labels, 2.0, 0.25, mask)
  expected = 0.25 * 0.25 * math.log(2) + 0.75 * 0.75**2 * -math.log(0.25)
  np.testing.assert_allclose(np.asarray(out), [expected], rtol=1e-5)
  # gamma < 1 at a saturated logit: (1 - p)^gamma would be 0^gamma with p = sigmoid(x) in float32
  grad = jax.grad(lambda x: losses.focal_loss(x, jnp.ones((1, 1)), 0.5, 0.25).sum())(
    jnp.array([[40.0]])
  )
  assert np.isfinite(np.asarray(grad)).all()
