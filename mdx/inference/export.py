"""A bundle's network exported for deployment: an ONNX graph (onnxruntime, any language) and a
serialized StableHLO program (jax.export: no Flax model to rebuild or trace), each the bundle's own
forward pass, and the bundle carrying them (export/ beside variables/, digests in bundle.json).

What is exported is the network and its activation, nothing around it:
  input        "input" [batch, *the kind's input shape] float32 (float16 for a float16 ONNX
               export): a classifier's preprocessed images [B, S, S, C], a segmenter's windows
               [B, D, H, W, C] (batch is dynamic in ONNX, symbolic in StableHLO)
  output       "probabilities": a classifier's sigmoid scores [B, F] before calibration (the raw
               scores its thresholds apply to), a segmenter's spec['output']['activation'] of the
               logits [B, D, H, W, K]; an ensemble's members averaged
Preprocessing, calibration, thresholds and (for segmenters) the sliding windows stay outside:
deployment_metadata writes them into the ONNX file's metadata (key "mdx", JSON), so a user without
mdx reproduces predict's outputs from the file alone.

ONNX (onnx_model) goes through the jax2onnx converter, tracing under
mdx.models.common.portable_ops() (plain Flax ops, accelerator forms, no platform switch). jax2onnx
0.17 gets some of mdx's layers wrong, so while it traces: its Flax pools read only 'SAME' and
'VALID' padding and take any other as 'VALID' (DenseNet's and ResNet's stems pool with ((1, 1),
(1, 1)): the graph silently lost a row and a column), so the pools get their padding by hand; its
BatchNorm after its convolution stays NCHW beside an NHWC residual (ResNet: a graph onnxruntime
refuses), so BatchNorm converts as Flax's own code; it converts no 3D lax convolution, so the
U-Net's become 2D ones over depth slices; its float16 convolutions get float32 weights, which are
cast. Every export is then checked against the JAX model on a probe batch before it is returned
(_check_onnx). A model with an operation the converter cannot express is a ValueError naming the
JAX primitive.

StableHLO (stablehlo) is jax.export of the same forward pass with the weights as constants, lowered
for CPU, CUDA and TPU in one artifact (mdx's tuned operations pick each platform's form inside the
lowering), so it serves on an accelerator this machine lacks. serving(bundle) is the bundle's
carried export for the running platform, deserialized and compiled per batch shape (the compiled
program kept on disk by the export's digest: mdx.inference.executables), which predict calls
instead of building and tracing the model; the bundle is then loaded with variables=False.

add_to_bundle writes an export into the bundle through mdx.outputs.OutputFolder and records it in
bundle.json ('exports', and its digest in 'files', which load checks); bundle.write drops exports
when it writes new weights. jax2onnx, onnx and onnxruntime are the optional extra `.[export]`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mdx import jsonio, outputs, runtime
from mdx.inference import bundle as bundle_lib
from mdx.inference import executables
from mdx.inference.bundle import Bundle

ONNX_FILE = bundle_lib.ONNX_FILE  # "export/model.onnx" inside a bundle
STABLEHLO_FILE = bundle_lib.STABLEHLO_FILE  # "export/model.stablehlo"
FORMATS = tuple(bundle_lib.EXPORT_FILES)  # ('onnx', 'stablehlo')
METADATA_KEY = "mdx"  # the ONNX metadata_props entry holding deployment_metadata (JSON)
METADATA_FORMAT = "mdx-onnx/1"
INPUT, OUTPUT = "input", "probabilities"
DTYPES = ("float32", "float16")
PLATFORMS = ("cpu", "cuda", "tpu")
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
COMMAND = "export-model"
# The probe batch an ONNX graph is checked on against the JAX model, and how far its probabilities
# may be. float32: the same operations in float32 differ by summation order and convolution
# algorithm, ~1e-6 on probabilities in [0, 1] for these networks; 1e-4 leaves a 100x margin and
# still catches a lost row of a feature map (2e-2 on a tiny DenseNet). float16: the two runtimes
# round 10-bit mantissas differently through dozens of layers; 5e-2 catches a wrong graph, not
# float16's rounding.
PROBE_BATCH = 2
PROBE_TOLERANCE = {"float32": 1e-4, "float16": 5e-2}


# ----------------------------------------------------------------------------- the forward pass
def activation(spec: Mapping[str, Any]) -> str:
  """The activation the bundle's predict applies to the network's output: a classifier's sigmoid
  (raw scores), a segmenter's spec['output']['activation'] ('softmax' | 'sigmoid')."""
  return "sigmoid" if spec["task"] == "classification" else spec["output"]["activation"]


def input_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
  """One input without its batch axis: [S, S, C] (classifier) or [D, H, W, C] (segmenter)."""
  return tuple(int(s) for s in bundle_lib.kind(spec["task"]).input_shape(spec)[1:])


def output_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
  """One output without its batch axis: [F] (classifier) or [D, H, W, K] (segmenter)."""
  k = int(spec["model"]["num_classes"])
  if spec["task"] == "classification":
    return (k,)
  return (*input_shape(spec)[:-1], k)


def forward(bundle: Bundle, dtype: str | None = None) -> Callable[[jax.Array], jax.Array]:
  """images [B, *input_shape] -> probabilities [B, *output_shape] float32 (float16 with dtype
  'float16'), the weights closed over as constants: the network in inference mode, the bundle's
  activation, an ensemble's members averaged (mdx.inference.segmenter.VolumeSegmenter's mean).

  dtype: the compute dtype (weights cast to it too); None keeps the bundle's model dtype and
  float32 weights, as predict runs it."""
  from mdx.models import registry

  model_spec = dict(bundle.spec["model"])
  if dtype is not None:
    model_spec["dtype"] = dtype
  model = registry.create_from_config(model_spec)
  weight = jnp.float32 if dtype is None else jnp.dtype(dtype)
  members = [
    jax.tree.map(
      lambda a: jnp.asarray(a, weight if np.issubdtype(a.dtype, np.floating) else None), v
    )
    for v in bundle.member_variables()
  ]
  act = activation(bundle.spec)
  out_dtype = jnp.float32 if dtype is None else jnp.dtype(dtype)

  def probabilities(x):
    outs = []
    for variables in members:
      logits = model.apply(variables, x, train=False).astype(jnp.float32)
      outs.append(jax.nn.softmax(logits, -1) if act == "softmax" else jax.nn.sigmoid(logits))
    mean = outs[0] if len(outs) == 1 else sum(outs[1:], outs[0]) / len(outs)
    return mean.astype(out_dtype)

  return probabilities


# ------------------------------------------------------------------------------------- metadata
def deployment_metadata(spec: Mapping[str, Any], *, dtype: str = "float32") -> dict[str, Any]:
  """What a user without mdx needs to reproduce predict from the exported network (JSON-able):
  {'format', 'task', 'model', 'graph' (names, shapes, dtypes), 'input': spec['input'], 'output':
  spec['output'], 'preprocessing' (a recipe in words), then a classifier's 'thresholds' and
  'calibration', a segmenter's 'windowing' and 'postprocessing', and 'ensemble' when averaged."""
  spec = jsonio.jsonable(dict(spec))
  task = spec["task"]
  shape_in, shape_out = ["batch", *input_shape(spec)], ["batch", *output_shape(spec)]
  out: dict[str, Any] = {
    "format": METADATA_FORMAT,
    "task": task,
    "model": spec["model"],
    "graph": {
      "input": {"name": INPUT, "shape": shape_in, "dtype": dtype},
      "output": {"name": OUTPUT, "shape": shape_out, "dtype": dtype},
      "activation": activation(spec),
      "compute_dtype": dtype,  # the weights' too (the bundle's model may say another)
      "computes": f"{activation(spec)} of the network's output in inference mode (BatchNorm "
      "running statistics)",
    },
    "input": spec["input"],
    "output": spec["output"],
  }
  members = int((spec.get("ensemble") or {}).get("members", 1))
  if members > 1:
    out["ensemble"] = {
      "members": members,
      "combine": "the graph averages its members' probabilities (all inside it)",
    }
  if task == "classification":
    out.update(_classifier_metadata(spec))
  else:
    out.update(_segmenter_metadata(spec))
  out["provenance"] = {
    k: spec.get("provenance", {}).get(k) for k in ("mdx_version", "git_commit", "created", "step")
  }
  return out


def _classifier_metadata(spec: Mapping[str, Any]) -> dict[str, Any]:
  inp = spec["input"]
  s = inp["standardize"]
  size, channels = inp["image_size"], inp["channels"]
  standardize = {
    "none": "no standardisation",
    "per_image": "x = (x - mean(x)) / (std(x) + 1e-6), mean and std over all pixels and channels "
    "of the image (std: population, ddof 0)",
    "dataset": f"x = (x - mean) / (std + 1e-6) per channel with mean {s.get('mean')} and std "
    f"{s.get('std')}",
    "per_channel": "x = (x - mean_c) / max(std_c, 1e-8) per channel over all pixels",
  }.get(s["mode"], f"standardize mode {s['mode']!r} (mdx.data.standardize)")
  return {
    "preprocessing": [
      "decode the image: PNG/JPEG as stored (8-bit or 16-bit); DICOM with its modality LUT, then "
      "VOI LUT or window, MONOCHROME1 inverted (bone bright)",
      f"channels to {channels}: gray repeated; RGB to 1 channel as round(0.299 R + 0.587 G + "
      "0.114 B) in the image's integer type (a gray image stored as RGB keeps its values)",
      f"resize the whole image (no crop) to {size} x {size}: 8/16-bit images by area averaging "
      "(PIL Image.resize with Resampling.BOX per channel; 16-bit through PIL mode 'F', rounded "
      "and clipped to 0..65535); float images bilinearly",
      "to float32 in [0, 1]: 8-bit / 255, 16-bit / 65535",
      standardize,
      f"stack to [batch, {size}, {size}, {channels}] (channels last) float32 as '{INPUT}'",
    ],
    "postprocessing": [
      f"'{OUTPUT}' [batch, F] are the raw scores, one per finding in output.findings order",
      "a finding is called positive when its raw score >= thresholds.values[finding] (no call "
      "where the value is null)",
      "the reported probability is calibration.maps[finding] applied to the raw score: "
      "identity: unchanged; platt: 1 / (1 + exp(-(a * logit(p) + b))) with p clipped to "
      "[1e-7, 1 - 1e-7] and logit(p) = log(p) - log(1 - p); isotonic: linear interpolation of "
      "(x, y) (numpy.interp, clipped at the ends)",
    ],
    "thresholds": spec["thresholds"],
    "calibration": spec["calibration"],
  }


def _segmenter_metadata(spec: Mapping[str, Any]) -> dict[str, Any]:
  inp = spec["input"]
  patch = [int(p) for p in inp["patch_size"]]
  s = inp["standardize"]
  standardize = {
    "per_channel": "per channel: (x - mean_c) / max(std_c, 1e-8) over all voxels",
    "zscore": "per channel: (x - mean_c) / max(std_c, 1e-8) over all voxels",
    "nonzero": "per channel over the non-zero voxels only: (x - mean) / max(std, 1e-8) there, "
    "0 elsewhere",
    "ct": f"per channel: clip to {s.get('clip')}, then (x - {s.get('mean')}) / max("
    f"{s.get('std')}, 1e-8)",
    "none": "no standardisation",
  }.get(s["mode"], f"standardize mode {s['mode']!r} (mdx.data.standardize)")
  spacing = inp.get("spacing")
  mirror = [int(a) for a in inp.get("mirror_axes") or []]
  return {
    "preprocessing": [
      "read the scan [D, H, W, C] float32 in the NIfTI file's voxel order (channels last)",
      "no resampling"
      if spacing is None
      else f"resample to spacing {spacing} mm (D, H, W): cubic "
      "spline (order 3), but nearest-neighbour along an axis whose spacing is 3x or more the "
      "finest (mdx.data.volume.resample); the probabilities are resampled back linearly to the "
      "scan's grid before the argmax",
      f"standardise the whole scan: {standardize}",
    ],
    "windowing": {
      "patch_size": patch,
      "overlap": float(inp["overlap"]),
      "batch_size": inp.get("batch_size"),
      "weighting": "gaussian",
      "sigma_scale": 0.125,
      "mirror_axes": mirror,
      "recipe": [
        f"pad the scan at the end of each axis to at least {patch} with zeros",
        "window starts per axis: [0] when the axis fits one window, else n = ceil((size - "
        "window) / step) + 1 evenly spaced starts round(linspace(0, size - window, n)) with "
        "step = max(1, int(window * (1 - overlap))), duplicates removed",
        "every window (all combinations of the axes' starts) through the graph, in batches "
        "(any batch size gives the same numbers)",
        "mirroring: each window is also run flipped along every non-empty subset of mirror_axes "
        "(0 = D, 1 = H, 2 = W), each output flipped back, and the 2**n outputs averaged",
        "importance map per window: prod over axes of exp(-0.5 * ((i - (w - 1) / 2) / (0.125 * "
        "w)) ** 2), divided by its maximum, then at least 1e-3",
        "output = sum over windows of probabilities * importance / sum of importance, per voxel; "
        "crop the padding",
      ],
    },
    "postprocessing": [
      "label_mode 'classes': argmax over the last axis, then output.label_values[index]",
      "label_mode 'regions': each channel > 0.5; BraTS labels: 2 where region 0, 1 where region "
      "1, 4 where region 2 (later ones win)",
      "output.postprocess: when it lists classes in largest_component, keep only the largest "
      "26-connected component of each of them (mdx.evaluate.postprocess)",
    ],
  }


def read_metadata(source: str | os.PathLike | Any) -> dict[str, Any]:
  """The deployment metadata of an ONNX export (a path or an onnx.ModelProto): the JSON under
  metadata_props 'mdx'. A file without it is a ValueError naming it."""
  if isinstance(source, (str, os.PathLike)):
    onnx = _import("onnx")
    where = str(source)
    try:
      model = onnx.load(where, load_external_data=False)
    except (OSError, ValueError) as e:  # missing file, not a protobuf
      raise ValueError(f"{where} cannot be read as an ONNX model ({e})") from None
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError is no ValueError
      raise ValueError(f"{where} is not an ONNX model ({type(e).__name__}: {e})") from None
  else:
    model, where = source, "the ONNX model"
  props = {p.key: p.value for p in model.metadata_props}
  if METADATA_KEY not in props:
    raise ValueError(
      f"{where} has no '{METADATA_KEY}' metadata: it was not exported by mdx (python -m mdx "
      "export_model --format=onnx)"
    )
  try:
    meta = json.loads(props[METADATA_KEY])
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: its '{METADATA_KEY}' metadata is not JSON ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
    found = meta.get("format") if isinstance(meta, dict) else meta
    raise ValueError(
      f"{where}: metadata format {found!r}, expected {METADATA_FORMAT!r}; export it again with "
      "this mdx"
    )
  return meta


# ------------------------------------------------------------------------------------------ ONNX
def _import(name: str):
  try:
    return __import__(name)
  except ImportError:
    raise ValueError(
      f"ONNX export needs the package {name!r}: install mdx's export extra (pip install -e "
      "'.[export]')"
    ) from None


def _check_dtype(dtype: str) -> str:
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r} is not an export dtype; choose one of {DTYPES}")
  return dtype


def onnx_model(bundle: Bundle, dtype: str = "float32", *, check: bool = True):
  """The bundle's forward pass as an onnx.ModelProto: input "input" [batch, *input_shape] and
  output "probabilities" [batch, *output_shape], both `dtype` (float32 or float16, the weights and
  the computation too), batch dynamic; deployment_metadata under metadata_props 'mdx'.

  check: the graph is run by onnxruntime on a probe batch and compared with the JAX model
  (PROBE_TOLERANCE); a converter that got it wrong is a ValueError, never a file."""
  _check_dtype(dtype)
  fn = forward(bundle, dtype)
  shape = input_shape(bundle.spec)
  model = convert(fn, shape, dtype=dtype, where=f"bundle {bundle.path}")
  onnx = _import("onnx")
  meta = deployment_metadata(bundle.spec, dtype=dtype)
  meta["graph"]["opset"] = int(model.opset_import[0].version)
  onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
  model.doc_string = (
    f"mdx {bundle.task} model {bundle.spec['model']['name']!r}: '{INPUT}' -> '{OUTPUT}'; "
    f"the metadata '{METADATA_KEY}' (JSON) says how to prepare inputs and read outputs"
  )
  if check:
    _check_onnx(model, fn, shape, dtype, f"bundle {bundle.path}")
  return model


def convert(
  fn: Callable[[jax.Array], jax.Array],
  shape: Sequence[int],
  *,
  dtype: str = "float32",
  where: str = "the model",
):
  """jax2onnx of fn (x [batch, *shape] dtype -> one array) under portable_ops, the pools padded by
  hand (module docstring): an onnx.ModelProto with input "input" and output "probabilities". An
  operation jax2onnx cannot express is a ValueError naming the JAX primitive."""
  from mdx.models import common

  jax2onnx = _import("jax2onnx")
  _check_dtype(dtype)

  flax_as_is = _flax_attributes()  # before jax2onnx patches Flax

  def traced(x):
    # inside the trace, where jax2onnx's patches are in place: Flax as it was, then these
    with _restored(flax_as_is), _pools_padded_by_hand(), _convs_3d_as_2d():
      return fn(x)

  spec = jax.ShapeDtypeStruct(("batch", *shape), jnp.dtype(dtype))
  try:
    with common.portable_ops():
      model = jax2onnx.to_onnx(traced, [spec], input_names=[INPUT], output_names=[OUTPUT])
    return _conv_weights_like_inputs(model)
  except NotImplementedError as e:
    text = str(e)
    found = re.search(r"primitive '([^']+)'", text)
    what = (
      f"the JAX primitive {found[1]!r}"
      if found
      else f"one of its operations ({' '.join(text.split())})"
    )
    raise ValueError(
      f"{where}: jax2onnx {_version('jax2onnx')} cannot express {what} in ONNX; export "
      "--format=stablehlo instead, or change the model"
    ) from None


def _conv_weights_like_inputs(model):
  """jax2onnx 0.17 writes a Flax convolution's kernel as a float32 initializer whatever the
  computation's dtype, which onnxruntime refuses beside float16 inputs ("Type parameter (T) of
  Optype (Conv) bound to different types"): such weights are cast to their inputs' dtype."""
  onnx = _import("onnx")
  from onnx import numpy_helper

  g = model.graph
  types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)}
  initializers = {i.name: i for i in g.initializer}
  for node in g.node:
    if node.op_type not in ("Conv", "ConvTranspose"):
      continue
    want = types.get(node.input[0])
    if want not in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
      continue
    for name in node.input[1:]:
      init = initializers.get(name)
      if init is not None and init.data_type == onnx.TensorProto.FLOAT:
        value = numpy_helper.to_array(init).astype(onnx.helper.tensor_dtype_to_np_dtype(want))
        init.CopyFrom(numpy_helper.from_array(value, name))
  return model


def _version(package: str) -> str:
  try:
    from importlib import metadata

    return metadata.version(package)
  except Exception:  # noqa: BLE001 - a version is only for messages and records
    return "?"


# Flax layers traced as their own JAX code while jax2onnx converts (_restored)
FLAX_LAYERS = ("BatchNorm",)


def _flax_attributes() -> list[tuple[Any, dict[str, Any]]]:
  """(class, a copy of its attributes) of the Flax Linen layers FLAX_LAYERS, taken before jax2onnx
  patches them (it sets a class's __call__ even where the class inherits it)."""
  from flax import linen as nn

  return [(getattr(nn, name), dict(vars(getattr(nn, name)))) for name in FLAX_LAYERS]


_MISSING = object()


@contextlib.contextmanager
def _restored(attributes: Sequence[tuple[Any, dict[str, Any]]]) -> Iterator[None]:
  """The classes as `attributes` recorded them, for the block. jax2onnx 0.17 replaces Flax's
  layers with ONNX-level forms while it traces; its BatchNorm after its convolution is computed in
  NCHW and then added to an NHWC residual (ResNet's graph, which onnxruntime refuses), so BatchNorm
  converts as its own JAX code, primitive by primitive. (Its other layers need the jax.numpy
  functions it patches too, so they cannot simply be restored: its convolutions stay, with
  _conv_weights_like_inputs, and its pools get their padding by hand.)"""
  undo = []

  def put(owner, name, value):
    if value is _MISSING:
      delattr(owner, name)
    else:
      setattr(owner, name, value)

  try:
    for owner, before in attributes:
      now = dict(vars(owner))
      for name in set(before) | set(now):
        old, new = before.get(name, _MISSING), now.get(name, _MISSING)
        if old is not new:
          undo.append((owner, name, new))
          put(owner, name, old)
    yield
  finally:
    for owner, name, value in reversed(undo):
      put(owner, name, value)


@contextlib.contextmanager
def _pools_padded_by_hand() -> Iterator[None]:
  """flax.linen's max_pool / avg_pool with any padding as an explicit pad and a 'VALID' pool (the
  values nn.max_pool and nn.avg_pool give: -inf padding for the maximum; zeros for the average,
  divided by the window's size with count_include_pad, else by the count of real inputs), over
  whatever flax.linen holds now (jax2onnx's patches while it traces)."""
  import flax.linen as nn
  from flax.linen import pooling

  max_pool, avg_pool = nn.max_pool, nn.avg_pool

  def pads(x, window_shape, strides, padding):
    if isinstance(padding, str) and padding.upper() == "VALID":
      return None
    spatial = x.shape[1 : 1 + len(window_shape)]
    if isinstance(padding, str):
      return jax.lax.padtype_to_pads(spatial, window_shape, strides or (1,) * len(spatial), padding)
    return [tuple(int(v) for v in p) for p in padding]

  def padded(x, p, value):
    width = [(0, 0), *p] + [(0, 0)] * (x.ndim - 1 - len(p))
    return jnp.pad(x, width, constant_values=value)

  def max_padded(x, *, window_shape, strides=None, padding="VALID"):
    p = pads(x, window_shape, strides, padding)
    if p is not None:
      x = padded(x, p, -jnp.inf)
    return max_pool(x, window_shape=window_shape, strides=strides, padding="VALID")

  def avg_padded(x, *, window_shape, strides=None, padding="VALID", count_include_pad=True):
    p = pads(x, window_shape, strides, padding)
    if p is None or not any(a or b for a, b in p):
      return avg_pool(x, window_shape=window_shape, strides=strides, padding="VALID")
    y = avg_pool(padded(x, p, 0), window_shape=window_shape, strides=strides, padding="VALID")
    if count_include_pad:
      return y
    ones = padded(jnp.ones((1, *x.shape[1:-1], 1), x.dtype), p, 0)
    share = avg_pool(ones, window_shape=window_shape, strides=strides, padding="VALID")
    return y / share  # mean over the window / share of real inputs = mean over the real inputs

  patched = ((nn, "max_pool", max_padded), (nn, "avg_pool", avg_padded))
  patched += ((pooling, "max_pool", max_padded), (pooling, "avg_pool", avg_padded))
  before = [(module, name, getattr(module, name)) for module, name, _ in patched]
  try:
    for module, name, value in patched:
      setattr(module, name, value)
    yield
  finally:
    for module, name, value in before:
      setattr(module, name, value)


VOLUME_CONV = ("NDHWC", "DHWIO", "NDHWC")


@contextlib.contextmanager
def _convs_3d_as_2d() -> Iterator[None]:
  """jax.lax.conv_general_dilated of a volume (VOLUME_CONV layout, unit strides and dilations, one
  group: the U-Net's 'native' 3x3x3 convolution) as the sum over the kernel's depth offsets of 2D
  convolutions of the depth slices (the U-Net's 'slices' form, the same numbers): jax2onnx 0.17
  converts lax convolutions of one or two spatial axes only ("Unsupported conv layouts")."""
  conv = jax.lax.conv_general_dilated

  def as_2d(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **kw):
    plain = (
      lhs.ndim == 5
      and _layout(kw.get("dimension_numbers")) == VOLUME_CONV
      and tuple(window_strides) == (1, 1, 1)
      and all(d is None or tuple(d) == (1, 1, 1) for d in (lhs_dilation, rhs_dilation))
      and kw.get("feature_group_count", 1) == 1
      and kw.get("batch_group_count", 1) == 1
    )
    if not plain:
      return conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kw)
    _, d, h, w, c = lhs.shape
    kd = rhs.shape[0]
    if isinstance(padding, str):
      padding = jax.lax.padtype_to_pads((d, h, w), rhs.shape[:3], (1, 1, 1), padding)
    (front, back), plane = padding[0], list(padding[1:])
    x = jnp.pad(lhs, ((0, 0), (front, back), (0, 0), (0, 0), (0, 0)))
    depth = d + front + back - kd + 1
    rest = {k: v for k, v in kw.items() if k in ("precision", "preferred_element_type")}
    out = None
    for a in range(kd):  # output slice i sees padded slices i .. i + kd - 1
      y = conv(
        x[:, a : a + depth].reshape(-1, h, w, c),
        rhs[a],
        (1, 1),
        plane,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        **rest,
      )
      out = y if out is None else out + y
    return out.reshape(-1, depth, *out.shape[1:])

  jax.lax.conv_general_dilated = as_2d
  try:
    yield
  finally:
    jax.lax.conv_general_dilated = conv


def _layout(numbers) -> tuple[str, ...] | None:
  """dimension_numbers given as three layout strings, else None."""
  if isinstance(numbers, (tuple, list)) and all(isinstance(n, str) for n in numbers):
    return tuple(numbers)
  return None


def _check_onnx(model, fn, shape, dtype: str, where: str) -> None:
  """onnxruntime's output of `model` on a seeded probe batch equals fn's within PROBE_TOLERANCE."""
  from mdx.models import common

  x = np.random.default_rng(0).standard_normal((PROBE_BATCH, *shape)).astype(dtype)
  got = run_onnx(model, x)
  with common.portable_ops():
    want = np.asarray(jax.jit(fn)(x))
  error = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
  if got.shape != want.shape or not error <= PROBE_TOLERANCE[dtype]:
    found = f"shape {got.shape} vs {want.shape}" if got.shape != want.shape else f"by {error:.3g}"
    raise ValueError(
      f"{where}: the ONNX graph jax2onnx {_version('jax2onnx')} made differs from the model "
      f"({found} on a probe batch, tolerance {PROBE_TOLERANCE[dtype]}): a converter error; "
      "export --format=stablehlo instead"
    )


def run_onnx(model, images: np.ndarray) -> np.ndarray:
  """onnxruntime (CPU) of an ONNX export (a ModelProto, its bytes or a path) on a batch."""
  ort = _import("onnxruntime")
  if hasattr(model, "SerializeToString"):
    model = model.SerializeToString()
  options = ort.SessionOptions()
  options.log_severity_level = 3  # errors only: float16 graphs warn per node CPU cannot fold
  session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
  return np.asarray(session.run([OUTPUT], {INPUT: images})[0])


# ------------------------------------------------------------------------------------ StableHLO
def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  """Platforms for jax.export, checked: a tuple of distinct names of KNOWN_PLATFORMS."""
  platforms = tuple(str(p).strip().lower() for p in platforms)
  unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
  if not platforms or unknown or len(set(platforms)) != len(platforms):
    raise ValueError(
      f"platforms {list(platforms)}: expected distinct names among {KNOWN_PLATFORMS}, e.g. "
      f"{','.join(PLATFORMS)}"
    )
  return platforms


def stablehlo(bundle: Bundle, platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
  """The bundle's forward pass as a jax.export.Exported: images [batch, *input_shape] float32
  (batch symbolic) -> probabilities [batch, *output_shape] float32, the weights as constants,
  lowered for each of `platforms`, traced as predict traces it (the bundle's compute dtype, mdx's
  tuned operations). exported.serialize() is the artifact; jax.export.deserialize reads it."""
  platforms = check_platforms(platforms)
  shape = input_shape(bundle.spec)
  images = jax.ShapeDtypeStruct(jax.export.symbolic_shape("batch") + shape, jnp.float32)
  return jax.export.export(jax.jit(forward(bundle)), platforms=platforms)(images)


def running_platform() -> str:
  """The platform name jax.export uses for this process's default backend ('gpu' -> 'cuda' or
  'rocm')."""
  backend = jax.default_backend()
  if backend != "gpu":
    return backend
  version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
  return "rocm" if "rocm" in version else "cuda"


def carried(bundle: Bundle) -> jax.export.Exported | None:
  """The bundle's carried StableHLO for the running platform, deserialized, or None when it
  carries none for this platform. An artifact this JAX cannot read is a ValueError saying to
  export it again."""
  record = (bundle.spec.get(bundle_lib.EXPORTS) or {}).get("stablehlo")
  if not record or running_platform() not in record.get("platforms", ()):
    return None
  path = os.path.join(bundle.path, *record["file"].split("/"))
  with open(path, "rb") as f:
    data = f.read()
  try:
    return jax.export.deserialize(bytearray(data))
  except Exception as e:  # noqa: BLE001 - flatbuffers and jax raise many types for a bad file
    raise ValueError(
      f"bundle {bundle.path}: {record['file']} (exported with jax {record.get('jax_version')}) "
      f"cannot be read by jax {jax.__version__} ({type(e).__name__}: {e}); export it again "
      f"(python -m mdx export_model --bundle={bundle.path} --format=stablehlo)"
    ) from None


def serving(
  bundle: Bundle, exported: jax.export.Exported | None = None
) -> Callable[[np.ndarray], np.ndarray] | None:
  """The bundle's carried StableHLO for the running platform (`exported` when the caller has
  read it with carried(bundle)) as images [B, *input_shape] -> probabilities [B, *output_shape]
  (numpy, any B; compiled per batch size, the compiled program kept on disk by the export's
  digest), or None when the bundle carries none for this platform. Needs no weights: load the
  bundle with variables=False (its digests are checked there)."""
  exported = exported if exported is not None else carried(bundle)
  if exported is None:
    return None
  record = bundle.spec[bundle_lib.EXPORTS]["stablehlo"]
  options = runtime.compiler_options()
  call = jax.jit(exported.call, compiler_options=options)
  digest = bundle.spec.get(bundle_lib.FILES, {}).get(record["file"])  # checked by bundle.load
  programs: dict[tuple[int, ...], Callable[[np.ndarray], Any]] = {}

  def predict(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.shape not in programs:
      facts = {"export": digest, "input": x.shape, "compiler_options": options}
      programs[x.shape] = executables.load_or_compile(call, (x,), facts) if digest else call
    return np.asarray(programs[x.shape](x))

  return predict


# ------------------------------------------------------------------------------------ artifacts
def artifact(
  bundle: Bundle,
  fmt: str,
  *,
  dtype: str = "float32",
  platforms: Sequence[str] = PLATFORMS,
) -> tuple[bytes, dict[str, Any]]:
  """(the export's bytes, its record for bundle.json 'exports') of format `fmt`."""
  if fmt not in FORMATS:
    raise ValueError(f"export format {fmt!r} is unknown; choose one of {FORMATS}")
  _check_dtype(dtype)
  record: dict[str, Any] = {
    "file": bundle_lib.EXPORT_FILES[fmt],
    "input": {"name": INPUT, "shape": ["batch", *input_shape(bundle.spec)]},
    "output": {"name": OUTPUT, "shape": ["batch", *output_shape(bundle.spec)]},
    "activation": activation(bundle.spec),
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }
  if fmt == "onnx":
    model = onnx_model(bundle, dtype)
    data = model.SerializeToString()
    record.update(
      dtype=dtype,
      opset=int(model.opset_import[0].version),
      converter=f"jax2onnx {_version('jax2onnx')}",
      metadata=METADATA_KEY,
    )
    return data, record
  if dtype != "float32":
    raise ValueError(
      f"dtype={dtype!r}: the StableHLO export computes as the bundle predicts (float32 in and "
      "out); float16 is for --format=onnx"
    )
  exported = stablehlo(bundle, platforms)
  record.update(
    dtype="float32",  # in and out; computed as the bundle's model says
    compute_dtype=bundle.spec["model"].get("dtype", "float32"),
    platforms=list(exported.platforms),
    jax_version=jax.__version__,
    calling_convention_version=int(exported.calling_convention_version),
  )
  return bytes(exported.serialize()), record


def add_to_bundle(
  bundle_dir: str,
  fmt: str,
  *,
  dtype: str = "float32",
  platforms: Sequence[str] = PLATFORMS,
  overwrite: bool = False,
) -> str:
  """Exports the bundle at `bundle_dir` in format `fmt` ('onnx' | 'stablehlo') into the bundle
  itself (ONNX_FILE or STABLEHLO_FILE) and records it in bundle.json: 'exports'[fmt] (file,
  dtype, platforms, versions) and the file's sha256 in 'files', which load checks. Returns the
  export's path. The bundle is checked first (load); a file mdx did not write at the export's
  place is refused unless overwrite (mdx.outputs). A kill while moving leaves a bundle load
  refuses, never a mismatched one that it accepts; exporting again repairs it."""
  platforms = _check_request(fmt, dtype, platforms)
  rel = bundle_lib.EXPORT_FILES[fmt]
  # the export being replaced is not compared: a half-moved earlier one can be written again
  bundle = bundle_lib.load(bundle_dir, replacing=(rel,))
  # bundle.json is not a completion file here: an OutputFolder removes those before moving the
  # new ones in, and a kill there would leave no bundle at all; moved in one by one, a kill
  # leaves a bundle.json whose digests refuse the other file (check_files)
  folder = outputs.OutputFolder(bundle.path, COMMAND, overwrite=overwrite)
  folder.claim(files=[rel, bundle_lib.SPEC])  # before the work: a refusal comes at once
  data, record = artifact(bundle, fmt, dtype=dtype, platforms=platforms)
  spec = dict(bundle.spec)
  spec[bundle_lib.EXPORTS] = {**(spec.get(bundle_lib.EXPORTS) or {}), fmt: record}
  spec[bundle_lib.FILES] = {**spec[bundle_lib.FILES], rel: hashlib.sha256(data).hexdigest()}
  with folder:
    _write_bytes(folder.path(rel), data)
    outputs.write_json(folder.path(bundle_lib.SPEC), jsonio.jsonable(spec))
    folder.commit()
  return os.path.join(bundle.path, *rel.split("/"))


def export_file(
  bundle_dir: str,
  fmt: str,
  output: str,
  *,
  dtype: str = "float32",
  platforms: Sequence[str] = PLATFORMS,
  overwrite: bool = False,
) -> str:
  """Exports the bundle at `bundle_dir` in format `fmt` to the file `output` (written whole
  through mdx.outputs: a file mdx did not write there is refused unless overwrite). Returns its
  absolute path."""
  platforms = _check_request(fmt, dtype, platforms)
  output = os.path.abspath(os.path.expanduser(output))
  if os.path.isdir(output) or output.endswith(os.sep):
    raise ValueError(
      f"--output={output} is a folder; pass the export's file path, e.g. model.{fmt}"
    )
  bundle = bundle_lib.load(bundle_dir)
  inside = os.path.relpath(output, bundle.path).replace(os.sep, "/")
  if not inside.startswith("../"):
    raise ValueError(
      f"--output={output} is inside the bundle {bundle.path}; leave --output out to carry the "
      "export in the bundle (recorded in its bundle.json), or write it elsewhere"
    )
  name = os.path.basename(output)
  folder = outputs.OutputFolder(os.path.dirname(output), COMMAND, overwrite=overwrite)
  folder.claim(files=[name])
  data, _ = artifact(bundle, fmt, dtype=dtype, platforms=platforms)
  with folder:
    _write_bytes(folder.path(name), data)
    folder.commit()
  return output


def _check_request(fmt: str, dtype: str, platforms: Sequence[str]) -> tuple[str, ...]:
  """An export's format, dtype and platforms checked (one line naming the value); returns the
  platforms as check_platforms gives them."""
  if fmt not in FORMATS:
    raise ValueError(f"export format {fmt!r} is unknown; choose one of {FORMATS}")
  _check_dtype(dtype)
  return check_platforms(platforms)


def _write_bytes(path: str, data: bytes) -> None:
  with open(path, "wb") as f:
    f.write(data)
