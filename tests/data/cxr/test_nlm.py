"""NLM Montgomery and Shenzhen: labels from the file names, patients (with Montgomery's 'same pt
as' films joined), sex and age from the clinical readings in their irregular real spellings, lung
masks, the layout found under config.data.root, and the refusals."""

import logging
import math
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from mdx.data.cxr import nlm
from mdx.data.cxr.findings import CANONICAL

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "nlm"
NAN = float("nan")


def png(path, value=100, shape=(12, 10)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full(shape, value, np.uint8)).save(path)


def montgomery(root):
  """root/MontgomerySet as distributed: CXR_png, ClinicalReadings (fixture), ManualMask."""
  folder = root / "MontgomerySet"
  shutil.copytree(FIXTURES / "MontgomerySet", folder)
  for stem in ("MCUCXR_0001_0", "MCUCXR_0002_0", "MCUCXR_0003_0", "MCUCXR_0005_0"):
    png(folder / "CXR_png" / f"{stem}.png")
  for stem in ("MCUCXR_0104_1", "MCUCXR_0162_1"):
    png(folder / "CXR_png" / f"{stem}.png", value=200)
  (folder / "CXR_png" / "._MCUCXR_0001_0.png").write_bytes(b"\0\5\26\7")  # macOS AppleDouble
  (folder / "CXR_png" / "Thumbs.db").write_bytes(b"x")
  left, right = np.zeros((12, 10), np.uint8), np.zeros((12, 10), np.uint8)
  left[2:10, 1:4], right[3:11, 6:9] = 255, 255
  for d, m in (("leftMask", left), ("rightMask", right)):
    (folder / "ManualMask" / d).mkdir(parents=True)
    Image.fromarray(m).save(folder / "ManualMask" / d / "MCUCXR_0001_0.png")
  Image.fromarray(left).save(folder / "ManualMask" / "leftMask" / "MCUCXR_0002_0.png")
  return folder, left, right


def shenzhen(root):
  folder = root / "ChinaSet_AllFiles"
  shutil.copytree(FIXTURES / "ChinaSet_AllFiles", folder)
  for path in sorted((folder / "ClinicalReadings").iterdir()):
    png(folder / "CXR_png" / f"{path.stem}.png")
  return folder


M_IDS = ["MCUCXR_0001_0", "MCUCXR_0002_0", "MCUCXR_0003_0", "MCUCXR_0005_0"]
M_IDS += ["MCUCXR_0104_1", "MCUCXR_0162_1"]
S_IDS = ["CHNCXR_0001_0", "CHNCXR_0002_0", "CHNCXR_0003_0", "CHNCXR_0004_0"]
S_IDS += ["CHNCXR_0327_1", "CHNCXR_0328_1", "CHNCXR_0329_1", "CHNCXR_0330_1"]


def test_montgomery_readings():
  read = (FIXTURES / "MontgomerySet" / "ClinicalReadings").joinpath
  assert nlm.parse_montgomery(read("MCUCXR_0001_0.txt").read_text()) == ("F", 40.0, "")
  assert nlm.parse_montgomery(read("MCUCXR_0002_0.txt").read_text()) == ("O", 5.0, "")
  sex, age, same = nlm.parse_montgomery(read("MCUCXR_0104_1.txt").read_text())
  assert (sex, age, same) == ("M", 49.0, "MCUCXR_0162")
  sex, age, _ = nlm.parse_montgomery(read("MCUCXR_0005_0.txt").read_text())
  assert sex == "F" and math.isclose(age, 10 / 12)
  sex, age, same = nlm.parse_montgomery("normal\n")
  assert sex == "" and math.isnan(age) and same == ""


@pytest.mark.parametrize(
  "text, sex, age",
  [
    ("male 45yrs\nnormal", "M", 45.0),
    ("male 16month\nnormal", "M", 16 / 12),
    ("female 64days\nnormal", "F", 64 / 365.25),
    ("male 42\nnormal", "M", NAN),  # no unit: years, months or days cannot be told
    ("femal 32yrs\nPTB", "F", 32.0),
    ("female24yrs\nPTB", "F", 24.0),
    ("male , 29yrs  \t\nbilateral secondary PTB", "M", 29.0),
    ("Female, 28yrs\nSTB", "F", 28.0),
    ("\n\nMale 50yrs\n", "M", 50.0),
    ("normal", "", NAN),
  ],
)
def test_shenzhen_readings(text, sex, age):
  got_sex, got_age = nlm.parse_shenzhen(text)
  assert got_sex == sex
  assert (math.isnan(got_age) and math.isnan(age)) or math.isclose(got_age, age)


def test_montgomery_source(tmp_path, caplog):
  folder, left, right = montgomery(tmp_path)
  with caplog.at_level(logging.WARNING):
    source = nlm.make_source({"root": str(tmp_path)})
  assert source.name == "nlm_montgomery" and len(source) == 6
  assert list(source.image_ids()) == M_IDS
  assert source.findings == ("Tuberculosis", "No Finding")
  np.testing.assert_array_equal(source.labels(), [[0, 1]] * 4 + [[1, 0]] * 2)
  # one film per patient, but MCUCXR_0104's reading says 'same pt as MCUCXR_0162_1'
  assert list(source.patient_ids()) == [
    "MCUCXR_0001",
    "MCUCXR_0002",
    "MCUCXR_0003",
    "MCUCXR_0005",
    "MCUCXR_0104",
    "MCUCXR_0104",
  ]
  assert list(source.extra["sex"]) == ["F", "O", "", "F", "M", "M"]
  np.testing.assert_allclose(source.extra["age"], [40, 5, NAN, 10 / 12, 49, 48], rtol=1e-6)
  assert list(source.extra["view"]) == ["PA"] * 6
  assert list(source.extra["study_id"]) == [""] * 6
  assert "MCUCXR_0003_0" in caplog.text  # no reading: said, not silent
  assert list(source.paths())[0] == str(folder / "CXR_png" / "MCUCXR_0001_0.png")
  record = source[4]
  assert record["image"].shape == (12, 10, 1) and record["image"][0, 0, 0] == 200
  assert record["patient_id"] == "MCUCXR_0104"


def test_montgomery_masks(tmp_path):
  _, left, right = montgomery(tmp_path)
  source = nlm.make_source({"root": str(tmp_path / "MontgomerySet")})  # the set folder itself
  np.testing.assert_array_equal(nlm.mask(source, 0), ((left > 0) | (right > 0)).astype(np.uint8))
  np.testing.assert_array_equal(nlm.mask(source, 1), (left > 0).astype(np.uint8))
  assert len(source.extra["mask_files"][0]) == 2 and source.extra["mask_files"][2] == ()
  with pytest.raises(ValueError, match="MCUCXR_0003_0 has no lung mask"):
    nlm.mask(source, 2)
  picked = source.select([1, 0])  # a split keeps each record's masks
  np.testing.assert_array_equal(nlm.mask(picked, 1), nlm.mask(source, 0))


def test_shenzhen_source(tmp_path):
  folder = shenzhen(tmp_path)
  masks = tmp_path / "shcxr-lung-mask" / "mask"
  masks.mkdir(parents=True)
  lungs = np.zeros((12, 10), np.uint8)
  lungs[1:5, 2:8] = 255
  Image.fromarray(lungs).save(masks / "CHNCXR_0328_1_mask.png")
  source = nlm.make_source({"root": str(folder), "masks": str(masks), "channels": 3})
  assert source.name == "nlm_shenzhen" and list(source.image_ids()) == S_IDS
  np.testing.assert_array_equal(source.labels()[:, 0], [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(source.labels()[:, 1], [1, 1, 1, 1, 0, 0, 0, 0])
  assert list(source.patient_ids()) == [s[:-2] for s in S_IDS]
  assert list(source.extra["sex"]) == ["M", "M", "F", "M", "F", "F", "M", "F"]
  np.testing.assert_allclose(
    source.extra["age"], [45, 16 / 12, 64 / 365.25, NAN, 32, 24, 29, 28], rtol=1e-6
  )
  np.testing.assert_array_equal(nlm.mask(source, 5), (lungs > 0).astype(np.uint8))
  assert source[0]["image"].shape == (12, 10, 3)
  with pytest.raises(FileNotFoundError, match="config.data.masks"):
    nlm.make_source({"root": str(folder), "masks": str(tmp_path / "nope")})


def test_set_detection(tmp_path):
  montgomery(tmp_path)
  shenzhen(tmp_path)
  with pytest.raises(ValueError, match="both NLM sets.*config.data.set"):
    nlm.make_source({"root": str(tmp_path)})
  assert nlm.make_source({"root": str(tmp_path), "set": "shenzhen"}).name == "nlm_shenzhen"
  assert len(nlm.make_source({"root": str(tmp_path), "set": "montgomery"})) == 6
  with pytest.raises(ValueError, match="set='china'.*montgomery"):
    nlm.make_source({"root": str(tmp_path), "set": "china"})
  with pytest.raises(FileNotFoundError, match="ChinaSet_AllFiles/CXR_png"):
    nlm.make_source({"root": str(tmp_path / "MontgomerySet"), "set": "shenzhen"})
  with pytest.raises(FileNotFoundError, match="config.data.root"):
    nlm.make_source({"root": str(tmp_path / "nope")})
  with pytest.raises(FileNotFoundError, match="no MontgomerySet/CXR_png"):
    nlm.make_source({"root": str(tmp_path / "MontgomerySet" / "ManualMask")})
  with pytest.raises(ValueError, match="config.data.root must be set"):
    nlm.make_source({})


@pytest.mark.parametrize("name", ["MCUCXR_0007.png", "MCUCXR_0007_2.png", "CHNCXR_0007_0.png"])
def test_badly_named_image(tmp_path, name):
  folder, _, _ = montgomery(tmp_path)
  png(folder / "CXR_png" / name)
  with pytest.raises(ValueError, match=f"{name}: not a montgomery file name.*rename or remove"):
    nlm.make_source({"root": str(tmp_path), "set": "montgomery"})


def test_findings_in_the_canonical_space(tmp_path, caplog):
  montgomery(tmp_path)
  with caplog.at_level(logging.INFO):
    source = nlm.make_source({"root": str(tmp_path), "findings": ["Effusion", "Tuberculosis"]})
  assert np.isnan(source.labels()[:, 0]).all()
  np.testing.assert_array_equal(source.labels()[:, 1], [0, 0, 0, 0, 1, 1])
  assert "Effusion" in caplog.text
  with pytest.raises(ValueError, match="'TB'.*not canonical"):
    nlm.output_names({"findings": ["TB"]})
  assert nlm.output_names({}) == ("Tuberculosis", "No Finding")
  assert set(nlm.TO_CANONICAL.values()) <= set(CANONICAL)
  assert set(nlm.FACTS) == {"modality", "label_source", "label_values"}
  with pytest.raises(ValueError, match="on_error='ignore'"):
    nlm.make_source({"root": str(tmp_path), "on_error": "ignore"})


def test_empty_image_folder(tmp_path):
  (tmp_path / "MontgomerySet" / "CXR_png").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="no MCUCXR_NNNN_L.png images"):
    nlm.make_source({"root": str(tmp_path), "set": "montgomery"})


def test_one_film_number_twice_is_refused_naming_both_files(tmp_path):
  folder, _, _ = montgomery(tmp_path)
  png(folder / "CXR_png" / "MCUCXR_0003_1.png")  # MCUCXR_0003_0.png is there: normal and TB
  with pytest.raises(ValueError) as info:
    nlm.make_source({"root": str(tmp_path), "set": "montgomery"})
  message = str(info.value)
  assert message.startswith(f"{folder / 'CXR_png' / 'MCUCXR_0003_1.png'}: film MCUCXR_0003 is")
  assert "also MCUCXR_0003_0.png" in message and "\n" not in message


def test_without_the_image_files_is_refused_saying_the_labels_are_their_names(tmp_path):
  montgomery(tmp_path)
  with pytest.raises(ValueError) as info:
    nlm.make_source({"root": str(tmp_path), "on_error": "unchecked"})
  message = str(info.value)
  assert message.startswith("NLM: config.data.on_error='unchecked'")
  assert "labels are in the image file names" in message and "\n" not in message
