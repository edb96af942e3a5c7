"""Whole-scan segmentation: standardise, Gaussian sliding windows over a device mesh, labels.

`segment` is the one path from a raw scan to a label map; the segmentation task's validation and
test use it, and so does a bundle's VolumeSegmenter, so a bundle segments what the run evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mdx import runtime
from mdx.data import standardize as standardize_lib
from mdx.inference import predict as predict_lib
from mdx.inference.bundle import Bundle
from mdx.inference.sliding_window import sliding_window_inference


def probabilities(
  predict_fn: Callable[[np.ndarray], np.ndarray],
  image: np.ndarray,
  *,
  standardize: str | None,
  patch: Sequence[int],
  overlap: float,
  batch_size: int,
) -> np.ndarray:
  """Raw scan [D, H, W, C] -> averaged probabilities [D, H, W, K] (predict_fn: batch -> probs)."""
  return sliding_window_inference(
    predict_fn,
    standardize_lib.standardize(image, standardize),
    tuple(patch),
    overlap=overlap,
    batch_size=batch_size,
  )


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

  mesh: by default this process's devices (runtime.local_mesh), so each of several processes
  segments its own scans without waiting for the others (see ImageClassifier).
  """

  def __init__(self, bundle: Bundle, batch_size: int | None = None, mesh=None):
    if bundle.task != "segmentation":
      raise ValueError(f"bundle {bundle.path} is a {bundle.task} model, not a segmenter")
    self.bundle = bundle
    self.input, self.output = bundle.spec["input"], bundle.spec["output"]
    self.mesh = mesh if mesh is not None else runtime.local_mesh()
    devices = self.mesh.devices.size
    size = int(batch_size or self.input.get("batch_size") or devices)
    self.batch_size = -(-size // devices) * devices
    self.activation = self.output["activation"]
    fn = predict_lib.make_predict_fn(bundle.model(runtime.DATA), self.mesh, self.activation)
    variables = runtime.replicate(bundle.variables, self.mesh)
    self._predict = lambda batch: fn(variables, batch)

  def probabilities(self, image: np.ndarray) -> np.ndarray:
    return probabilities(
      self._predict,
      image,
      standardize=self.input["standardize"]["mode"],
      patch=self.input["patch_size"],
      overlap=float(self.input["overlap"]),
      batch_size=self.batch_size,
    )

  def predict(self, image: np.ndarray) -> np.ndarray:
    """Raw scan [D, H, W, C] -> class indices or regions (as the run's evaluation scores them)."""
    return to_labels(self.probabilities(image), self.activation)

  def segment(self, image: np.ndarray) -> np.ndarray:
    """Raw scan [D, H, W, C] -> uint8 label values [D, H, W] for a NIfTI file."""
    return label_volume(self.predict(image), self.output["label_mode"], self.output["label_values"])
