"""TBX11K: labels from the distributed folders (tb / health / sick), lists, real COCO boxes kept
with the records, the extra/ and test/ films, and every refusal of bad input."""

import json
import logging
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from mdx.data.cxr import tbx11k
from mdx.data.cxr.findings import CANONICAL

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "tbx11k" / "TBX11K_train.json"
# The real boxes of the fixture (annotations 1-3).
TB0005 = [[381.8337097167969, 126.8733901977539, 40.236907958984375, 44.565773010253906]]
TB0007 = [
  [307.3073425292969, 62.050445556640625, 135.50369262695312, 146.6112823486328],
  [144.12008666992188, 52.93471908569336, 126.1787109375, 116.22550964355469],
]
FOLDER_IMAGES = [
  "health/h0001",
  "health/h0002",
  "sick/s0001",
  "sick/s0002",
  "tb/tb0005",
  "tb/tb0007",
  "tb/tb1199",  # in tb/ with no box, as in the real set
]
EXTRA_IMAGES = [
  "extra/shenzhen/CHNCXR_0001_0",
  "extra/montgomery/MCUCXR_0104_1",
  "extra/da/da0001",
  "extra/da/da0002",
  "test/t0001",
]


def write_json(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data))
  return path


@pytest.fixture
def root(tmp_path):
  """TBX11K/ as distributed: imgs/, lists/, annotations/json/ (PNGs RGB 8-bit, like TBX11K's)."""
  base = tmp_path / "TBX11K"
  for n, image in enumerate(FOLDER_IMAGES + EXTRA_IMAGES):
    path = base / "imgs" / f"{image}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), 10 * n, np.uint8)).save(path)
  lists = base / "lists"
  lists.mkdir()
  train = ["tb/tb0005.png", "tb/tb0007.png", "health/h0001.png", "sick/s0001.png"]
  (lists / "TBX11K_train.txt").write_text("\n".join(train) + "\n")
  (lists / "all_train.txt").write_text("\n".join(f"{i}.png" for i in EXTRA_IMAGES) + "\n")
  (base / "annotations" / "json").mkdir(parents=True)
  for name in ("TBX11K_train.json", "TBX11K_trainval.json"):  # the fixture stands for both
    shutil.copy(FIXTURE, base / "annotations" / "json" / name)
  return base


def test_folders_by_default(root):
  source = tbx11k.make_source({"root": str(root)})
  assert source.name == "tbx11k" and list(source.image_ids()) == FOLDER_IMAGES
  assert source.findings == ("Tuberculosis", "No Finding")
  np.testing.assert_array_equal(source.labels()[:, 0], [0, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(source.labels()[:, 1], [1, 1, 0, 0, 0, 0, 0])  # sick: not normal
  assert list(source.patient_ids()) == FOLDER_IMAGES  # no patient ids published: one per film
  assert list(source.extra["folder"]) == ["health"] * 2 + ["sick"] * 2 + ["tb"] * 3
  boxes = source.extra["boxes"]
  np.testing.assert_allclose(boxes[4], TB0005, rtol=1e-6)
  np.testing.assert_allclose(boxes[5], TB0007, rtol=1e-6)
  assert boxes[0].shape == (0, 4) and boxes[6].shape == (0, 4) and boxes[4].dtype == np.float32
  assert source.extra["box_categories"][4] == ("ActiveTuberculosis",)
  assert source.extra["box_categories"][5] == ("ObsoletePulmonaryTuberculosis",) * 2
  assert source.extra["box_categories"][0] == ()
  assert list(source.extra["sex"]) == [""] * 7 and np.isnan(source.extra["age"]).all()
  record = source[1]
  assert record["image"].shape == (6, 8, 1) and record["image"][0, 0, 0] == 10
  assert record["patient_id"] == "health/h0002"
  picked = source.select([5, 0])  # a split keeps each record's boxes
  np.testing.assert_allclose(picked.extra["boxes"][0], TB0007, rtol=1e-6)


def test_a_list_and_its_annotations(root):
  source = tbx11k.make_source({"root": str(root), "list": "TBX11K_train"})
  assert list(source.image_ids()) == ["tb/tb0005", "tb/tb0007", "health/h0001", "sick/s0001"]
  np.testing.assert_array_equal(source.labels(), [[1, 0], [1, 0], [0, 1], [0, 0]])
  assert [len(b) for b in source.extra["boxes"]] == [1, 2, 0, 0]
  # a list file by path, and no annotations for it: no boxes
  other = root / "my_list.txt"
  other.write_text("sick/s0002.png\r\n\r\ntb/tb1199.png  0\n")
  source = tbx11k.make_source({"root": str(root), "list": str(other)})
  assert list(source.image_ids()) == ["sick/s0002", "tb/tb1199"]
  assert [len(b) for b in source.extra["boxes"]] == [0, 0]


def test_extra_and_test_films(root, caplog):
  # A hand-made all_train.json boxes one DA film, which then counts as tuberculosis.
  write_json(
    root / "annotations" / "json" / "all_train.json",
    {
      "categories": [{"id": 1, "name": "ActiveTuberculosis", "supercategory": "Tuberculosis"}],
      "images": [{"id": 7, "file_name": "extra/da/da0002.png", "width": 512, "height": 512}],
      "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}],
    },
  )
  with caplog.at_level(logging.INFO):
    source = tbx11k.make_source({"root": str(root), "list": "all_train"})
  assert list(source.image_ids()) == EXTRA_IMAGES
  labels = source.labels()
  np.testing.assert_array_equal(labels[:2], [[0, 1], [1, 0]])  # NLM file-name rule
  assert np.isnan(labels[2]).all() and np.isnan(labels[4]).all()  # no published label
  np.testing.assert_array_equal(labels[3], [1, 0])  # a TB box
  assert "2 of 5 images lie outside health/, sick/ and tb/" in caplog.text
  # NLM films keep NLM's patient ids, so the same film in mdx.data.cxr.nlm is the same patient
  assert list(source.patient_ids())[:3] == ["CHNCXR_0001", "MCUCXR_0104", "extra/da/da0001"]
  assert list(source.extra["folder"]) == ["extra"] * 4 + ["test"]


def test_findings_in_the_canonical_space(root, caplog):
  with caplog.at_level(logging.INFO):
    source = tbx11k.make_source({"root": str(root), "findings": ["No Finding", "Pneumonia"]})
  np.testing.assert_array_equal(source.labels()[:, 0], [1, 1, 0, 0, 0, 0, 0])
  assert np.isnan(source.labels()[:, 1]).all()
  assert "Pneumonia" in caplog.text
  with pytest.raises(ValueError, match="'active_tb'.*not canonical.*Tuberculosis"):
    tbx11k.output_names({"findings": ["active_tb"]})
  known = {v for v in tbx11k.TO_CANONICAL.values() if v}
  assert known <= set(CANONICAL) and set(tbx11k.BOX_CATEGORIES) <= set(tbx11k.TO_CANONICAL)
  assert set(tbx11k.FACTS) == {"modality", "label_source", "label_values"}


def test_missing_image_raise_or_skip(root):
  (root / "imgs" / "tb" / "tb0007.png").unlink()
  with pytest.raises(FileNotFoundError, match="TBX11K list .*TBX11K_train.txt: 1 of 4"):
    tbx11k.make_source({"root": str(root), "list": "TBX11K_train"})
  source = tbx11k.make_source({"root": str(root), "list": "TBX11K_train", "on_error": "skip"})
  assert list(source.image_ids()) == ["tb/tb0005", "health/h0001", "sick/s0001"]
  assert source.skipped == 1 and [len(b) for b in source.extra["boxes"]] == [1, 0, 0]


def test_missing_files_and_folders(root, tmp_path):
  with pytest.raises(FileNotFoundError, match="no imgs/ folder"):
    tbx11k.make_source({"root": str(tmp_path)})
  with pytest.raises(FileNotFoundError, match="lists/TBX11K_tset.txt does not exist"):
    tbx11k.make_source({"root": str(root), "list": "TBX11K_tset"})
  with pytest.raises(FileNotFoundError, match="config.data.annotations"):
    tbx11k.make_source({"root": str(root), "annotations": str(root / "nope.json")})
  with pytest.raises(ValueError, match="config.data.root must be set"):
    tbx11k.make_source({})
  shutil.rmtree(root / "imgs" / "sick")
  with pytest.raises(FileNotFoundError, match="imgs/sick does not exist"):
    tbx11k.make_source({"root": str(root)})


def test_an_empty_list_is_named(root):
  (root / "lists" / "empty.txt").write_text("\n")
  with pytest.raises(ValueError, match=r"lists/empty.txt: no data rows; give a TBX11K"):
    tbx11k.make_source({"root": str(root), "list": "empty"})


@pytest.mark.parametrize(
  "lines, match",
  [
    ("tb/tb0005.png\n../secret.png\n", "line 2: '../secret.png' is not a path inside imgs/"),
    ("/abs/tb.png\n", "line 1: '/abs/tb.png'"),
    ("tb/tb0005.png\n\ntb/tb0005.png\n", "line 3: tb/tb0005.png is listed twice \\(line 1\\)"),
  ],
)
def test_bad_list_lines(root, lines, match):
  (root / "lists" / "bad.txt").write_text(lines)
  with pytest.raises(ValueError, match=match):
    tbx11k.make_source({"root": str(root), "list": "bad"})


GOOD = json.loads(FIXTURE.read_text())


def edited(change):
  data = json.loads(json.dumps(GOOD))
  change(data)
  return data


def annotation(k, **fields):
  return edited(lambda d: d["annotations"][k].update(fields))


@pytest.mark.parametrize(
  "data, match",
  [
    ([1, 2], "a COCO file is a JSON object"),
    (edited(lambda d: d.pop("images")), "no 'images' list"),
    (edited(lambda d: d["images"][1].pop("file_name")), r"images\[1\] has no 'file_name'"),
    (
      annotation(2, image_id=99),
      r"annotations\[2\] has image_id 99",
    ),
    (
      annotation(0, category_id=9),
      r"annotations\[0\].*category_id 9",
    ),
    (
      annotation(1, bbox=[1, 2, 3]),
      r"annotations\[1\] bbox \[1, 2, 3\]",
    ),
    (annotation(1, bbox=[1, 2, -3, 4]), r"annotations\[1\] bbox"),
    (edited(lambda d: d["categories"][0].update(name="TB")), r"categories\[0\] is 'TB'"),
    (
      edited(lambda d: d["images"][2].update(id=d["images"][0]["id"])),
      r"images\[2\] has id \d+, as images\[0\] has",
    ),
    (
      annotation(0, image_id=601),
      "health/h0001.png lies in health/ .* has 1 TB box",
    ),
  ],
)
def test_bad_annotations_name_file_and_entry(root, data, match):
  path = write_json(root / "annotations" / "json" / "TBX11K_train.json", data)
  with pytest.raises(ValueError, match=match) as info:
    tbx11k.make_source({"root": str(root), "list": "TBX11K_train"})
  assert str(path) in str(info.value)


def test_annotations_not_json(root):
  path = root / "annotations" / "json" / "TBX11K_train.json"
  path.write_text('{"images": [')
  with pytest.raises(ValueError, match="not a JSON file"):
    tbx11k.make_source({"root": str(root), "list": "TBX11K_train"})
