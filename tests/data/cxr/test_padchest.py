"""PadChest read as distributed: terms mapped onto the canonical findings by exact lists, 'normal',
'exclude', unlabelled and known-bad rows left out and counted, projections, age and sex, the four
image layouts, and bad rows named before any image is read (fixtures/padchest: 6 real rows as the
publisher printed them and 19 synthetic ones; see its README)."""

import csv
import gzip
import logging
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from mdx.data.cxr import padchest
from mdx.data.cxr.findings import CANONICAL, NIH_FINDINGS

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "padchest"
TABLE = padchest.METADATA
NAN = np.nan


def syn(n: int) -> str:
  return f"9{n:038d}_syn{n:03d}.png"


R0 = "20536686640136348236148679891455886468_k6ga29.png"
R1 = "135803415504923515076821959678074435083_fzis7d.png"  # lateral
R2 = "135803415504923515076821959678074435083_fzis7b.png"
R3 = "113855343774216031107737439268243531979_3k951l.png"
R4 = "113855343774216031107737439268243531979_3k951n.png"  # lateral
R5 = "12752243479320242391263_02-082-065.png"  # empty Labels
BAD = "216840111366964012989926673512011083134050913_00-168-009.png"  # torchxrayvision's list

# The positive canonical findings of every image the default views keep, by hand from the terms.
POSITIVE = {
  R0: {"No Finding"},  # ['normal']
  R2: {"Fibrosis", "Infiltration"},  # pulmonary fibrosis, ground glass pattern (+ unmapped terms)
  R3: set(),  # ['chronic changes']
  syn(6): {"Effusion", "Cardiomegaly"},  # [' pleural effusion', 'cardiomegaly ']
  syn(7): {"Consolidation", "Infiltration", "Pneumonia"},  # consolidation, air bronchogram, ...
  syn(8): {"Pneumothorax", "Effusion", "Support Devices"},  # hydropneumothorax, chest drain tube
  syn(9): {"Atelectasis"},  # laminar atelectasis; pericardial effusion, subcutaneous emphysema
  syn(10): {"Nodule"},  # multiple nodules; nipple shadow, pseudonodule
  syn(11): {"Mass", "Hernia", "Emphysema"},  # pulmonary mass, hiatal hernia, emphysema
  syn(12): {"Pleural_Thickening", "Edema"},  # apical pleural thickening, pulmonary edema; plaques
  syn(13): {"Fracture", "Support Devices"},  # rib fracture, pacemaker; tuberculosis sequelae
  syn(14): {"Tuberculosis", "Infiltration"},  # tuberculosis, 'reticular interstitial pattern '
  syn(19): set(),  # ['unchanged']
  syn(20): {"No Finding"},  # ['normal', 'suboptimal study']
  syn(21): set(),  # ['pleural efusion']: unknown term
  syn(22): {"Cardiomegaly"},  # ['normal', 'cardiomegaly']: not normal
  syn(24): {"Fibrosis"},  # pulmonary fibrosis (twice), post radiotherapy changes
}
KEPT = list(POSITIVE)
AGE = {R0: 84.0, R2: 86.0, R3: 90.0, syn(7): 71.0, syn(19): NAN}  # the rest: 2016 - 1950 = 66
SEX = {R0: "F", R2: "M", R3: "F", syn(7): "F", syn(19): "", syn(24): ""}  # the rest: M


def expected(image_ids, findings):
  return np.array(
    [[float(f in POSITIVE[i]) for f in findings] for i in image_ids], np.float32
  ).reshape(len(image_ids), len(findings))


def where(root: pathlib.Path, image_id: str) -> pathlib.Path:
  """Where the test puts each image: all four layouts the source reads."""
  if image_id in (R0, R1, R2, R3, R4, R5):
    return root / "images" / "0" / image_id  # images/<ImageDir>/
  n = int(image_id[-7:-4])
  if n <= 18:
    return root / "3" / image_id  # <ImageDir>/ (a zip unpacked in place)
  if n <= 20:
    return root / "images" / image_id  # images/, flat
  return root / image_id  # the root, flat


@pytest.fixture
def root(tmp_path):
  """The fixture table in a PadChest folder with a small 16-bit PNG for every row's image."""
  folder = tmp_path / "padchest"
  folder.mkdir()
  shutil.copy(FIXTURE / TABLE, folder / TABLE)
  with open(FIXTURE / TABLE, newline="") as f:
    ids = [row["ImageID"] for row in csv.DictReader(f)]
  for k, image_id in enumerate(ids):
    path = where(folder, image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((9, 11), 1000 * k + 7, np.uint16)).save(path)
  return folder


def build(root, **fields):
  """The source of the fixture folder; syn 21's misspelt term 'pleural efusion' is there on
  purpose, so these tests ignore unknown terms unless they say otherwise (the default refuses
  them: test_an_unknown_term_is_one_line_naming_file_row_image_term_and_fix)."""
  return padchest.make_source({"root": str(root), "unknown_terms": "ignore", **fields})


def edit(root, image_id, **cells):
  path = root / TABLE
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    columns, rows = reader.fieldnames, list(reader)
  for row in rows:
    if row["ImageID"] == image_id:
      row.update(cells)
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def test_output_names_default_to_every_canonical_finding_padchest_labels():
  assert padchest.output_names({}) == (
    *NIH_FINDINGS,  # all 14
    "Fracture",
    "Support Devices",
    "Tuberculosis",
    "No Finding",
  )
  with pytest.raises(ValueError, match="not canonical finding names") as info:
    padchest.output_names({"findings": ["pleural effusion"]})
  assert "\n" not in str(info.value) and "'Pleural_Thickening'" in str(info.value)


def test_the_mapping_holds_exact_terms_onto_canonical_names_only():
  canonical = set(CANONICAL)
  assert {v for v in padchest.TO_CANONICAL.values() if v} <= canonical
  assert set(padchest.ALSO) <= set(padchest.TO_CANONICAL)
  assert {c for cs in padchest.ALSO.values() for c in cs} <= canonical
  assert all(t == t.strip() and t for t in padchest.TO_CANONICAL)
  assert len(padchest.TO_CANONICAL) == 194  # the 193 terms of the table and 'hemothorax'
  # look-alikes with another definition map to nothing
  for term in (
    "pericardial effusion",
    "subcutaneous emphysema",
    "pleural plaques",
    "pseudonodule",
    "tuberculosis sequelae",
    "mediastinal enlargement",
    "costophrenic angle blunting",
  ):
    assert padchest.TO_CANONICAL[term] is None, term
  assert padchest.TO_CANONICAL["pleural effusion"] == "Effusion"
  assert padchest.TO_CANONICAL["hiatal hernia"] == "Hernia"
  assert padchest.TO_CANONICAL["pulmonary fibrosis"] == "Fibrosis"
  assert set(padchest.FACTS) == {"modality", "label_source", "label_values"}
  assert len(padchest.KNOWN_BAD) == 21


def test_parse_terms_strips_stray_spaces_and_refuses_what_is_not_a_list():
  assert padchest.parse_terms("[' pleural effusion', '', 'cardiomegaly ']", "x") == [
    "pleural effusion",
    "cardiomegaly",
  ]
  assert padchest.parse_terms("", "x") == [] and padchest.parse_terms("[]", "x") == []
  for cell in ("pleural effusion", "['a', 1]", "['a'", "__import__('os')"):
    with pytest.raises(ValueError, match="not a list of terms"):
      padchest.parse_terms(cell, "here")


def test_a_term_the_taxonomy_files_under_two_findings_makes_both_positive():
  findings = ("Effusion", "Infiltration", "Consolidation", "Pneumothorax")
  row = lambda terms: padchest.label_row(terms, findings)[0].tolist()  # noqa: E731
  assert row(["consolidation"]) == [0.0, 1.0, 1.0, 0.0]
  assert row(["air bronchogram"]) == [0.0, 1.0, 1.0, 0.0]
  assert row(["alveolar pattern"]) == [0.0, 1.0, 0.0, 0.0]  # a parent does not make its child
  assert row(["hydropneumothorax"]) == [1.0, 0.0, 0.0, 1.0]


def test_normal_is_no_finding_only_beside_terms_that_say_nothing_abnormal():
  findings = ("Cardiomegaly", "No Finding", "Lung Opacity")
  row = lambda terms: padchest.label_row(terms, findings)[0].tolist()  # noqa: E731
  assert row(["normal"])[:2] == [0.0, 1.0]
  assert row(["normal", "unchanged", "suboptimal study"])[:2] == [0.0, 1.0]
  assert row(["normal", "cardiomegaly"])[:2] == [1.0, 0.0]
  assert row(["normal", "kyphosis"])[:2] == [0.0, 0.0]  # kyphosis is abnormal, just not canonical
  assert row(["chronic changes"])[:2] == [0.0, 0.0]
  assert np.isnan(row(["normal"])[2])  # PadChest has no term for Lung Opacity
  assert padchest.label_row(["cardiomegalia"], findings)[1] == ["cardiomegalia"]


def test_labels_of_every_kept_image_by_hand(root):
  source = build(root)
  assert list(source.image_ids()) == KEPT
  np.testing.assert_array_equal(source.labels(), expected(KEPT, source.findings))
  assert source[0]["image"].dtype == np.uint16 and source[0]["image"].shape == (9, 11, 1)
  assert source[0]["image"][0, 0, 0] == 7  # R0 is the first row of the table: 1000 * 0 + 7


def test_extra_holds_study_projection_sex_age_and_label_method(root):
  source = build(root)
  extra = source.extra
  assert list(source.patient_ids())[:3] == [
    "839860488694292331637988235681460987",
    "313572750430997347502932654319389875966",
    "50783093527901818115346441867348318648",
  ]
  assert list(extra["study_id"])[:2] == [
    "20536686640136348236148679891455886468",
    "135803415504923515076821959678074435083",
  ]
  assert list(extra["view"])[:5] == ["PA", "PA", "PA", "AP", "AP_horizontal"]
  np.testing.assert_array_equal(extra["age"], [AGE.get(i, 66.0) for i in KEPT])
  assert list(extra["sex"]) == [SEX.get(i, "M") for i in KEPT]
  assert list(extra["label_method"])[:5] == ["Physician"] * 4 + ["RNN_model"]


def test_exclude_unlabelled_and_known_bad_rows_are_left_out_counted_and_logged(root, caplog):
  with caplog.at_level(logging.INFO):
    source = build(root)
  ids = set(source.image_ids())
  assert not ids & {syn(15), syn(16), R5, BAD}
  assert source.excluded == {
    "views": 4,  # R1, R4 and syn 23 (L), syn 17 (COSTAL)
    "exclude": 1,
    "unlabelled": 2,  # R5 (empty cell), syn 16 ('[]')
    "known_bad": 1,
    "missing_file": 0,
  }
  assert source.skipped == 4
  said = " ".join(r.getMessage() for r in caplog.records)
  assert "left out 1 images marked 'exclude', 2 without labels" in said
  assert f"1 known to be missing or unreadable ({BAD}: broken PNG file" in said
  assert "left out 4 images of others" in said
  assert "1 images say 'normal' beside abnormal terms" in said


def test_an_unknown_term_is_one_line_naming_file_row_image_term_and_fix(root, monkeypatch):
  from mdx.data.image import images

  def never(*args, **kwargs):
    raise AssertionError("an image was read")

  monkeypatch.setattr(images, "read_image", never)
  for config in ({"root": str(root)}, {"root": str(root), "unknown_terms": "error"}):
    with pytest.raises(ValueError) as info:
      padchest.make_source(config)
    message = str(info.value)
    assert message.startswith(f"{root / TABLE} row 23 (ImageID {syn(21)}): column 'Labels' has ")
    assert "the term 'pleural efusion', which is not in padchest.TO_CANONICAL" in message
    assert "config.data.unknown_terms='ignore'" in message and "\n" not in message


def test_unknown_terms_ignore_counts_them_for_no_finding_and_logs_them(root, caplog):
  with caplog.at_level(logging.WARNING):
    source = build(root, unknown_terms="ignore")
  assert source.unknown_terms == {"pleural efusion": 1}
  assert any("{'pleural efusion': 1}" in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(
    source.labels()[KEPT.index(syn(21))], expected([syn(21)], source.findings)[0]
  )


def test_unknown_terms_outside_the_two_policies_is_refused(root):
  with pytest.raises(
    ValueError, match=r"config.data.unknown_terms='warn'; choose one of \['error', 'ignore'\]"
  ):
    build(root, unknown_terms="warn")


def test_a_duplicated_image_id_names_both_rows(root):
  path = root / TABLE
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  with open(path, "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows([*rows, rows[7]])
  with pytest.raises(ValueError) as info:
    build(root)
  image_id = rows[7][rows[0].index("ImageID")]
  message = str(info.value)
  assert message.startswith(f"{path} row {len(rows) + 1} (ImageID {image_id}): the image is listed")
  assert "twice (row 8)" in message and "\n" not in message


def test_an_empty_table_or_image_id_is_named(root):
  path = root / TABLE
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  with open(path, "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows(rows[:1])
  with pytest.raises(ValueError, match=rf"^{path}: no data rows; give PadChest's"):
    build(root)
  edited = [r[:] for r in rows]
  edited[4][rows[0].index("ImageID")] = " "
  with open(path, "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows(edited)
  with pytest.raises(ValueError, match=r"row 5 \(ImageID  \): column 'ImageID' is empty"):
    build(root)


def test_views_choose_the_projections(root):
  lateral = build(root, views=["L"])
  assert list(lateral.image_ids()) == [R1, R4, syn(23)]
  positive = {R1: {"Fibrosis", "Infiltration"}, R4: set(), syn(23): {"Pneumothorax"}}
  want = [[float(f in positive[i]) for f in lateral.findings] for i in lateral.image_ids()]
  np.testing.assert_array_equal(lateral.labels(), want)
  assert lateral.excluded["views"] == 22 and lateral.skipped == 0
  assert list(build(root, views="L").image_ids()) == [R1, R4, syn(23)]  # one name as a string


def test_a_canonical_finding_padchest_does_not_label_is_unknown_and_logged(root, caplog):
  with caplog.at_level(logging.INFO):
    source = build(root, findings=["Lung Opacity", "Effusion", "No Finding"])
  labels = source.labels()
  assert np.isnan(labels[:, 0]).all()
  np.testing.assert_array_equal(labels[:, 1:], expected(KEPT, ["Effusion", "No Finding"]))
  assert any("labels no ['Lung Opacity']" in r.getMessage() for r in caplog.records)


def test_the_table_is_read_from_csv_gz_or_a_given_path(root, tmp_path):
  plain = root / TABLE
  with open(plain, "rb") as f, gzip.open(f"{plain}.gz", "wb") as g:
    g.write(f.read())
  elsewhere = tmp_path / "labels.csv"
  shutil.move(plain, elsewhere)
  assert list(build(root).image_ids()) == KEPT  # root/<table>.csv.gz
  assert list(build(root, metadata=str(elsewhere)).image_ids()) == KEPT
  with pytest.raises(FileNotFoundError, match="does not exist"):
    build(tmp_path / "nowhere")


def test_missing_images_raise_with_the_expected_path_or_are_skipped_and_counted(root):
  where(root, syn(8)).unlink()
  with pytest.raises(FileNotFoundError, match="1 of 17 image files are missing") as info:
    build(root)
  assert str(root / "images" / "3" / syn(8)) in str(info.value)  # images/<ImageDir>/<ImageID>
  source = build(root, on_error="skip")
  assert syn(8) not in set(source.image_ids()) and len(source) == 16
  assert source.excluded["missing_file"] == 1 and source.skipped == 5
  np.testing.assert_array_equal(source.labels(), expected(source.image_ids(), source.findings))


@pytest.mark.parametrize(
  "cells, match",
  [
    ({"Labels": "pleural effusion"}, r"column 'Labels' is 'pleural effusion', not a list"),
    ({"PatientBirth": "19x0"}, r"column 'PatientBirth' is '19x0', not a year"),
    ({"StudyDate_DICOM": "2016-01-01"}, r"column 'StudyDate_DICOM' is '2016-01-01', not a date"),
  ],
)
def test_a_bad_row_is_one_line_naming_file_row_image_and_column(root, cells, match):
  edit(root, syn(11), **cells)
  with pytest.raises(ValueError, match=match) as info:
    build(root)
  message = str(info.value)
  assert f"{TABLE} row 13 (ImageID {syn(11)})" in message and "\n" not in message


def test_a_missing_column_is_named(root):
  path = root / TABLE
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  labels = rows[0].index("Labels")
  with open(path, "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows([r[:labels] + r[labels + 1 :] for r in rows])
  with pytest.raises(ValueError, match=r"missing column\(s\) \['Labels'\]"):
    build(root)
