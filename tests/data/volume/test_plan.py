"""The plan's rules on fingerprints written by hand: target spacing (median, 10th percentile of a
thick axis), pooling worked out by hand, patch multiples, the memory budget by the documented
estimate (its count worked by hand, its parameters against the real U-Net's), the batch cap,
overrides, CT against z-score normalisation, and the plan file's checks."""

import json
import math

import ml_collections
import numpy as np
import pytest

from mdx.data import standardize
from mdx.data.volume import plan

CT_STATS = {
  "mean": 80.0,
  "std": 40.0,
  "median": 85.0,
  "percentile_00_5": -50.0,
  "percentile_99_5": 200.0,
  "min": -100.0,
  "max": 400.0,
  "samples": 100,
}


def _fp(spacings, shapes, channels=1, classes=3):
  cases = [
    {"case_id": f"c{i}", "spacing": list(map(float, sp)), "shape": list(map(int, sh))}
    for i, (sp, sh) in enumerate(zip(spacings, shapes))
  ]
  return {
    "num_cases": len(cases),
    "num_channels": channels,
    "num_classes": classes,
    "intensity": [dict(CT_STATS, mean=80.0 + c) for c in range(channels)],
    "cases": cases,
  }


def _iso(n=20, shape=(40, 56, 40)):
  return _fp([(1.0, 1.0, 1.0)] * n, [shape] * n)


def test_target_spacing_is_the_median_and_the_resampled_shape_follows():
  spacings = [(1.0, 0.8, 1.2), (1.4, 0.7, 1.0), (0.9, 0.9, 1.1)]
  shapes = [(30, 40, 20), (20, 50, 30), (40, 30, 25)]
  p = plan.make_plan(_fp(spacings, shapes), modality="MRI", memory_gb=8)
  target = np.median(spacings, 0)
  np.testing.assert_allclose(p["target_spacing"], target)
  resampled = np.round(np.asarray(shapes) * np.asarray(spacings) / target)
  np.testing.assert_array_equal(p["resampled_median_shape"], np.median(resampled, 0).round())


def test_anisotropic_spacing_takes_the_10th_percentile_and_pools_the_thick_axis_later():
  thick = [5.0, 4.0, 6.0, 5.0, 2.5, 3.0, 5.0, 4.5, 6.0, 5.5]  # median 5: > 3 x 0.7
  spacings = [(t, 0.7, 0.7) for t in thick]
  fp = _fp(spacings, [(24, 256, 256)] * len(thick))
  p = plan.make_plan(fp, modality="MRI", memory_gb=8)
  assert p["target_spacing"][0] == pytest.approx(np.percentile(thick, 10))
  assert p["target_spacing"][1:] == pytest.approx([0.7, 0.7])
  assert p["strides"][0] == [1, 2, 2]  # thick slices wait until the others coarsen
  assert "10th percentile" in p["reasons"]["target_spacing"]
  # the 10th percentile is never finer than the other axes: 0.5 mm slices at the 10th here
  thin = [0.5, 0.5, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0]
  low = plan.make_plan(
    _fp([(t, 0.9, 0.8) for t in thin], [(20, 100, 100)] * 10), modality="MRI", memory_gb=8
  )
  assert low["target_spacing"][0] == pytest.approx(0.9)


def test_pool_strides_by_hand():
  # spacing 4 x 1 x 1: levels 1-2 pool H, W only (4 is not < 2 x 1, then 2 x 2); from (4, 4, 4)
  # every axis; D stops at 8 -> 4 (a 4-voxel map is not pooled again); at most 5 levels
  assert plan.pool_strides((16, 128, 128), (4, 1, 1)) == [
    [1, 2, 2],
    [1, 2, 2],
    [2, 2, 2],
    [2, 2, 2],
    [1, 2, 2],
  ]
  # 40 -> 20 -> 10 -> 5, 56 -> 28 -> 14 -> 7: three levels
  assert plan.pool_strides((40, 56, 40), (1, 1, 1)) == [[2, 2, 2]] * 3
  # exact: an odd side is not pooled (a patch given by the user stays as it is)
  # 30 -> 15, 45 never, 32 -> 16 -> 8 -> 4
  assert plan.pool_strides((30, 45, 32), (1, 1, 1), exact=True) == [[2, 1, 2], [1, 1, 2], [1, 1, 2]]
  assert plan.multiples([[2, 1, 2], [1, 1, 2], [1, 1, 2]]) == [2, 1, 8]
  assert plan.round_up((35, 50, 36), [[2, 2, 2]] * 3) == [40, 56, 40]


def test_estimate_by_hand_and_its_parameters_are_the_unets():
  # patch 8^3, one pooling, widths (2, 4), 1 channel in, 2 classes, batch 1 (module docstring):
  # floats: encoder 6*2*512 + 6*4*64, pooled 2*64, decoder 9*2*512, full resolution (1+3*2)*512
  floats = 6 * 2 * 512 + 6 * 4 * 64 + 2 * 64 + 9 * 2 * 512 + 7 * 512
  # parameters: encoder 27*1*2 + 27*2*2 + 4*2 and 27*2*4 + 27*4*4 + 4*4; up 8*4*2 + 2;
  # decoder 27*4*2 + 27*2*2 + 4*2; head 2*2 + 2
  params = 170 + 664 + 66 + 332 + 6
  got = plan.estimate_bytes((8, 8, 8), [[2, 2, 2]], [2, 4], 1, 2, 1)
  assert got == 4 * (floats + 4 * params)
  # the parameter count is the real model's (flax's own, not the formula's)
  import jax

  from mdx.models.unet3d import UNet3D

  model = UNet3D(num_classes=2, depth=2, base_width=2, norm="batch")
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros((1, 8, 8, 8, 1), np.float32))
  )
  count = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"]))
  assert plan.estimate_bytes((8, 8, 8), [[2, 2, 2]], [2, 4], 1, 2, 0) == 16 * count


def test_budget_is_respected_and_a_bigger_one_gives_more_voxels_per_step():
  fp = _fp([(1.0, 1.0, 1.0)] * 400, [(96, 128, 112)] * 400)  # 5%: a batch cap of ~20 patches
  sizes = []
  for gb in (0.1, 0.5, 2.0, 8.0):
    p = plan.make_plan(fp, modality="MRI", memory_gb=gb)
    widths = plan.widths(len(p["strides"]), 32, 320)
    used = plan.estimate_bytes(p["patch_size"], p["strides"], widths, 1, 3, p["batch_size"])
    assert used <= gb * plan.GB and p["estimated_gb"] == pytest.approx(used / plan.GB)
    assert p["batch_size"] >= 2
    assert all(s % m == 0 for s, m in zip(p["patch_size"], plan.multiples(p["strides"])))
    assert len(p["strides"]) <= 5 and p["widths"] == widths
    # the patch is as large as allowed: one batch more would not fit or passes the 5% cap
    more = plan.estimate_bytes(p["patch_size"], p["strides"], widths, 1, 3, p["batch_size"] + 1)
    cap = round(0.05 * 96 * 128 * 112 * 400 / math.prod(p["patch_size"]))
    assert more > gb * plan.GB or p["batch_size"] >= cap
    sizes.append(math.prod(p["patch_size"]) * p["batch_size"])
  assert sizes == sorted(sizes) and len(set(sizes)) == 4
  with pytest.raises(ValueError, match="memory_gb"):
    plan.make_plan(fp, modality="MRI", memory_gb=1e-6)


def test_batch_is_capped_at_5_percent_of_the_dataset_and_at_least_2():
  many = plan.make_plan(_iso(1000, (32, 32, 32)), modality="MRI", memory_gb=100)
  assert many["patch_size"] == [32, 32, 32] and many["batch_size"] == 50  # 5% of 1000 cases
  assert "5%" in many["reasons"]["batch_size"]
  few = plan.make_plan(_iso(10, (32, 32, 32)), modality="MRI", memory_gb=100)
  assert few["batch_size"] == 2  # 5% of 10 cases is half a patch


def test_overrides_replace_fields_and_what_follows_is_derived_again():
  fp = _iso()
  p = plan.make_plan(
    fp,
    modality="MRI",
    memory_gb=8,
    overrides={"patch_size": [32, 48, 32], "batch_size": 3, "base_width": 16},
  )
  assert p["patch_size"] == [32, 48, 32] and p["batch_size"] == 3
  assert p["strides"] == [[2, 2, 2]] * 3  # from the overridden patch: 32 -> 16 -> 8 -> 4
  assert p["widths"] == [16, 32, 64, 128]
  assert p["reasons"]["patch_size"] == "set by override"
  coarse = plan.make_plan(fp, modality="MRI", memory_gb=8, overrides={"target_spacing": [2, 2, 2]})
  assert coarse["resampled_median_shape"] == [20, 28, 20]  # half of 40 x 56 x 40
  strided = plan.make_plan(fp, modality="MRI", memory_gb=8, overrides={"strides": [[1, 2, 2]]})
  assert strided["strides"] == [[1, 2, 2]] and strided["patch_size"] == [40, 56, 40]
  bad = [
    ({"patch_size": [30, 48, 32], "strides": [[2, 2, 2]] * 2}, "patch_size"),
    ({"patch_size": [0, 48, 32]}, "patch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"strides": [[3, 1, 1]]}, "strides"),
    ({"target_spacing": [1, -1, 1]}, "target_spacing"),
    ({"base_width": 64, "max_width": 32}, "base_width"),
    (
      {"normalization": {"mode": "ct", "clip": [[0, 1]] * 2, "mean": [0] * 2, "std": [1] * 2}},
      "normalization",
    ),
    ({"patch": [32, 32, 32]}, "patch"),
  ]
  for overrides, field in bad:
    with pytest.raises(ValueError, match=field) as e:
      plan.make_plan(fp, modality="MRI", memory_gb=8, overrides=overrides)
    assert "\n" not in str(e.value)


def test_ct_normalises_by_the_fingerprint_and_other_modalities_by_zscore():
  fp = _fp([(1, 1, 1)] * 4, [(20, 20, 20)] * 4, channels=2)
  ct = plan.make_plan(fp, modality="CT", memory_gb=1)["normalization"]
  assert ct == {
    "mode": "ct",
    "clip": [[-50.0, 200.0], [-50.0, 200.0]],
    "mean": [80.0, 81.0],
    "std": [40.0, 40.0],
  }
  x = np.array([[[[-500.0, 0.0], [100.0, 300.0]]]], np.float32)  # [1, 1, 2, 2]
  expect = np.array([[[[(-50 - 80) / 40, (0 - 81) / 40], [(100 - 80) / 40, (200 - 81) / 40]]]])
  np.testing.assert_allclose(standardize.standardize(x, ct), expect, rtol=1e-6)
  for modality in ("MRI", "T2", None):
    p = plan.make_plan(fp, modality=modality, memory_gb=1)
    assert p["normalization"] == {"mode": "zscore"} and p["modality"] == modality
  fp["intensity"][1] = None  # no foreground anywhere: CT cannot be planned
  with pytest.raises(ValueError, match="channel 1"):
    plan.make_plan(fp, modality="CT", memory_gb=1)


def test_describe_write_read_and_the_checks_of_a_read_plan(tmp_path):
  p = plan.make_plan(_iso(), modality="CT", memory_gb=8)
  lines = plan.describe(p)
  assert lines[0].startswith("spacing 1 x 1 x 1 mm")
  assert any(
    line.startswith(f"patch {' x '.join(map(str, p['patch_size']))} x batch {p['batch_size']}")
    for line in lines
  )
  assert any("levels" in line and "widths 32, 64" in line for line in lines)
  assert any(line.startswith("normalisation: CT per channel: clip [-50, 200]") for line in lines)
  path = str(tmp_path / "plan.json")
  plan.write(p, path)
  assert plan.read(path) == json.loads(json.dumps(p))
  for field, value in (
    ("batch_size", "2"),
    ("patch_size", [40, 56]),
    ("strides", [[2, 2, 3]]),
    ("normalization", {"mode": "ct"}),
    ("version", 0),
    ("widths", [1, 2]),
  ):
    with open(path, "w") as f:
      json.dump({**p, field: value}, f)
    with pytest.raises(ValueError, match=rf"plan.json: field '{field}'"):
      plan.read(path)
  with open(path, "w") as f:
    json.dump({k: v for k, v in p.items() if k != "target_spacing"}, f)
  with pytest.raises(ValueError, match="plan.json: field 'target_spacing' is missing"):
    plan.read(path)


def test_memory_defaults_and_config_overrides():
  assert plan.default_memory_gb("cuda") == plan.MEMORY_GB["gpu"] == 8
  assert plan.default_memory_gb("tpu") == plan.MEMORY_GB["tpu"]
  assert plan.default_memory_gb("cpu") < plan.MEMORY_GB["gpu"]
  with pytest.raises(ValueError, match="memory_gb"):
    plan.default_memory_gb("abacus")
  config = ml_collections.ConfigDict(
    {
      "data": {"spacing": "native", "patch_size": (32, 48, 32), "standardize": "per_channel"},
      "model": {"depth": 3, "base_width": 8},
      "train": {"batch_size": 4},
    }
  )
  assert plan.config_overrides(config) == {
    "patch_size": [32, 48, 32],
    "batch_size": 4,
    "base_width": 8,
    "strides": [[2, 2, 2]] * 2,
    "normalization": "per_channel",
  }


@pytest.mark.slow
def test_estimate_against_xla_memory_analysis():
  """The estimate against XLA:CPU's compiled train step (temporary buffers plus arguments):
  within 10% (it measured 0-3% under; the margin is for other XLA versions' buffer reuse)."""
  import jax
  import jax.numpy as jnp
  import optax

  from mdx.models.unet3d import UNet3D

  patch, depth, base, batch, channels, classes = (32, 32, 32), 3, 16, 2, 2, 3
  model = UNet3D(num_classes=classes, depth=depth, base_width=base, conv_impl="native")
  x = jnp.zeros((batch, *patch, channels))
  y = jnp.zeros((batch, *patch), jnp.int32)
  variables = model.init(jax.random.key(0), x[:1])
  tx = optax.adam(1e-3)

  def step(params, stats, opt, x, y):
    def loss(p):
      out, new = model.apply(
        {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
      )
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), new

    grads, new = jax.grad(loss, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new["batch_stats"], opt

  args = (variables["params"], variables["batch_stats"], tx.init(variables["params"]), x, y)
  memory = jax.jit(step, donate_argnums=(0, 1, 2)).lower(*args).compile().memory_analysis()
  real = memory.temp_size_in_bytes + memory.argument_size_in_bytes
  strides = [[2, 2, 2]] * (depth - 1)
  estimate = plan.estimate_bytes(
    patch, strides, plan.widths(depth - 1, base, 320), channels, classes, batch
  )
  assert abs(estimate / real - 1) < 0.1
