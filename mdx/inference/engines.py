"""The forward pass a bundle's predictor calls, by backend: one piece of code for the classifier and
the segmenter (mdx.inference.classifier.ImageClassifier, mdx.inference.segmenter.VolumeSegmenter).

An Engine maps model inputs [B, ...] float32 (numpy: a classifier's [B, S, S, C], a segmenter's
windows [B, D, H, W, C]) to the bundle's probabilities as numpy float32: the activation of the
network's output (spec['output']['activation']: a classifier's sigmoid scores before calibration
[B, F], a segmenter's softmax or sigmoid [B, D, H, W, K]), the mean over an ensemble's members.

Backends (predict's --backend):
  jax          the bundle's serialized StableHLO (mdx.inference.export) when it carries one for the
               running platform and nothing needs the Flax model (Grad-CAM does); else 'flax'.
  flax         the Flax model over the device mesh (mdx.inference.predict.make_predict_fn) with the
               bundle's weights replicated: restored from Orbax, checked against the model
               (eval_shape), traced, compiled or read from the compilation cache.
  stablehlo    the carried export only (an error when the bundle has none for this platform).
  onnxruntime  an onnxruntime InferenceSession of --onnx=F or of the bundle's export/model.onnx.

Why a StableHLO export serves predict: the start-up (one film, DenseNet-121 at 224 px, this
2-core CPU, warm caches, in-process; benchmarks/predict.py). With the Flax model ~2.9 s: restoring
the Orbax weights ~0.45 s, the weight check's eval_shape (a trace of model.init) ~1.0 s, tracing
and lowering the forward pass ~0.8 s, reading the compiled program ~0.15 s, and the first batch.
The export is that program already traced and lowered, the weights inside: predict loads the
bundle without its weights (bundle.load(variables=False): spec and digests checked, no Orbax, no
eval_shape, no model), and reads the export's compiled program from disk by the export's digest
(mdx.inference.executables: no lowering, no symbolic-shape refinement, no hashing of the 27 MB
module, which through jax's own cache cost ~0.45 s), so the first film costs ~0.3 s: the digests
~0.04 s, deserializing the export ~0.05 s, loading the compiled program ~0.1 s, running it
~0.07 s. It is compiled with runtime.compiler_options() like every mdx step (without them XLA:CPU
hands the convolutions to single-threaded YNNPACK: 14.5 instead of 18.3 films/s, and a first run
of 0.22 s instead of 0.07 s). Grad-CAM differentiates the Flax model, so it keeps 'flax'.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mdx import jsonio, runtime
from mdx.inference import bundle as bundle_lib
from mdx.inference import export
from mdx.inference import predict as predict_lib

BACKENDS = ("jax", "flax", "stablehlo", "onnxruntime")
INSTALL_EXPORT = "pip install '.[export]'"


def export_hint(bundle: bundle_lib.Bundle, fmt: str) -> str:
  """The command that adds a `fmt` export to the bundle (mdx.commands.export_model)."""
  return f"python -m mdx export_model --bundle={bundle.path} --format={fmt}"


@dataclasses.dataclass(frozen=True)
class Engine:
  """engine(images [B, ...] float32) -> probabilities [B, ...] float32 (numpy).

  backend: what serves ('flax', 'stablehlo', 'onnxruntime'); devices: batch sizes must be
  multiples of it (the mesh's devices: each runs B / devices rows); compiles: each new batch shape
  is compiled (jax backends): callers pad to full batches so a run compiles one shape."""

  backend: str
  forward: Callable[[np.ndarray], Any]
  devices: int = 1
  compiles: bool = True

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self.forward(np.asarray(images, np.float32)), np.float32)

  def batch(self, size: int) -> int:
    """`size` rounded up to whole per-device batches."""
    return -(-max(1, int(size)) // self.devices) * self.devices


def carries_stablehlo(spec: dict[str, Any]) -> bool:
  """Whether bundle.json records a StableHLO export lowered for the running platform."""
  exports = spec.get(bundle_lib.EXPORTS)
  record = exports.get("stablehlo") if isinstance(exports, dict) else None
  platforms = record.get("platforms") if isinstance(record, dict) else None
  return isinstance(platforms, list) and export.running_platform() in platforms


def needs_variables(spec: dict[str, Any], backend: str = "jax", *, model: bool = False) -> bool:
  """Whether predicting with `backend` restores the bundle's weights: the Flax model needs them
  (model=True: something beside the forward pass needs the Flax model, e.g. Grad-CAM); a carried
  StableHLO export and an ONNX file hold their own."""
  check_backend(backend)
  if model or backend == "flax":
    return True
  if backend == "onnxruntime":
    return False
  return backend == "jax" and not carries_stablehlo(spec)


def check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}; choose one of {', '.join(BACKENDS)}")


def load(directory: str, backend: str = "jax", *, model: bool = False) -> bundle_lib.Bundle:
  """The bundle at `directory`, checked (bundle.load), with its weights restored only when
  `backend` needs them (needs_variables): a bundle served by its export skips Orbax and the
  weight check's eval_shape. A bundle.json that cannot be read is bundle.load's one-line error."""
  check_backend(backend)
  path = os.path.join(os.path.abspath(os.path.expanduser(directory)), bundle_lib.SPEC)
  try:
    with open(path) as f:
      spec = json.load(f)
    variables = not isinstance(spec, dict) or needs_variables(spec, backend, model=model)
    if not variables and isinstance(spec.get("task"), str):
      # a kind whose predictor builds its own model (no engine option) needs the weights
      variables = "engine" not in bundle_lib.kind(spec["task"]).options
  except (OSError, ValueError):
    variables = True  # bundle.load says what is wrong
  if variables:
    return bundle_lib.load(directory)
  return bundle_lib.load(directory, variables=False)


def make(
  bundle: bundle_lib.Bundle,
  backend: str = "jax",
  *,
  onnx: str | None = None,
  mesh: Mesh | None = None,
  model: bool = False,
) -> Engine:
  """The Engine for `bundle` by `backend` (module docstring). mesh: the jax backends' devices
  (default this process's: runtime.local_mesh); onnx: the ONNX file for 'onnxruntime' (default
  the bundle's own). model: the Flax model is needed beside the forward pass (Grad-CAM), so
  'jax' serves with it. A missing export, file or package is a one-line ValueError with the fix."""
  check_backend(backend)
  if onnx and backend != "onnxruntime":
    raise ValueError(f"--onnx={onnx} is read by --backend=onnxruntime; this run uses {backend!r}")
  if backend == "onnxruntime":
    return onnxruntime_engine(bundle, onnx)
  mesh = mesh if mesh is not None else runtime.local_mesh()
  if backend == "stablehlo" or (backend == "jax" and not model and carries_stablehlo(bundle.spec)):
    engine = stablehlo_engine(bundle, mesh)
    if engine is not None:
      return engine
    if backend == "stablehlo":
      raise ValueError(
        f"bundle {bundle.path} carries no StableHLO export for {export.running_platform()}; "
        f"add one with {export_hint(bundle, 'stablehlo')}, or use --backend=jax"
      )
  return flax_engine(bundle, mesh)


def flax_engine(bundle: bundle_lib.Bundle, mesh: Mesh) -> Engine:
  """The Flax model on `mesh` (batch split over its devices), the weights replicated; an
  ensemble averages its members' probabilities batch by batch."""
  if bundle.variables is None:  # loaded for an export this platform cannot serve
    bundle = bundle_lib.load(bundle.path)
  activation = bundle.spec["output"]["activation"]
  fn = predict_lib.make_predict_fn(bundle.model(runtime.DATA), mesh, activation)
  members = [runtime.replicate(v, mesh) for v in bundle.member_variables()]
  if len(members) == 1:
    forward = lambda x: fn(members[0], x)
  else:
    forward = lambda x: np.mean([np.asarray(fn(v, x), np.float32) for v in members], 0)
  return Engine("flax", forward, int(mesh.devices.size))


def stablehlo_engine(bundle: bundle_lib.Bundle, mesh: Mesh) -> Engine | None:
  """The bundle's serialized StableHLO for this platform (mdx.inference.export.serving), split over
  `mesh`'s devices when it has several; None when the bundle carries none for this platform."""
  exported = export.carried(bundle)  # a file this jax cannot read is refused here
  if exported is None:
    return None
  devices = int(mesh.devices.size)
  if devices == 1:
    return Engine("stablehlo", export.serving(bundle, exported), 1)
  # each device runs the exported program (lowered for one device) on its rows of the batch
  step = jax.jit(
    jax.shard_map(exported.call, mesh=mesh, in_specs=P(runtime.DATA), out_specs=P(runtime.DATA)),
    compiler_options=runtime.compiler_options(),
  )

  def forward(images: np.ndarray) -> np.ndarray:
    return runtime.to_host(step(runtime.shard_batch({"x": images}, mesh)["x"]))

  return Engine("stablehlo", forward, devices)


def onnxruntime_engine(bundle: bundle_lib.Bundle, onnx: str | None = None) -> Engine:
  """An onnxruntime session of `onnx` or the bundle's export/model.onnx, on CUDA where onnxruntime
  has it, else the CPU. The file's metadata must describe this bundle's input and output."""
  path = onnx_path(bundle, onnx)
  try:
    import onnxruntime as ort
  except ImportError:
    raise ValueError(
      f"--backend=onnxruntime needs onnxruntime, which is not installed; {INSTALL_EXPORT}"
    ) from None
  options = ort.SessionOptions()
  options.log_severity_level = 3  # errors only: no per-node placement chatter
  # no busy-waiting between runs: its threads would take the cores from the decoding threads
  # (and from whatever runs after predict in this process)
  options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  available = ort.get_available_providers()
  providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
  try:
    session = ort.InferenceSession(path, options, providers=providers)
  except Exception as e:  # onnxruntime raises its own types for unreadable or invalid models
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(
      f"ONNX file {path} cannot be loaded by onnxruntime ({first}); export it again with "
      f"{export_hint(bundle, 'onnx')}"
    ) from None
  check_metadata(bundle, path, session.get_modelmeta().custom_metadata_map.get(export.METADATA_KEY))
  (given,) = session.get_inputs()
  dtype = np.float16 if given.type == "tensor(float16)" else np.float32
  name, output = given.name, session.get_outputs()[0].name

  def forward(images: np.ndarray) -> np.ndarray:
    return session.run([output], {name: np.ascontiguousarray(images, dtype)})[0]

  return Engine("onnxruntime", forward, 1, compiles=False)


def onnx_path(bundle: bundle_lib.Bundle, onnx: str | None = None) -> str:
  """--onnx=F, else the ONNX file the bundle carries; a one-line ValueError when neither exists."""
  if onnx:
    path = os.path.abspath(os.path.expanduser(onnx))
    if not os.path.isfile(path):
      raise ValueError(
        f"--onnx={onnx}: {path} does not exist; export one with {export_hint(bundle, 'onnx')} "
        f"--output={onnx}"
      )
    return path
  record = (bundle.spec.get(bundle_lib.EXPORTS) or {}).get("onnx") or {}
  path = os.path.join(bundle.path, *(record.get("file") or bundle_lib.ONNX_FILE).split("/"))
  if not record or not os.path.isfile(path):
    raise ValueError(
      f"bundle {bundle.path} carries no ONNX export ({bundle_lib.ONNX_FILE}); add one with "
      f"{export_hint(bundle, 'onnx')}, or pass --onnx=FILE"
    )
  return path


# The metadata sections an ONNX file must share with the bundle it is run for: what goes in, what
# comes out and (classifiers) what predict applies to the scores.
SHARED = ("input", "output", "thresholds", "calibration")


def check_metadata(bundle: bundle_lib.Bundle, path: str, text: str | None) -> None:
  """The ONNX file's 'mdx' metadata (mdx.inference.export.deployment_metadata) describes
  `bundle`: the same input, output, thresholds and calibration; else a one-line ValueError."""
  try:
    meta = json.loads(text) if text else None
  except json.JSONDecodeError:
    meta = None
  if not isinstance(meta, dict):
    raise ValueError(
      f"ONNX file {path} has no mdx metadata (key '{export.METADATA_KEY}'); it was not exported "
      f"by mdx: export the bundle with {export_hint(bundle, 'onnx')}"
    )
  for section in SHARED:
    if section in bundle.spec and meta.get(section) != jsonio.jsonable(bundle.spec[section]):
      raise ValueError(
        f"ONNX file {path} was exported from another model: its metadata's {section!r} differs "
        f"from bundle {bundle.path}'s; export this bundle with {export_hint(bundle, 'onnx')}"
      )
