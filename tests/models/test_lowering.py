"""The accelerator code paths, checked on this CPU machine: mdx's train, eval and predict steps
lowered with jax.export for TPU and CUDA over a 4-device data mesh, and what each platform's
StableHLO holds.

The tuned operations (mdx.models.common: 1x1 convolutions as matrix products, the materialised
gradients; mdx.models.unet3d: the 3x3x3 convolution as 2D ones) have a CPU form and an accelerator
form, chosen per platform in the lowering (common.by_platform). Here each step is exported for
('tpu',), ('cuda',), ('cpu',) and all three at once, and the StableHLO text (Exported.mlir_module())
is read: no custom call a TPU or GPU lacks (LAPACK, a CPU callback, ...), no float64, and each
platform's own form of each operation. Lowering for a platform needs none of its devices: the mesh
is a jax.sharding.AbstractMesh of 4 devices (axis 'data', as runtime.make_mesh names it), so the
one-device test process lowers the same shard_map programs a 4-chip slice compiles.

Oracles are counts read from the models' parameters: every Conv1x1 kernel [1, 1, C, O] is one
forward 1x1 convolution in the accelerator form and none in the CPU form; every 3x3x3 kernel
[3, 3, 3, Cin, Cout] is one forward 3D convolution for TPU/CUDA, and on CPU there are 2D
convolutions instead. The fast tier lowers a tiny DenseNet and a tiny U-Net; DenseNet-121 in
bfloat16 is in the full tier (its train step alone traces for several seconds).
"""

import functools
import re

import jax
import jax.numpy as jnp
import jitted
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mdx import losses, runtime
from mdx.inference.predict import make_predict_step
from mdx.models import common, registry
from mdx.train import steps
from mdx.train.state import create_state

DEVICES = 4
MESH = AbstractMesh((DEVICES,), (runtime.DATA,))
BATCH = 8  # the global batch: 2 rows per device
ACCELERATORS = (("tpu",), ("cuda",))
EVERY = ("cpu", "cuda", "tpu")
# Custom-call targets that exist only in XLA:CPU (LAPACK and DUCC FFT kernels, Python callbacks
# registered for the host); a TPU or GPU compile of a module naming one fails.
CPU_ONLY_TARGET = re.compile(r"lapack|ducc|cpu|eigen", re.IGNORECASE)
_CONV = re.compile(
  r"stablehlo\.convolution\(.*dim_numbers = \[([^\]]*)\]x\[([^\]]*)\].*"
  r": \(tensor<([0-9x]+)x\w+>, tensor<([0-9x]+)x\w+>\)"
)


def _spec(tree, spec):
  """Abstract arrays of tree's shapes and dtypes, placed on MESH by `spec`."""
  sharding = NamedSharding(MESH, spec)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def _steps(model, image_shape, fields, loss):
  """{'train' | 'eval' | 'predict': (the jitted step as mdx builds it, its abstract arguments)}.
  The train and eval steps are mdx.train.steps' (run.py's data-parallel ones, BatchNorm statistics
  averaged over 'data'); predict is mdx.inference.predict's, fed the variables as a bundle has
  them."""
  tx = optax.adam(1e-3)
  image = jax.ShapeDtypeStruct((BATCH, *image_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
  stats = variables.get("batch_stats", {})
  state = _spec(jax.eval_shape(lambda v: create_state(v, stats, tx, 0), variables["params"]), P())
  batch = _spec(
    {
      "image": image,
      "mask": jax.ShapeDtypeStruct((BATCH,), jnp.float32),
      **{k: jax.ShapeDtypeStruct((BATCH, *s), d) for k, (s, d) in fields.items()},
    },
    P(runtime.DATA),
  )
  inference = {"params": state.params, "batch_stats": state.batch_stats}
  return {
    "train": (steps.make_train_step(model, loss, tx, MESH, BATCH), (state, batch)),
    "eval": (steps.make_eval_loss_step(model, loss, MESH, BATCH), (state, batch)),
    "predict": (make_predict_step(model, MESH), (inference, {"image": batch["image"]})),
  }


def _kernels(params, pattern):
  """How many parameters named 'kernel' have a shape matching `pattern` (a tuple; None: any)."""
  return sum(
    path[-1].key == "kernel"
    and len(a.shape) == len(pattern)
    and all(p is None or p == s for p, s in zip(pattern, a.shape))
    for path, a in jax.tree_util.tree_leaves_with_path(params)
  )


def _convolutions(text):
  """[(lhs dimension numbers, rhs dimension numbers, lhs shape, rhs shape)] of the module."""
  out = []
  for line in text.splitlines():
    if "stablehlo.convolution" in line:
      m = _CONV.search(line)
      assert m, f"unparsed convolution: {line.strip()[:300]}"
      lhs, rhs, lhs_shape, rhs_shape = m.groups()
      shape = lambda s: tuple(int(n) for n in s.split("x"))
      out.append((lhs, rhs, shape(lhs_shape), shape(rhs_shape)))
  return out


@functools.cache
def _exported(model_name: str, step: str, platforms: tuple[str, ...]) -> tuple[str, int]:
  """(StableHLO text, device count) of one step of one of the models below, exported."""
  fn, args = _built(model_name)[1][step]
  exported = jax.export.export(fn, platforms=platforms)(*args)
  assert exported.platforms == platforms
  return exported.mlir_module(), exported.nr_devices


def _check_deployable(text: str, platforms) -> None:
  """No custom call the platforms lack, no float64 anywhere."""
  targets = set(re.findall(r"custom_call @([\w.$-]+)", text))
  targets |= set(re.findall(r'call_target_name = "([^"]+)"', text))
  cpu_only = sorted(t for t in targets if CPU_ONLY_TARGET.search(t))
  assert not cpu_only, f"{platforms}: custom calls only XLA:CPU has: {cpu_only}"
  assert not re.search(r"\bf64\b|xf64>", text), f"{platforms}: float64 in the module"


# ------------------------------------------------------------------------------------- the models


def _densenet(name):
  model = registry.create(name, num_classes=5, dtype="bfloat16", bn_axis_name=runtime.DATA)
  weight = jnp.ones(5)
  return model, _steps(
    model,
    (32, 32, 1),
    {"labels": ((5,), jnp.float32), "label_mask": ((5,), jnp.float32)},
    lambda logits, b: losses.weighted_bce(logits, b["labels"], weight, weight, b["label_mask"]),
  )


def _unet():
  # nnU-Net's shape of network at a tiny size: per-axis strides, deep supervision, instance norm
  # (as config defaults), and the soft Dice + cross-entropy loss the segmentation task uses
  model = registry.create(
    "unet3d",
    num_classes=3,
    base_width=4,
    strides=((1, 2, 2), (2, 2, 2)),
    deep_supervision=True,
    norm="instance",
    bn_axis_name=runtime.DATA,
  )
  return model, _steps(
    model,
    (4, 8, 8, 1),
    {"label": ((4, 8, 8), jnp.int32)},
    lambda logits, b: losses.deep_supervision_loss(logits, b["label"], "softmax", ce_weight=1.0),
  )


@functools.cache
def _built(name):
  """(model, _steps(...)) of 'densenet_tiny', 'densenet121' (bfloat16) or 'unet3d' (tiny)."""
  return _unet() if name == "unet3d" else _densenet(name)


def _params(name):
  _, built = _built(name)
  return built["predict"][1][0]["params"]


# ------------------------------------------------------------------------------------- the tests


def _check_densenet(name, step):
  params = _params(name)
  n1x1 = _kernels(params, (1, 1, None, None))  # Conv1x1s: dense-layer bottlenecks, transitions
  assert n1x1 > 0
  head_products = 3 if step == "train" else 1  # the head's Dense: forward (and 2 gradients)
  for platforms in ACCELERATORS:
    text, devices = _exported(name, step, platforms)
    assert devices == DEVICES and f'"data"={DEVICES}' in text
    _check_deployable(text, platforms)
    forward_1x1 = [c for c in _convolutions(text) if c[1] == "0, 1, i, o" and c[3][:2] == (1, 1)]
    # the accelerator form: each 1x1 convolution is XLA's convolution, and no matrix product
    # but the head's remains (a CPU form left in: the rewrite's dot_generals)
    assert len(forward_1x1) == n1x1, (platforms, step, len(forward_1x1), n1x1)
    assert text.count("stablehlo.dot_general") == head_products, (platforms, step)
  cpu, _ = _exported(name, step, ("cpu",))
  _check_deployable(cpu, ("cpu",))
  assert not [c for c in _convolutions(cpu) if c[3][:2] == (1, 1) and c[1] == "0, 1, i, o"]
  # the CPU form: matrix products (x @ W, and in training the gradients and x @ I) instead
  assert cpu.count("stablehlo.dot_general") >= head_products + n1x1
  both, devices = _exported(name, step, EVERY)
  assert devices == DEVICES
  _check_deployable(both, EVERY)
  assert len([c for c in _convolutions(both) if c[3][:2] == (1, 1)]) >= n1x1
  assert both.count("stablehlo.dot_general") >= head_products + n1x1


def _check_unet(step):
  params = _params("unet3d")
  n3 = _kernels(params, (3, 3, 3, None, None))  # Conv3 layers: two per level
  assert n3 > 0
  for platforms in ACCELERATORS:
    text, devices = _exported("unet3d", step, platforms)
    assert devices == DEVICES and f'"data"={DEVICES}' in text
    _check_deployable(text, platforms)
    convs = _convolutions(text)
    # 'native': XLA's 3D convolution, one forward per Conv3 layer; no 2D forms
    assert len([c for c in convs if c[1] == "0, 1, 2, i, o" and c[3][:3] == (3, 3, 3)]) == n3
    assert not [c for c in convs if len(c[2]) == 4], (platforms, step)
  cpu, _ = _exported("unet3d", step, ("cpu",))
  _check_deployable(cpu, ("cpu",))
  convs = _convolutions(cpu)
  # 'stacked' / 'slices': 2D convolutions of [B * D, H, W, C]; no 3x3x3 kernel left
  assert not [c for c in convs if c[3][:3] == (3, 3, 3) and c[1] == "0, 1, 2, i, o"]
  assert len([c for c in convs if len(c[2]) == 4 and c[1] == "0, 1, i, o"]) >= n3
  both, _ = _exported("unet3d", step, EVERY)
  _check_deployable(both, EVERY)
  convs = _convolutions(both)
  assert len([c for c in convs if c[3][:3] == (3, 3, 3) and len(c[2]) == 5]) >= n3
  assert len([c for c in convs if len(c[2]) == 4]) >= n3


@pytest.mark.parametrize("step", ["train", "eval", "predict"])
def test_unet_steps_lower_for_tpu_and_cuda_with_their_own_forms(step):
  _check_unet(step)


@pytest.mark.parametrize(
  "step", [pytest.param("train", marks=pytest.mark.slow), "predict"]
)  # the U-Net's train step stays in the fast tier; DenseNet's trains in the full one
def test_densenet_steps_lower_for_tpu_and_cuda_with_their_own_forms(step):
  _check_densenet("densenet_tiny", step)


@pytest.mark.slow  # DenseNet-121's train step traces for several seconds per export
@pytest.mark.parametrize("step", ["train", "eval", "predict"])
def test_densenet121_bfloat16_steps_lower_for_tpu_and_cuda(step):
  _check_densenet("densenet121", step)


def test_portable_ops_lower_the_accelerator_form_for_every_platform():
  """Inside portable_ops() (ONNX export) even a CPU lowering gets the accelerator form: the
  choice is not in the program (JAX's own lowering still switches per platform where its rules
  differ, with identical branches for a convolution)."""
  model = registry.create("unet3d", num_classes=2, base_width=2, depth=2)
  x = jax.ShapeDtypeStruct((1, 4, 4, 4, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  for platforms in (("cpu",), EVERY):
    with common.portable_ops():
      exported = jax.export.export(jax.jit(model.apply), platforms=platforms)(variables, x)
    convs = _convolutions(exported.mlir_module())
    assert [c for c in convs if c[3][:3] == (3, 3, 3)], platforms
    assert not [c for c in convs if len(c[2]) == 4], platforms  # no 2D (CPU) form


def test_a_multi_platform_export_computes_the_cpu_jit_numbers():
  """The artifact lowered for (cpu, cuda, tpu), called here, takes the CPU form: the same logits
  as mdx's own jitted predict step on this machine's one-device mesh."""
  # one level (two 3x3x3 convolutions and the head): XLA:CPU compiles it three times here
  model = registry.create("unet3d", num_classes=2, base_width=2, depth=1, conv_impl="auto")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, 4, 4, 4, 1)), jnp.float32)
  mesh = runtime.make_mesh()
  variables = jitted.init(model, x, seed=1)
  step = make_predict_step(model, mesh)
  batch = runtime.shard_batch({"image": np.asarray(x)}, mesh)
  variables = runtime.replicate(variables, mesh)
  exported = jax.export.export(step, platforms=EVERY)(variables, batch)
  want = step(variables, batch)
  # the same operations on the same inputs: only XLA's float32 association order could differ
  np.testing.assert_allclose(exported.call(variables, batch), want, rtol=1e-6, atol=1e-6)
