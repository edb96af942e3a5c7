"""mdx.outputs: staged folders that never replace a user's file, atomic files, safe CSV cells."""

import csv
import errno
import json
import os

import pytest

from mdx import outputs


def _write(folder, files):
  with folder:
    for rel, text in files.items():
      with open(folder.path(rel), "w") as f:
        f.write(text)
    return folder.commit()


def test_commit_moves_files_and_records_their_digests(tmp_path):
  out = tmp_path / "out"
  moved = _write(outputs.OutputFolder(str(out), "predict"), {"a.csv": "1\n", "sub/b.txt": "2"})
  assert (out / "a.csv").read_text() == "1\n" and (out / "sub" / "b.txt").read_text() == "2"
  manifest = json.loads((out / outputs.MANIFEST).read_text())
  assert set(manifest["files"]) == {"a.csv", "sub/b.txt"} == set(moved)
  assert manifest["files"]["a.csv"]["sha256"] == outputs.digest(str(out / "a.csv"))
  assert "committing" not in manifest
  assert not [p for p in os.listdir(out) if p.startswith(outputs.STAGING)]


def test_a_file_mdx_did_not_write_is_refused_before_work(tmp_path):
  (tmp_path / "predictions.csv").write_text("the user's\n")
  folder = outputs.OutputFolder(str(tmp_path), "predict")
  with pytest.raises(outputs.OutputError, match="predictions.csv.*did not write"):
    folder.claim(files=["predictions.csv"])
  (tmp_path / "gradcam").mkdir()
  (tmp_path / "gradcam" / "note.png").write_text("x")
  with pytest.raises(outputs.OutputError, match="note.png"):
    folder.claim(folders=["gradcam"])
  outputs.OutputFolder(str(tmp_path), "predict", overwrite=True).claim(["predictions.csv"])
  assert (tmp_path / "predictions.csv").read_text() == "the user's\n"


def test_mdx_replaces_its_own_files_but_not_ones_a_user_changed(tmp_path):
  _write(outputs.OutputFolder(str(tmp_path), "evaluate"), {"report.md": "old", "x.json": "{}"})
  outputs.OutputFolder(str(tmp_path), "evaluate").claim(files=["report.md", "x.json"])
  (tmp_path / "report.md").write_text("old, with the reader's notes")
  with pytest.raises(outputs.OutputError, match="changed since mdx wrote it"):
    outputs.OutputFolder(str(tmp_path), "evaluate").claim(files=["report.md"])


def test_an_error_leaves_the_old_result_and_no_staging(tmp_path):
  _write(outputs.OutputFolder(str(tmp_path), "predict"), {"predictions.csv": "old"})
  folder = outputs.OutputFolder(str(tmp_path), "predict", completes=["predictions.csv"])
  with pytest.raises(RuntimeError), folder:
    with open(folder.path("predictions.csv"), "w") as f:
      f.write("new, half")
    raise RuntimeError("killed")
  assert (tmp_path / "predictions.csv").read_text() == "old"
  assert not os.path.exists(folder.staging)


def test_a_killed_run_is_reported_and_its_partial_files_removed(tmp_path):
  folder = outputs.OutputFolder(str(tmp_path), "predict")
  folder.__enter__()  # a run that was killed: no __exit__, no commit
  with open(folder.path("predictions.csv"), "w") as f:
    f.write("half")
  said = outputs.OutputFolder(str(tmp_path), "predict").report_interrupted()
  assert len(said) == 1 and "interrupted before its results were complete" in said[0]
  assert not os.path.exists(folder.staging)


def test_a_kill_while_moving_leaves_nothing_that_looks_complete(tmp_path):
  _write(outputs.OutputFolder(str(tmp_path), "predict"), {"predictions.csv": "old", "m.nii": "o"})
  folder = outputs.OutputFolder(str(tmp_path), "predict", completes=["predictions.csv"])
  with folder:
    for rel in ("predictions.csv", "m.nii"):
      with open(folder.path(rel), "w") as f:
        f.write("new")
    folder.begin_commit()
    folder.move_staged()  # killed here, before finish
  assert not (tmp_path / "predictions.csv").exists()
  said = outputs.OutputFolder(str(tmp_path), "predict").report_interrupted()
  assert any("while moving its files" in s for s in said)
  # the moved m.nii is still mdx's (the commit recorded it before moving): the next run claims it
  assert outputs.owned_files(str(tmp_path)) >= {str(tmp_path / "m.nii")}
  outputs.OutputFolder(str(tmp_path), "predict").claim(["m.nii", "predictions.csv"])


def test_a_disk_full_at_the_commit_leaves_the_old_result(tmp_path, monkeypatch):
  """The manifest is the one file a commit writes: it is written before anything is removed."""
  _write(outputs.OutputFolder(str(tmp_path), "predict"), {"predictions.csv": "old", "e.csv": "o"})
  folder = outputs.OutputFolder(str(tmp_path), "predict", completes=["predictions.csv"])

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / outputs.MANIFEST))

  with pytest.raises(outputs.OutputError, match="no space left writing"), folder:
    for rel in ("predictions.csv", "e.csv"):
      with open(folder.path(rel), "w") as f:
        f.write("new")
    monkeypatch.setattr(outputs, "write_json", full)
    folder.commit()
  assert (tmp_path / "predictions.csv").read_text() == "old"
  assert (tmp_path / "e.csv").read_text() == "o"
  assert not os.path.exists(folder.staging)


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
  folder = outputs.OutputFolder(str(tmp_path / "out"), "predict")

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x"))

  with pytest.raises(outputs.OutputError, match="no space left writing"), folder:
    with open(folder.path("a.csv"), "w") as f:
      f.write("a")
    full()
  assert not os.path.exists(folder.staging)
  with pytest.raises(outputs.OutputError, match="no space left"):
    with outputs.atomic_path(str(tmp_path / "c.json")):
      full()
  assert os.listdir(tmp_path) == ["out"]


def test_atomic_write_replaces_whole_files(tmp_path):
  path = tmp_path / "config.json"
  outputs.write_json(str(path), {"a": 1})
  assert json.loads(path.read_text()) == {"a": 1}
  with pytest.raises(KeyError), outputs.atomic_path(str(path)) as tmp:
    with open(tmp, "w") as f:
      f.write("{half")
    raise KeyError("killed")
  assert json.loads(path.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["config.json"]


def test_written_files_get_the_modes_of_the_users_umask(tmp_path):
  """Not the 0600 of the temporary file: a group that reads the user's results still can."""
  mask = os.umask(0o027)
  try:
    outputs.write_text(str(tmp_path / "a.txt"), "x")
    folder = outputs.OutputFolder(str(tmp_path / "out"), "test")
    folder.claim(["b.txt"])
    with open(folder.path("b.txt"), "w") as f:
      f.write("y")
    folder.commit()
  finally:
    os.umask(mask)
  for path in (tmp_path / "a.txt", tmp_path / "out" / "b.txt", tmp_path / "out" / outputs.MANIFEST):
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640), path


@pytest.mark.parametrize(
  "cell, safe",
  [
    ("=1+2.png", "'=1+2.png"),
    ("+x", "'+x"),
    ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "'\tx"),
    ("-0.5", "-0.5"),
    ("a=b.png", "a=b.png"),
    (3, 3),
  ],
)
def test_csv_cells_a_spreadsheet_would_run_are_neutralised(tmp_path, cell, safe):
  path = tmp_path / "p.csv"
  with open(path, "w", newline="") as f:
    outputs.csv_writer(f).writerow([cell])
  with open(path, newline="") as f:
    assert next(csv.reader(f)) == [str(safe)]


def test_a_claimed_folder_is_replaced_whole_but_a_users_file_in_it_stays(tmp_path):
  _write(outputs.OutputFolder(str(tmp_path), "export"), {"variables/a": "1", "variables/b": "2"})
  (tmp_path / "variables" / "note.txt").write_text("the user's")
  folder = outputs.OutputFolder(str(tmp_path), "export", overwrite=True)
  folder.claim(folders=["variables"])
  _write(folder, {"variables/a": "new"})
  assert sorted(os.listdir(tmp_path / "variables")) == ["a", "note.txt"]
  assert (tmp_path / "variables" / "a").read_text() == "new"
