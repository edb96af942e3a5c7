"""The consensus command (python -m mdx consensus --out=DIR READER.csv ...): reader CSVs in,
labels.csv and agreement.json out.

The three-reader case is worked by hand from the definitions (majority, Cohen's and Fleiss' kappa)
and one pair is checked against scikit-learn; the other cases run the command in this process
(mdx.commands.call) to stay fast.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from mdx import commands
from mdx.data.image import file_source

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDS = ["a", "b", "c", "d", "e", "f"]
# Reads per reader, image a..f. Mass is read completely; reader 3 left Effusion of image c blank.
MASS = {"r1": "110010", "r2": "110100", "r3": "100010"}
EFFUSION = {"r1": "011001", "r2": "010001", "r3": "01 100"}


def write_reader(path, rows, columns=("image", "Mass", "Effusion")):
  """rows: {id: {column: text}}; written with the CSV writer the tool reads back."""
  file_source.write_csv(
    path, list(columns), [{columns[0]: i, **cells} for i, cells in rows.items()]
  )
  return str(path)


def three_readers(tmp_path):
  paths = []
  for r in ("r1", "r2", "r3"):
    rows = {i: {"Mass": MASS[r][n], "Effusion": EFFUSION[r][n].strip()} for n, i in enumerate(IDS)}
    paths.append(write_reader(tmp_path / f"{r}.csv", rows))
  return paths


def read_labels(out):
  columns, rows = file_source.read_csv(os.path.join(out, "labels.csv"))
  return columns, {r[columns[0]]: {c: r[c] for c in columns[1:]} for r in rows}


def consensus(*argv) -> int:
  """The command's exit status, run in this process."""
  return commands.call("consensus", [str(a) for a in argv])


def pair(report, finding, a, b):
  (hit,) = [p for p in report["findings"][finding]["cohen_kappa"] if p["readers"] == [a, b]]
  return hit


def test_three_readers_by_hand_in_a_subprocess(tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(
    [sys.executable, "-m", "mdx", "consensus", f"--out={out}", *three_readers(tmp_path)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  columns, labels = read_labels(out)
  assert columns == ["image", "Mass", "Effusion"]
  # Majority of three: Mass 1 1 0 0 1 0; Effusion c is 1 vs 0 (r3 blank) -> a tie -> blank.
  assert [labels[i]["Mass"] for i in IDS] == ["1", "1", "0", "0", "1", "0"]
  assert [labels[i]["Effusion"] for i in IDS] == ["0", "1", "", "0", "0", "1"]

  report = json.loads((out / "agreement.json").read_text())
  mass, eff = report["findings"]["Mass"], report["findings"]["Effusion"]
  assert (mass["images"], mass["positives"], mass["ties"], mass["unknown"]) == (6, 3, 0, 0)
  assert (eff["images"], eff["positives"], eff["ties"], eff["unknown"]) == (6, 2, 1, 1)
  assert eff["reads_per_reader"] == {"r1": 6, "r2": 6, "r3": 5}
  # Cohen, Mass r1/r2: observed 4/6, both 3/6 positive -> expected 1/2 -> (2/3 - 1/2) / (1/2).
  assert pair(report, "Mass", "r1", "r2")["kappa"] == pytest.approx(1 / 3, abs=1e-6)
  assert pair(report, "Mass", "r1", "r3")["kappa"] == pytest.approx(2 / 3, abs=1e-6)  # 5/6, 1/2
  assert pair(report, "Mass", "r2", "r3")["kappa"] == pytest.approx(0.0, abs=1e-6)  # 3/6, 1/2
  # Effusion r1/r3 on the 5 images both read: observed 3/5, expected 13/25 -> 1/6.
  r13 = pair(report, "Effusion", "r1", "r3")
  assert r13["images"] == 5 and r13["kappa"] == pytest.approx(1 / 6, abs=1e-6)
  r1 = [int(x) for x in EFFUSION["r1"]]
  r3 = [int(x) for x in EFFUSION["r3"].replace(" ", "9")]
  keep = [n for n in range(6) if r3[n] != 9]
  sk = cohen_kappa_score([r1[n] for n in keep], [r3[n] for n in keep])
  assert r13["kappa"] == pytest.approx(sk, abs=1e-6)
  # Fleiss, Mass (3 readers, 6 images): P_bar = 2/3, P_e = (4/9)^2 + (5/9)^2 = 41/81 -> 13/40.
  assert mass["fleiss_kappa"] == pytest.approx(13 / 40, abs=1e-6) and mass["fleiss_images"] == 6
  # Effusion over the 5 images all read: P_bar = 11/15, P_e = 13/25 -> 4/9.
  assert eff["fleiss_kappa"] == pytest.approx(4 / 9, abs=1e-6) and eff["fleiss_images"] == 5

  table = proc.stdout.splitlines()
  assert "3 readers over 6 images" in table[0]
  assert table[2].split() == ["Mass", "6", "3", "0", "0", "0.325", "(6)"]
  assert table[3].split() == ["Effusion", "6", "2", "1", "1", "0.444", "(5)"]


@pytest.mark.parametrize(
  "tie, expected",
  [
    ("unknown", ["", "1", "0", "", ""]),
    ("positive", ["1", "1", "0", "1", ""]),
    ("negative", ["0", "1", "0", "0", ""]),
    ("reader:0", ["1", "1", "0", "0", ""]),
    ("reader:1", ["0", "1", "0", "1", ""]),
    ("reader:senior", ["0", "1", "0", "1", ""]),  # a reader named by its file
  ],
)
def test_tie_rules(tmp_path, tie, expected, capsys):
  # x and w split 1-0 and 0-1; y, z agree; v has no read at all and stays blank under every rule.
  ids = ["x", "y", "z", "w", "v"]
  first = dict(zip(ids, ["1", "1", "0", "0", ""]))
  second = dict(zip(ids, ["0", "1", "0", "1", ""]))
  paths = [
    write_reader(
      tmp_path / "junior.csv", {i: {"Mass": v} for i, v in first.items()}, ("id", "Mass")
    ),
    write_reader(
      tmp_path / "senior.csv", {i: {"Mass": v} for i, v in second.items()}, ("id", "Mass")
    ),
  ]
  out = tmp_path / "out"
  assert consensus(*paths, f"--out={out}", f"--tie={tie}") == 0  # flags after the files too
  _, labels = read_labels(out)
  assert [labels[i]["Mass"] for i in ids] == expected
  mass = json.loads((out / "agreement.json").read_text())["findings"]["Mass"]
  assert (mass["images"], mass["ties"], mass["unread"]) == (4, 2, 1)
  assert mass["unknown"] == expected[:4].count("")
  assert "Mass" in capsys.readouterr().out


def test_tie_reader_out_of_range_is_a_user_error(tmp_path, capsys):
  paths = three_readers(tmp_path)
  assert consensus(f"--out={tmp_path / 'o'}", "--tie=reader:3", *paths) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --tie=reader:3") and "0..2" in err and err.count("\n") == 1


def test_readers_who_missed_images_and_an_id_column_not_first(tmp_path):
  # r1 read a, b, c; r2 read b, c, d (id column last, findings in another order, pandas floats);
  # r3 read all four. The union is a, b, c, d; only b and c were read by everyone.
  p1 = write_reader(
    tmp_path / "r1.csv",
    {i: {"Mass": m, "Nodule": n} for i, m, n in zip("abc", "110", "010")},
    ("image", "Mass", "Nodule"),
  )
  p2 = str(tmp_path / "r2.csv")
  file_source.write_csv(
    p2,
    ["Nodule", "Mass", "image"],
    [
      {"image": "b", "Nodule": "1.0", "Mass": "1.0"},
      {"image": "c", "Nodule": "0.0", "Mass": "1.0"},
      {"image": "d", "Nodule": "1", "Mass": "0"},
    ],
  )
  p3 = write_reader(
    tmp_path / "r3.csv",
    {i: {"Mass": m, "Nodule": "0"} for i, m in zip("abcd", "1000")},
    ("image", "Mass", "Nodule"),
  )
  out = tmp_path / "out"
  assert consensus(f"--out={out}", "--id_column=image", p1, p2, p3) == 0
  columns, labels = read_labels(out)
  assert columns == ["image", "Mass", "Nodule"] and list(labels) == ["a", "b", "c", "d"]
  # Mass: a 1,-,1 -> 1; b 1,1,0 -> 1; c 0,1,0 -> 0; d -,0,0 -> 0.  Nodule: b 1,1,0 -> 1.
  assert [labels[i]["Mass"] for i in "abcd"] == ["1", "1", "0", "0"]
  assert [labels[i]["Nodule"] for i in "abcd"] == ["0", "1", "0", ""]  # d: 1 vs 0, a tie
  mass = json.loads((out / "agreement.json").read_text())["findings"]["Mass"]
  assert mass["images"] == 4 and mass["fleiss_images"] == 2
  assert mass["reads_per_reader"] == {"r1": 3, "r2": 3, "r3": 4}
  assert pair({"findings": {"Mass": mass}}, "Mass", "r1", "r2")["images"] == 2
  # Fleiss, Mass on b (2 pos, 1 neg) and c (1 pos, 2 neg): P_bar = 1/3, P_e = 1/2 -> -1/3.
  assert mass["fleiss_kappa"] == pytest.approx(-1 / 3, abs=1e-6)
  np.testing.assert_allclose(
    pair({"findings": {"Mass": mass}}, "Mass", "r1", "r3")["kappa"],
    cohen_kappa_score([1, 1, 0], [1, 0, 0]),
    atol=1e-6,
  )


def test_bad_cell_names_file_line_and_column(tmp_path, capsys):
  paths = three_readers(tmp_path)
  _, rows = file_source.read_csv(paths[1])
  rows[2]["Effusion"] = "-1"  # the third data row: line 4 of the file
  file_source.write_csv(paths[1], ["image", "Mass", "Effusion"], rows)
  assert consensus(f"--out={tmp_path / 'o'}", *paths) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {paths[1]} line 4 (id 'c'), column 'Effusion': '-1'")
  assert err.count("\n") == 1 and not os.path.exists(tmp_path / "o")


def test_mismatched_findings_name_the_file_and_columns(tmp_path, capsys):
  paths = three_readers(tmp_path)
  _, rows = file_source.read_csv(paths[2])
  rows = [{"image": r["image"], "Mass": r["Mass"], "Nodule": "0"} for r in rows]
  file_source.write_csv(paths[2], ["image", "Mass", "Nodule"], rows)
  assert consensus(f"--out={tmp_path / 'o'}", *paths) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {paths[2]}: findings differ from {paths[0]}")
  assert "missing ['Effusion'], extra ['Nodule']" in err and err.count("\n") == 1


def test_duplicate_id_and_missing_id_column_are_user_errors(tmp_path, capsys):
  paths = three_readers(tmp_path)
  assert consensus(f"--out={tmp_path / 'o'}", "--id_column=Path", *paths) == 2
  assert "missing column(s) ['Path']" in capsys.readouterr().err
  with open(paths[0], "a") as f:
    f.write("b,1,0\n")
  assert consensus(f"--out={tmp_path / 'o'}", *paths) == 2
  assert "line 8: id 'b' already read on line 3" in capsys.readouterr().err


def test_missing_file_is_one_line_without_traceback(tmp_path):
  paths = three_readers(tmp_path)
  missing = str(tmp_path / "r4.csv")
  proc = subprocess.run(
    [sys.executable, "-m", "mdx", "consensus", f"--out={tmp_path / 'o'}", *paths, missing],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr == f"error: reads file {missing} does not exist\n"


def test_one_reader_or_no_out_is_a_usage_error(tmp_path, capsys):
  (path,) = three_readers(tmp_path)[:1]
  assert consensus(f"--out={tmp_path / 'o'}", path) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: give two or more readers' CSV files") and err.count("\n") == 1
  assert consensus(path, path) == 2
  assert "--out" in capsys.readouterr().err
