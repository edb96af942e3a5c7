"""MIMIC-CXR-JPG read as distributed: study labels joined to images, the uncertain and blank
policies, the labelers, the canonical mapping, views, the official split, and bad tables named
before any image is read (fixtures/mimic: synthetic rows in the publisher's layout; its README)."""

import csv
import gzip
import logging
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from mdx.data.cxr import chexpert, mimic
from mdx.data.cxr.findings import CANONICAL

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "mimic"
NAN = np.nan


def dicom(n: int) -> str:
  return f"0c{n:06x}-5e1f2a3b-9d8c7b6a-0f1e2d3c-4b5a6978"


# The study labels of the fixture's CheXpert table, by hand: cells 1.0 / 0.0 / -1.0 (U) / blank.
U, B = "U", "B"
STUDY_CELLS = {
  "50000001": {"Atelectasis": 1, "Cardiomegaly": U, "Effusion": 1},
  "50000002": {"No Finding": 1, "Support Devices": 1},
  "50000003": {"Consolidation": 0, "Edema": U, "Lung Opacity": 1, "Pneumonia": U},
  "50000004": {"Fracture": 0, "Lung Lesion": U, "Pneumothorax": 1},
  "50000005": {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 1, "Pleural Other": 1},
}
# dicom number -> (subject, study, view, official split)
IMAGES = {
  1: ("10000001", "50000001", "PA", "train"),
  2: ("10000001", "50000001", "LATERAL", "train"),
  3: ("10000001", "50000002", "AP", "train"),
  4: ("10000002", "50000003", "PA", "validate"),
  5: ("10000002", "50000003", "LL", "validate"),
  6: ("11000003", "50000004", "", "test"),
  7: ("19000004", "50000005", "PA", "test"),
  8: ("12000005", "50000006", "PA", "train"),  # its study has no label row
}
LABELLED = [1, 2, 3, 4, 5, 6, 7]


def expected(study, findings, uncertain=NAN, blank=0.0):
  out = []
  for f in findings:
    cell = STUDY_CELLS[study].get(f, B)
    out.append(uncertain if cell == U else blank if cell == B else float(cell))
  return out


def image_path(root, n):
  subject, study, _, _ = IMAGES[n]
  return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom(n)}.jpg"


@pytest.fixture
def root(tmp_path):
  """The fixture tables in a MIMIC-CXR-JPG folder with a small JPEG for every image."""
  folder = tmp_path / "mimic-cxr-jpg"
  shutil.copytree(FIXTURE, folder)
  for n in IMAGES:
    path = image_path(folder, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10), 20 * n, np.uint8)).save(path)
  return folder


def build(root, **fields):
  return mimic.make_source({"root": str(root), **fields})


def rewrite(path, change):
  """Rewrites a table through change(rows) -> rows (header row included)."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  rows = change(rows)
  with open(path, "w", newline="") as f:
    csv.writer(f, lineterminator="\n").writerows(rows)


def test_output_names_default_to_every_canonical_finding_mimic_labels_in_canonical_order():
  assert mimic.output_names({}) == (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Lung Opacity",
    "Lung Lesion",
    "Fracture",
    "Enlarged Cardiomediastinum",
    "Support Devices",
    "Pleural Other",
    "No Finding",
  )
  assert mimic.output_names({"findings": ["Edema", "Effusion"]}) == ("Edema", "Effusion")


def test_a_finding_name_outside_the_canonical_list_is_one_line_listing_them():
  with pytest.raises(ValueError, match="not canonical finding names") as info:
    mimic.output_names({"findings": ["Pleural Effusion"]})
  message = str(info.value)
  assert "\n" not in message and "'Effusion'" in message and "'Tuberculosis'" in message


def test_the_mapping_names_every_column_of_the_table_and_only_canonical_findings():
  with open(FIXTURE / "mimic-cxr-2.0.0-chexpert.csv") as f:
    columns = next(csv.reader(f))[2:]
  assert sorted(mimic.TO_CANONICAL) == sorted(columns) == sorted(chexpert.OBSERVATIONS)
  assert set(mimic.TO_CANONICAL.values()) <= set(CANONICAL)
  assert mimic.TO_CANONICAL["Pleural Effusion"] == "Effusion"
  assert set(mimic.FACTS) == {"modality", "label_source", "label_values"}


def test_every_image_of_a_study_carries_the_study_labels(root):
  source = build(root)
  findings = mimic.output_names({})
  assert source.findings == findings and len(source) == len(LABELLED)
  assert list(source.image_ids()) == [dicom(n) for n in LABELLED]
  assert list(source.patient_ids()) == [IMAGES[n][0] for n in LABELLED]
  want = np.array([expected(IMAGES[n][1], findings) for n in LABELLED], np.float32)
  np.testing.assert_array_equal(source.labels(), want)  # nan == nan here
  # the two images of study 50000001 hold the same row: Atelectasis and Effusion, uncertain
  # Cardiomegaly unknown, No Finding blank -> 0
  np.testing.assert_array_equal(source.labels()[0], source.labels()[1])
  assert list(source.paths()) == [str(image_path(root, n)) for n in LABELLED]
  assert source[6]["image"].shape == (12, 10, 1) and source[6]["patient_id"] == "19000004"


def test_extra_holds_study_view_split_and_unknown_sex_and_age(root):
  source = build(root)
  extra = source.extra
  assert list(extra["study_id"]) == [IMAGES[n][1] for n in LABELLED]
  assert list(extra["view"]) == [IMAGES[n][2] for n in LABELLED]
  assert list(extra["official_split"]) == [IMAGES[n][3] for n in LABELLED]
  assert list(extra["sex"]) == [""] * 7 and np.isnan(extra["age"]).all()
  split = mimic.official_split(source)
  assert [list(split[s]) for s in ("train", "validate", "test")] == [[0, 1, 2], [3, 4], [5, 6]]
  picked = source.select([3, 6])
  assert list(picked.extra["official_split"]) == ["validate", "test"]


def test_a_study_without_a_label_row_is_left_out_counted_and_logged(root, caplog):
  with caplog.at_level(logging.WARNING):
    source = build(root)
  assert dicom(8) not in set(source.image_ids())
  assert source.skipped == 1 and source.excluded == {"views": 0, "unlabelled": 1, "missing_file": 0}
  assert any("1 images whose study has no row" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
  "uncertain, want",
  [
    ("ones", 1.0),
    ("zeros", 0.0),
    ("ignore", NAN),
  ],
)
def test_uncertain_policy_for_every_minus_one(root, uncertain, want):
  source = build(root, uncertain=uncertain)
  findings = source.findings
  rows = np.array([expected(IMAGES[n][1], findings, uncertain=want) for n in LABELLED], np.float32)
  np.testing.assert_array_equal(source.labels(), rows)


def test_uncertain_policy_per_finding_by_canonical_or_mimic_name(root):
  findings = ["Cardiomegaly", "Effusion", "Edema", "Pneumonia"]
  by_name = {"Cardiomegaly": "ones", "Pleural Effusion": "zeros", "Edema": "ones"}
  source = build(root, findings=findings, uncertain=by_name)
  labels = source.labels()
  assert labels[0].tolist() == [1.0, 1.0, 0.0, 0.0]  # Cardiomegaly U -> 1
  np.testing.assert_array_equal(labels[3], [0.0, 0.0, 1.0, NAN])  # Edema U -> 1, Pneumonia U -> nan
  with pytest.raises(ValueError, match="'Lung Lesion', which is not among the findings"):
    build(root, findings=findings, uncertain={"Lung Lesion": "ones"})
  with pytest.raises(ValueError, match="config.data.uncertain='maybe'"):
    build(root, findings=findings, uncertain="maybe")


def test_blank_policy_ignore_leaves_unmentioned_unknown(root):
  source = build(root, blank="ignore", findings=["Atelectasis", "No Finding", "Support Devices"])
  np.testing.assert_array_equal(
    source.labels()[:3], [[1.0, NAN, NAN], [1.0, NAN, NAN], [NAN, 1.0, 1.0]]
  )


def test_negbio_labeler_reads_its_own_table(root):
  findings = ["Cardiomegaly", "Edema"]
  chex = build(root, findings=findings)
  neg = build(root, findings=findings, labeler="negbio")
  np.testing.assert_array_equal(chex.labels()[0], [NAN, 0.0])
  np.testing.assert_array_equal(neg.labels()[0], [1.0, 0.0])
  np.testing.assert_array_equal(neg.labels()[3], [0.0, 1.0])
  with pytest.raises(ValueError, match="config.data.labeler='chexbert'"):
    build(root, labeler="chexbert")


def test_a_canonical_finding_mimic_does_not_label_is_unknown_and_logged(root, caplog):
  with caplog.at_level(logging.INFO):
    source = build(root, findings=["Infiltration", "Effusion", "Tuberculosis"])
  labels = source.labels()
  assert np.isnan(labels[:, 0]).all() and np.isnan(labels[:, 2]).all()
  assert labels[:, 1].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
  said = " ".join(r.getMessage() for r in caplog.records)
  assert "labels no ['Infiltration', 'Tuberculosis']" in said


def test_views_keep_only_the_named_view_positions(root, caplog):
  with caplog.at_level(logging.INFO):
    source = build(root, views=["PA", "AP"])
  assert list(source.image_ids()) == [dicom(n) for n in (1, 3, 4, 7)]
  # LATERAL, LL and the empty ViewPosition left out; p12's PA image passes the views and is then
  # left out as unlabelled (counted once, in skipped)
  assert source.excluded == {"views": 3, "unlabelled": 1, "missing_file": 0}
  assert source.skipped == 1
  assert any("left out 3 images of other views" in r.getMessage() for r in caplog.records)
  lateral = build(root, views=["LATERAL", "LL"])
  assert list(lateral.extra["view"]) == ["LATERAL", "LL"]


def test_gzipped_tables_are_read_as_distributed(root):
  for name in ("chexpert", "metadata", "split"):
    plain = root / f"mimic-cxr-2.0.0-{name}.csv"
    with open(plain, "rb") as f, gzip.open(f"{plain}.gz", "wb") as g:
      g.write(f.read())
    plain.unlink()
  source = build(root)
  assert len(source) == 7 and source.labels()[0, 0] == 1.0


def test_missing_image_files_raise_or_are_skipped_and_counted(root):
  image_path(root, 4).unlink()
  with pytest.raises(FileNotFoundError, match="1 of 7 image files are missing"):
    build(root)
  source = build(root, on_error="skip")
  assert dicom(4) not in set(source.image_ids()) and len(source) == 6
  assert source.skipped == 2 and source.excluded["missing_file"] == 1
  studies = ["50000001", "50000001", "50000002", "50000003", "50000004", "50000005"]
  assert list(source.extra["study_id"]) == studies


def test_a_missing_table_or_root_names_the_file_and_the_fix(root, tmp_path):
  (root / "mimic-cxr-2.0.0-split.csv").unlink()
  with pytest.raises(FileNotFoundError, match=r"mimic-cxr-2.0.0-split.csv\(.gz\) is not in"):
    build(root)
  with pytest.raises(ValueError, match="config.data.root must be set"):
    mimic.make_source({})
  with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-chexpert.csv"):
    build(tmp_path / "nowhere")


def test_a_bad_label_cell_names_the_file_row_and_column(root):
  table = root / "mimic-cxr-2.0.0-chexpert.csv"

  def bad(rows):
    rows[3][rows[0].index("Edema")] = "2.0"
    return rows

  rewrite(table, bad)
  with pytest.raises(ValueError, match=r"chexpert.csv: row 4 \(subject 10000002 study 50000003\)"):
    build(root, findings=["Edema"])
  assert len(build(root, findings=["Atelectasis"])) == 7  # only the columns asked for are read


@pytest.mark.parametrize(
  "table, change, match",
  [
    (
      "split",
      lambda rows: [*rows[:5], [*rows[5][:3], "val"], *rows[6:]],
      r"split.csv row 6: column 'split' is 'val'",
    ),
    (
      "split",
      lambda rows: rows[:-1],
      r"metadata.csv row 9: image 0c000008-\S+ has no row in .*split.csv",
    ),
    (
      "metadata",
      lambda rows: [*rows[:2], ["x" if i == 1 else c for i, c in enumerate(rows[2])], *rows[3:]],
      r"metadata.csv row 3: column 'subject_id' is 'x', not a number",
    ),
    (
      "metadata",
      lambda rows: [*rows, rows[1]],
      r"metadata.csv row 10: image 0c000001-\S+ is listed twice \(row 2\)",
    ),
    (
      "metadata",
      lambda rows: [[c for i, c in enumerate(r) if i != 4] for r in rows],
      r"metadata.csv: missing column\(s\) \['ViewPosition'\]",
    ),
    (
      "chexpert",
      lambda rows: [*rows, rows[2]],
      r"chexpert.csv row 7: study 50000002 already has a label row \(row 3\)",
    ),
    (
      "chexpert",
      lambda rows: [*rows[:5], ["11000009", *rows[5][1:]], *rows[6:]],
      r"metadata.csv row 8: study 50000005 belongs to subject 19000004 here but to subject "
      "11000009",
    ),
    (
      "metadata",  # study 50000004's one image (dicom 6, row 7) gone: a study without images
      lambda rows: [*rows[:6], *rows[7:]],
      r"chexpert.csv row 5: study 50000004 \(subject 11000003\) has no image in \S+metadata.csv "
      r"\(1 labelled studies have none\); use the label and metadata tables of one",
    ),
    (
      "split",
      lambda rows: [*rows, rows[3]],
      r"split.csv row 10: image 0c000003-\S+ already has a split row \(row 4\)",
    ),
    ("chexpert", lambda rows: rows[:1], r"chexpert.csv: no data rows"),
    ("metadata", lambda rows: rows[:1], r"metadata.csv: no data rows"),
    ("split", lambda rows: rows[:1], r"split.csv: no data rows"),
  ],
)
def test_bad_tables_are_one_line_naming_file_row_and_field(root, table, change, match):
  rewrite(root / f"mimic-cxr-2.0.0-{table}.csv", change)
  with pytest.raises(ValueError, match=match) as info:
    build(root)
  assert "\n" not in str(info.value)


def test_a_study_without_images_in_the_views_kept_is_not_an_error(root):
  # Study 50000001 keeps only its LATERAL image under views=['LATERAL']: it has images, of a view
  # the config leaves out, which is a filter, not a broken table.
  assert list(build(root, views=["LATERAL"]).image_ids()) == [dicom(2)]


def test_bad_tables_fail_before_any_image_is_read(root, monkeypatch):
  from mdx.data.image import images

  def never(*args, **kwargs):
    raise AssertionError("an image was read")

  monkeypatch.setattr(images, "read_image", never)
  rewrite(root / "mimic-cxr-2.0.0-split.csv", lambda rows: rows[:-1])
  with pytest.raises(ValueError, match="has no row in"):
    build(root)
