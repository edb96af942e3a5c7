"""Image decoding: PNG/JPEG (8 or 16 bit) and DICOM into uint8/uint16 arrays [H, W, C].

Sources call read_image(path, channels); the pipeline later converts to float in [0, 1] with
to_float, which divides by the dtype's maximum, so 8- and 16-bit images mean the same thing.
DICOM follows the display chain a radiologist sees: modality LUT (rescale slope/intercept), then
the VOI LUT or window, then MONOCHROME1 inverted so that bone is always bright.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom")


def read_image(path: str | os.PathLike, channels: int = 1) -> np.ndarray:
  """Decodes one image file to uint8 or uint16 [H, W, channels].

  Raises FileNotFoundError when the file is missing and ValueError (naming the file) when it cannot
  be decoded.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"image file {path} does not exist; check config.data.images / the "
      "metadata rows, or set config.data.on_error='skip'"
    )
  try:
    if path.lower().endswith(DICOM_SUFFIXES) or has_dicom_preamble(path):
      image = _read_dicom(path)
    else:
      image = _read_pil(path)
  except MissingDecoder:
    raise
  except (OSError, ValueError, SyntaxError, AttributeError, KeyError) as e:
    raise ValueError(
      f"cannot decode image file {path}: {type(e).__name__}: {e}; the file is "
      "corrupt or not a PNG/JPEG/DICOM image (replace it, or set "
      "config.data.on_error='skip')"
    ) from e
  return to_channels(image, channels, path)


def has_dicom_preamble(path: str) -> bool:
  """True for a DICOM Part 10 file (the 'DICM' magic after a 128-byte preamble), whatever its
  name; False when the file cannot be read."""
  try:
    with open(path, "rb") as f:
      head = f.read(132)
  except OSError:
    return False
  return len(head) == 132 and head[128:132] == b"DICM"


def _read_pil(path: str) -> np.ndarray:
  with Image.open(path) as im:
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
      return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":  # 16-bit PNGs may open as 32-bit integer mode
      arr = np.asarray(im)
      if arr.min() < 0 or arr.max() > 65535:
        raise ValueError(f"integer image with values outside 0..65535 ({arr.min()}..{arr.max()})")
      return arr.astype(np.uint16)
    if im.mode in ("L", "RGB"):
      return np.asarray(im, dtype=np.uint8)
    if im.mode in ("LA", "RGBA", "P", "CMYK", "YCbCr", "1"):
      return np.asarray(im.convert("RGB" if im.mode != "LA" else "L"), dtype=np.uint8)
    raise ValueError(f"unsupported PIL image mode {im.mode!r}")


class MissingDecoder(ValueError):
  """A DICOM whose compression no installed pydicom plugin decodes: the machine lacks a package,
  the file is not corrupt (so skipping it would be the wrong advice)."""


# pip packages that decode compressed DICOM pixel data (pydicom's plugins), by what they cover.
DICOM_DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"


def _read_dicom(path: str) -> np.ndarray:
  import pydicom
  from pydicom.pixels import apply_modality_lut, apply_voi_lut

  ds = pydicom.dcmread(path)
  if "PixelData" not in ds:
    raise ValueError("DICOM file has no pixel data")
  try:
    raw = ds.pixel_array
  except RuntimeError as e:  # pydicom: every plugin for this transfer syntax lacks its package
    syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "its compression")
    raise MissingDecoder(
      f"cannot decode image file {path}: its pixel data is compressed as {syntax}, and no "
      f"installed package decodes that ({str(e).splitlines()[0][:120]}); {DICOM_DECODERS}"
    ) from None
  if raw.ndim != 2:
    raise ValueError(f"expected a single-frame grayscale DICOM, got pixel array shape {raw.shape}")
  values = apply_modality_lut(raw, ds).astype(np.float64)
  if "VOILUTSequence" in ds:
    values = apply_voi_lut(values, ds).astype(np.float64)
    low, high = values.min(), values.max()
  elif "WindowCenter" in ds and "WindowWidth" in ds:
    centre = float(np.atleast_1d(ds.WindowCenter)[0])
    width = float(np.atleast_1d(ds.WindowWidth)[0])
    low, high = centre - width / 2.0, centre + width / 2.0
  else:
    low, high = values.min(), values.max()
  scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
  if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
    scaled = 1.0 - scaled
  return np.round(scaled * 65535.0).astype(np.uint16)


def to_channels(image: np.ndarray, channels: int, where: str = "image") -> np.ndarray:
  """[H, W] or [H, W, C] -> [H, W, channels]: gray is repeated, RGB becomes luminance for 1
  channel."""
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f"{where}: expected a 2D image, got shape {image.shape}")
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
  raise ValueError(f"{where}: cannot convert {have} channels to {channels}")


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8/uint16 -> float32 in [0, 1] (divides by the dtype's maximum)."""
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  if image.dtype == np.uint16:
    return image.astype(np.float32) / 65535.0
  return image.astype(np.float32)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Area-averaging resize of [H, W, C] uint8/uint16 to [size, size, C] (same dtype).

  The whole film is kept (no crop): chest X-rays are close to square, and cropping could remove
  findings at the edges (e.g. costophrenic angles).
  """
  if image.shape[0] == size and image.shape[1] == size:
    return image
  out = np.empty((size, size, image.shape[-1]), image.dtype)
  for c in range(image.shape[-1]):
    if image.dtype == np.uint16:  # PIL resizes 16 bit only in 32-bit float mode
      ch = Image.fromarray(image[..., c].astype(np.float32))
      out[..., c] = np.clip(
        np.round(np.asarray(ch.resize((size, size), Image.Resampling.BOX))), 0, 65535
      ).astype(np.uint16)
    elif image.dtype == np.uint8:
      ch = Image.fromarray(np.ascontiguousarray(image[..., c]))
      out[..., c] = np.asarray(ch.resize((size, size), Image.Resampling.BOX))
    else:
      raise ValueError(f"resize expects uint8 or uint16 images, got {image.dtype}")
  return out
