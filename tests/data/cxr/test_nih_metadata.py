"""NIH ChestX-ray14, its expert labels and CheXpert give each record's study, view, sex and age in
FileSource.extra from their tables, aligned with the records kept (filters, skipped files,
select), so the dataset card counts them; ages as the tables write them ('58', '058Y', blank,
typos), unknown sexes as ''. Expected values are read off the small tables by hand."""

import csv
import gzip
import math

import numpy as np
import pytest
from PIL import Image

from mdx.data import card
from mdx.data.cxr import chexpert, nih, nih_expert

NAN = float("nan")


def png(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((8, 8), 100, np.uint8)).save(path)


def table(path, columns, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)
  return str(path)


def same(values, expected):
  """Element-wise equality with nan == nan (ages)."""
  values = list(values)
  assert len(values) == len(expected), (values, expected)
  for v, e in zip(values, expected):
    assert (math.isnan(v) and math.isnan(e)) if isinstance(e, float) and math.isnan(e) else v == e


NIH_COLUMNS = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
               "Patient Gender", "View Position"]  # fmt: skip
NIH_ROWS = [
  ("00000001_000.png", "Mass", "0", "1", "058Y", "M", "PA"),  # the 2017 release's form
  ("00000001_001.png", "No Finding", "1", "1", "59", "M", "AP"),
  ("00000002_000.png", "Effusion", "0", "2", "", "F", "PA"),  # age blank
  ("00000003_000.png", "No Finding", "0", "3", "414", "", "AP"),  # a typo'd age, sex blank
  ("00000004_002.png", "Hernia", "2", "4", "7", "O", "PA"),  # a sex that is neither M nor F
]


def nih_folder(tmp_path, rows=NIH_ROWS, columns=NIH_COLUMNS, missing=()):
  for row in rows:
    if row[0] not in missing:
      png(tmp_path / "images_001" / "images" / row[0])
  return table(tmp_path / "Data_Entry_2017.csv", columns, rows)


def test_nih_study_view_sex_and_age_per_record(tmp_path):
  meta = nih_folder(tmp_path)
  s = nih.make_source(dict(metadata=meta, images=str(tmp_path)))
  assert list(s.extra["study_id"]) == ["1_0", "1_1", "2_0", "3_0", "4_2"]
  assert list(s.extra["view"]) == ["PA", "AP", "PA", "AP", "PA"]
  assert list(s.extra["sex"]) == ["M", "M", "F", "", ""]
  same(s.extra["age"], [58.0, 59.0, NAN, NAN, 7.0])
  c = card.describe(s)
  assert c["studies"] == 5 and c["patients"] == 4
  assert c["views"] == {"PA": 3, "AP": 2}
  assert c["sex"] == {"M": 2, "F": 1, card.UNKNOWN: 2}
  # known ages 7, 58, 59: numpy's linear quartiles are 32.5 and 58.5
  assert c["age"] == dict(n=3, unknown=2, median=58.0, q1=32.5, q3=58.5, min=7.0, max=59.0)


def test_nih_extra_follows_the_view_filter_skipped_files_and_select(tmp_path):
  meta = nih_folder(tmp_path, missing=("00000001_000.png",))
  s = nih.make_source(
    dict(metadata=meta, images=str(tmp_path), view_positions=["PA"], on_error="skip")
  )
  # PA rows 1, 3, 5; row 1's image is missing
  assert list(s.image_ids()) == ["00000002_000.png", "00000004_002.png"] and s.skipped == 1
  assert list(s.extra["study_id"]) == ["2_0", "4_2"]
  assert list(s.extra["sex"]) == ["F", ""]
  same(s.extra["age"], [NAN, 7.0])
  picked = s.select([1])
  assert list(picked.image_ids()) == ["00000004_002.png"]
  assert list(picked.extra["study_id"]) == ["4_2"] and list(picked.extra["view"]) == ["PA"]
  same(picked.extra["age"], [7.0])


def test_nih_without_the_optional_columns_is_unknown_not_an_error(tmp_path):
  rows = [(r[0], r[1], r[3]) for r in NIH_ROWS[:2]]
  meta = nih_folder(tmp_path, rows, ["Image Index", "Finding Labels", "Patient ID"])
  s = nih.make_source(dict(metadata=meta, images=str(tmp_path)))
  assert list(s.extra["study_id"]) == ["", ""] and list(s.extra["view"]) == ["", ""]
  assert list(s.extra["sex"]) == ["", ""]
  same(s.extra["age"], [NAN, NAN])
  c = card.describe(s)
  assert c["studies"] is None and c["views"] is None and c["sex"] is None and c["age"] is None
  np.testing.assert_array_equal(s.labels()[:, nih.output_names({}).index("Mass")], [1, 0])


def test_an_unreadable_nih_age_names_the_file_image_and_column(tmp_path):
  rows = [NIH_ROWS[0], ("00000009_000.png", "Mass", "0", "9", "fifty", "F", "PA")]
  meta = nih_folder(tmp_path, rows)
  with pytest.raises(ValueError) as e:
    nih.make_source(dict(metadata=meta, images=str(tmp_path)))
  assert str(e.value).startswith(f"{meta}: 00000009_000.png column 'Patient Age' is 'fifty'")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "cell, years",
  [("58", 58.0), ("058Y", 58.0), (" 7 ", 7.0), ("58.0", 58.0), ("", NAN), ("120", 120.0),
   ("121", NAN), ("414Y", NAN)],
)  # fmt: skip
def test_age_cells(cell, years):
  same([nih.age_of(cell, "t")], [years])


@pytest.mark.parametrize("cell", ["-3", "58 years", "nan"])
def test_bad_age_cells(cell):
  with pytest.raises(ValueError, match="not an age in years"):
    nih.age_of(cell, "t")


EXPERT_COLUMNS = [*NIH_COLUMNS, "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass",
                  "Set Id"]  # fmt: skip


def test_nih_expert_labels_carry_the_same_metadata(tmp_path):
  rows = [
    (*NIH_ROWS[0], "NO", "YES", "NO", "NO", "test"),
    (*NIH_ROWS[2], "YES", "NO", "NO", "", "val"),
    (*NIH_ROWS[3], "NO", "NO", "YES", "NO", "test"),
    (*NIH_ROWS[4], "NO", "NO", "NO", "YES", "test"),
  ]
  for row in rows:
    png(tmp_path / row[0])
  meta = table(tmp_path / "google2019_nih-chest-xray-labels.csv.gz", EXPERT_COLUMNS, rows)
  s = nih_expert.make_source(dict(metadata=meta, images=str(tmp_path), set="test"))
  assert list(s.image_ids()) == ["00000001_000.png", "00000003_000.png", "00000004_002.png"]
  np.testing.assert_array_equal(s.labels(), [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
  assert list(s.extra["study_id"]) == ["1_0", "3_0", "4_2"]
  assert list(s.extra["view"]) == ["PA", "AP", "PA"]
  assert list(s.extra["sex"]) == ["M", "", ""]
  same(s.extra["age"], [58.0, NAN, 7.0])


CHEX_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Edema"]
CHEX_ROWS = [
  ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Male", "68", "Frontal",
   "AP", "1.0"),
  ("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", "Male", "68", "Lateral",
   "", "1.0"),
  ("CheXpert-v1.0-small/train/patient00001/study2/view1_frontal.jpg", "Male", "69", "Frontal",
   "PA", "0.0"),
  ("CheXpert-v1.0-small/train/patient00002/study1/view1_lateral.jpg", "Unknown", "", "Lateral",
   "LL", ""),
  ("CheXpert-v1.0-small/train/patient00003/study4/view1_frontal.jpg", "Female", "90", "Frontal",
   "", "-1.0"),
]  # fmt: skip


def chexpert_folder(tmp_path, rows=CHEX_ROWS, missing=()):
  for row in rows:
    if row[0] not in missing:
      png(tmp_path / row[0])
  return table(tmp_path / "CheXpert-v1.0-small" / "train.csv", CHEX_COLUMNS, rows)


def test_chexpert_study_view_sex_and_age_per_record(tmp_path):
  meta = chexpert_folder(tmp_path)
  s = chexpert.make_source(dict(metadata=meta, images=str(tmp_path), findings=["Edema"]))
  assert list(s.extra["study_id"]) == [
    "patient00001/study1",
    "patient00001/study1",
    "patient00001/study2",
    "patient00002/study1",
    "patient00003/study4",
  ]
  assert list(s.extra["view"]) == ["AP", "Lateral", "PA", "LL", "Frontal"]
  assert list(s.extra["sex"]) == ["M", "M", "M", "", "F"]
  same(s.extra["age"], [68.0, 68.0, 69.0, NAN, 90.0])
  same(s.labels()[:, 0], [1.0, 1.0, 0.0, 0.0, NAN])  # blank -> 0, -1 -> ignored (nan)
  c = card.describe(s)
  assert c["images"] == 5 and c["patients"] == 3 and c["studies"] == 4
  assert c["sex"] == {"M": 3, "F": 1, card.UNKNOWN: 1}
  assert c["views"] == {"AP": 1, "Frontal": 1, "LL": 1, "Lateral": 1, "PA": 1}
  # known ages 68, 68, 69, 90: quartiles 68 and 74.25 (linear), median 68.5
  assert c["age"] == dict(n=4, unknown=1, median=68.5, q1=68.0, q3=74.25, min=68.0, max=90.0)


def test_chexpert_extra_follows_frontal_only_and_skipped_files(tmp_path):
  meta = chexpert_folder(tmp_path, missing=(CHEX_ROWS[2][0],))
  s = chexpert.make_source(
    dict(metadata=meta, images=str(tmp_path), findings=["Edema"], frontal_only=True,
         on_error="skip")
  )  # fmt: skip
  assert s.skipped == 1 and list(s.patient_ids()) == ["patient00001", "patient00003"]
  assert list(s.extra["study_id"]) == ["patient00001/study1", "patient00003/study4"]
  assert list(s.extra["view"]) == ["AP", "Frontal"] and list(s.extra["sex"]) == ["M", "F"]
  same(s.extra["age"], [68.0, 90.0])


def test_an_unreadable_chexpert_age_names_the_file_path_and_column(tmp_path):
  rows = [(*CHEX_ROWS[0][:2], "sixty", *CHEX_ROWS[0][3:])]
  meta = chexpert_folder(tmp_path, rows)
  with pytest.raises(ValueError) as e:
    chexpert.make_source(dict(metadata=meta, images=str(tmp_path), findings=["Edema"]))
  assert str(e.value).startswith(f"{meta}: {rows[0][0]} column 'Age' is 'sixty'")


def test_chexpert_reads_a_canonical_finding_from_its_own_column(tmp_path):
  """'Effusion' (the label space's name) reads 'Pleural Effusion'; the output keeps the name the
  config gave, and an uncertain policy keyed by either name applies."""
  columns = ["Path", "Frontal/Lateral", "Pleural Effusion", "Edema"]
  rows = [
    ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Frontal", "1.0", "0.0"),
    ("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", "Frontal", "-1.0", ""),
    ("CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg", "Frontal", "", "1.0"),
  ]
  for row in rows:
    png(tmp_path / row[0])
  meta = table(tmp_path / "CheXpert-v1.0-small" / "train.csv", columns, rows)
  base = dict(metadata=meta, images=str(tmp_path))
  s = chexpert.make_source(dict(base, findings=["Effusion", "Edema"]))
  assert s.findings == ("Effusion", "Edema")
  np.testing.assert_array_equal(s.labels(), [[1.0, 0.0], [NAN, 0.0], [0.0, 1.0]])  # -1: nan
  for key in ("Effusion", "Pleural Effusion"):
    s = chexpert.make_source(dict(base, findings=["Effusion"], uncertain={key: "ones"}))
    same(s.labels()[:, 0], [1.0, 1.0, 0.0])
  theirs = chexpert.make_source(dict(base, findings=["Pleural Effusion"]))
  assert theirs.findings == ("Pleural Effusion",)
  same(theirs.labels()[:, 0], [1.0, NAN, 0.0])
