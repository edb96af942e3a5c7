"""VinDr-CXR (mdx/data/cxr/vindr.py) on its published layouts: Kaggle's train.csv (37 real rows of 8
images), PhysioNet's image_labels_train.csv / image_labels_test.csv / annotations_train.csv (see
fixtures/vindr/README.md). Expected labels are worked out by hand from the rows in the comments."""

import csv
import os
import re

import numpy as np
import pytest
from dicom_without_pixels import assert_check_names_it, strip_pixels
from fixture_files import write_dicom
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from mdx.data.cxr import vindr
from mdx.data.cxr.findings import CANONICAL

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "vindr")
KAGGLE = os.path.join(FIXTURES, "train.csv")
TRAIN = os.path.join(FIXTURES, "image_labels_train.csv")
TEST = os.path.join(FIXTURES, "image_labels_test.csv")
ANNOTATIONS = os.path.join(FIXTURES, "annotations_train.csv")
ONLY_PHYSIONET = ("Pneumonia", "Edema", "Emphysema", "Tuberculosis")

# train.csv's 8 images in order of first appearance, with the readers' marks (class: readers):
NORMAL_A = "50a418190bc3fb1ef1633bf9678929b3"  # R11, R15, R16: No finding
NORMAL_B = "21a10246a5ec7af151081d0cd6d65dc9"  # R7, R13, R2: No finding
ILD = "0c7a38f293d5f5e4846aa4ca6db4daf1"  # ILD: R17 (2 boxes), R15; Nodule/Mass: R16; Other: R15
PTX = "71511f823c4664475131c1519d9bd0a8"  # Pneumothorax: R9, R8 (2), R10 (2); fibrosis: R9
CARDIO = "ac0f6a69e78c3adae6905693914ba80f"  # Cardiomegaly R10 R9; thickening, effusion R9; aorta
ATEL = "9120a0510a95b14a2554cb6cd5319f00"  # Atelectasis R14; Other lesion R15; effusion R12
INFIL = "97a05a3ade68254d5163547aab61f3f4"  # Consolidation R8; Opacity R8 R10; Infiltration R10 R9
PLEURA = "6bb053f269fb54485e70eb65424578f3"  # effusion R14 R16; thickening R14 R12; lesion R14
ORDER = [NORMAL_A, NORMAL_B, ILD, PTX, CARDIO, ATEL, INFIL, PLEURA]

# Positives among the labelled canonical findings; every other labelled one is 0.
MAJORITY = {  # more than half of the 3 readers
  NORMAL_A: {"No Finding"},
  NORMAL_B: {"No Finding"},
  ILD: set(),  # ILD, Nodule/Mass and Other lesion map to no canonical finding
  PTX: {"Pneumothorax"},  # 3/3; fibrosis 1/3
  CARDIO: {"Cardiomegaly"},  # 2/3; thickening and effusion 1/3
  ATEL: set(),  # every finding 1/3
  INFIL: {"Infiltration"},  # 2/3; consolidation 1/3
  PLEURA: {"Effusion", "Pleural_Thickening"},  # 2/3 each
}
ANY = {
  NORMAL_A: {"No Finding"},
  NORMAL_B: {"No Finding"},
  ILD: set(),
  PTX: {"Pneumothorax", "Fibrosis"},
  CARDIO: {"Cardiomegaly", "Pleural_Thickening", "Effusion"},
  ATEL: {"Atelectasis", "Effusion"},
  INFIL: {"Consolidation", "Infiltration"},
  PLEURA: {"Effusion", "Pleural_Thickening"},
}


def expected(positives, findings, unlabelled=()):
  return np.array(
    [[np.nan if f in unlabelled else float(f in positives) for f in findings]], np.float32
  )[0]


def write_images(folder, ids, ext=".dicom"):
  os.makedirs(folder, exist_ok=True)
  for k, image_id in enumerate(ids):
    pixels = (np.arange(12 * 10).reshape(12, 10) * 30 + k).astype(np.uint16)
    if ext in (".dicom", ".dcm"):
      write_dicom(os.path.join(folder, image_id + ext), pixels, photometric="MONOCHROME1")
    else:
      Image.fromarray((pixels % 256).astype(np.uint8)).save(os.path.join(folder, image_id + ext))


@pytest.fixture
def images(tmp_path):
  folder = str(tmp_path / "train")
  write_images(folder, ORDER)
  return folder


def config(metadata, images, **kw):
  return dict(metadata=metadata, images=images, **kw)


def by_id(source):
  return {i: source.labels()[k] for k, i in enumerate(source.image_ids())}


# ------------------------------------------------------------------------------------ the mapping


def test_the_mapping_covers_every_published_label_with_canonical_names():
  published = {*vindr.KAGGLE_CLASSES, *vindr.LOCAL_LABELS, *vindr.GLOBAL_LABELS, "Other disease"}
  assert set(vindr.TO_CANONICAL) == published
  assert {v for v in vindr.TO_CANONICAL.values() if v} <= set(CANONICAL)
  t = vindr.TO_CANONICAL
  assert t["Pleural effusion"] == "Effusion" and t["Pleural thickening"] == "Pleural_Thickening"
  assert t["Pulmonary fibrosis"] == "Fibrosis" and t["No finding"] == "No Finding"
  for name in ("ILD", "Nodule/Mass", "Lung Opacity", "Aortic enlargement", "COPD", "Lung tumor"):
    assert t[name] is None, name
  assert vindr.DEFAULT_FINDINGS == (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Tuberculosis",
    "No Finding",
  )
  assert set(vindr.FACTS) >= {"modality", "label_source", "label_values", "patient_id"}


# --------------------------------------------------------------------------------- Kaggle layout


@pytest.mark.parametrize("policy,positives", [("majority", MAJORITY), ("any", ANY)])
def test_kaggle_train_csv_by_reader_policy(images, policy, positives, caplog):
  cfg = config(KAGGLE, images, **({"readers": policy} if policy == "any" else {}))
  with caplog.at_level("INFO", logger="absl"):
    source = vindr.make_source(cfg)
  assert list(source.image_ids()) == ORDER
  assert list(source.patient_ids()) == ORDER  # no patient id: each image its own patient
  assert source.findings == vindr.DEFAULT_FINDINGS
  got = by_id(source)
  for image_id, pos in positives.items():
    want = expected(pos, source.findings, ONLY_PHYSIONET)
    np.testing.assert_array_equal(got[image_id], want, err_msg=f"{policy} {image_id}")
  said = " ".join(r.getMessage() for r in caplog.records)
  assert "Pneumonia" in said and "unknown" in said  # the four PhysioNet-only findings are logged


def test_kaggle_extras_keep_boxes_readers_and_unknown_demographics(images):
  source = vindr.make_source(config(KAGGLE, images))
  k = ORDER.index(PTX)
  boxes = source.extra["boxes"][k]
  assert len(boxes) == 6  # five pneumothorax boxes and R9's fibrosis box
  assert ["Pulmonary fibrosis", 1792.0, 1454.0, 2339.0, 1665.0, "R9"] in boxes
  assert source.extra["boxes"][ORDER.index(NORMAL_A)] == []
  assert set(source.extra["readers"][k].split("|")) == {"R8", "R9", "R10"}
  assert set(source.extra["readers"][0].split("|")) == {"R11", "R15", "R16"}
  assert (source.extra["sex"] == "").all() and np.isnan(source.extra["age"]).all()
  assert (source.extra["view"] == "").all() and (source.extra["study_id"] == "").all()
  part = source.select([k, 0])  # extras follow a selection
  assert part.extra["boxes"][0] == boxes and list(part.image_ids()) == [PTX, NORMAL_A]


def test_dicom_and_converted_images_are_read(tmp_path, images):
  source = vindr.make_source(config(KAGGLE, images))
  record = source[0]
  assert record["image"].shape == (12, 10, 1) and record["image"].dtype == np.uint16
  # MONOCHROME1 (bright = low value) is inverted on reading: the first pixel, the lowest value,
  # becomes the brightest
  assert record["image"][0, 0, 0] == record["image"].max()
  folder = str(tmp_path / "png")
  write_images(folder, ORDER, ".png")
  source = vindr.make_source(config(KAGGLE, folder, extension="png"))
  assert source[3]["image"].dtype == np.uint8 and source.paths()[3].endswith(PTX + ".png")
  with pytest.raises(ValueError, match="config.data.extension='.tif'"):
    vindr.make_source(config(KAGGLE, folder, extension=".tif"))


def test_a_dicom_without_pixel_data_is_named_by_the_record_check(tmp_path, images):
  film = os.path.join(images, PTX + ".dicom")
  strip_pixels(film)
  source = vindr.make_source(config(KAGGLE, images))  # the table is fine: no image is read
  assert_check_names_it(source, "vindr", film, tmp_path)


def test_missing_images_raise_or_are_skipped(images):
  os.remove(os.path.join(images, ATEL + ".dicom"))
  with pytest.raises(FileNotFoundError, match="1 of 8 image files are missing"):
    vindr.make_source(config(KAGGLE, images))
  source = vindr.make_source(config(KAGGLE, images, on_error="skip"))
  assert source.skipped == 1 and ATEL not in source.image_ids() and len(source) == 7
  k = list(source.image_ids()).index(INFIL)
  assert {b[0] for b in source.extra["boxes"][k]} == {
    "Consolidation",
    "Lung Opacity",
    "Infiltration",
  }
  np.testing.assert_array_equal(
    source.labels()[k], expected(MAJORITY[INFIL], source.findings, ONLY_PHYSIONET)
  )


def test_split_reads_any_versus_majority(tmp_path):
  # A: R1 and R2 found nothing, R3 marked Cardiomegaly. B: two readers only, split 1-1.
  rows = [
    ["A", "No finding", 14, "R1", "", "", "", ""],
    ["A", "No finding", 14, "R2", "", "", "", ""],
    ["A", "Cardiomegaly", 3, "R3", 1, 2, 3, 4],
    ["B", "No finding", 14, "R1", "", "", "", ""],
    ["B", "Cardiomegaly", 3, "R2", 1, 2, 3, 4],
  ]
  path = tmp_path / "train.csv"
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([["image_id", "class_name", "class_id", "rad_id", *vindr.BOX], *rows])
  folder = str(tmp_path / "images")
  write_images(folder, ["A", "B"])
  findings = ["Cardiomegaly", "No Finding", "Effusion"]
  majority = vindr.make_source(config(str(path), folder, findings=findings)).labels()
  np.testing.assert_array_equal(majority, [[0, 1, 0], [np.nan, np.nan, 0]])
  any_ = vindr.make_source(config(str(path), folder, findings=findings, readers="any")).labels()
  np.testing.assert_array_equal(any_, [[1, 0, 0], [1, 0, 0]])


# ------------------------------------------------------------------------------ PhysioNet layout


@pytest.mark.parametrize("policy,positives", [("majority", MAJORITY), ("any", ANY)])
def test_physionet_train_labels_agree_with_kaggle_and_add_the_global_labels(
  images, policy, positives
):
  source = vindr.make_source(config(TRAIN, images, readers=policy))
  assert sorted(source.image_ids()) == sorted(ORDER)
  got = by_id(source)
  extra = {  # the invented global labels: Pneumonia by R8 and R10, Tuberculosis by R15 and R17
    INFIL: {"Pneumonia"},
    ILD: {"Tuberculosis"},
  }
  for image_id, pos in positives.items():
    want = expected(pos | extra.get(image_id, set()), source.findings)  # nothing unknown here
    np.testing.assert_array_equal(got[image_id], want, err_msg=f"{policy} {image_id}")
  assert all(b == [] for b in source.extra["boxes"])  # no annotations file given


def test_physionet_boxes_come_from_annotations_csv(images):
  kaggle = vindr.make_source(config(KAGGLE, images))
  source = vindr.make_source(config(TRAIN, images, boxes=ANNOTATIONS))
  ours = dict(zip(source.image_ids(), source.extra["boxes"]))
  for image_id, boxes in zip(kaggle.image_ids(), kaggle.extra["boxes"]):
    assert sorted(ours[image_id]) == sorted(boxes)
  with pytest.raises(ValueError, match="holds its own boxes"):
    vindr.make_source(config(KAGGLE, images, boxes=ANNOTATIONS))


def test_boxes_of_another_split_are_refused(tmp_path, images):
  bad = tmp_path / "annotations_test.csv"
  bad.write_text("image_id,rad_id,class_name,x_min,y_min,x_max,y_max\nfeed,R1,ILD,1,2,3,4\n")
  with pytest.raises(ValueError, match=r"annotations_test.csv line 2: image feed is not in"):
    vindr.make_source(config(TRAIN, images, boxes=str(bad)))


def test_physionet_test_file_gives_the_consensus(tmp_path):
  ids = [row[0] for row in list(csv.reader(open(TEST)))[1:]]
  folder = str(tmp_path / "test")
  write_images(folder, ids)
  source = vindr.make_source(config(TEST, folder))  # readers defaults to 'consensus'
  consensus = {
    ids[0]: {"No Finding"},
    ids[1]: {"Cardiomegaly"},  # and Aortic enlargement, which maps to nothing
    ids[2]: {"Consolidation", "Pneumonia"},
    ids[3]: {"Effusion", "Pleural_Thickening"},  # and 'Other disease' (the test file's spelling)
    ids[4]: {"Fibrosis", "Tuberculosis"},  # and ILD
    ids[5]: {"Emphysema"},  # and COPD
  }
  got = by_id(source)
  for image_id, pos in consensus.items():
    np.testing.assert_array_equal(got[image_id], expected(pos, source.findings))
  assert (source.extra["readers"] == "consensus").all()
  for policy in ("majority", "any"):
    with pytest.raises(ValueError, match="one consensus row per image"):
      vindr.make_source(config(TEST, folder, readers=policy))


def test_consensus_policy_needs_the_test_file(images):
  for table in (KAGGLE, TRAIN):
    with pytest.raises(ValueError, match="image_labels_test.csv"):
      vindr.make_source(config(table, images, readers="consensus"))
  with pytest.raises(ValueError, match="config.data.readers='vote'; choose one of"):
    vindr.make_source(config(KAGGLE, images, readers="vote"))


# ------------------------------------------------------------------------------------- findings


def test_requested_findings_in_order_and_unlabelled_ones_unknown(images, caplog):
  findings = ["Hernia", "Effusion", "No Finding", "Lung Lesion"]
  with caplog.at_level("INFO", logger="absl"):
    source = vindr.make_source(config(TRAIN, images, findings=findings))
  assert source.findings == tuple(findings) == vindr.output_names({"findings": findings})
  got = by_id(source)
  np.testing.assert_array_equal(got[PLEURA], [np.nan, 1, 0, np.nan])
  np.testing.assert_array_equal(got[NORMAL_B], [np.nan, 0, 1, np.nan])
  said = " ".join(r.getMessage() for r in caplog.records)
  assert "'Hernia'" in said and "'Lung Lesion'" in said


@pytest.mark.parametrize("name", ["Pleural effusion", "Effusions", "Nodule/Mass"])
def test_a_name_outside_the_label_space_is_refused(name):
  with pytest.raises(ValueError, match=r"not canonical finding names; choose from \['Atelect"):
    vindr.output_names({"findings": ["Cardiomegaly", name]})
  with pytest.raises(ValueError, match="twice"):
    vindr.output_names({"findings": ["Cardiomegaly", "Cardiomegaly"]})


# ------------------------------------------------------------------------------------- bad input


def edited(tmp_path, source, line, new):
  """A copy of `source` whose line `line` (1-based, the header is 1) is `new`."""
  lines = open(source).read().splitlines()
  lines[line - 1] = new
  path = tmp_path / os.path.basename(source)
  path.write_text("\n".join(lines) + "\n")
  return str(path)


KAGGLE_LINE_5 = open(KAGGLE).read().splitlines()[4]  # 71511f...,Pneumothorax,12,R9,1601.0,...


@pytest.mark.parametrize(
  "row,message",
  [
    (KAGGLE_LINE_5.replace("Pneumothorax", "Pneumothoraxx"), "class_name 'Pneumothoraxx' is not"),
    (KAGGLE_LINE_5.replace(",12,", ",11,"), "class_id '11' does not match"),
    (KAGGLE_LINE_5.replace("1601.0", "abc"), "is not four numbers"),
    (KAGGLE_LINE_5.replace("1601.0", ""), "is not four numbers"),
    (KAGGLE_LINE_5.replace("1601.0", "9999"), "is not a box"),
    (f"{PTX},No finding,14,R9,1,2,3,4", "'No finding' rows have none"),
    (f"{PTX},Pneumothorax,12,R9,,,,", "has no box"),
    (f"{PTX},No finding,14,R9,,,,", "reader R9 marked both 'No finding' and a finding"),
    (f"{PTX},Pneumothorax,12,,1,2,3,4", "empty 'rad_id'"),
    (",Pneumothorax,12,R9,1,2,3,4", "empty 'image_id'"),
    (f"{PTX},Pneumothorax,12,R9,1,2,3", "7 fields, the header has 8"),  # read_csv
  ],
)
def test_a_bad_kaggle_row_names_file_and_line_before_any_image(tmp_path, row, message):
  path = edited(tmp_path, KAGGLE, 5, row)
  with pytest.raises(ValueError, match=message) as e:
    vindr.make_source(config(path, str(tmp_path / "no-images")))
  assert str(tmp_path) in str(e.value) and re.search(r"\blines? 5\b", str(e.value))


TRAIN_LINE_3 = open(TRAIN).read().splitlines()[2]  # 50a418...,R15,0,...,0,1


@pytest.mark.parametrize(
  "row,message",
  [
    (TRAIN_LINE_3[:-1] + "2", "column 'No finding' has '2'"),
    (TRAIN_LINE_3.replace(",R15,", ",R11,"), "a second row of reader R11 for image"),
    (TRAIN_LINE_3.replace(",R15,", ",,"), "empty 'rad_id'"),
  ],
)
def test_a_bad_physionet_row_names_file_line_and_column(tmp_path, images, row, message):
  path = edited(tmp_path, TRAIN, 3, row)
  with pytest.raises(ValueError, match=message) as e:
    vindr.make_source(config(path, images))
  assert "line 3" in str(e.value) and str(tmp_path) in str(e.value)


def test_blank_physionet_cells_are_unknown_reads(tmp_path, images):
  path = edited(tmp_path, TRAIN, 9, TRAIN_LINE_3.replace(NORMAL_A, ATEL).replace(",R15,", ",R14,"))
  # line 9 was ATEL's R14 row (Atelectasis 1): now all 0 but No finding 1. Blank its Effusion:
  lines = open(path).read().splitlines()
  cells = lines[8].split(",")
  cells[2 + vindr.LOCAL_LABELS.index("Pleural effusion")] = ""
  lines[8] = ",".join(cells)
  open(path, "w").write("\n".join(lines) + "\n")
  table = vindr.read_table(path)
  i, r = table.ids.index(ATEL), table.readers.index("R14")
  assert np.isnan(table.reads[i, r, table.labels.index("Pleural effusion")])
  assert table.reads[i, r, table.labels.index("No finding")] == 1
  # effusion: R12 marked it, R14 gave no read, R15 did not: 1 of 2 is an even split -> unknown
  source = vindr.make_source(config(path, images))
  assert np.isnan(by_id(source)[ATEL][source.findings.index("Effusion")])


def test_tables_that_are_not_vindr_are_refused(tmp_path, images):
  for header, message in [
    ("image_id,rad_id,Pleural Effusion", r"column\(s\) \['Pleural Effusion'\] are not VinDr"),
    ("image_id,class_name,x_min,y_min,x_max,y_max", "a box table without 'rad_id'"),
    ("Image Index,Finding Labels", "missing column"),
  ]:
    path = tmp_path / "table.csv"
    path.write_text(header + "\n" + ",".join(["1"] * len(header.split(","))) + "\n")
    with pytest.raises(ValueError, match=message):
      vindr.make_source(config(str(path), images))
  empty = tmp_path / "empty.csv"
  empty.write_text(open(KAGGLE).readline())
  with pytest.raises(ValueError, match=": no data rows; give "):
    vindr.make_source(config(str(empty), images))


# ------------------------------------------------------------------------------ reader agreement


def fleiss_by_hand(counts):
  """Fleiss (1971) from its definition: counts [N, categories], n raters per subject."""
  counts = np.asarray(counts, float)
  n, total = counts.sum(1)[0], counts.sum()
  p_j = counts.sum(0) / total
  p_i = (np.square(counts).sum(1) - n) / (n * (n - 1))
  return (p_i.mean() - np.square(p_j).sum()) / (1 - np.square(p_j).sum())


def test_fleiss_kappa_of_the_three_readers_worked_out_by_hand():
  agreement = vindr.reader_agreement({"metadata": KAGGLE})
  # Effusion, positives per image 0,0,0,0,1,1,0,2 of 3: P = (5 + 3 * 1/3) / 8 = 0.75;
  # p(+) = 4/24, P_e = 26/36: kappa = (0.75 - 26/36) / (10/36) = 0.1
  assert agreement["Effusion"] == pytest.approx(0.1)
  # Cardiomegaly, 2 of 3 on one image: P = (7 + 1/3) / 8, P_e = 122/144: kappa = 5/11
  assert agreement["Cardiomegaly"] == pytest.approx(5 / 11)
  assert agreement["No Finding"] == pytest.approx(1.0)  # both normals unanimous, none elsewhere
  assert all(agreement[f] is None for f in ONLY_PHYSIONET)  # Kaggle's table does not label them
  table = vindr.read_table(TRAIN)
  for name in ("Pleural thickening", "ILD", "Nodule/Mass", "Pneumonia"):
    reads = table.reads[:, :, table.labels.index(name)]
    counts = np.stack([(reads == 0).sum(1), (reads == 1).sum(1)], 1)
    assert vindr.kappa(reads) == pytest.approx(fleiss_by_hand(counts)), name
  assert vindr.reader_agreement({"metadata": TRAIN, "findings": ["Hernia"]}) == {"Hernia": None}
  with pytest.raises(ValueError, match="no readers to compare"):
    vindr.reader_agreement({"metadata": TEST})


def test_cohen_kappa_of_two_readers_matches_sklearn(tmp_path):
  rng = np.random.default_rng(3)
  classes = ["Cardiomegaly", "Pleural effusion", "Atelectasis"]
  rows, a_reads, b_reads = [], {c: [] for c in classes}, {c: [] for c in classes}
  for i in range(40):
    image = f"img{i:02d}"
    for reader, store in (("R1", a_reads), ("R2", b_reads)):
      marks = [c for c in classes if rng.random() < (0.5 if c != "Atelectasis" else 0.2)]
      if i % 7 == 0 and reader == "R2":
        marks = [c for c in classes if c in marks or rng.random() < 0.6]
      for c in classes:
        store[c].append(int(c in marks))
      for c in marks:
        rows.append([image, c, vindr.KAGGLE_CLASSES.index(c), reader, 10, 20, 30, 40])
      if not marks:
        rows.append([image, "No finding", 14, reader, "", "", "", ""])
  path = tmp_path / "train.csv"
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([["image_id", "class_name", "class_id", "rad_id", *vindr.BOX], *rows])
  got = vindr.reader_agreement({"metadata": str(path)})
  for name, finding in [("Cardiomegaly",) * 2, ("Pleural effusion", "Effusion")] + [
    ("Atelectasis",) * 2
  ]:
    assert got[finding] == pytest.approx(cohen_kappa_score(a_reads[name], b_reads[name]))
  nf_a = [int(not any(a_reads[c][i] for c in classes)) for i in range(40)]
  nf_b = [int(not any(b_reads[c][i] for c in classes)) for i in range(40)]
  assert got["No Finding"] == pytest.approx(cohen_kappa_score(nf_a, nf_b))
