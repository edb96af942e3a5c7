"""The one label space: every dataset's table (findings.tables), the name matching of external
validation agreeing with the tables, the reasons printed for unmapped names, and the pieces every
source shares (requested findings, the label matrix with nan for unlabelled findings, the common
extra columns, DICOM ages, NLM file names)."""

import logging
import math

import numpy as np
import pytest

from mdx.data.cxr import dicom_headers, label_space, nlm, records
from mdx.data.cxr import findings as F

OWN_TABLES = ("nih", "chexpert", "mimic", "padchest", "vindr", "rsna", "siim", "nlm", "tbx11k")


def test_every_source_module_has_a_table_onto_canonical_names():
  tables = F.tables()
  assert set(OWN_TABLES) <= set(tables)
  for dataset, table in tables.items():
    assert table, dataset
    assert {c for c in table.values() if c} <= set(F.CANONICAL), dataset
  assert tables["nih"] == {**{f: f for f in F.NIH_FINDINGS}, "No Finding": "No Finding"}
  assert tables["mimic"] == tables["chexpert"]
  chexpert = tables["chexpert"]
  assert chexpert.pop("Pleural Effusion") == "Effusion"
  assert all(name == canonical for name, canonical in chexpert.items())  # the rest by name
  with pytest.raises(ValueError, match="no chest X-ray dataset 'no_such_dataset'"):
    F.table("no_such_dataset")


def test_canonical_of_by_the_tables():
  assert F.canonical_of("Pleural Effusion") == "Effusion"  # CheXpert, MIMIC
  assert F.canonical_of("PLEURAL_EFFUSION") == "Effusion"  # up to case, spaces, underscores
  assert F.canonical_of("Pleural effusion") == "Effusion"  # VinDr
  assert F.canonical_of("Pulmonary fibrosis") == "Fibrosis"  # VinDr (and PadChest's term)
  assert F.canonical_of("hiatal hernia") == "Hernia"  # PadChest's one term for Hernia
  assert F.canonical_of("pleural_thickening") == "Pleural_Thickening"  # a canonical name
  assert F.canonical_of("Lung Opacity") == "Lung Opacity"  # canonical, though VinDr's is not
  # kinds a table counts under a finding are not other names of it
  assert F.canonical_of("laminar atelectasis") is None
  assert F.canonical_of("empyema") is None and F.canonical_of("hemothorax") is None
  assert F.canonical_of("tb") is None  # TBX11K counts its box categories under Tuberculosis too
  assert F.canonical_of("Nodule/Mass") is None and F.canonical_of("Enlarged Heart") is None


def test_matching_agrees_with_every_table():
  """A dataset's one name for a canonical finding matches that finding (and its other datasets'
  names for it); a kind counted under a finding does not; 'No Finding' names never match alone."""
  tables = F.tables()
  only_name = set()  # (normalized name, canonical): a table's one name for the finding
  for table in tables.values():
    for canonical in set(table.values()) - {None}:
      names = [n for n, c in table.items() if c == canonical]
      only_name |= {(F.normalize(names[0]), canonical)} if len(names) == 1 else set()
  for dataset, table in tables.items():
    for name, canonical in table.items():
      if not canonical:
        continue
      m = F.match_findings([name], [canonical])
      if canonical == "No Finding":
        assert not m.matched and "none of the other labels" in m.not_evaluable[name], name
      elif F.normalize(name) in F.NOT_FINDING_NAMES:  # RSNA's 'Target': no finding's name
        assert not m.matched, (dataset, name)
      elif (F.normalize(name), canonical) in only_name or F.normalize(name) == F.normalize(
        canonical
      ):
        assert m.matched == {name: canonical}, (dataset, name)
      else:  # only ever one of several names a table counts under the finding: a kind of it
        assert not m.matched, (dataset, name)
  assert F.match_findings(["empyema"], ["Effusion", "hemothorax"]).matched == {}
  assert F.match_findings(["Pneumonia"], ["Target"]).matched == {}  # another dataset's Target
  # across datasets: VinDr's names against NIH's and CheXpert's
  vindr = ["Pleural effusion", "Pulmonary fibrosis", "Pneumonia"]
  m = F.match_findings(vindr, F.NIH_FINDINGS)
  assert m.matched == {
    "Pleural effusion": "Effusion",
    "Pulmonary fibrosis": "Fibrosis",
    "Pneumonia": "Pneumonia",
  }
  assert m.how == {
    "Pleural effusion": "synonym",
    "Pulmonary fibrosis": "synonym",
    "Pneumonia": "same name",
  }
  m = F.match_findings(vindr, list(tables["chexpert"]))
  assert m.matched == {"Pleural effusion": "Pleural Effusion", "Pneumonia": "Pneumonia"}
  assert m.not_evaluable["Pulmonary fibrosis"] == "the dataset has no label for it"


def test_distinct_look_alikes_stay_unmatched_with_their_reason():
  m = F.match_findings(
    ["Cardiomegaly", "Pleural thickening"], ["Enlarged Cardiomediastinum", "Pleural Other"]
  )
  assert m.matched == {}
  assert "cardiomegaly is the heart alone" in m.not_evaluable["Cardiomegaly"]
  # VinDr's spelling reaches NIH's Pleural_Thickening, whose look-alike is Pleural Other
  assert "pools pleural thickening" in m.not_evaluable["Pleural thickening"]
  assert F.distinct_reason("Pulmonary fibrosis", "Fibrosis") is None
  assert F.distinct_reason("Lung Lesion", "Mass").startswith("'Lung Lesion' is mass or nodule")


def test_reasons_come_from_the_comment_beside_or_above_the_entry():
  vindr = F.reasons("vindr")
  assert "3 cm" in vindr["Nodule/Mass"]  # a block of comment lines above the entry
  assert vindr["Rib fracture"] == "one kind of fracture, as 'Clavicle fracture'"  # beside it
  assert "Atelectasis" not in vindr and "Other diseases" not in vindr  # mapped / no comment
  padchest = F.reasons("padchest")
  assert padchest["volume loss"].startswith("a sibling, not a child")
  assert "abscess" not in padchest  # under a section heading only, which is no reason
  assert "other disease" in F.reasons("tbx11k")["sick"]
  assert F.reasons("mimic") == {}  # CheXpert's table, every name mapped
  described = F.describe("padchest")["datasets"]["padchest"]
  row = next(r for r in described if r["name"] == "hydropneumothorax")
  assert row == {
    "name": "hydropneumothorax",
    "canonical": "Pneumothorax",
    "also": ["Effusion"],
    "reason": None,
  }


def test_requested_findings_and_the_label_matrix(caplog):
  assert label_space.requested_findings({}, ("Mass",)) == ("Mass",)
  assert label_space.requested_findings({"findings": []}, ("Mass",)) == ("Mass",)
  with pytest.raises(ValueError, match=r"\['TB'\], which are not canonical"):
    label_space.requested_findings({"findings": ["Mass", "TB"]}, ())
  with pytest.raises(ValueError, match="names a finding twice"):
    label_space.requested_findings({"findings": ["Mass", "Mass"]}, ())
  with caplog.at_level(logging.INFO):
    out = label_space.label_matrix(
      "X", 3, ["Mass", "Edema", "Hernia"], {"Edema": np.array([1, 0, 1])}
    )
  assert out.dtype == np.float32 and out.shape == (3, 3)
  np.testing.assert_array_equal(out[:, 1], [1, 0, 1])
  assert np.isnan(out[:, [0, 2]]).all()  # unknown, never negative
  assert "X labels no ['Mass', 'Hernia']" in caplog.text


def test_the_common_extra_columns():
  extra = records.extra(2, view="PA", sex=["F", ""], boxes=records.objects([[1, 2], []]))
  assert list(extra) == ["study_id", "view", "sex", "age", "boxes"]
  assert extra["study_id"].tolist() == ["", ""] and extra["view"].tolist() == ["PA", "PA"]
  assert extra["sex"].tolist() == ["F", ""] and np.isnan(extra["age"]).all()
  assert extra["boxes"].dtype == object and extra["boxes"][0] == [1, 2]
  with pytest.raises(ValueError, match=r"extension='\.gif'; choose one of \['\.dcm'\]"):
    records.extension({"extension": "GIF"}, ".dcm", (".dcm",))
  assert records.extension({"extension": "DCM"}, ".png", (".dcm",)) == ".dcm"


def test_dicom_ages_and_nlm_names():
  assert dicom_headers.age_years("062Y") == 62 and dicom_headers.age_years(" 62 ") == 62
  assert dicom_headers.age_years("006M") == 0.5 and dicom_headers.age_years("014D") == 14 / 365.25
  assert math.isnan(dicom_headers.age_years("")) and math.isnan(dicom_headers.age_years("62 years"))
  assert dicom_headers.age_years("150") == 150 and math.isnan(dicom_headers.age_years("150", 120))
  assert nlm.parse_name("MCUCXR_0104_1.png") == ("MCUCXR", "MCUCXR_0104", 1.0)
  assert nlm.parse_name("CHNCXR_0001_0.png") == ("CHNCXR", "CHNCXR_0001", 0.0)
  assert nlm.parse_name("tb0005.png") is None and nlm.parse_name("MCUCXR_0104_2.png") is None
