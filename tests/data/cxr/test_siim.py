"""SIIM-ACR Pneumothorax: the challenge's relative column-major RLE, the table read as distributed
(real rows), DICOM files found by SOP instance UID in nested folders, patient ids from the header,
masks through the source, and every refusal of bad input."""

import logging
import os
import pathlib

import fixture_files
import numpy as np
import pydicom
import pytest
from dicom_without_pixels import assert_check_names_it, strip_pixels

from mdx.data.cxr import siim
from mdx.data.cxr.findings import CANONICAL, NIH_FINDINGS

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "siim" / "train-rle.csv"
ROWS = [line.split(",") for line in FIXTURE.read_text().splitlines()[1:]]
# Image ids in order of first appearance in the fixture and their labels, read off the file.
IDS = [
  "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819",
  "1.2.276.0.7230010.3.1.4.8323329.11028.1517875229.983789",
  "1.2.276.0.7230010.3.1.4.8323329.11444.1517875232.977506",
  "1.2.276.0.7230010.3.1.4.8323329.32219.1517875159.70802",
  "1.2.276.0.7230010.3.1.4.8323329.4298.1517875182.165414",
  "1.2.276.0.7230010.3.1.4.8323329.1223.1517875166.847916",
  "1.2.276.0.7230010.3.1.4.8323329.31952.1517875157.662284",
  "1.2.276.0.7230010.3.1.4.8323329.14312.1517875250.941093",
]
PNEUMOTHORAX = [0, 0, 0, 0, 1, 1, 1, 1]
MULTI = IDS[4]  # three regions (fixture lines 6-8)


def oracle_mask(rle: str, height: int = 1024, width: int = 1024) -> np.ndarray:
  """The challenge's published decoding, written out as its loop: a running position that each
  gap, then each run, moves on; the flat buffer is [width, height] and transposed to the image."""
  flat = np.zeros(width * height, np.uint8)
  numbers = [int(x) for x in rle.split()]
  position = 0
  for gap, length in zip(numbers[0::2], numbers[1::2]):
    position += gap
    flat[position : position + length] = 1
    position += length
  return flat.reshape(width, height).T


# --------------------------------------------------------------------------------------- the RLE


def test_decode_matches_a_mask_computed_by_hand():
  # 4 rows x 3 columns; pixel (row y, column x) is number x * 4 + y, counted down each column.
  # Set (1,0)=1, (2,0)=2, (0,1)=4, (3,2)=11: runs [1,3) [4,5) [11,12) -> gaps 1, 4-3=1, 11-5=6.
  mask = np.zeros((4, 3), np.uint8)
  mask[1, 0] = mask[2, 0] = mask[0, 1] = mask[3, 2] = 1
  assert siim.rle_encode(mask) == "1 2 1 1 6 1"
  np.testing.assert_array_equal(siim.rle_decode("1 2 1 1 6 1", 4, 3), mask)
  # A run from the first pixel and one that reaches the last pixel, across a column boundary.
  edge = np.zeros((2, 2), np.uint8)
  edge[0, 0] = edge[1, 0] = edge[0, 1] = edge[1, 1] = 1
  assert siim.rle_encode(edge) == "0 4"
  corner = np.zeros((3, 2), np.uint8)
  corner[0, 0], corner[2, 0], corner[0, 1], corner[2, 1] = 1, 1, 1, 1  # 0, 2-3 joined, 5
  assert siim.rle_encode(corner) == "0 1 1 2 1 1"
  np.testing.assert_array_equal(siim.rle_decode("0 1 1 2 1 1", 3, 2), corner)


def test_empty_masks():
  assert siim.rle_encode(np.zeros((5, 7))) == "-1"
  for text in ("-1", " -1", ""):
    decoded = siim.rle_decode(text, 5, 7)
    assert decoded.shape == (5, 7) and decoded.dtype == np.uint8 and not decoded.any()


def test_round_trip_random_masks():
  rng = np.random.default_rng(0)
  for shape in ((1, 1), (3, 5), (16, 9), (64, 64)):
    for density in (0.05, 0.5, 0.95):
      mask = (rng.random(shape) < density).astype(np.uint8)
      text = siim.rle_encode(mask)
      np.testing.assert_array_equal(siim.rle_decode(text, *shape), mask)
      if mask.any():
        np.testing.assert_array_equal(oracle_mask(text, *shape), mask)


def test_real_rows_decode_as_the_challenge_does():
  rles = [rle for _, rle in ROWS if rle.strip() != "-1"]
  assert len(rles) == 6
  for rle in rles:
    mask = siim.rle_decode(rle)
    assert mask.shape == (1024, 1024)
    np.testing.assert_array_equal(mask, oracle_mask(rle))
    assert mask.sum() == sum(int(x) for x in rle.split()[1::2])  # runs do not overlap
    assert siim.rle_encode(mask) == rle.strip()  # the challenge's own encoder gives these rows
  # A real mask is one blob in the image, not stripes: its rows and columns are contiguous.
  blob = siim.rle_decode(rles[-1])
  ys, xs = np.nonzero(blob)
  assert np.unique(ys).size == ys.max() - ys.min() + 1
  assert np.unique(xs).size == xs.max() - xs.min() + 1


@pytest.mark.parametrize(
  "text, why",
  [
    ("1 2 3", "pairs"),
    ("1 2 x 4", "whole numbers"),
    ("-3 2", "negative"),
    ("4 0", "below 1"),
    ("1048570 2 1048574 1", "relative"),  # an absolute reading of starts overflows the image
  ],
)
def test_malformed_rle_is_refused(text, why):
  with pytest.raises(ValueError, match=why):
    siim.rle_decode(text)


def test_encode_refuses_non_2d():
  with pytest.raises(ValueError, match="2D"):
    siim.rle_encode(np.zeros((2, 2, 1)))


# ----------------------------------------------------------------------------------- the source


def write_dicom(path, patient="", sex="M", age="062Y", view="PA", study="1.2.3"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fixture_files.write_dicom(path, np.arange(64, dtype=np.uint16).reshape(8, 8) * 100)
  ds = pydicom.dcmread(path)
  settings = pydicom.config.settings
  modes = settings.reading_validation_mode, settings.writing_validation_mode
  settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
  try:  # SIIM's plain '62' is not the DICOM AS form '062Y': pydicom would warn
    ds.PatientID, ds.PatientSex, ds.PatientAge = patient, sex, age
    ds.ViewPosition, ds.StudyInstanceUID = view, study
    ds.save_as(path)
  finally:
    settings.reading_validation_mode, settings.writing_validation_mode = modes


# Two images share a patient (PAT-A); the real header of IDS[0] has PatientID = a UUID, sex M,
# age '62' (not '062Y'), view PA.
HEADERS = {
  IDS[0]: ("16d7f894-55d7-4d95-8957-d18987f0e981", "M", "62", "PA"),
  IDS[1]: ("PAT-A", "F", "045Y", "AP"),
  IDS[2]: ("PAT-B", "M", "018M", "PA"),
  IDS[3]: ("PAT-C", "F", "", "PA"),
  IDS[4]: ("PAT-A", "F", "046Y", "AP"),
  IDS[5]: ("PAT-D", "M", "070Y", "PA"),
  IDS[6]: ("PAT-E", "M", "033Y", "PA"),
  IDS[7]: ("PAT-F", "F", "051Y", "PA"),
}


def dicom_tree(root, ids=IDS):
  """dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm, as distributed."""
  paths = {}
  for n, image_id in enumerate(ids):
    patient, sex, age, view = HEADERS[image_id]
    study, series = f"1.2.276.0.7230010.3.1.2.{n}", f"1.2.276.0.7230010.3.1.3.{n}"
    path = root / study / series / f"{image_id}.dcm"
    write_dicom(str(path), patient, sex, age, view, study=study)
    paths[image_id] = path
  return paths


@pytest.fixture
def tree(tmp_path):
  root = tmp_path / "dicom-images-train"
  return root, dicom_tree(root)


def config(images, **kw):
  return {"metadata": str(FIXTURE), "images": str(images), **kw}


def test_source_reads_the_distributed_layout(tree):
  root, paths = tree
  source = siim.make_source(config(root))
  assert len(source) == 8 and source.findings == ("Pneumothorax",) and source.skipped == 0
  assert list(source.image_ids()) == IDS
  np.testing.assert_array_equal(source.labels()[:, 0], PNEUMOTHORAX)
  assert list(source.paths()) == [str(paths[i]) for i in IDS]
  assert list(source.patient_ids()) == [HEADERS[i][0] for i in IDS]
  assert len(np.unique(source.patient_ids())) == 7  # PAT-A holds two films
  assert list(source.extra["sex"]) == ["M", "F", "M", "F", "F", "M", "M", "F"]
  assert list(source.extra["view"]) == ["PA", "AP", "PA", "PA", "AP", "PA", "PA", "PA"]
  np.testing.assert_allclose(source.extra["age"], [62, 45, 1.5, np.nan, 46, 70, 33, 51])
  assert source.extra["study_id"][3] == "1.2.276.0.7230010.3.1.2.3"
  record = source[4]
  assert record["image"].shape == (8, 8, 1) and record["patient_id"] == "PAT-A"
  np.testing.assert_array_equal(record["labels"], [1.0])


def test_masks_are_the_union_of_the_regions(tree):
  source = siim.make_source(config(tree[0]))
  regions = [rle for image_id, rle in ROWS if image_id == MULTI]
  assert len(regions) == 3
  union = np.maximum.reduce([oracle_mask(r) for r in regions])
  assert union.sum() == sum(oracle_mask(r).sum() for r in regions) == 4402  # three apart
  np.testing.assert_array_equal(siim.mask(source, 4), union)
  assert not siim.mask(source, 0).any()
  # through a selection (a split) the mask follows its record
  picked = source.select([6, 4])
  np.testing.assert_array_equal(siim.mask(picked, 1), union)
  single = [rle for image_id, rle in ROWS if image_id == IDS[6]][0]
  np.testing.assert_array_equal(siim.mask(picked, 0), oracle_mask(single))
  assert source.extra["rle"].dtype == object


def test_findings_in_the_canonical_space(tree, caplog):
  with caplog.at_level(logging.INFO):
    source = siim.make_source(config(tree[0], findings=["Effusion", "Pneumothorax", "No Finding"]))
  assert source.findings == ("Effusion", "Pneumothorax", "No Finding")
  labels = source.labels()
  assert np.isnan(labels[:, [0, 2]]).all()  # unknown, never negative
  np.testing.assert_array_equal(labels[:, 1], PNEUMOTHORAX)
  assert "Effusion" in caplog.text and "No Finding" in caplog.text
  # CheXpert's spelling is not the canonical name (NIH's 'Effusion' is)
  with pytest.raises(ValueError, match="Pleural Effusion.*not canonical.*choose from"):
    siim.output_names({"findings": ["Pleural Effusion"]})
  assert siim.output_names({}) == ("Pneumothorax",)


def test_mapping_and_facts():
  assert set(siim.TO_CANONICAL.values()) <= set(CANONICAL)
  assert CANONICAL[:14] == NIH_FINDINGS
  assert len(CANONICAL) == 22 and CANONICAL[-2:] == ("Tuberculosis", "No Finding")
  assert set(siim.FACTS) == {"modality", "label_source", "label_values"}


def test_patient_id_from_the_image_id_reads_no_header(tmp_path):
  root = tmp_path / "dicom-images-train"
  for n, image_id in enumerate(IDS):
    path = root / f"s{n}" / f"r{n}" / f"{image_id}.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a DICOM file")  # a header read would fail
  source = siim.make_source(config(root, patient_id="image_id"))
  assert list(source.patient_ids()) == IDS
  assert list(source.extra["sex"]) == [""] * 8 and np.isnan(source.extra["age"]).all()
  with pytest.raises(ValueError, match="patient_id='nope'.*header"):
    siim.make_source(config(root, patient_id="nope"))


def test_missing_dicom_raise_or_skip(tree):
  root, paths = tree
  paths[IDS[5]].unlink()
  with pytest.raises(FileNotFoundError, match="1 of 8 image files are missing"):
    siim.make_source(config(root))
  source = siim.make_source(config(root, on_error="skip"))
  assert len(source) == 7 and source.skipped == 1 and IDS[5] not in source.image_ids()
  np.testing.assert_array_equal(source.labels()[:, 0], [0, 0, 0, 0, 1, 1, 1])


def test_unreadable_header_raise_or_skip(tree):
  root, paths = tree
  paths[IDS[2]].write_bytes(b"\0" * 10)
  with pytest.raises(ValueError, match=f"cannot read the DICOM header of .*{IDS[2]}.dcm"):
    siim.make_source(config(root))
  source = siim.make_source(config(root, on_error="skip"))
  assert len(source) == 7 and source.skipped == 1
  assert list(source.patient_ids()) == [HEADERS[i][0] for i in IDS if i != IDS[2]]
  assert list(source.extra["sex"]) == [HEADERS[i][1] for i in IDS if i != IDS[2]]


def test_header_without_patient_id(tree):
  root, paths = tree
  write_dicom(str(paths[IDS[1]]), patient="")
  with pytest.raises(ValueError, match="no PatientID.*patient_id='image_id'"):
    siim.make_source(config(root))


def test_two_copies_of_one_image(tree):
  root, paths = tree
  copy = root / "elsewhere" / paths[IDS[0]].name
  copy.parent.mkdir()
  copy.write_bytes(paths[IDS[0]].read_bytes())
  with pytest.raises(ValueError, match="two DICOM files for image"):
    siim.make_source(config(root))


def test_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="dicom-images-train"):
    siim.make_source(config(tmp_path / "nope"))
  with pytest.raises(ValueError, match="config.data.metadata must be set"):
    siim.make_source({"images": str(tmp_path)})


def rewrite(tmp_path, text):
  path = tmp_path / "train-rle.csv"
  path.write_text(text)
  return str(path)


def test_stage_two_header_and_leading_spaces(tree, tmp_path):
  # The challenge's code allows ' -1' and ' 123 4 ...' (a space after the comma); stage 2 named
  # the column 'EncodedPixels'. Both read the same labels and masks.
  lines = FIXTURE.read_text().splitlines()
  spaced = [lines[0]] + [line.replace(",", ", ", 1) for line in lines[1:]]
  stage2 = ["ImageId,EncodedPixels"] + lines[1:]
  for text in (spaced, stage2):
    source = siim.make_source(config(tree[0]) | {"metadata": rewrite(tmp_path, "\n".join(text))})
    np.testing.assert_array_equal(source.labels()[:, 0], PNEUMOTHORAX)
    regions = [rle for image_id, rle in ROWS if image_id == MULTI]
    np.testing.assert_array_equal(
      siim.mask(source, 4), np.maximum.reduce([oracle_mask(r) for r in regions])
    )


@pytest.mark.parametrize(
  "row, match",
  [
    (",-1", "line 3: empty 'ImageId'"),
    ("1.2.3,", r"line 3 \(1.2.3\): empty ' EncodedPixels'; write -1"),
    ("1.2.3,5 6 7", r"line 3 \(1.2.3\) column ' EncodedPixels': not a SIIM run-length.*pairs"),
    ("1.2.3,1048570 2 1048574 1", "line 3.*relative"),
    (f"{IDS[0]},5 6", r"line 3 \(.*850819\): the image has both '-1'.*line 2"),
  ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, match):
  text = f"ImageId, EncodedPixels\n{IDS[0]},-1\n{row}\n"
  with pytest.raises(ValueError, match=match) as info:
    siim.make_source({"metadata": rewrite(tmp_path, text), "images": str(tmp_path)})
  assert str(tmp_path / "train-rle.csv") in str(info.value)


def test_missing_rle_column(tmp_path):
  with pytest.raises(ValueError, match="no ' EncodedPixels' column"):
    siim.make_source({"metadata": rewrite(tmp_path, "ImageId,Mask\n1.2,-1\n"), "images": "x"})


def test_an_empty_table_is_named(tmp_path):
  path = rewrite(tmp_path, "ImageId, EncodedPixels\n")
  with pytest.raises(ValueError, match=rf"^{path}: no data rows; give SIIM's"):
    siim.make_source({"metadata": path, "images": str(tmp_path)})


def test_a_dicom_without_pixel_data_is_named_by_the_record_check(tree, tmp_path):
  root, paths = tree
  strip_pixels(paths[IDS[2]])
  source = siim.make_source(config(root))  # the header (patient, sex, age) still reads
  assert source.patient_ids()[2] == "PAT-B"
  assert_check_names_it(source, "siim", paths[IDS[2]], tmp_path)


def test_header_fields_without_the_image_files_are_refused_with_the_fix(tmp_path):
  unchecked = config(tmp_path, on_error="unchecked", patient_id="image_id")
  assert list(siim.make_source(unchecked).image_ids()) == IDS  # from the table alone
  for patient_id in ("header", None):  # None: the default, 'header'
    with pytest.raises(ValueError) as info:
      siim.make_source(unchecked | {"patient_id": patient_id})
    message = str(info.value)
    assert message.startswith("SIIM: config.data.on_error='unchecked' builds from the tables")
    assert "config.data.patient_id='image_id'" in message and "\n" not in message
