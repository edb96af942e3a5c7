"""python -m mdx card: from a label table alone (--source) and from an experiment (--config),
printed and written through mdx.outputs; counts checked against the fixture rows."""

import json
import sys

import pytest
from data.real_layouts import make_nih_dir

from mdx import commands


def _nih(tmp_path):
  return str(make_nih_dir(tmp_path / "nih") / "Data_Entry_2017.csv")


def test_source_mode_writes_card_json_and_md(tmp_path, capsys):
  out = tmp_path / "card"
  argv = ["--source=nih", f"--metadata={_nih(tmp_path)}", f"--out={out}"]
  assert commands.call("card", argv) == 0
  printed = capsys.readouterr().out
  assert "Images 6; patients 3" in printed and "0 of the 6 the table names are present" in printed
  card = json.loads((out / "card.json").read_text())
  assert card["images"] == 6 and card["patients"] == 3 and "splits" not in card
  assert card["findings"]["Mass"]["positive"] == 2 and card["findings"]["Hernia"]["negative"] == 5
  assert "| Cardiomegaly | 2 | 4 | 0 | 0.333 |" in (out / "card.md").read_text()
  # a card.md mdx did not write is refused before any work; --overwrite replaces it
  (out / "card.md").write_text("mine")
  assert commands.call("card", argv) == 2
  assert "card.md" in capsys.readouterr().err and (out / "card.md").read_text() == "mine"
  assert commands.call("card", argv + ["--overwrite"]) == 0


def test_source_mode_overrides_set_source_fields(tmp_path, capsys, monkeypatch):
  folder = str(tmp_path / "nih")
  argv = [
    "--source=nih",
    f"--metadata={_nih(tmp_path)}",
    f"--config.data.images={folder}",
    "--config.data.view_positions=['PA']",
  ]
  monkeypatch.setattr(sys, "argv", ["mdx card", *argv])  # config_flags reads them when defined
  assert commands.call("card", argv) == 0
  assert "Images 4; patients 3" in capsys.readouterr().out  # the 4 PA rows, files present
  bad = ["--source=nih", "--config.data.imagez=x"]
  monkeypatch.setattr(sys, "argv", ["mdx card", *bad])
  with pytest.raises(SystemExit) as e:
    commands.call("card", bad)
  assert e.value.code == 2 and "Did you mean --config.data.images?" in capsys.readouterr().err


def test_config_mode_counts_the_splits(tmp_path, capsys):
  argv = [
    "--config=experiments/tiny_phantoms.py",
    "--config.data.num_patients=20",
    f"--out={tmp_path}",
  ]
  assert commands.call("card", argv) == 0
  card = json.loads((tmp_path / "card.json").read_text())
  assert card["patients"] == 20 and card["facts"]["synthetic"] is True
  sets = card["splits"]
  assert sum(s["images"] for s in sets.values()) == card["images"]
  assert sum(s["patients"] for s in sets.values()) == 20  # by patient: no one in two sets
  for f, c in card["findings"].items():
    assert sum(s["positive"][f] for s in sets.values()) == c["positive"]


def test_user_mistakes_are_one_line(tmp_path, capsys):
  assert commands.call("card", []) == 2
  assert "give --config=EXPERIMENT or --source=NAME" in capsys.readouterr().err
  assert commands.call("card", ["--source=nih", f"--metadata={tmp_path}/none.csv"]) == 2
  assert "none.csv does not exist" in capsys.readouterr().err
  assert commands.call("card", ["--source=brats", f"--metadata={_nih(tmp_path)}"]) == 2
  assert "unknown for image tasks" in capsys.readouterr().err
  # SIIM's patients are in its DICOM headers: refused from the table alone, saying what to set
  siim = "tests/data/cxr/fixtures/siim/train-rle.csv"
  assert commands.call("card", ["--source=siim", f"--metadata={siim}"]) == 2
  err = capsys.readouterr().err
  assert "cannot be described from its table alone" in err and "patient_id=image_id" in err
