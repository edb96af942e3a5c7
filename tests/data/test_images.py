"""Image decoding: PNG 8/16 bit, JPEG, DICOM display chain, clear errors."""

import numpy as np
import pytest
from fixture_files import write_dicom
from PIL import Image
from real_layouts import write_png

from mdx.data.image import images


def test_png_8_and_16_bit_and_channels(tmp_path):
  a8 = write_png(str(tmp_path / "a.png"))
  a16 = write_png(str(tmp_path / "b.png"), bits=16)
  out8 = images.read_image(tmp_path / "a.png")
  out16 = images.read_image(tmp_path / "b.png")
  assert out8.dtype == np.uint8 and out8.shape == (20, 24, 1)
  np.testing.assert_array_equal(out8[..., 0], a8)
  assert out16.dtype == np.uint16
  np.testing.assert_array_equal(out16[..., 0], a16)
  assert images.read_image(tmp_path / "a.png", channels=3).shape == (20, 24, 3)
  np.testing.assert_allclose(images.to_float(out16).max(), a16.max() / 65535, rtol=1e-6)


def test_jpeg_and_rgb_to_gray(tmp_path):
  rgb = np.zeros((16, 16, 3), np.uint8)
  rgb[..., 0] = 200
  Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=100)
  gray = images.read_image(tmp_path / "c.jpg")
  assert gray.shape == (16, 16, 1)
  assert abs(int(gray.mean()) - round(0.299 * 200)) <= 3


def test_dicom_rescale_window_and_monochrome1(tmp_path):
  px = np.arange(100, dtype=np.uint16).reshape(10, 10) * 10  # 0..990
  write_dicom(tmp_path / "m2.dcm", px, slope=2.0, intercept=-100.0, window=(900, 1000))
  out = images.read_image(tmp_path / "m2.dcm")
  assert out.dtype == np.uint16 and out.shape == (10, 10, 1)
  hu = px * 2.0 - 100.0  # modality LUT
  expect = np.clip((hu - 400.0) / 1000.0, 0, 1) * 65535  # window [400, 1400]
  np.testing.assert_allclose(out[..., 0], np.round(expect), atol=1)
  write_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1")
  inv = images.read_image(tmp_path / "m1.dcm")[..., 0].astype(int)
  assert inv[0, 0] == 65535 and inv[-1, -1] == 0  # min..max, inverted


def test_missing_and_corrupt_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.png"):
    images.read_image(tmp_path / "nope.png")
  (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
  with pytest.raises(ValueError, match="bad.png"):
    images.read_image(tmp_path / "bad.png")


def test_a_dicom_compression_no_installed_package_decodes_names_the_install(tmp_path):
  """JPEG-LS (VinDr-CXR ships compressed DICOM) without pydicom's decoder packages: the file and
  the pip command, not 'corrupt, skip it' (every such file would be dropped)."""
  import pydicom
  from pydicom.encaps import encapsulate
  from pydicom.uid import JPEGLSLossless

  write_dicom(tmp_path / "plain.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
  ds = pydicom.dcmread(tmp_path / "plain.dcm")
  ds.file_meta.TransferSyntaxUID = JPEGLSLossless
  ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 a JPEG-LS stream"])
  ds["PixelData"].VR = "OB"
  ds.save_as(tmp_path / "jls.dcm", enforce_file_format=True)
  try:
    _ = pydicom.dcmread(tmp_path / "jls.dcm").pixel_array
  except RuntimeError:
    pass  # no decoder here: the case under test
  except Exception:  # noqa: BLE001 - a decoder is installed and fails on the fake stream
    pytest.skip("a JPEG-LS decoder is installed on this machine")
  with pytest.raises(images.MissingDecoder) as e:
    images.read_image(tmp_path / "jls.dcm")
  (line,) = str(e.value).splitlines()
  assert "jls.dcm" in line and "JPEG-LS Lossless" in line and "pip install pylibjpeg" in line
  assert "on_error='skip'" not in line


def test_resize_area_average():
  img = np.zeros((4, 4, 1), np.uint8)
  img[:2, :2] = 200
  out = images.resize(img, 2)
  np.testing.assert_array_equal(out[..., 0], [[200, 0], [0, 0]])
  img16 = np.arange(16, dtype=np.uint16).reshape(4, 4, 1) * 1000
  np.testing.assert_allclose(
    images.resize(img16, 2)[0, 0, 0], np.mean([0, 1000, 4000, 5000]), atol=1
  )
