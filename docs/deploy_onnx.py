"""Predict with an mdx image classifier exported to ONNX, without mdx: numpy, Pillow, onnxruntime.

  python docs/deploy_onnx.py MODEL.onnx IMAGES OUTPUT [--batch_size=8]

MODEL.onnx is what `python -m mdx export_model --bundle=B --format=onnx` wrote (B/export/model.onnx
when no --output was given); IMAGES a PNG/JPEG film or a folder of them (searched recursively,
sorted, hidden files skipped). Writes OUTPUT/predictions.csv with the columns and numbers of `python
-m mdx predict --bundle=B` (path, <finding> calibrated probability, <finding> raw, <finding> call,
warning; 6 decimals) and OUTPUT/errors.csv (path, reason) for files it cannot read.

Everything it needs is in the model's metadata (key "mdx", JSON; mdx.inference.export writes it):
the input (image_size, channels, standardize), the findings, the thresholds and the calibration
maps. The preprocessing below is mdx's, step for step (mdx.data.image.images.read_image and
to_channels, mdx.data.image.records.to_float_image, mdx.data.standardize.standardize; the maps of
mdx.evaluate.calibration.map_from_spec), so the two agree to float rounding. DICOM files need
pydicom, which this script does without: they are listed in errors.csv (predict them with mdx).
This file imports nothing but the standard library, numpy, Pillow and onnxruntime.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
SMALL = 4  # an image under 1/SMALL of the model's input along an axis gets a warning
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")  # spreadsheet formulas (mdx.outputs)


# ------------------------------------------------------------------------ decoding (mdx.data.image)
def read_image(path: str, channels: int) -> np.ndarray:
  """A PNG/JPEG file -> uint8 or uint16 [H, W, channels] (images.read_image without DICOM)."""
  with Image.open(path) as im:
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
      image = np.asarray(im, dtype=np.uint16)
    elif im.mode == "I":  # 16-bit PNGs may open as 32-bit integer mode
      image = np.asarray(im)
      if image.min() < 0 or image.max() > 65535:
        raise ValueError(f"integer image with values outside 0..65535 ({image.min()}..)")
      image = image.astype(np.uint16)
    elif im.mode in ("L", "RGB"):
      image = np.asarray(im, dtype=np.uint8)
    elif im.mode in ("LA", "RGBA", "P", "CMYK", "YCbCr", "1"):
      image = np.asarray(im.convert("RGB" if im.mode != "LA" else "L"), dtype=np.uint8)
    else:
      raise ValueError(f"unsupported PIL image mode {im.mode!r}")
  return to_channels(image, channels)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """[H, W] or [H, W, C] -> [H, W, channels]: gray repeated, RGB to luminance for 1 channel."""
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f"expected a 2D image, got shape {image.shape}")
  have = image.shape[-1]
  if have == channels:
    return np.ascontiguousarray(image)
  if have == 1:
    return np.ascontiguousarray(np.repeat(image, channels, axis=-1))
  if have == 3 and channels == 1:
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(
      image[..., 0], image[..., 2]
    ):
      return np.ascontiguousarray(image[..., :1])
    gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.round(gray).astype(image.dtype)[..., None]
  raise ValueError(f"cannot convert {have} channels to {channels}")


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Area averaging (PIL's BOX filter) of uint8/uint16 [H, W, C] to [size, size, C], per channel;
  16-bit through PIL's float mode, rounded and clipped."""
  out = np.empty((size, size, image.shape[-1]), image.dtype)
  for c in range(image.shape[-1]):
    if image.dtype == np.uint16:
      channel = Image.fromarray(image[..., c].astype(np.float32))
      resized = np.round(np.asarray(channel.resize((size, size), Image.Resampling.BOX)))
      out[..., c] = np.clip(resized, 0, 65535).astype(np.uint16)
    else:
      channel = Image.fromarray(np.ascontiguousarray(image[..., c]))
      out[..., c] = np.asarray(channel.resize((size, size), Image.Resampling.BOX))
  return out


def to_float_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8/uint16 [H, W, C] -> float32 [size, size, C] in [0, 1] (records.to_float_image)."""
  if image.shape[:2] != (size, size):
    image = resize(image, size)
  scale = 255.0 if image.dtype == np.uint8 else 65535.0
  return image.astype(np.float32) / scale


def standardize(x: np.ndarray, spec: dict) -> np.ndarray:
  """float32 [S, S, C] by the bundle's input.standardize (mdx.data.standardize)."""
  mode = spec.get("mode")
  if mode in (None, "none"):
    return x
  if mode == "per_image":
    return ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)
  if mode == "dataset":
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    return ((x - mean) / (std + 1e-6)).astype(np.float32)
  if mode in ("per_channel", "zscore"):
    mu, sd = x.mean((0, 1), keepdims=True), x.std((0, 1), keepdims=True)
    return ((x - mu) / np.maximum(sd, 1e-8)).astype(np.float32)
  if mode == "nonzero":
    out = np.zeros_like(x)
    for c in range(x.shape[-1]):
      inside = x[..., c] != 0
      if inside.any():
        values = x[..., c][inside]
        scaled = (x[..., c] - values.mean()) / max(float(values.std()), 1e-8)
        out[..., c] = np.where(inside, scaled, 0.0)
    return out
  if mode == "ct":
    clip = np.asarray(spec["clip"], np.float32)
    mean = np.asarray(spec["mean"], np.float32)
    std = np.maximum(np.asarray(spec["std"], np.float32), 1e-8)
    return ((np.clip(x, clip[:, 0], clip[:, 1]) - mean) / std).astype(np.float32)
  raise ValueError(f"standardize mode {mode!r} is not one this script knows; use mdx predict")


# ------------------------------------------------------------- outputs (mdx.evaluate.calibration)
def calibration_map(spec: dict):
  """A calibration map of the metadata -> p (float64) -> calibrated p."""
  kind = spec.get("kind")
  if kind == "platt":
    a, b = float(spec["a"]), float(spec["b"])

    def platt(p):
      p = np.clip(p, 1e-7, 1 - 1e-7)
      return 1.0 / (1.0 + np.exp(-(a * (np.log(p) - np.log1p(-p)) + b)))

    return platt
  if kind == "isotonic":
    x, y = np.asarray(spec["x"], np.float64), np.asarray(spec["y"], np.float64)
    return lambda p: np.interp(p, x, y)
  if kind == "identity":
    return lambda p: p
  raise ValueError(f"calibration map kind {kind!r}; expected platt, isotonic or identity")


def number(v: float) -> str:
  return "" if not np.isfinite(v) else f"{v:.6f}"


def cell(value):
  """A text cell a spreadsheet would run as a formula gets a leading apostrophe (as mdx writes)."""
  if isinstance(value, str) and value.startswith(FORMULA_START):
    try:
      float(value)
    except ValueError:
      return "'" + value
  return value


def size_warning(shape, size: int) -> str:
  if all(SMALL * int(s) >= size for s in shape):
    return ""
  return (
    f"the image (pixels) is {shape[0]}x{shape[1]}, far below the model's {size}x{size} input "
    f"(under 1/{SMALL} along an axis): check the file"
  )


# ---------------------------------------------------------------------------------------- files
def is_dicom(path: str) -> bool:
  if path.lower().endswith(DICOM_SUFFIXES):
    return True
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:132] == b"DICM"


def list_images(source: str, skip: str) -> tuple[list[tuple[str, str]], int]:
  """([(path column, file)], files of other types) of a file or a folder (recursive, sorted,
  hidden files and the folder `skip` left out), as mdx predict lists them."""
  if os.path.isfile(source):
    return [(os.path.basename(source), source)], 0
  found, ignored = [], 0
  for folder, dirnames, filenames in os.walk(source):
    dirnames[:] = [d for d in dirnames if not d.startswith(".") and os.path.join(folder, d) != skip]
    for name in filenames:
      full = os.path.join(folder, name)
      if name.startswith("."):
        continue
      if name.lower().endswith(SUFFIXES) or is_dicom(full):
        found.append((os.path.relpath(full, source).replace(os.sep, "/"), full))
      else:
        ignored += 1
  return sorted(found), ignored


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("model", help="the exported ONNX file")
  parser.add_argument("images", help="a PNG/JPEG film or a folder of them")
  parser.add_argument("output", help="folder for predictions.csv and errors.csv")
  parser.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
  args = parser.parse_args(argv)

  session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
  text = session.get_modelmeta().custom_metadata_map.get("mdx")
  if not text:
    sys.exit(f"error: {args.model} has no 'mdx' metadata; export it with mdx export_model")
  meta = json.loads(text)
  if meta.get("task") != "classification":
    sys.exit(
      f"error: {args.model} is a {meta.get('task')} model; this script predicts with image "
      "classifiers (a segmenter's windows are in its metadata's 'windowing')"
    )
  spec_in = meta["input"]
  size, channels = int(spec_in["image_size"]), int(spec_in["channels"])
  findings = list(meta["output"]["findings"])
  maps = meta["calibration"]["maps"]
  calibrate = [calibration_map(maps.get(f, {"kind": "identity"})) for f in findings]
  values = meta["thresholds"]["values"]
  thresholds = np.array([np.nan if values.get(f) is None else float(values[f]) for f in findings])
  (graph_input,) = session.get_inputs()
  dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32

  output = os.path.abspath(args.output)
  os.makedirs(output, exist_ok=True)
  files, ignored = list_images(os.path.abspath(args.images), output)
  rows, errors = [], []
  for start in range(0, len(files), args.batch_size):
    batch, names, warnings = [], [], []
    for name, path in files[start : start + args.batch_size]:
      if is_dicom(path):
        errors.append((name, "DICOM needs pydicom, which this script does without: use mdx"))
        continue
      try:
        image = read_image(path, channels)
      except (OSError, ValueError, SyntaxError) as e:
        errors.append((name, f"cannot decode: {type(e).__name__}: {e}"))
        continue
      x = standardize(to_float_image(image, size), spec_in["standardize"])
      batch.append(x)
      names.append(name)
      warnings.append(size_warning(image.shape[:2], size))
    if not batch:
      continue
    scores = session.run(None, {graph_input.name: np.stack(batch).astype(dtype)})[0]
    raw = np.asarray(scores, np.float32).astype(np.float64)
    probs = np.stack([m(raw[:, j]) for j, m in enumerate(calibrate)], 1)
    calls = np.where(np.isnan(thresholds), np.nan, (raw >= thresholds).astype(np.float64))
    for j, name in enumerate(names):
      rows.append(
        [
          name,
          *(number(v) for v in probs[j]),
          *(number(v) for v in raw[j]),
          *("" if np.isnan(v) else str(int(v)) for v in calls[j]),
          warnings[j],
        ]
      )
  header = [
    "path",
    *findings,
    *(f"{f} raw" for f in findings),
    *(f"{f} call" for f in findings),
    "warning",
  ]
  with open(os.path.join(output, "predictions.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows([cell(v) for v in row] for row in rows)
  with open(os.path.join(output, "errors.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "reason"])
    writer.writerows([cell(name), reason] for name, reason in errors)
  print(
    f"deploy_onnx: {len(rows)} predicted, {len(errors)} errors, {ignored} files of other types "
    f"ignored; see {output}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
