"""A bundle's image classifier applied to images: the same preprocessing as the run's evaluation,
batched over this process's devices, raw scores, calibrated probabilities and calls at the bundle's
thresholds; and the classifier's bundle kind (KIND): its spec, the files predict reads, predict's
rows and Grad-CAM overlays (ImageFiles), its model card.

The preprocessing is the evaluation pipeline's own functions (mdx.data.image.images.to_channels,
mdx.data.image.records.to_float_image, mdx.data.standardize.standardize), so a bundle predicts what
the run evaluated, to float rounding.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mdx import runtime
from mdx.data import standardize as standardize_lib
from mdx.data.image import images as images_lib
from mdx.data.image import records
from mdx.evaluate import calibration, model_card
from mdx.evaluate import gradcam as gradcam_lib
from mdx.inference import bundle as bundle_lib
from mdx.inference import engines
from mdx.inference import predict_files as files_lib
from mdx.inference.bundle import Bundle, BundleKind, SpecFields, shown

TASK = "classification"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def preprocess(image: np.ndarray, input_spec: dict) -> np.ndarray:
  """A decoded image (uint8/uint16/float [H, W] or [H, W, C]) -> the model's input [S, S, C]."""
  image = np.asarray(image)
  if image.dtype in (np.uint8, np.uint16):
    image = images_lib.to_channels(image, int(input_spec["channels"]))
  x = records.to_float_image(image, int(input_spec["image_size"]))
  s = input_spec["standardize"]
  return standardize_lib.standardize(x, s["mode"], s.get("mean"), s.get("std"))


class ImageClassifier:
  """predict(images) -> raw scores [N, F]; calibrate / call turn them into the bundle's outputs.

  engine: the forward pass (mdx.inference.engines.make; default the 'jax' backend on `mesh`: the
  bundle's StableHLO export when it carries one for this platform, else the Flax model). mesh: by
  default this process's devices (runtime.local_mesh): predict is then a local computation that
  each of several processes runs on its own share of the inputs, never waiting for the others. A
  global mesh (runtime.make_mesh) makes predict a collective that every process must call with the
  same number of images. batch_size: images per forward pass (default 8 per device), rounded up to
  whole per-device batches.
  """

  def __init__(
    self,
    bundle: Bundle,
    batch_size: int | None = None,
    mesh=None,
    engine: engines.Engine | None = None,
  ):
    if bundle.task != TASK:
      raise ValueError(f"bundle {bundle.path} is a {bundle.task} model, not an image classifier")
    self.bundle = bundle
    self.input = bundle.spec["input"]
    self.findings = tuple(bundle.spec["output"]["findings"])
    self.mesh = mesh if mesh is not None else runtime.local_mesh()
    self.engine = engine if engine is not None else engines.make(bundle, mesh=self.mesh)
    self.batch_size = self.engine.batch(batch_size or 8 * self.engine.devices)
    cal = bundle.spec["calibration"]["maps"]
    self._calibration = [
      calibration.map_from_spec(cal.get(f, {"kind": "identity"})) for f in self.findings
    ]
    values = bundle.spec["thresholds"]["values"]
    self.thresholds = np.array(
      [np.nan if values.get(f) is None else float(values[f]) for f in self.findings]
    )

  def preprocess(self, image: np.ndarray) -> np.ndarray:
    return preprocess(image, self.input)

  def read(self, path: str) -> np.ndarray:
    """An image file (PNG/JPEG 8/16-bit, DICOM) -> the model's input [S, S, C]."""
    return self.preprocess(images_lib.read_image(path, int(self.input["channels"])))

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Model inputs [N, S, S, C] -> raw sigmoid scores [N, F], batch_size images per forward
    pass; for an engine that compiles each shape (the jax backends) the last batch is padded to a
    full one, so a run compiles one shape."""
    images = np.asarray(images, np.float32)
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start : start + self.batch_size]
      pad = self.engine.batch(len(chunk)) - len(chunk)
      if self.engine.compiles:
        pad = self.batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
      out.append(self.engine(chunk)[: len(chunk) - pad])
    if not out:
      return np.zeros((0, len(self.findings)), np.float32)
    return np.concatenate(out)

  def calibrate(self, raw: np.ndarray) -> np.ndarray:
    """Raw scores [N, F] -> calibrated probabilities (the validation-fitted map per finding)."""
    raw = np.asarray(raw, np.float64)
    return np.stack([m(raw[:, j]) for j, m in enumerate(self._calibration)], 1).reshape(raw.shape)

  def call(self, raw: np.ndarray) -> np.ndarray:
    """Raw scores [N, F] -> 1 (positive) / 0 at each finding's threshold; nan where there is
    none."""
    raw = np.asarray(raw, np.float64)
    t = self.thresholds[None, :]
    return np.where(np.isnan(t), np.nan, (raw >= t).astype(np.float64))


# ------------------------------------------------------------------------------- the bundle kind
def classification_spec(
  model: dict[str, Any],
  *,
  image_size: int,
  channels: int,
  standardize: dict[str, Any],
  findings: list[str] | tuple[str, ...],
  thresholds: dict[str, Any] | None = None,
  calibration: dict[str, Any] | None = None,
  results: dict[str, Any] | None = None,
  provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """A classifier's bundle spec. Without thresholds or calibration (e.g. imported weights) the
  bundle says none were chosen: predict then writes raw scores and no calls."""
  findings = list(findings)
  return {
    "task": TASK,
    "model": dict(model),
    "input": {
      "kind": "image",
      "image_size": int(image_size),
      "channels": int(channels),
      "standardize": {"mode": "none", "mean": None, "std": None, **standardize},
      "resize": "area averaging of the whole image to image_size x image_size (no crop)",
      "value_range": "8-bit / 255 and 16-bit / 65535 to [0, 1] before standardisation",
      "dicom": "modality LUT, then VOI LUT or window, MONOCHROME1 inverted (bone bright)",
      "formats": ["png", "jpeg", "dicom"],
    },
    "output": {"findings": findings, "activation": "sigmoid"},
    "thresholds": thresholds
    or {
      "policy": None,
      "description": "none chosen (no validation set): no positive/negative calls",
      "chosen_on": None,
      "scale": "raw",
      "values": {f: None for f in findings},
    },
    "calibration": calibration
    or {
      "method": "none",
      "fitted_on": None,
      "maps": {f: {"kind": "identity", "reason": "not calibrated"} for f in findings},
    },
    "results": results or {},
    "provenance": provenance or {},
  }


def _input_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
  size = spec["input"]["image_size"]
  return (1, size, size, spec["input"]["channels"])


def check_spec(
  spec: Mapping[str, Any], where: str, variables: Mapping[str, Any] | None = None
) -> None:
  """Every field a classifier's predict and card read, as bundle.check_spec asks its kind: the
  findings (one unique name per model output), the input's size, channels and standardisation,
  a threshold per finding, calibration maps predict can apply; with variables, the outputs of the
  head and the channels of the stem (the registry's classifiers name them so)."""
  fields = SpecFields(spec, where)
  findings = fields.names("output", "findings")
  num_classes = fields.positive_int("model", "num_classes")
  if len(findings) != num_classes:
    fields.fail(
      "output", "findings", f"has {len(findings)} names but the model has {num_classes} outputs"
    )
  head = bundle_lib.weight_shape(variables, "head", "dense", "kernel")
  outputs = head[-1] if head is not None else None
  fields.matches_weights(
    "output", "findings", num_classes, outputs, "has %d names", "have %d outputs"
  )
  fields.positive_int("input", "image_size")
  channels = fields.positive_int("input", "channels")
  stem = bundle_lib.weight_shape(variables, "stem", "conv", "kernel")
  takes = stem[2] if stem is not None and len(stem) == 4 else None
  fields.matches_weights("input", "channels", channels, takes, "is %d", "take %d-channel images")
  standardize = fields.get("input", "standardize")
  if not isinstance(standardize, dict):
    fields.fail(
      "input", "standardize", f"is {shown(standardize)}; expected {{'mode', 'mean', 'std'}}"
    )
  for key in ("mean", "std"):
    value = standardize.get(key)
    ok = value is None or bundle_lib.is_number(value)
    if isinstance(value, list):
      ok = len(value) == channels and all(bundle_lib.is_number(v) for v in value)
    if not ok:
      fields.fail(
        "input",
        "standardize",
        f"{key} is {shown(value)}; expected null, a number or {channels} numbers",
      )
  if standardize.get("mode") == "dataset":
    mean, std = standardize.get("mean"), standardize.get("std")
    if mean is None or std is None or np.any(np.asarray(std, np.float64) <= 0):
      fields.fail("input", "standardize", "mode 'dataset' needs a mean and a std > 0")
  values = fields.get("thresholds", "values")
  if not isinstance(values, dict) or set(values) != set(findings):
    keys = sorted(values) if isinstance(values, dict) else values
    fields.fail(
      "thresholds", "values", f"is keyed by {shown(keys)}; expected the findings {findings}"
    )
  for finding, value in values.items():
    if value is not None and not bundle_lib.is_number(value):
      fields.fail(
        "thresholds", "values", f"{finding!r} is {shown(value)}; expected null or a finite number"
      )
  maps = fields.get("calibration", "maps")
  if not isinstance(maps, dict):
    fields.fail("calibration", "maps", f"is {shown(maps)}; expected {{finding: map}}")
  for finding, spec_map in maps.items():
    if finding not in findings:
      fields.fail("calibration", "maps", f"has {finding!r}, which is not one of {findings}")
    try:  # what predict applies: a map that raises or gives NaN on [0, 1] is refused now
      probe = calibration.map_from_spec(spec_map)(np.linspace(0.0, 1.0, 5))
      if np.shape(probe) != (5,) or not np.all(np.isfinite(probe)):
        raise ValueError("it maps [0, 1] to non-finite values")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      fields.fail("calibration", "maps", f"{finding!r} cannot be applied ({e})")


def check_options(bundle: Bundle, gradcam: Sequence[str] = (), gradcam_layer: str | None = None):
  """predict's Grad-CAM findings must be the bundle's (the layer is checked with the model)."""
  del gradcam_layer
  if gradcam:
    findings = list(bundle.spec["output"]["findings"])
    unknown = [g for g in gradcam if g not in findings]
    if unknown:
      raise ValueError(
        f"Grad-CAM findings {unknown} are not outputs of bundle {bundle.path}; its findings are "
        f"{findings}"
      )


class ImageFiles:
  """predict on image files (mdx.inference.predict_files.Predictor): decoded a chunk ahead on
  threads, predicted batch by batch; a row per image of calibrated probabilities, raw scores and
  calls, and Grad-CAM overlays of the findings asked for. engine: the forward pass
  (mdx.inference.engines.make; Grad-CAM needs the bundle's weights loaded, engines.load(...,
  model=True))."""

  unit = "image"

  def __init__(
    self,
    bundle: Bundle,
    batch_size: int | None = None,
    gradcam: Sequence[str] = (),
    gradcam_layer: str | None = None,
    engine: engines.Engine | None = None,
  ):
    self.classifier = ImageClassifier(bundle, batch_size, engine=engine)
    self.findings = list(self.classifier.findings)
    self.header = ["path", *self.findings]
    self.header += [f"{f} raw" for f in self.findings] + [f"{f} call" for f in self.findings]
    self.header += ["warning"]
    self.gradcam, self.layer = list(gradcam), gradcam_layer
    if self.gradcam:
      self.model = bundle.model()  # no mesh axis: Grad-CAM runs outside shard_map
      self.variables = jax.device_put(bundle.variables)
      # a wrong layer name is a usage error: raise it now, before any file is decoded
      shape = _input_shape(bundle.spec)
      gradcam_lib.resolve_layer(
        self.model, self.variables, np.zeros(shape, np.float32), gradcam_layer
      )

  def check_outputs(self, inputs, out: str) -> None:
    """Nothing to refuse: its only files are the overlays in OUTPUT/gradcam, a folder predict
    never reads inputs from."""

  def writes(self, inputs) -> tuple[list[str], list[str]]:
    """The overlays' folder, when Grad-CAM was asked for (a rerun replaces it whole)."""
    return [], [files_lib.GRADCAM] if self.gradcam else []

  def read(self, path: str) -> tuple[np.ndarray, str]:
    """An image file -> (the model's input, predictions.csv's size warning)."""
    image = images_lib.read_image(path, int(self.classifier.input["channels"]))
    size = int(self.classifier.input["image_size"])
    warning = files_lib.size_warning(np.shape(image)[:2], (size, size), "the image (pixels)")
    return self.classifier.preprocess(image), warning

  def run(self, files, out, writer, errors, bar) -> int:
    c = self.classifier
    # a batch no larger than the files: one film runs one image, not seven zeros beside it
    c.batch_size = size = min(c.batch_size, c.engine.batch(len(files)))
    chunks = [files[i : i + size] for i in range(0, len(files), size)]
    predicted = 0
    for chunk, results in files_lib.read_ahead(self.read, chunks, min(8, os.cpu_count() or 1)):
      ok = [item for item, (_, reason) in zip(chunk, results) if reason is None]
      errors.extend((i, name, r) for (i, name, _), (_, r) in zip(chunk, results) if r is not None)
      if ok:
        read = [value for value, reason in results if reason is None]
        x = np.stack([x for x, _ in read])
        raw = c.predict(x)
        probs, calls = c.calibrate(raw), c.call(raw)
        for j, (_, name, _) in enumerate(ok):
          writer.writerow(
            [
              name,
              *(files_lib.number(v) for v in probs[j]),
              *(files_lib.number(v) for v in raw[j]),
              *("" if np.isnan(v) else str(int(v)) for v in calls[j]),
              read[j][1],
            ]
          )
        self._gradcam(x, probs, [name for _, name, _ in ok], out)
        predicted += len(ok)
      bar.update(len(chunk))
    return predicted

  def _gradcam(self, x, probs, names, out) -> None:
    if not self.gradcam:
      return
    # full batches: every call has one shape, so a compilation cache can serve repeats
    padded = np.zeros((self.classifier.batch_size, *x.shape[1:]), np.float32)
    padded[: len(x)] = x
    for finding in self.gradcam:
      k = self.findings.index(finding)
      heat = gradcam_lib.grad_cam(self.model, self.variables, padded, k, self.layer)
      for j, name in enumerate(names):
        file = f"{files_lib.output_name(name)}__{files_lib.safe_name(finding)}.png"
        title = f"{name}\n{finding}: p={probs[j, k]:.2f}"
        path = os.path.join(out, files_lib.GRADCAM, file)
        gradcam_lib.overlay_png(x[j], heat[j], path, title=title)


KIND = BundleKind(
  task=TASK,
  required={
    "model": ("name", "num_classes"),
    "input": ("image_size", "channels", "standardize"),
    "output": ("findings",),
    "thresholds": ("values",),
    "calibration": ("method", "maps"),
  },
  spec=classification_spec,
  input_shape=_input_shape,
  suffixes=IMAGE_SUFFIXES,
  noun="image",
  sniff=images_lib.has_dicom_preamble,  # DICOM files often have no suffix
  predictor=ImageFiles,
  options=("gradcam", "gradcam_layer", "engine"),
  check_options=check_options,
  card=model_card.classification_card,
  check_spec=check_spec,
)
