"""OpenI read as NLM distributes it: <major> MeSH terms mapped by heading (or heading/qualifier)
onto the canonical findings, a report's labels on each of its images, reports without images or
indexing left out and counted, views from a view table, and bad input named before any image is
read (fixtures/openi: 6 report XMLs in the published structure; see its README)."""

import logging
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from mdx.data.cxr import findings as F
from mdx.data.cxr import openi

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "openi"
NAN = np.nan

IMAGES = [  # every image of the kept reports, in file order (1.xml, 2.xml, 3.xml, 6.xml)
  "CXR1_1_IM-0001-3001",
  "CXR1_1_IM-0001-4001",
  "CXR2_IM-0652-1001",
  "CXR2_IM-0652-2001",
  "CXR3_IM-1384-1001",
  "CXR6_IM-2100-1001",
]
REPORT = ["CXR1", "CXR1", "CXR2", "CXR2", "CXR3", "CXR6"]

# The positive canonical findings of each kept report, by hand from its <major> terms.
POSITIVE = {
  "CXR1": {"No Finding"},  # normal
  # Cardiomegaly/borderline, Pulmonary Atelectasis, Opacity/lung (the minor Pleural Effusion is
  # not read)
  "CXR2": {"Cardiomegaly", "Atelectasis", "Lung Opacity"},
  # Thickening/pleura, Cardiac Shadow/enlarged, Hydropneumothorax (+ Effusion); not
  # Thickening/bronchovascular, Density/thorax, Calcified Granuloma
  "CXR3": {"Pleural_Thickening", "Cardiomegaly", "Pneumothorax", "Effusion"},
  # Catheters, Indwelling; Fractures, Bone; Hernia, Hiatal; not Subcutaneous Emphysema
  "CXR6": {"Support Devices", "Fracture", "Hernia"},
}
LABELLED = (
  *F.NIH_FINDINGS,
  "Lung Opacity",
  "Fracture",
  "Support Devices",
  "Tuberculosis",
  "No Finding",
)


def expected(findings):
  return np.array(
    [[(f in POSITIVE[r]) * 1.0 if f in LABELLED else NAN for f in findings] for r in REPORT],
    np.float32,
  )


def write_png(path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((8, 8), 128, np.uint8)).save(path)


@pytest.fixture
def root(tmp_path):
  """The fixture reports with the PNGs of NLMCXR_png.tgz unpacked flat beside them (4.xml's image
  too: it is left out for its indexing, not for its file)."""
  shutil.copytree(FIXTURE, tmp_path / "openi")
  for image_id in [*IMAGES, "CXR4_IM-2050-1001"]:
    write_png(tmp_path / "openi" / f"{image_id}.png")
  return tmp_path / "openi"


def test_labels_per_image_from_the_report_terms(root):
  source = openi.make_source({"root": str(root)})
  assert source.findings == openi.DEFAULT_FINDINGS == tuple(f for f in F.CANONICAL if f in LABELLED)
  assert list(source.image_ids()) == IMAGES
  np.testing.assert_array_equal(source.labels(), expected(source.findings))
  assert list(source.patient_ids()) == REPORT  # no patient id published: the report's
  assert list(source.extra["study_id"]) == REPORT
  assert list(source.extra["report"]) == ["1.xml", "1.xml", "2.xml", "2.xml", "3.xml", "6.xml"]
  assert list(source.extra["view"]) == [""] * 6 and list(source.extra["sex"]) == [""] * 6
  assert np.isnan(source.extra["age"]).all()
  assert [pathlib.Path(p).name for p in source.paths()] == [i + ".png" for i in IMAGES]
  assert source.excluded == {"no_images": 1, "not_indexed": 1, "views": 0, "missing_file": 0}
  assert source.skipped == 2 and source.unknown_terms == {}


def test_unlabelled_findings_are_nan(root):
  source = openi.make_source({"root": str(root), "findings": ["Lung Lesion", "Effusion"]})
  np.testing.assert_array_equal(
    source.labels(), [[NAN, 0], [NAN, 0], [NAN, 0], [NAN, 0], [NAN, 1], [NAN, 0]]
  )
  assert openi.output_names({"findings": ["Hernia"]}) == ("Hernia",)


def test_table_key_and_label_row():
  assert openi.table_key("Thickening/pleura/apex/right") == "Thickening/pleura"
  assert openi.table_key("Thickening/bronchovascular") == "Thickening"
  assert openi.table_key("Opacity/lung/base/left/mild") == "Opacity"
  assert openi.table_key("Hernia, Hiatal") == "Hernia, Hiatal"
  findings = ("Effusion", "Pneumothorax", "No Finding", "Enlarged Cardiomediastinum")
  row, unknown = openi.label_row(["Hemopneumothorax/left", "Pleural Efusion/right"], findings)
  np.testing.assert_array_equal(row, [1, 1, 0, NAN])
  assert unknown == ["Pleural Efusion/right"]
  row, _ = openi.label_row(["normal", "Cardiomegaly"], findings)  # not normal beside a finding
  assert row[2] == 0


def test_every_table_name_maps_onto_canonical_findings():
  assert {c for c in openi.TO_CANONICAL.values() if c} <= set(F.CANONICAL)
  assert {c for cs in openi.ALSO.values() for c in cs} <= set(F.CANONICAL)
  assert set(openi.ALSO) <= set(openi.TO_CANONICAL)


def test_views_from_the_view_table(root):
  config = {"root": str(root), "view_table": str(root / "views.csv")}
  source = openi.make_source(config)
  assert list(source.extra["view"]) == ["PA", "LL", "AP", "", "PA", "LATERAL"]
  source = openi.make_source({**config, "views": ["PA", "AP"]})
  assert list(source.image_ids()) == [IMAGES[0], IMAGES[2], IMAGES[4]]
  assert source.excluded["views"] == 3 and source.skipped == 2
  np.testing.assert_array_equal(source.labels(), expected(source.findings)[[0, 2, 4]])
  with pytest.raises(ValueError, match="config.data.views needs config.data.view_table"):
    openi.make_source({"root": str(root), "views": ["PA"]})


def test_left_out_reports_are_logged(root, caplog):
  with caplog.at_level(logging.WARNING):
    openi.make_source({"root": str(root)})
  said = " ".join(r.getMessage() for r in caplog.records)
  assert "left out 1 reports without images and 1 not indexed" in said


def test_images_in_a_png_folder_and_missing_images(root):
  (root / "NLMCXR_png").mkdir()
  shutil.move(root / f"{IMAGES[1]}.png", root / "NLMCXR_png" / f"{IMAGES[1]}.png")
  source = openi.make_source({"root": str(root)})
  assert source.paths()[1] == str(root / "NLMCXR_png" / f"{IMAGES[1]}.png")
  (root / "NLMCXR_png" / f"{IMAGES[1]}.png").unlink()
  with pytest.raises(FileNotFoundError, match="1 of 6 image files are missing"):
    openi.make_source({"root": str(root)})
  source = openi.make_source({"root": str(root), "on_error": "skip"})
  assert list(source.image_ids()) == IMAGES[:1] + IMAGES[2:]
  assert source.excluded["missing_file"] == 1 and source.skipped == 3
  source = openi.make_source({"root": str(root), "on_error": "unchecked"})
  assert len(source) == 6


def test_unknown_heading_is_an_error_or_counted(root, caplog):
  report = root / "ecgen-radiology" / "6.xml"
  report.write_text(report.read_text().replace("Hernia, Hiatal", "Pleural Efusion/right"))
  with pytest.raises(ValueError, match=r"6\.xml: the MeSH term 'Pleural Efusion/right'"):
    openi.make_source({"root": str(root)})
  with caplog.at_level(logging.WARNING):
    source = openi.make_source({"root": str(root), "unknown_terms": "ignore"})
  assert source.unknown_terms == {"Pleural Efusion": 1}
  assert source.labels()[5, source.findings.index("Hernia")] == 0
  assert "'Pleural Efusion': 1" in " ".join(r.getMessage() for r in caplog.records)
  with pytest.raises(ValueError, match="unknown_terms='warn'"):
    openi.make_source({"root": str(root), "unknown_terms": "warn"})


@pytest.mark.parametrize(
  ("edit", "message"),
  [
    (lambda t: t.replace("</eCitation>", ""), r"2\.xml: not well-formed XML"),
    (lambda t: t.replace('<uId id="CXR2"/>', ""), r"2\.xml: no <uId"),
    (lambda t: t.replace('<uId id="CXR2"/>', '<uId id="CXR1"/>'), r"2\.xml: report CXR1 is also"),
    (
      lambda t: t.replace('"CXR2_IM-0652-2001"', '"CXR1_1_IM-0001-3001"'),
      r"2\.xml: image CXR1_1_IM-0001-3001 is also in .*1\.xml",
    ),
  ],
)
def test_bad_reports_are_named(root, edit, message):
  report = root / "ecgen-radiology" / "2.xml"
  report.write_text(edit(report.read_text()))
  with pytest.raises(ValueError, match=message):
    openi.make_source({"root": str(root)})


def test_bad_layout_and_config(tmp_path, root):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    openi.make_source({"root": str(tmp_path / "none")})
  with pytest.raises(FileNotFoundError, match="unpack NLMCXR_reports.tgz"):
    openi.make_source({"root": str(tmp_path)})
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty: no data rows"):
    openi.make_source({"root": str(tmp_path), "reports": str(tmp_path / "empty")})
  with pytest.raises(ValueError, match="config.data.root must be set"):
    openi.make_source({})
  with pytest.raises(ValueError, match="not canonical finding names"):
    openi.make_source({"root": str(root), "findings": ["Effusions"]})
  with pytest.raises(FileNotFoundError, match="config.data.images"):
    openi.make_source({"root": str(root), "images": str(tmp_path / "none")})


def test_views_that_keep_nothing_say_so(root):
  with pytest.raises(ValueError, match="no image is left .*'views': 6"):
    openi.make_source({"root": str(root), "view_table": str(root / "views.csv"), "views": "pa"})
