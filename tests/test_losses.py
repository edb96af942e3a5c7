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


# --- deep supervision: nnU-Net's weights, targets subsampled to each output ---


def _softmax_dice_ce_np(logits, labels, mask=None, eps=1e-5):
  """1 - mean_k Dice_k + voxel-mean cross-entropy of one batch, from the definitions -> [B]."""
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  p = e / e.sum(-1, keepdims=True)
  g = np.eye(logits.shape[-1])[labels]
  m = np.ones(labels.shape) if mask is None else np.asarray(mask, np.float64)
  axes = (1, 2, 3)
  pm, gm = p * m[..., None], g * m[..., None]
  dice = (2 * (pm * gm).sum(axes) + eps) / (pm.sum(axes) + gm.sum(axes) + eps)
  ce = -(g * np.log(p)).sum(-1)
  return 1 - dice.mean(-1) + (ce * m).sum(axes) / m.sum(axes)


def _sigmoid_dice_np(logits, regions, eps=1e-5):
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  axes = (1, 2, 3)
  dice = (2 * (p * regions).sum(axes) + eps) / (p.sum(axes) + regions.sum(axes) + eps)
  return 1 - dice.mean(-1)


def _nearest_exact(target, shape):
  """torch's 'nearest-exact' (nnU-Net's target downsampling) by its definition: coarse voxel i
  reads fine voxel floor((i + 0.5) * fine / coarse), per axis."""
  idx = [
    np.floor((np.arange(c) + 0.5) * f / c).astype(int) for f, c in zip(target.shape[1:4], shape)
  ]
  return target[:, idx[0]][:, :, idx[1]][:, :, :, idx[2]]


def test_deep_supervision_weights_are_nnunets():
  np.testing.assert_allclose(losses.deep_supervision_weights(1), [1.0])
  np.testing.assert_allclose(losses.deep_supervision_weights(2), [1.0, 0.0])
  # 1, 1/2, (1/4 ->) 0, normalised: / 1.5
  np.testing.assert_allclose(losses.deep_supervision_weights(3), [2 / 3, 1 / 3, 0.0])
  np.testing.assert_allclose(losses.deep_supervision_weights(4), [4 / 7, 2 / 7, 1 / 7, 0.0])


def test_downsampled_target_is_nearest_exact():
  labels = np.arange(2 * 4 * 8 * 4).reshape(2, 4, 8, 4)  # every voxel its own value
  for shape in ((2, 2, 4), (4, 4, 1), (1, 8, 2)):  # per-axis factors, 1 included
    got = np.asarray(losses.downsample_target(jnp.asarray(labels), shape))
    np.testing.assert_array_equal(got, _nearest_exact(labels, shape))
  # by hand: factors (2, 4, 1) read D 1, 3 and H 2, 6 (the voxel after each block's centre)
  got = np.asarray(losses.downsample_target(jnp.asarray(labels), (2, 2, 4)))
  np.testing.assert_array_equal(got[0, 1, 0], labels[0, 3, 2])
  regions = labels[..., None] % np.array([2, 3])  # [B, D, H, W, K]: channel by channel
  got = np.asarray(losses.downsample_target(jnp.asarray(regions), (2, 4, 2)))
  np.testing.assert_array_equal(got[..., 1], _nearest_exact(regions[..., 1], (2, 4, 2)))
  with pytest.raises(ValueError, match="does not divide"):
    losses.downsample_target(jnp.asarray(labels), (3, 8, 4))


def test_downsampled_target_matches_torch_nearest_exact():
  torch = pytest.importorskip("torch")  # what nnU-Net (batchgeneratorsv2) calls
  labels = np.random.default_rng(0).integers(0, 5, (2, 8, 8, 4))
  for shape in ((4, 2, 4), (2, 8, 1)):
    ref = torch.nn.functional.interpolate(
      torch.from_numpy(labels)[:, None].float(), shape, mode="nearest-exact"
    )[:, 0]
    got = np.asarray(losses.downsample_target(jnp.asarray(labels), shape))
    np.testing.assert_array_equal(got, ref.numpy().astype(labels.dtype))


def test_deep_supervision_loss_by_hand():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, (2, 4, 4, 4))
  mask = np.ones((2, 4, 4, 4))
  mask[1, :, :, 2:] = 0  # padded voxels: out of every output's loss
  outs = [
    rng.standard_normal((2, 4, 4, 4, 3)),  # full resolution
    rng.standard_normal((2, 2, 2, 4, 3)),  # D and H halved, W kept
    rng.standard_normal((2, 1, 1, 2, 3)),  # the lowest resolution: weight 0
  ]
  got = losses.deep_supervision_loss(
    tuple(jnp.asarray(o, jnp.float32) for o in outs),
    jnp.asarray(labels),
    "softmax",
    ce_weight=1.0,
    mask=jnp.asarray(mask),
  )
  # D, H factor 2: coarse voxel i reads fine voxel 2 i + 1; W factor 1 reads itself
  lab1, mask1 = labels[:, 1::2, 1::2, :], mask[:, 1::2, 1::2, :]
  want = 2 / 3 * _softmax_dice_ce_np(outs[0], labels, mask) + 1 / 3 * _softmax_dice_ce_np(
    outs[1], lab1, mask1
  )
  # float32 softmax, logs and sums of <= 64 voxels against float64: ~1e-6 relative
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  # a single array is plain soft_dice_loss
  full = jnp.asarray(outs[0], jnp.float32)
  single = losses.deep_supervision_loss(full, jnp.asarray(labels), ce_weight=1.0)
  np.testing.assert_allclose(np.asarray(single), _softmax_dice_ce_np(outs[0], labels), rtol=1e-5)
  np.testing.assert_array_equal(
    np.asarray(single), np.asarray(losses.soft_dice_loss(full, jnp.asarray(labels), ce_weight=1.0))
  )
  # the lowest-resolution output gets no gradient under nnU-Net's weights; the others do
  grads = jax.jit(jax.grad(lambda o: losses.deep_supervision_loss(o, jnp.asarray(labels)).sum()))(
    tuple(jnp.asarray(o, jnp.float32) for o in outs)
  )
  assert np.abs(np.asarray(grads[1])).sum() > 0 and not np.asarray(grads[2]).any()
  with pytest.raises(ValueError, match="3 outputs but 2 weights"):
    losses.deep_supervision_loss(tuple(jnp.asarray(o) for o in outs), labels, weights=(1, 1))


def test_deep_supervision_loss_on_regions_with_given_weights():
  rng = np.random.default_rng(2)
  regions = rng.integers(0, 2, (2, 4, 4, 4, 2)).astype(np.float32)  # two overlapping regions
  outs = [rng.standard_normal((2, 4, 4, 4, 2)), rng.standard_normal((2, 2, 4, 2, 2))]
  got = losses.deep_supervision_loss(
    tuple(jnp.asarray(o, jnp.float32) for o in outs),
    jnp.asarray(regions),
    "sigmoid",
    weights=(0.25, 0.75),  # used as given
  )
  coarse = regions[:, 1::2, :, 1::2, :]  # each channel subsampled alike
  want = 0.25 * _sigmoid_dice_np(outs[0], regions) + 0.75 * _sigmoid_dice_np(outs[1], coarse)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)  # float32 against float64
