"""Grad-CAM on tiny hand-made CNNs where the answer is known."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mdx.evaluate import gradcam as G


class Block(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.features, (3, 3), name="conv")(x))


class TinyCNN(nn.Module):
  """conv -> Block 'features' -> global average pool -> dense: Grad-CAM here equals CAM."""

  gradcam_layer = "features"

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Conv(4, (3, 3), name="stem")(x))
    h = Block(6, name="features")(h)
    return nn.Dense(2, name="head")(h.mean((1, 2)))


class NoAttr(TinyCNN):
  gradcam_layer = None


def _images(rng, n=3, size=12):
  return rng.normal(size=(n, size, size, 1)).astype(np.float32)


def test_grad_cam_equals_cam_for_global_pool_and_linear_head():
  """For GAP + linear head, d logit_c / d A_k = W[k, c] / (h w):
  Grad-CAM = relu(sum_k W[k, c] A_k)."""
  rng = np.random.default_rng(0)
  x = _images(rng)
  model = TinyCNN()
  variables = model.init(jax.random.key(0), x)
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  feats = np.asarray(state["intermediates"]["features"]["__call__"][0])
  w = np.asarray(variables["params"]["head"]["kernel"])
  for c in range(2):
    cam = np.maximum(np.einsum("bhwk,k->bhw", feats, w[:, c]), 0)
    cam = cam / cam.max(axis=(1, 2), keepdims=True)
    got = G.grad_cam(model, variables, x, c, upsample=False)
    np.testing.assert_allclose(got, cam, rtol=1e-4, atol=1e-5)
  full = G.grad_cam(model, variables, x, 1)
  assert full.shape == (3, 12, 12) and full.min() >= 0 and full.max() == pytest.approx(1.0)


def test_heat_map_peak_falls_on_the_evidence():
  """A bright square is the only thing that activates the features: the peak must sit on it."""
  model = TinyCNN()
  rng = np.random.default_rng(1)
  size, n = 24, 6
  x = 0.05 * rng.random((n, size, size, 1)).astype(np.float32)
  masks = np.zeros((n, size, size), bool)
  for i in range(n):
    r, c = rng.integers(2, size - 8, 2)
    x[i, r : r + 6, c : c + 6] = 1.0
    masks[i, r : r + 6, c : c + 6] = True
  variables = model.init(jax.random.key(0), x)
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  params["stem"]["kernel"] = np.full((3, 3, 1, 4), 1 / 9, np.float32)  # local mean brightness
  params["stem"]["bias"] = np.full((4,), -0.5, np.float32)  # only bright regions pass
  params["features"]["conv"]["kernel"] = np.full((3, 3, 4, 6), 1 / 36, np.float32)
  params["features"]["conv"]["bias"] = np.zeros((6,), np.float32)
  params["head"]["kernel"] = np.ones((6, 2), np.float32) * np.array([1.0, -1.0], np.float32)
  variables = {"params": params}
  heat = G.grad_cam(model, variables, x, 0)
  assert G.peak_in_mask_rate(heat, masks) == 1.0
  # The heat outside the square is small.
  assert heat[~masks].mean() < 0.25 * heat[masks].mean()
  # Class 1 has negative evidence there: its ReLU'd map is zero.
  assert np.all(G.grad_cam(model, variables, x, 1) == 0)


def test_layer_choice_by_path_tail_and_default():
  rng = np.random.default_rng(2)
  x = _images(rng, n=2)
  model = TinyCNN()
  variables = model.init(jax.random.key(1), x)
  assert G.resolve_layer(model, variables, x, None)[0] == "features"
  assert G.resolve_layer(NoAttr(), variables, x, None)[0] == "features"  # last 4-D map
  assert G.resolve_layer(model, variables, x, "features/conv")[0] == "features/conv"
  assert G.resolve_layer(model, variables, x, "stem")[1] == (2, 12, 12, 4)
  a = G.grad_cam(model, variables, x, 0, layer="conv")  # unique tail of features/conv
  b = G.grad_cam(model, variables, x, 0, layer="features/conv")
  np.testing.assert_allclose(a, b)
  assert not np.allclose(G.grad_cam(model, variables, x, 0, layer="stem"), a)
  with pytest.raises(ValueError, match="matches no layer.*features"):
    G.grad_cam(model, variables, x, 0, layer="DenseBlock_3")
  with pytest.raises(ValueError, match="not a 4-D"):
    G.grad_cam(model, variables, x, 0, layer="head")
  maps = G.feature_maps(model, variables, x)
  assert [p for p, _ in maps] == ["stem", "features/conv", "features"]


def test_peak_in_mask_rate_and_overlay(tmp_path):
  heat = np.zeros((2, 4, 4))
  heat[0, 1, 1] = 1.0
  heat[1, 3, 3] = 1.0
  masks = np.zeros((2, 4, 4), bool)
  masks[:, :2, :2] = True
  assert G.peak_in_mask_rate(heat, masks) == 0.5
  assert G.peak_in_mask_rate(heat, masks, tolerance=1) == 0.5  # (3, 3) is 2 px from the mask
  assert G.peak_in_mask_rate(heat, masks, tolerance=2) == 1.0
  with pytest.raises(ValueError, match="empty"):
    G.peak_in_mask_rate(heat, np.zeros((2, 4, 4), bool))
  path = G.overlay_png(
    np.random.default_rng(0).random((16, 16, 3)),
    np.random.default_rng(1).random((16, 16)),
    str(tmp_path / "sub" / "o.png"),
    title="Mass p=0.91",
    mask=np.eye(16) > 0,
  )
  from PIL import Image

  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 100


def test_necklace_hits_against_their_chance_level():
  from mdx.data.cxr.phantoms import ChestXrayPhantoms

  necklace = ChestXrayPhantoms(num_patients=1, image_size=32).necklace_mask(0)
  assert necklace[:16].any() and not necklace[20:].any()  # drawn at the neck, above the chest
  heat = np.zeros((2, 20, 20))
  heat[0, 0, 0] = 1.0  # 3 px from the bead at (3, 3): a hit within 4 px
  heat[1, 15, 15] = 1.0  # far from it
  masks = np.zeros((2, 20, 20), bool)
  masks[:, 3, 3] = True
  hits = G._necklace_hits(heat, masks, tolerance=4)
  assert hits["peak_within_4px_of_necklace"] == 0.5
  assert hits["necklace_share_within_4px"] == 64 / 400  # the 8 x 8 zone the dilation covers
  assert G._necklace_hits(heat, np.zeros((2, 20, 20), bool)) == {}  # no necklace drawn


def test_grad_cam_on_a_zoo_model_uses_its_default_layer():
  registry = pytest.importorskip("mdx.models.registry")
  model = registry.create("densenet_tiny", num_classes=3)
  x = np.random.default_rng(0).normal(size=(1, 32, 32, 1)).astype(np.float32)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x)
  path, shape, _ = G.resolve_layer(model, variables, x, None)
  assert path == type(model).gradcam_layer and len(shape) == 4
  heat = G.grad_cam(model, variables, x, 1)
  assert heat.shape == (1, 32, 32) and np.all((heat >= 0) & (heat <= 1)) and heat.max() > 0


class WrongAttr(TinyCNN):
  gradcam_layer = "layer4"  # e.g. a tiny variant without the fourth stage


def test_missing_default_layer_falls_back_to_last_feature_map():
  x = _images(np.random.default_rng(3), n=1)
  variables = TinyCNN().init(jax.random.key(0), x)
  assert G.resolve_layer(WrongAttr(), variables, x, None)[0] == "features"
  with pytest.raises(ValueError, match="'layer4' matches no layer"):
    G.resolve_layer(WrongAttr(), variables, x, "layer4")
