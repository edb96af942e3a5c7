"""Every CSV table mdx reads (mdx.data.image.file_source.read_csv: NIH and CheXpert metadata, the
NIH expert labels, readers' files, split and audit inputs, split lists) refuses a row with fewer or
more fields than its header, naming the file and line, before any work; and every table mdx
writes (file_source.write_csv) is whole, with cells a spreadsheet would run as a formula
neutralised and read back as they were."""

import gzip
import os

import ml_collections
import pytest
from real_layouts import NIH_COLUMNS, write_csv

from mdx import commands
from mdx.data import sources, splits
from mdx.data.cxr import chexpert
from mdx.data.image import file_source, images

CHEX_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *chexpert.OBSERVATIONS]
EXPERT_COLUMNS = [*NIH_COLUMNS, "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass"]


def write_lines(path, lines):
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wt", newline="") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


def nih_row(image, patient):
  return f"{image},Mass,0,{patient},50,M,PA"


def no_image_read(monkeypatch):
  def refuse(*_):
    raise AssertionError("an image was read before the table was refused")

  monkeypatch.setattr(images, "read_image", refuse)


def test_a_short_nih_row_is_an_error_naming_its_line_not_a_patient_none(tmp_path, monkeypatch):
  """The issue's case: a row cut short (no Patient ID and after) used to train with patient id
  None. The line counts physical lines: the header is 1, a blank line is skipped but counted."""
  no_image_read(monkeypatch)
  meta = write_lines(
    tmp_path / "Data_Entry_2017.csv",
    [",".join(NIH_COLUMNS), nih_row("a.png", 1), "", nih_row("b.png", 2), "c.png,Mass,0"],
  )
  config = ml_collections.ConfigDict(dict(source="nih", metadata=meta, images=str(tmp_path)))
  with pytest.raises(ValueError) as e:
    sources.make_source(config, 0)
  assert str(e.value).startswith(f"{meta} line 5: 3 fields, the header has 7; ")
  assert "fix the row" in str(e.value) and "\n" not in str(e.value)


def test_a_long_row_in_a_gzip_table_is_an_error_naming_its_line(tmp_path):
  meta = write_lines(
    tmp_path / "Data_Entry_2017_v2020.csv.gz",
    [",".join(NIH_COLUMNS), nih_row("a.png", 1), nih_row("b.png", 2) + ",extra"],
  )
  with pytest.raises(ValueError, match=r"v2020\.csv\.gz line 3: 8 fields, the header has 7; "):
    file_source.read_csv(meta)


def test_a_quoted_comma_is_one_field_and_a_quoted_line_break_counts_its_lines(tmp_path):
  """Independent oracle: the row as a CSV writer quotes it is no ragged row; the line numbers are
  physical lines (a value spanning two lines moves the next row's number by one)."""
  meta = write_lines(
    tmp_path / "t.csv",
    ["image,note,patient", 'a.png,"one, two",1', 'b.png,"line\nbreak",2', "c.png,3"],
  )
  with pytest.raises(ValueError, match=r"t\.csv line 5: 2 fields, the header has 3"):
    file_source.read_csv(meta)
  write_lines(tmp_path / "t.csv", ["image,note,patient", 'a.png,"one, two",1'])
  assert file_source.read_csv(meta)[1] == [{"image": "a.png", "note": "one, two", "patient": "1"}]


@pytest.mark.parametrize(
  "source, columns",
  [("chexpert", CHEX_COLUMNS), ("nih_expert", EXPERT_COLUMNS)],
)
def test_every_metadata_source_refuses_a_short_row(tmp_path, monkeypatch, source, columns):
  no_image_read(monkeypatch)
  good = ["x"] * len(columns)
  meta = write_lines(tmp_path / "meta.csv", [",".join(columns), ",".join(good), "x,y"])
  config = ml_collections.ConfigDict(dict(source=source, metadata=meta, images=str(tmp_path)))
  with pytest.raises(
    ValueError, match=rf"meta\.csv line 3: 2 fields, the header has {len(columns)}; "
  ):
    sources.make_source(config, 0)


def test_the_split_audit_and_consensus_commands_name_the_short_row(tmp_path, capsys):
  meta = write_lines(
    tmp_path / "Data_Entry_2017.csv",
    [",".join(NIH_COLUMNS), nih_row("a.png", 1), nih_row("b.png", 2)[:-3]],
  )
  assert commands.call("split", [f"--metadata={meta}", f"--out={tmp_path / 'sets'}"]) == 2
  assert commands.call("audit", [meta, meta]) == 2
  reader = write_lines(tmp_path / "r1.csv", ["image,Mass,Effusion", "a,1,0", "b,1"])
  other = write_lines(tmp_path / "r2.csv", ["image,Mass,Effusion", "a,1,0", "b,1,1"])
  assert commands.call("consensus", [f"--out={tmp_path / 'c'}", reader, other]) == 2
  err = capsys.readouterr().err.splitlines()
  assert err == [
    f"error: {meta} line 3: 6 fields, the header has 7; " + err[0].split("; ", 1)[1],
    f"error: {meta} line 3: 6 fields, the header has 7; " + err[0].split("; ", 1)[1],
    f"error: {reader} line 3: 2 fields, the header has 3; " + err[0].split("; ", 1)[1],
  ]
  assert not (tmp_path / "sets").exists() and not (tmp_path / "c").exists()  # nothing written


def test_a_short_row_in_a_split_list_is_an_error(tmp_path):
  write_csv(str(tmp_path / "train.csv"), ["Path", "Patient"], [("a.png", "1")])
  write_lines(tmp_path / "validation.csv", ["Path,Patient", "b.png"])
  with pytest.raises(ValueError, match=r"validation\.csv line 2: 1 field, the header has 2"):
    splits.lists_split(["a.png", "b.png"], ["1", "2"], str(tmp_path))


def test_formula_cells_are_neutralised_when_written_and_read_back_as_they_were(tmp_path):
  """write_csv's file holds the spreadsheet-safe cell ("'=1+2.png", the oracle: the OWASP rule
  that a leading = + - @ gets an apostrophe unless it is a number); read_csv, and so a run given the
  split command's lists, reads the file name the user has."""
  names = ["=1+2.png", "@SUM(A1).png", "-0.5", "'quoted.png", "plain.png"]
  path = tmp_path / "sets" / "train.csv"
  file_source.write_csv(
    str(path),
    ["Image Index", "Patient ID"],
    [{"Image Index": n, "Patient ID": str(k)} for k, n in enumerate(names)],
  )
  lines = path.read_text().splitlines()
  assert lines[1:] == ["'=1+2.png,0", "'@SUM(A1).png,1", "-0.5,2", "'quoted.png,3", "plain.png,4"]
  assert [r["Image Index"] for r in file_source.read_csv(path)[1]] == names
  assert os.listdir(path.parent) == ["train.csv"]  # no temporary file left beside it
  write_csv(str(tmp_path / "sets" / "validation.csv"), ["Image Index"], [("b.png",)])
  got = splits.lists_split(["=1+2.png", "b.png"], ["0", "1"], str(tmp_path / "sets"))
  assert got["train"].tolist() == [0] and got["validation"].tolist() == [1]


def test_the_split_command_writes_a_formula_like_file_name_as_a_safe_cell(tmp_path, capsys):
  rows = [
    (f"{'=1+2' if p == 0 else f'{p:08d}'}_{k:03d}.png", "Mass" if p % 2 else "No Finding", k, p)
    + (50, "M", "PA")
    for p in range(20)
    for k in range(2)
  ]
  write_csv(str(tmp_path / "Data_Entry_2017.csv"), NIH_COLUMNS, rows)
  out = tmp_path / "sets"
  argv = [f"--metadata={tmp_path / 'Data_Entry_2017.csv'}", f"--out={out}", "--test_size=4"]
  assert commands.call("split", [*argv, "--val_size=4"]) == 0
  capsys.readouterr()
  cells = [
    line.split(",")[0]
    for name in ("train", "validation", "test")
    for line in (out / f"{name}.csv").read_text().splitlines()[1:]
  ]
  assert sorted(c for c in cells if "=1+2" in c) == ["'=1+2_000.png", "'=1+2_001.png"]
  assert len(cells) == 40 and not any(c.startswith("=") for c in cells)
  listed = [
    r["Image Index"]
    for n in ("train", "validation", "test")
    for r in file_source.read_csv(out / f"{n}.csv")[1]
  ]
  assert sorted(listed) == sorted(r[0] for r in rows)
  assert sorted(os.listdir(out)) == ["test.csv", "train.csv", "validation.csv"]  # nothing else
