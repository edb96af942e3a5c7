"""Whole-scan segmentation: standardise, Gaussian sliding windows over a device mesh, labels; and
the segmenter's bundle kind (KIND): its spec, the NIfTI scans predict reads and the label maps it
writes (ScanFiles), its model card.

`segment` is the one path from a raw scan to a label map; the segmentation task's validation and
test use it, and so does a bundle's VolumeSegmenter, so a bundle segments what the run evaluated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mdx import runtime
from mdx.data import check
from mdx.data import standardize as standardize_lib
from mdx.data.volume import nifti
from mdx.data.volume import resample as resample_lib
from mdx.evaluate import model_card
from mdx.evaluate import postprocess as postprocess_lib
from mdx.inference import bundle as bundle_lib
from mdx.inference import engines
from mdx.inference import predict_files as files_lib
from mdx.inference.bundle import Bundle, BundleKind, SpecFields, shown
from mdx.inference.sliding_window import sliding_window_inference

TASK = "segmentation"


def probabilities(
  predict_fn: Callable[[np.ndarray], np.ndarray],
  image: np.ndarray,
  *,
  standardize: str | Mapping | None,
  patch: Sequence[int],
  overlap: float,
  batch_size: int,
  spacing: Sequence[float] | None = None,
  target_spacing: Sequence[float] | None = None,
  mirror_axes: Sequence[int] = (),
) -> np.ndarray:
  """Raw scan [D, H, W, C] at its own `spacing` -> averaged probabilities [D, H, W, K] on its own
  grid (predict_fn: batch -> probs).

  With target_spacing (the plan's), the scan is resampled to it first (as training saw its cases:
  mdx.data.volume.resample.ResampledSource, then standardised) and the probabilities are resampled
  back, so the argmax happens on the scan's own grid; mirror_axes: test-time mirroring."""
  resampled = (
    target_spacing is not None
    and spacing is not None
    and not resample_lib.same_spacing(spacing, target_spacing)
  )
  shape = image.shape[:3]
  if resampled:
    image = resample_lib.resample_image(image, spacing, target_spacing)
  probs = sliding_window_inference(
    predict_fn,
    standardize_lib.standardize(image, standardize),
    tuple(patch),
    overlap=overlap,
    batch_size=batch_size,
    mirror_axes=tuple(mirror_axes),
  )
  if resampled:
    probs = resample_lib.resample_probabilities(probs, shape)
  return probs


def to_labels(probs: np.ndarray, activation: str) -> np.ndarray:
  """Probabilities -> class indices [D, H, W] (softmax) or binary regions [D, H, W, R]
  (sigmoid)."""
  if activation == "softmax":
    return probs.argmax(-1).astype(np.int32)
  return (probs > 0.5).astype(np.uint8)


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
  """Binary (WT, TC, ET) maps [D, H, W, 3] -> BraTS labels {0, 1, 2, 4} (nested, ET wins)."""
  wt, tc, et = (regions[..., i].astype(bool) for i in range(3))
  out = np.where(wt, 2, 0)
  out = np.where(tc, 1, out)
  return np.where(et, 4, out).astype(np.uint8)


def label_volume(pred: np.ndarray, label_mode: str, label_values: Sequence[int]) -> np.ndarray:
  """to_labels output -> the label values written to disk (e.g. BraTS class index 3 -> 4)."""
  if label_mode == "regions":
    return regions_to_labels(pred)
  return np.asarray(label_values, np.uint8)[pred]


class VolumeSegmenter:
  """A bundle's 3D segmenter: segment(scan) -> label map as written to NIfTI.

  engine: the forward pass on one batch of windows (mdx.inference.engines.make; default the 'jax'
  backend on `mesh`: the bundle's StableHLO export when it carries one for this platform, else
  the Flax model). An ensemble (a cross-validation's folds) averages its members' probabilities
  window by window: the Gaussian weighting is linear, so this is the mean of their whole-scan
  outputs. mesh: by default this process's devices (runtime.local_mesh), so each of several
  processes segments its own scans without waiting for the others (see ImageClassifier).
  """

  def __init__(
    self,
    bundle: Bundle,
    batch_size: int | None = None,
    mesh=None,
    engine: engines.Engine | None = None,
  ):
    if bundle.task != TASK:
      raise ValueError(f"bundle {bundle.path} is a {bundle.task} model, not a segmenter")
    self.bundle = bundle
    self.input, self.output = bundle.spec["input"], bundle.spec["output"]
    self.mesh = mesh if mesh is not None else runtime.local_mesh()
    self.engine = engine if engine is not None else engines.make(bundle, mesh=self.mesh)
    self.batch_size = self.engine.batch(
      batch_size or self.input.get("batch_size") or self.engine.devices
    )
    self.activation = self.output["activation"]
    self._predict = self.engine

  def probabilities(self, image: np.ndarray, spacing=None) -> np.ndarray:
    """Raw scan [D, H, W, C] at `spacing` (mm; None: taken as the bundle's target spacing) ->
    probabilities [D, H, W, K] on the scan's own grid."""
    return probabilities(
      self._predict,
      image,
      standardize=standardization(self.input["standardize"]),
      patch=self.input["patch_size"],
      overlap=float(self.input["overlap"]),
      batch_size=self.batch_size,
      spacing=spacing,
      target_spacing=self.input.get("spacing"),
      mirror_axes=self.input.get("mirror_axes", ()),
    )

  def predict(self, image: np.ndarray, spacing=None) -> np.ndarray:
    """Raw scan [D, H, W, C] -> class indices or regions (as the run's evaluation scores them),
    post-processed as the bundle's validation decided."""
    labels = to_labels(self.probabilities(image, spacing), self.activation)
    return postprocess(labels, self.output.get("postprocess"), self.output["class_names"])

  def segment(self, image: np.ndarray, spacing=None) -> np.ndarray:
    """Raw scan [D, H, W, C] -> uint8 label values [D, H, W] for a NIfTI file."""
    return label_volume(
      self.predict(image, spacing), self.output["label_mode"], self.output["label_values"]
    )


def standardization(field: Mapping[str, Any]):
  """A bundle's input.standardize -> what mdx.data.standardize takes: the spec itself for a plan's
  modes (its statistics travel with it), else the mode's name."""
  if field.get("mode") in standardize_lib.SPEC_MODES:
    return dict(field)
  return field.get("mode")


def postprocess(labels: np.ndarray, decision: Mapping | None, class_names) -> np.ndarray:
  """labels with the post-processing a validation decided (mdx.evaluate.postprocess); None: as
  they are."""
  if not decision or not decision.get("largest_component"):
    return labels
  return postprocess_lib.apply(labels, decision, class_names)


# ------------------------------------------------------------------------------- the bundle kind
def segmentation_spec(
  model: dict[str, Any],
  *,
  channels: int,
  standardize: str,
  patch_size,
  overlap: float,
  batch_size: int,
  class_names,
  label_mode: str,
  label_values,
  spacing=None,
  mirror_axes=(),
  postprocess: Mapping[str, Any] | None = None,
  plan: Mapping[str, Any] | None = None,
  results: dict[str, Any] | None = None,
  provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """A 3D segmenter's bundle spec (sliding windows of patch_size with the given overlap).
  label_values: the value written for each class index (the source's, e.g. BraTS' 4); spacing:
  the plan's target spacing (mm) scans are resampled to (None: run on their own grid);
  mirror_axes: test-time mirroring; postprocess: the validation's decision
  (mdx.evaluate.postprocess.decide); plan: the run's plan (mdx.data.volume.plan), for the card."""
  return {
    "task": TASK,
    "model": dict(model),
    "input": {
      "kind": "volume",
      "channels": int(channels),
      # a plan's spec ({'mode': 'ct', 'clip': ...}) as it is; a mode name as {'mode': name}
      "standardize": dict(standardize)
      if isinstance(standardize, Mapping)
      else {"mode": standardize},
      "patch_size": [int(s) for s in patch_size],
      "overlap": float(overlap),
      "batch_size": int(batch_size),
      "spacing": None if spacing is None else [float(v) for v in spacing],
      "mirror_axes": [int(a) for a in mirror_axes],
      "formats": ["nifti"],
    },
    "output": {
      "class_names": list(class_names),
      "label_mode": label_mode,
      "activation": "sigmoid" if label_mode == "regions" else "softmax",
      "label_values": [int(v) for v in label_values],
      "postprocess": dict(postprocess) if postprocess else None,
    },
    "plan": dict(plan) if plan else None,
    "results": results or {},
    "provenance": provenance or {},
  }


def _input_shape(spec: Mapping[str, Any]) -> tuple[int, ...]:
  return (1, *spec["input"]["patch_size"], spec["input"]["channels"])


LABEL_MODES = {"classes": "softmax", "regions": "sigmoid"}  # label_mode -> its activation
REGIONS = 3  # regions_to_labels reads (WT, TC, ET)


def check_spec(
  spec: Mapping[str, Any], where: str, variables: Mapping[str, Any] | None = None
) -> None:
  """Every field a segmenter's predict and card read, as bundle.check_spec asks its kind: a class
  name and a label value (0..255, written as uint8) per model output, the label mode and its
  activation, the windows (three positive patch sizes, overlap in [0, 1), batch size); with
  variables, the outputs of the head and the channels of the first convolution (unet3d's names)."""
  fields = SpecFields(spec, where)
  num_classes = fields.positive_int("model", "num_classes")
  names = fields.names("output", "class_names")
  if len(names) != num_classes:
    fields.fail(
      "output", "class_names", f"has {len(names)} names but the model has {num_classes} outputs"
    )
  mode = fields.choice("output", "label_mode", tuple(LABEL_MODES))
  if fields.choice("output", "activation", tuple(LABEL_MODES.values())) != LABEL_MODES[mode]:
    fields.fail("output", "activation", f"must be {LABEL_MODES[mode]!r} for label_mode {mode!r}")
  if mode == "regions" and num_classes != REGIONS:
    fields.fail(
      "output", "class_names", f"has {num_classes} regions; label_mode 'regions' writes {REGIONS}"
    )
  fields.ints("output", "label_values", num_classes, 0, 255)
  head = bundle_lib.weight_shape(variables, "head", "kernel")
  outputs = head[-1] if head is not None else None
  fields.matches_weights(
    "output", "class_names", num_classes, outputs, "has %d names", "have %d outputs"
  )
  channels = fields.positive_int("input", "channels")
  first = bundle_lib.weight_shape(variables, "down0", "conv0", "kernel")
  takes = first[3] if first is not None and len(first) == 5 else None
  fields.matches_weights("input", "channels", channels, takes, "is %d", "take %d-channel scans")
  patch = fields.get("input", "patch_size")
  if (
    not isinstance(patch, list)
    or len(patch) != 3
    or not all(bundle_lib.is_int(p) and p > 0 for p in patch)
  ):
    fields.fail("input", "patch_size", f"is {shown(patch)}; expected three positive whole numbers")
  fields.number("input", "overlap", 0.0, 1.0)
  if fields.get("input", "batch_size") is not None:
    fields.positive_int("input", "batch_size")
  spacing = fields.get("input", "spacing")  # absent in bundles from before plans: native grid
  if spacing is not None and (
    not isinstance(spacing, list)
    or len(spacing) != 3
    or not all(bundle_lib.is_number(v) and v > 0 for v in spacing)
  ):
    fields.fail("input", "spacing", f"is {shown(spacing)}; expected three positive millimetres")
  mirror = fields.get("input", "mirror_axes", [])
  if not isinstance(mirror, list) or not all(a in (0, 1, 2) for a in mirror):
    fields.fail("input", "mirror_axes", f"is {shown(mirror)}; expected axes among 0, 1, 2")
  decision = fields.get("output", "postprocess")
  if decision is not None:
    kept = decision.get("largest_component") if isinstance(decision, dict) else None
    if not isinstance(kept, list) or not set(kept) <= set(names):
      fields.fail(
        "output", "postprocess", f"is {shown(decision)}; its largest_component must list classes"
      )


class ScanFiles:
  """predict on NIfTI scans (mdx.inference.predict_files.Predictor): the next scan is read while
  this one is segmented; a label map per scan with its affine, and a row of voxel counts."""

  unit = "scan"

  def __init__(
    self, bundle: Bundle, batch_size: int | None = None, engine: engines.Engine | None = None
  ):
    self.segmenter = VolumeSegmenter(bundle, batch_size, engine=engine)
    self.channels = int(bundle.spec["input"]["channels"])
    self.output = bundle.spec["output"]
    self.names = list(self.output["class_names"])
    self.header = ["path", "output", *(f"{n} voxels" for n in self.names), "warning"]
    self.patch = tuple(int(p) for p in bundle.spec["input"]["patch_size"])

  def check_outputs(self, inputs, out: str) -> None:
    """A label map is written at OUTPUT/<path>: refuse one that would replace its own scan."""
    for _, name, full in inputs.files:
      if os.path.join(out, files_lib.output_name(name)) == full:
        raise ValueError(
          f"output {out} would overwrite the input scan {full} with its label map; choose an "
          "output folder other than the input folder"
        )

  def writes(self, inputs) -> tuple[list[str], list[str]]:
    """A label map per scan, at OUTPUT/<path>."""
    return [files_lib.posix(files_lib.output_name(name)) for _, name, _ in inputs.files], []

  def read(self, path: str):
    volume = nifti.load_nifti(path, np.float32)
    image = volume.data if volume.data.ndim == 4 else volume.data[..., None]
    if image.shape[-1] != self.channels:
      raise ValueError(
        f"the scan has {image.shape[-1]} channels {image.shape}; this model reads "
        f"{self.channels} (the bundle's input.channels)"
      )
    # the checks training makes of every case (mdx.data.check): a NaN would spread through the
    # normalisation over every window it falls in, and a constant channel holds nothing to segment
    status, reason = check.inspect({"image": image})
    if status in check.BAD:
      raise ValueError(f"the scan {reason}; repair or re-export the file")
    warning = "" if status == check.OK else f"the scan has {reason}: check the file"
    return image, volume.affine, volume.spacing, warning

  def run(self, files, out, writer, errors, bar) -> int:
    predicted = 0
    # one scan ahead: a whole scan is large, and the model is the slow part
    for chunk, results in files_lib.read_ahead(self.read, [[f] for f in files], 1):
      (index, name, _), (value, reason) = chunk[0], results[0]
      if reason is not None:
        errors.append((index, name, reason))
      else:
        image, affine, spacing, constant = value
        small = files_lib.size_warning(image.shape[:3], self.patch, "the scan (voxels)")
        warning = "; ".join(w for w in (small, constant) if w)
        pred = self.segmenter.predict(image, spacing)
        labels = label_volume(pred, self.output["label_mode"], self.output["label_values"])
        rel = files_lib.output_name(name)
        nifti.save_nifti(os.path.join(out, rel), labels, affine)
        if pred.ndim == 4:  # regions [D, H, W, R]
          voxels = pred.reshape(-1, pred.shape[-1]).sum(0)
        else:
          voxels = np.bincount(pred.ravel(), minlength=len(self.names))
        counts = (int(v) for v in voxels[: len(self.names)])
        writer.writerow([name, files_lib.posix(rel), *counts, warning])
        predicted += 1
      bar.update(1)
    return predicted


KIND = BundleKind(
  task=TASK,
  required={
    "model": ("name", "num_classes"),
    "input": ("channels", "standardize", "patch_size", "overlap"),
    "output": ("class_names", "label_mode", "activation", "label_values"),
  },
  spec=segmentation_spec,
  input_shape=_input_shape,
  suffixes=nifti.NIFTI_SUFFIXES,
  noun="NIfTI scan",
  predictor=ScanFiles,
  options=("engine",),
  card=model_card.segmentation_card,
  check_spec=check_spec,
)
