"""RSNA Pneumonia Detection Challenge (mdx/data/cxr/rsna.py) on its published layout: 21 real rows
of stage_2_train_labels.csv (14 films), their rows of stage_2_detailed_class_info.csv and of the
DICOM header table torchxrayvision ships (see fixtures/rsna/README.md). Expected values are worked
out by hand from the rows."""

import math
import os
import warnings

import numpy as np
import pydicom
import pytest
from dicom_without_pixels import assert_check_names_it, strip_pixels
from fixture_files import write_dicom
from PIL import Image

from mdx.data.cxr import rsna
from mdx.data.cxr.findings import CANONICAL

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "rsna")
LABELS = os.path.join(FIXTURES, "stage_2_train_labels.csv")
CLASSES = os.path.join(FIXTURES, "stage_2_detailed_class_info.csv")
HEADERS = os.path.join(FIXTURES, "stage_2_train_images_dicom_headers.csv")

NOT_NORMAL, NORMAL, OPACITY = "No Lung Opacity / Not Normal", "Normal", "Lung Opacity"
FILMS = {  # patientId -> (detailed class, number of boxes), in the files' order
  "0004cfab-14fd-4e49-80ba-63a80b6bddd6": (NOT_NORMAL, 0),
  "00313ee0-9eaa-42f4-b0ab-c148ed3241cd": (NOT_NORMAL, 0),
  "00322d4d-1c29-4943-afc9-b6754be640eb": (NOT_NORMAL, 0),
  "003d8fa0-6bf1-40ed-b54c-ac657f8495c5": (NORMAL, 0),
  "00436515-870c-4b36-a041-de91049b9ab4": (OPACITY, 2),
  "00569f44-917d-4c86-a842-81832af98c30": (NOT_NORMAL, 0),
  "00704310-78a8-4b38-8475-49f4573b2dbb": (OPACITY, 2),
  "009482dc-3db5-48d4-8580-5c89c4f01334": (NORMAL, 0),
  "009eb222-eabc-4150-8121-d5a6d06b8ebf": (NORMAL, 0),
  "00a85be6-6eb0-421d-8acf-ff2dc0007e8a": (NORMAL, 0),
  "0100515c-5204-4f31-98e0-f35e4b00004a": (OPACITY, 1),
  "01adfd2f-7bc7-4cef-ab68-a0992752b620": (OPACITY, 1),
  "03a9498c-549d-4e7d-800b-e74797f7f625": (OPACITY, 3),
  "0ab261f9-4eb5-42ab-a9a5-e918904d6356": (OPACITY, 4),
}
IDS = list(FILMS)
NAN = math.nan
# (Pneumonia, Lung Opacity, No Finding) of each class, with and without the classes file.
WITH_CLASSES = {OPACITY: (1, 1, 0), NOT_NORMAL: (0, NAN, 0), NORMAL: (0, 0, 1)}
WITHOUT_CLASSES = {OPACITY: (1, 1, 0), NOT_NORMAL: (0, NAN, NAN), NORMAL: (0, NAN, NAN)}


def write_films(folder, ids, ext=".dcm", headers=None):
  os.makedirs(folder, exist_ok=True)
  for k, pid in enumerate(ids):
    pixels = (np.arange(8 * 6).reshape(8, 6) * 100 + k).astype(np.uint16)
    path = os.path.join(folder, pid + ext)
    if ext == ".dcm":
      write_dicom(path, pixels)
      if headers and pid in headers:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():  # RSNA writes PatientAge '51', not the VR AS form '051Y'
          warnings.simplefilter("ignore", UserWarning)
          for tag, value in headers[pid].items():
            setattr(ds, tag, value)
        ds.save_as(path, enforce_file_format=True)
    else:
      Image.fromarray((pixels % 256).astype(np.uint8)).save(path)


@pytest.fixture
def images(tmp_path):
  folder = str(tmp_path / "stage_2_train_images")
  write_films(folder, IDS)
  return folder


def config(images, **kw):
  return dict(metadata=LABELS, images=images, **kw)


def test_the_mapping_and_facts():
  assert rsna.TO_CANONICAL == {
    "Target": "Pneumonia",
    "Lung Opacity": "Lung Opacity",
    "Normal": "No Finding",
    "No Lung Opacity / Not Normal": None,
  }
  assert {v for v in rsna.TO_CANONICAL.values() if v} == set(rsna.LABELLED)
  assert set(rsna.LABELLED) <= set(CANONICAL)
  assert set(rsna.FACTS) >= {"modality", "label_source", "label_values", "patient_id"}


@pytest.mark.parametrize("with_classes", [True, False])
def test_labels_of_each_class_worked_out_by_hand(images, with_classes):
  cfg = config(images, **({"classes": CLASSES} if with_classes else {}))
  source = rsna.make_source(cfg)
  assert source.findings == ("Pneumonia", "Lung Opacity", "No Finding")
  assert list(source.image_ids()) == IDS and list(source.patient_ids()) == IDS
  table = WITH_CLASSES if with_classes else WITHOUT_CLASSES
  want = np.array([table[FILMS[p][0]] for p in IDS], np.float32)
  np.testing.assert_array_equal(source.labels(), want)
  classes = [FILMS[p][0] if with_classes else "" for p in IDS]
  assert list(source.extra["class"]) == classes


def test_boxes_one_record_per_film(images):
  source = rsna.make_source(config(images, classes=CLASSES))
  assert [len(b) for b in source.extra["boxes"]] == [FILMS[p][1] for p in IDS]
  # 0ab261f9...: first row x 613, y 352, width 106, height 102
  assert source.extra["boxes"][IDS.index("0ab261f9-4eb5-42ab-a9a5-e918904d6356")][0] == [
    "Lung Opacity",
    613.0,
    352.0,
    719.0,
    454.0,
    "",
  ]
  record = source[4]
  assert record["image"].shape == (8, 6, 1) and record["image_id"] == IDS[4]
  np.testing.assert_array_equal(record["labels"], [1, 1, 0])


def test_sex_age_view_from_the_header_table(images):
  source = rsna.make_source(config(images, headers=HEADERS))
  k = IDS.index("00436515-870c-4b36-a041-de91049b9ab4")
  assert (source.extra["view"][k], source.extra["sex"][k], source.extra["age"][k]) == (
    "AP",
    "F",
    32,
  )
  assert list(source.extra["view"]).count("AP") == 5 and list(source.extra["sex"]).count("M") == 7
  assert not np.isnan(source.extra["age"]).any()
  plain = rsna.make_source(config(images))  # no headers: unknown, not guessed
  assert (plain.extra["sex"] == "").all() and np.isnan(plain.extra["age"]).all()


def test_sex_age_view_and_study_from_the_dicom_headers(tmp_path, caplog):
  folder = str(tmp_path / "films")
  head = {
    IDS[0]: dict(PatientSex="F", PatientAge="51", ViewPosition="PA", StudyInstanceUID="1.2.3"),
    IDS[4]: dict(PatientSex="M", PatientAge="032Y", ViewPosition="AP"),
  }
  write_films(folder, IDS, headers=head)
  with caplog.at_level("INFO", logger="absl"):
    source = rsna.make_source(config(folder, read_headers=True))
  assert list(source.extra["sex"][[0, 4, 5]]) == ["F", "M", ""]
  assert list(source.extra["view"][[0, 4]]) == ["PA", "AP"]
  assert source.extra["age"][0] == 51 and source.extra["age"][4] == 32
  assert source.extra["study_id"][0] == "1.2.3"
  assert "read 14 DICOM headers" in " ".join(r.getMessage() for r in caplog.records)
  with pytest.raises(ValueError, match="set one"):
    rsna.make_source(config(folder, read_headers=True, headers=HEADERS))
  with open(os.path.join(folder, IDS[2] + ".dcm"), "wb") as f:
    f.write(b"not a dicom file")
  with pytest.raises(ValueError, match=f"cannot read the DICOM header of .*{IDS[2]}"):
    rsna.make_source(config(folder, read_headers=True))
  source = rsna.make_source(config(folder, read_headers=True, on_error="skip"))
  assert source.skipped == 1 and IDS[2] not in source.image_ids() and len(source) == 13


def test_ages_as_dicom_writes_them():
  assert rsna.age_years("062Y") == 62 and rsna.age_years("62") == 62
  assert rsna.age_years("018M") == 1.5 and rsna.age_years("") != rsna.age_years("")
  assert math.isnan(rsna.age_years("155"))  # typos in the real headers: unknown
  assert math.isnan(rsna.age_years("sixty"))


def test_patients_table_puts_films_of_one_person_together(tmp_path, images, caplog):
  table = tmp_path / "patients.csv"
  table.write_text(f"patientId,Patient ID\n{IDS[0]},19124\n{IDS[5]},19124\n{IDS[7]},6123\n")
  with caplog.at_level("INFO", logger="absl"):
    source = rsna.make_source(config(images, patients=str(table)))
  patients = list(source.patient_ids())
  assert patients[0] == patients[5] == "19124" and patients[7] == "6123"
  assert patients[1] == IDS[1]  # not in the table: the film stays its own patient
  assert "11 films are not in" in " ".join(r.getMessage() for r in caplog.records)
  table.write_text(f"patientId,Patient ID\n{IDS[0]},1\n{IDS[0]},2\n")
  with pytest.raises(ValueError, match="line 3: patientId .* again"):
    rsna.make_source(config(images, patients=str(table)))


def test_requested_findings_and_names_outside_the_label_space(images, caplog):
  with caplog.at_level("INFO", logger="absl"):
    source = rsna.make_source(
      config(images, classes=CLASSES, findings=["Consolidation", "Pneumonia"])
    )
  assert source.findings == ("Consolidation", "Pneumonia")
  assert np.isnan(source.labels()[:, 0]).all()  # RSNA does not label consolidation
  np.testing.assert_array_equal(source.labels()[:, 1], [FILMS[p][0] == OPACITY for p in IDS])
  assert "'Consolidation'" in " ".join(r.getMessage() for r in caplog.records)
  for name in ("Lung opacity", "Target", "Normal"):
    with pytest.raises(ValueError, match="not canonical finding names; choose from"):
      rsna.output_names({"findings": [name]})


def test_missing_films_raise_or_are_skipped(images):
  os.remove(os.path.join(images, IDS[6] + ".dcm"))
  with pytest.raises(FileNotFoundError, match="1 of 14 image files are missing"):
    rsna.make_source(config(images))
  source = rsna.make_source(config(images, on_error="skip", classes=CLASSES))
  assert source.skipped == 1 and IDS[6] not in source.image_ids()
  assert [len(b) for b in source.extra["boxes"]] == [FILMS[p][1] for p in IDS if p != IDS[6]]


def test_converted_films(tmp_path):
  folder = str(tmp_path / "png")
  write_films(folder, IDS, ext=".png")
  source = rsna.make_source(config(folder, extension="png"))
  assert source[0]["image"].dtype == np.uint8
  with pytest.raises(ValueError, match="read_headers needs the DICOM films"):
    rsna.make_source(config(folder, extension="png", read_headers=True))


# ------------------------------------------------------------------------------------- bad input


def edited(tmp_path, source, line, new):
  lines = open(source).read().splitlines()
  if line > len(lines):
    lines.append(new)
  else:
    lines[line - 1] = new
  path = tmp_path / os.path.basename(source)
  path.write_text("\n".join(lines) + "\n")
  return str(path)


P0, P4 = IDS[0], IDS[4]  # line 2: P0 Target 0; lines 6, 7: P4's two boxes


@pytest.mark.parametrize(
  "line,row,message",
  [
    (2, f"{P0},,,,,2", "Target is '2'"),
    (2, f"{P0},1,2,3,4,0", "Target 0 with a box"),
    (2, f"{P0},,,,,1", "Target 1 needs a box of four numbers"),
    (6, f"{P4},264.0,152.0,0,379.0,1", "needs a positive width"),
    (7, f"{P4},,,,,0", "Target 0, but line 6 gives 1"),
    (3, f"{P0},,,,,0", "a second Target 0 row"),
    (2, ",,,,,0", "empty 'patientId'"),
  ],
)
def test_a_bad_labels_row_names_file_and_line_before_any_image(tmp_path, line, row, message):
  path = edited(tmp_path, LABELS, line, row)
  with pytest.raises(ValueError, match=message) as e:
    rsna.make_source(dict(metadata=path, images=str(tmp_path / "none")))
  assert f"{path} line {line}" in str(e.value)


@pytest.mark.parametrize(
  "line,row,message",
  [
    (2, f"{P0},Abnormal", "class 'Abnormal' is not one of"),
    (2, f"{P0},Lung Opacity", "contradicts Target 0"),
    (7, f"{P4},Normal", "class 'Normal', but line 6 gives 'Lung Opacity'"),
  ],
)
def test_a_bad_classes_row_names_file_and_line(tmp_path, images, line, row, message):
  path = edited(tmp_path, CLASSES, line, row)
  with pytest.raises(ValueError, match=message) as e:
    rsna.make_source(config(images, classes=path))
  assert f"{path} line {line}" in str(e.value)


def test_a_film_without_class_and_extra_classes(tmp_path, images, caplog):
  lines = open(CLASSES).read().splitlines()
  short = tmp_path / "short.csv"
  short.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # drops P0's class
  with pytest.raises(ValueError, match="1 films of .* have no class"):
    rsna.make_source(config(images, classes=str(short)))
  more = tmp_path / "more.csv"
  more.write_text("\n".join([*lines, "ffffffff-0000-0000-0000-000000000000,Normal"]) + "\n")
  with caplog.at_level("INFO", logger="absl"):
    assert len(rsna.make_source(config(images, classes=str(more)))) == 14
  assert "1 classes of films not in" in " ".join(r.getMessage() for r in caplog.records)


def test_tables_that_are_not_rsna_are_refused(tmp_path, images):
  bad = tmp_path / "labels.csv"
  bad.write_text("patientId,Target\nabc,0\n")
  with pytest.raises(ValueError, match="missing column"):
    rsna.make_source(config(images) | {"metadata": str(bad)})
  bad.write_text("patientId,x,y,width,height,Target\n")
  with pytest.raises(ValueError, match=": no data rows; give "):
    rsna.make_source(config(images) | {"metadata": str(bad)})
  with pytest.raises(ValueError, match="config.data.extension='.dicom'"):
    rsna.make_source(config(images, extension="dicom"))


def test_a_dicom_without_pixel_data_is_named_by_the_record_check(tmp_path, images):
  film = os.path.join(images, P4 + ".dcm")
  strip_pixels(film)
  source = rsna.make_source(config(images, read_headers=True))  # its header still reads
  assert len(source) == len(IDS)
  assert_check_names_it(source, "rsna", film, tmp_path)


def test_read_headers_without_the_image_files_is_refused_with_the_fix(tmp_path):
  unchecked = config(str(tmp_path / "none"), on_error="unchecked")
  assert len(rsna.make_source(unchecked)) == len(IDS)  # from the tables alone, files absent
  with pytest.raises(ValueError) as info:
    rsna.make_source(unchecked | {"read_headers": True})
  message = str(info.value)
  assert message.startswith("RSNA: config.data.on_error='unchecked' builds from the tables")
  assert "config.data.headers" in message and "\n" not in message
