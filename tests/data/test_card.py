"""The dataset card counts what a source holds, checked against numbers worked out by hand from the
fixture rows; a source is described from its label table without the image files."""

import pathlib

import ml_collections
import numpy as np
import pytest
from real_layouts import make_nih_dir

from mdx.data import card as card_lib
from mdx.data import sources
from mdx.data.image import file_source

NAN = float("nan")


def _source():
  """7 films of 3 patients with the metadata the chest X-ray sources keep in extra."""
  labels = np.array(
    [[1, 0], [1, NAN], [0, 0], [0, 1], [NAN, NAN], [1, 1], [0, 0]], np.float32
  )  # Effusion: 3 positive, 3 negative, 1 unknown; Mass: 2, 3, 2
  source = file_source.FileSource(
    [f"/nowhere/{i}.png" for i in range(7)],
    labels,
    ["p1", "p1", "p1", "p2", "p2", "p3", "p3"],
    [f"i{i}" for i in range(7)],
    ("Effusion", "Mass"),
    name="test",
    skipped=4,
    extra={
      # p1 has studies s1 (two films) and s2; p2's study id 's1' is its own study; p3's films
      # have none, so each is a study of its own: 2 + 1 + 2 = 5 studies
      "study_id": np.array(["s1", "s1", "s2", "s1", "s1", "", ""]),
      "view": np.array(["PA", "L", "PA", "AP", "PA", "", "PA"]),
      "sex": np.array(["F", "F", "F", "M", "M", "", ""]),
      "age": np.array([30, 30, 31, NAN, 70, 50, 52], np.float32),
    },
  )
  source.excluded = {"views": 3, "exclude": 1, "unlabelled": 0}
  source.unknown_terms = {"kyphosis": 2, "scoliosis": 5}
  return source


def test_describe_counts_every_field_by_hand():
  card = card_lib.describe(
    _source(),
    name="test",
    excluded={"unreadable (mdx.data.check)": 2, "exclude": 1},
    splits={"train": [0, 1, 2, 5, 6], "test": [3, 4]},
  )
  assert (card["images"], card["patients"], card["studies"]) == (7, 3, 5)
  assert card["views"] == {"PA": 4, "AP": 1, "L": 1, "unknown": 1}
  assert card["sex"] == {"F": 3, "M": 2, "unknown": 2}
  # known ages 30 30 31 50 52 70: median (31 + 50) / 2; q1 at rank 1.25 -> 30.25; q3 at 3.75 ->
  # 51.5 (numpy's linear interpolation)
  assert card["age"] == {
    "n": 6,
    "unknown": 1,
    "median": 40.5,
    "q1": 30.25,
    "q3": 51.5,
    "min": 30.0,
    "max": 70.0,
  }
  assert card["findings"]["Effusion"] == {
    "positive": 3,
    "negative": 3,
    "unknown": 1,
    "prevalence": 0.5,
  }
  assert card["findings"]["Mass"] == {"positive": 2, "negative": 3, "unknown": 2, "prevalence": 0.4}
  # the source's exclusions and the caller's add up; zero counts are left out
  assert card["excluded"] == {"views": 3, "exclude": 2, "unreadable (mdx.data.check)": 2}
  assert card["skipped"] == 4 and card["unknown_terms"] == {"scoliosis": 5, "kyphosis": 2}
  assert card["splits"]["train"] == {
    "images": 5,
    "patients": 2,
    "positive": {"Effusion": 3, "Mass": 1},
  }
  assert card["splits"]["test"] == {
    "images": 2,
    "patients": 1,
    "positive": {"Effusion": 0, "Mass": 1},
  }


def test_renderings_say_the_same_numbers():
  card = card_lib.describe(_source(), name="test", splits={"train": [0, 1, 2, 5, 6]})
  md, txt = card_lib.markdown(card), card_lib.text(card)
  assert md.startswith("# Dataset card: test")
  assert "| Effusion | 3 | 3 | 1 | 0.500 |" in md and "| Mass | 2 | 3 | 2 | 0.400 |" in md
  assert "| Finding | train positive |" in md and "| Effusion | 3 |\n| Mass | 1 |" in md
  for out in (md, txt):
    assert "Images 7; patients 3; studies 5." in out
    assert "Views: PA 4, AP 1, L 1, unknown 1." in out
    assert "median 40.5 years (quartiles 30.2-51.5, range 30-70) over 6 images" in out
    assert "Left out: views 3, exclude 1 (skipped in all: 4)." in out
    assert "'scoliosis' 5, 'kyphosis' 2" in out
  assert any(line.split() == ["Effusion", "3", "3", "1", "0.500"] for line in txt.splitlines())


def test_a_source_without_metadata_says_not_recorded():
  source = file_source.FileSource(["a.png"], np.array([[NAN]]), ["p"], ["a"], ("Mass",))
  card = card_lib.describe(source, name="nih")
  assert card["studies"] is card["views"] is card["sex"] is card["age"] is None
  mass = card["findings"]["Mass"]
  assert mass == {"positive": 0, "negative": 0, "unknown": 1, "prevalence": None}
  assert card["facts"]["modality"] == sources.SOURCES["nih"].modality
  assert "Sex: not recorded." in card_lib.text(card)


def test_nih_table_without_its_images(tmp_path):
  """make_nih_dir's rows: Cardiomegaly | Cardiomegaly|Effusion | No Finding | Mass | No Finding |
  Hernia|Mass, patients 1 1 2 3 3 3."""
  folder = make_nih_dir(tmp_path / "nih")
  data = ml_collections.ConfigDict(
    {"source": "nih", "metadata": str(folder / "Data_Entry_2017.csv")}
  )
  with pytest.raises(ValueError, match="config.data.images must be set"):
    sources.make_source(data, 0)  # training needs the images ...
  source, files = card_lib.build_from_tables(data)  # ... the card does not
  card = card_lib.describe(source, name="nih", files=files)
  assert (card["images"], card["patients"]) == (6, 3)
  counts = {f: (c["positive"], c["negative"]) for f, c in card["findings"].items()}
  assert counts["Cardiomegaly"] == (2, 4) and counts["Effusion"] == (1, 5)
  assert counts["Mass"] == (2, 4) and counts["Hernia"] == (1, 5) and counts["Edema"] == (0, 6)
  assert card["files"] == {"checked": False, "listed": 6, "present": 0}
  assert "on_error" not in data  # the caller's config is not changed
  # with the image folder, the files present are counted; a filter of the source still applies
  data.update({"images": str(folder), "view_positions": ["PA"]})
  source, files = card_lib.build_from_tables(data)
  assert len(source) == 4 and files == {"checked": False, "listed": 4, "present": 4}
  (folder / "images_002" / "images" / "00000003_000.png").unlink()
  _, files = card_lib.build_from_tables(data)
  assert files["present"] == 3


def test_phantoms_card_against_their_labels():
  data = ml_collections.ConfigDict({"source": "phantoms", "image_size": 32, "num_patients": 12})
  source = sources.make_source(data, 0)
  card = card_lib.describe(source, name="phantoms")
  labels = source.labels()
  assert card["images"] == len(labels) and card["patients"] == 12
  assert card["facts"]["synthetic"] is True
  for j, f in enumerate(source.findings):
    assert card["findings"][f]["positive"] == int(np.nansum(labels[:, j]))
    assert card["findings"][f]["negative"] == int(np.sum(labels[:, j] == 0))


def test_keep_existing_unchecked_keeps_every_row(tmp_path):
  (tmp_path / "a.png").write_bytes(b"")
  paths = [str(tmp_path / "a.png"), str(tmp_path / "gone.png")]
  assert file_source.keep_existing(paths, "t", "unchecked").tolist() == [True, True]
  assert file_source.keep_existing(paths, "t", "skip").tolist() == [True, False]
  with pytest.raises(FileNotFoundError, match="1 of 2 image files are missing"):
    file_source.keep_existing(paths, "t", "raise")
  with pytest.raises(ValueError, match="choose 'raise' or 'skip'"):
    file_source.keep_existing(paths, "t", "skpi")


SIIM_TABLE = pathlib.Path(__file__).parent / "cxr" / "fixtures" / "siim" / "train-rle.csv"


def test_a_source_that_reads_its_files_is_refused_saying_why(tmp_path):
  siim = ml_collections.ConfigDict({"source": "siim", "metadata": str(SIIM_TABLE)})
  # SIIM's patients are in the DICOM headers by default: no card from the table alone ...
  with pytest.raises(ValueError, match="cannot be described from its table alone: its patients"):
    card_lib.build_from_tables(siim)
  # ... but with each image its own patient it is: the fixture's 8 images, 4 with a pneumothorax
  siim.patient_id = "image_id"
  source, files = card_lib.build_from_tables(siim)
  card = card_lib.describe(source, name="siim", files=files)
  assert (card["images"], card["patients"]) == (8, 8)
  assert card["findings"]["Pneumothorax"]["positive"] == 4
  assert files == {"checked": False, "listed": 8, "present": 0}
  nlm = {"source": "nlm", "root": str(tmp_path)}
  with pytest.raises(ValueError, match="'nlm' cannot be .* image file names"):
    card_lib.build_from_tables(nlm)
  rsna = {"source": "rsna", "metadata": str(tmp_path / "x.csv"), "read_headers": True}
  with pytest.raises(ValueError, match="'rsna' cannot be .* read_headers"):
    card_lib.build_from_tables(rsna)
  # a mixture is refused for the entry that needs its files, and described entry by entry else
  nih = make_nih_dir(tmp_path / "nih") / "Data_Entry_2017.csv"
  parts = [{"source": "nih", "metadata": str(nih)}, {"source": "siim", "metadata": str(SIIM_TABLE)}]
  mix = ml_collections.ConfigDict({"source": "mixture", "sources": parts})
  with pytest.raises(ValueError, match="'siim' cannot be described"):
    card_lib.build_from_tables(mix)
  mix.sources[1]["patient_id"] = "image_id"
  source, files = card_lib.build_from_tables(mix)
  assert (len(source), files["listed"], files["present"]) == (14, 14, 0)
