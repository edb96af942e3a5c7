"""Prediction CSVs: matching by id, unknown labels, and errors that name the line and column."""

import numpy as np
import pytest

from mdx.evaluate import predictions as P


def _write(path, text):
  path.write_text(text)
  return str(path)


@pytest.fixture
def good(tmp_path):
  labels = _write(
    tmp_path / "labels.csv",
    "image,patient,Mass,Effusion\na.png,p1,1,0\nb.png,p1,0,\nc.png,p2,1,1\n",
  )
  probs = _write(
    tmp_path / "probs.csv", "image,Effusion,Mass\nc.png,0.9,0.8\na.png,0.2,0.7\nb.png,0.5,0.1\n"
  )
  return labels, probs


def test_reads_and_aligns_by_id(good):
  pred = P.read_predictions(*good, patient_column="patient")
  assert pred.findings == ("Mass", "Effusion")
  assert pred.ids.tolist() == ["a.png", "b.png", "c.png"]
  assert pred.patient_ids.tolist() == ["p1", "p1", "p2"]
  np.testing.assert_array_equal(pred.labels, [[1, 0], [0, np.nan], [1, 1]])
  np.testing.assert_array_equal(pred.probs, [[0.7, 0.2], [0.1, 0.5], [0.8, 0.9]])
  # Without --patient_column the patient column would be a finding missing from the probabilities.
  with pytest.raises(ValueError, match=r"missing \['patient'\].*--patient_column"):
    P.read_predictions(*good)


def test_round_trip_through_write_csv(tmp_path):
  labels = np.array([[1, np.nan], [0, 1]])
  lp = P.write_csv(str(tmp_path / "l.csv"), ["x", "y"], labels, ["A", "B"], patient_ids=["p", "q"])
  pp = P.write_csv(str(tmp_path / "p.csv"), ["y", "x"], [[0.3, 0.4], [0.25, 1.0]], ["A", "B"])
  pred = P.read_predictions(lp, pp, id_column="id", patient_column="patient_id")
  np.testing.assert_array_equal(pred.labels, labels)
  np.testing.assert_array_equal(pred.probs, [[0.25, 1.0], [0.3, 0.4]])


def test_write_csv_with_patient_ids_and_fixed_decimals(tmp_path):
  """A run's predictions CSV: image_id, patient_id, then one probability per finding, 6 decimals."""
  probs = np.array([[0.1234567, 1.0], [0.5, 2e-7]], np.float32)
  path = P.write_csv(
    str(tmp_path / "sub" / "test_predictions.csv"),
    ["a.png", "b.png"],
    probs,
    ["Mass", "Effusion"],
    id_column="image_id",
    patient_ids=["p1", "p2"],
    digits=6,
  )
  lines = open(path).read().splitlines()
  assert lines == [
    "image_id,patient_id,Mass,Effusion",
    "a.png,p1,0.123457,1.000000",
    "b.png,p2,0.500000,0.000000",
  ]
  with pytest.raises(ValueError, match=r"values \(2, 2\) must be \[len\(ids\)=3"):
    P.write_csv(str(tmp_path / "x.csv"), ["a", "b", "c"], probs, ["Mass", "Effusion"])


@pytest.mark.parametrize(
  "labels_text, probs_text, match",
  [
    ("id,A\n,1\n", "id,A\nx,0.5\n", r"labels.csv: line 2, column 'id': the id is missing"),
    (
      "id,A\nx,1\nx,0\n",
      "id,A\nx,0.5\n",
      r"line 3, column 'id': id 'x' already appeared on line 2",
    ),
    ("id,A\nx,1\ny,0\n", "id,A\nx,0.5\nz,0.1\n", r"ids do not match: 1 ids .*\['y'\].*\['z'\]"),
    (
      "id,A\nx,1\n",
      "id,A\nx,1.5\n",
      r"probs.csv: line 2, column 'A': probability '1.5' lies outside \[0, 1\]",
    ),
    ("id,A\nx,1\n", "id,A\nx,-0.1\n", r"line 2, column 'A': probability '-0.1'"),
    (
      "id,A\nx,1\ny,0\n",
      "id,A\nx,0.1\ny,abc\n",
      r"probs.csv: line 3, column 'A': 'abc' is not a number",
    ),
    ("id,A\nx,yes\n", "id,A\nx,0.5\n", r"labels.csv: line 2, column 'A': 'yes' is not a number"),
    ("id,A\nx,-1\n", "id,A\nx,0.5\n", r"line 2, column 'A': label '-1' must be 0, 1 or blank"),
    ("id,A\nx,1\n", "id,A\nx,\n", r"line 2, column 'A': the probability is missing"),
    ("id,A,B\nx,1,0\n", "id,A\nx,0.5\n", r"missing \['B'\]"),
    ("id,A\nx,1\n", "id,A,C\nx,0.5,0.1\n", r"unexpected \['C'\]"),
    ("id,A\nx,1,3\n", "id,A\nx,0.5\n", r"line 2: 3 fields but the header has 2"),
  ],
)
def test_bad_csvs_name_the_line_and_column(tmp_path, labels_text, probs_text, match):
  lp = _write(tmp_path / "labels.csv", labels_text)
  pp = _write(tmp_path / "probs.csv", probs_text)
  with pytest.raises(ValueError, match=match):
    P.read_predictions(lp, pp)


def test_missing_file_and_columns(tmp_path, good):
  with pytest.raises(FileNotFoundError, match="nope.csv"):
    P.read_predictions(str(tmp_path / "nope.csv"), good[1])
  with pytest.raises(ValueError, match="no patient column 'subject'"):
    P.read_predictions(*good, patient_column="subject")
  with pytest.raises(ValueError, match="no id column 'Image Index'"):
    P.read_predictions(*good, id_column="Image Index")
