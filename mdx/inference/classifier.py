"""A bundle's image classifier applied to images: the same preprocessing as the run's evaluation,
batched over this process's devices, raw scores, calibrated probabilities and calls at the bundle's
thresholds.

The preprocessing is the evaluation pipeline's own functions (mdx.data.cxr.images.to_channels,
mdx.data.cxr.records.to_float_image, mdx.data.standardize.standardize), so a bundle predicts what
the run evaluated, to float rounding.
"""

from __future__ import annotations

import numpy as np

from mdx import runtime
from mdx.data import standardize as standardize_lib
from mdx.data.cxr import images as images_lib
from mdx.data.cxr import records
from mdx.evaluate import calibration
from mdx.inference import predict as predict_lib
from mdx.inference.bundle import Bundle


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

  mesh: by default this process's devices (runtime.local_mesh): predict is then a local
  computation that each of several processes runs on its own share of the inputs, never waiting
  for the others. A global mesh (runtime.make_mesh) makes predict a collective that every process
  must call with the same number of images. batch_size: images per forward pass on the mesh
  (default 8 per device), rounded up to whole per-device batches.
  """

  def __init__(self, bundle: Bundle, batch_size: int | None = None, mesh=None):
    if bundle.task != "classification":
      raise ValueError(f"bundle {bundle.path} is a {bundle.task} model, not an image classifier")
    self.bundle = bundle
    self.input = bundle.spec["input"]
    self.findings = tuple(bundle.spec["output"]["findings"])
    self.mesh = mesh if mesh is not None else runtime.local_mesh()
    devices = self.mesh.devices.size
    self.batch_size = -(-int(batch_size or 8 * devices) // devices) * devices  # whole per device
    self.model = bundle.model(bn_axis_name=runtime.DATA)
    self._predict = predict_lib.make_predict_fn(self.model, self.mesh, "sigmoid")
    self._variables = runtime.replicate(bundle.variables, self.mesh)
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
    """Model inputs [N, S, S, C] -> raw sigmoid scores [N, F] (padded to full batches)."""
    images = np.asarray(images, np.float32)
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start : start + self.batch_size]
      pad = self.batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
      out.append(self._predict(self._variables, chunk)[: self.batch_size - pad])
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
