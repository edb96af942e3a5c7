"""predict never loses what a user owns (issue 24): a file mdx did not write is refused before any
input is read, a failed run leaves the previous complete result, a full disk is one line, and the
CSV cells a spreadsheet would run are neutralised; tiny inputs are predicted with a warning.

The models are the tiny random bundles of tests/bundle_fixtures.py: these tests are about files.
"""

import csv
import errno
import json
import os

import nibabel as nib
import numpy as np
import pytest
from bundle_fixtures import write_classifier_bundle, write_segmenter_bundle
from PIL import Image

from mdx import outputs
from mdx.inference import bundle as bundle_lib
from mdx.inference import classifier as classifier_lib
from mdx.inference import predict_files

FINDINGS = ("Effusion", "Nodule")
SIZE = 32


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  path = write_classifier_bundle(
    str(tmp_path_factory.mktemp("cls") / "bundle"),
    FINDINGS,
    {"Effusion": 0.5, "Nodule": None},
    {"mode": "none"},
    SIZE,
  )
  return bundle_lib.load(path)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
  return bundle_lib.load(write_segmenter_bundle(str(tmp_path_factory.mktemp("seg") / "bundle")))


def films(folder, names=("a.png", "b.png", "c.png")):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name in names:
    Image.fromarray(rng.integers(0, 255, (64, 64), np.uint8)).save(folder / name)
  return folder


def rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def snapshot(folder):
  """{relative path: bytes} of every file under folder (hidden ones included)."""
  out = {}
  for dirpath, _, names in os.walk(folder):
    for name in names:
      full = os.path.join(dirpath, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, folder)] = f.read()
  return out


def never_read(monkeypatch):
  """Makes reading any input an error: a refusal must come before the first image is decoded."""

  def read(self, path):
    raise AssertionError(f"{path} was read before the refusal")

  monkeypatch.setattr(classifier_lib.ImageFiles, "read", read)


def test_a_users_predictions_csv_is_refused_before_any_input_is_read(
  classifier, tmp_path, monkeypatch
):
  images = films(tmp_path / "images")
  out = tmp_path / "out"
  out.mkdir()
  (out / "predictions.csv").write_text("the radiologist's own reads\n")
  (out / "errors.csv").write_text("mine too\n")
  before = snapshot(out)
  with monkeypatch.context() as m:
    never_read(m)
    with pytest.raises(outputs.OutputError, match="predictions.csv.*did not write") as info:
      predict_files.predict(classifier, str(images), str(out), progress=False)
  assert "\n" not in str(info.value) and "--overwrite" in str(info.value)
  assert snapshot(out) == before
  # output == input: the same refusal for a user's predictions.csv among the images
  (images / "predictions.csv").write_text("mine\n")
  with pytest.raises(outputs.OutputError, match="predictions.csv"):
    predict_files.predict(classifier, str(images), str(images), progress=False)
  # --overwrite replaces them, and the manifest then owns them
  summary = predict_files.predict(classifier, str(images), str(out), progress=False, overwrite=True)
  assert summary["predicted"] == 3 and len(rows(out / "predictions.csv")) == 3
  manifest = json.loads((out / outputs.MANIFEST).read_text())
  assert {"predictions.csv", "errors.csv"} <= set(manifest["files"])


def test_a_second_run_replaces_its_own_result_and_skips_its_own_files(classifier, tmp_path):
  images = films(tmp_path / "images")
  predict_files.predict(classifier, str(images), str(images), gradcam=["Nodule"], progress=False)
  first = rows(images / "predictions.csv")
  # a user's note beside the results stays; mdx's own files are replaced without a word
  (images / "NOTE.txt").write_text("reviewed")
  summary = predict_files.predict(
    classifier, str(images), str(images), gradcam=["Nodule"], progress=False
  )
  assert summary["predicted"] == 3  # its overlays and CSVs were not taken for inputs
  assert rows(images / "predictions.csv") == first
  assert (images / "NOTE.txt").read_text() == "reviewed"
  assert sorted(os.listdir(images / "gradcam")) == [f"{n}.png__Nodule.png" for n in "abc"]
  assert not [n for n in os.listdir(images) if n.startswith(outputs.STAGING)]


def test_ground_truth_label_maps_are_never_replaced(segmenter, tmp_path):
  """The issue's case: predict --input=MSD/imagesTr --output=MSD/labelsTr."""
  images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
  images.mkdir()
  labels.mkdir()
  rng = np.random.default_rng(1)
  for name in ("case_001.nii.gz", "case_002.nii.gz"):
    scan = rng.normal(0, 1, (20, 18, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(scan, np.eye(4)), images / name)
    truth = (scan > 1).astype(np.uint8)
    nib.save(nib.Nifti1Image(truth, np.eye(4)), labels / name)
  before = snapshot(labels)
  with pytest.raises(outputs.OutputError, match="case_001.nii.gz.*did not write"):
    predict_files.predict(segmenter, str(images), str(labels), progress=False)
  assert snapshot(labels) == before
  # into a folder of its own it writes the maps; a rerun replaces them (mdx wrote them)
  out = tmp_path / "pred"
  for _ in range(2):
    summary = predict_files.predict(segmenter, str(images), str(out), progress=False)
    assert summary["predicted"] == 2
  assert [r["warning"] for r in rows(out / "predictions.csv")] == ["", ""]
  # a map the user edited after mdx wrote it is theirs now
  (out / "case_002.nii.gz").write_bytes(b"corrected by hand")
  with pytest.raises(outputs.OutputError, match="case_002.nii.gz.*changed since mdx wrote it"):
    predict_files.predict(segmenter, str(images), str(out), progress=False)


def test_a_failure_midway_leaves_the_previous_complete_result(classifier, tmp_path, monkeypatch):
  images = films(tmp_path / "images", [f"{i:02d}.png" for i in range(6)])
  out = tmp_path / "out"
  predict_files.predict(classifier, str(images), str(out), progress=False)
  before = snapshot(out)
  calls = []
  original = classifier_lib.ImageClassifier.predict

  def dies_on_the_second_batch(self, x):
    calls.append(len(x))
    if len(calls) == 2:
      raise KeyboardInterrupt  # as a Ctrl-C would
    return original(self, x)

  monkeypatch.setattr(classifier_lib.ImageClassifier, "predict", dies_on_the_second_batch)
  with pytest.raises(KeyboardInterrupt):
    predict_files.predict(classifier, str(images), str(out), batch_size=2, progress=False)
  assert snapshot(out) == before  # the old result, whole; no staging folder left


@pytest.mark.parametrize("when", ["writing rows", "moving into place"])
def test_a_full_disk_is_one_line_and_nothing_half_written_looks_final(
  classifier, tmp_path, monkeypatch, when
):
  images = films(tmp_path / "images")
  out = tmp_path / "out"
  predict_files.predict(classifier, str(images), str(out), progress=False)
  before = snapshot(out)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  if when == "writing rows":  # the disk fills while predict streams its rows
    real = outputs.csv_writer

    class Filling:
      def __init__(self, f):
        self.writer, self.rows = real(f), 0

      def writerow(self, row):
        self.rows += 1
        return full() if self.rows == 3 else self.writer.writerow(row)

      def writerows(self, rows):
        for row in rows:
          self.writerow(row)

    monkeypatch.setattr(outputs, "csv_writer", Filling)
  else:
    monkeypatch.setattr(outputs.OutputFolder, "move_staged", full)
  with pytest.raises(outputs.OutputError, match="no space left") as info:
    predict_files.predict(classifier, str(images), str(out), progress=False)
  assert "\n" not in str(info.value)
  assert not [n for n in os.listdir(out) if n.startswith(outputs.STAGING)]
  if when == "writing rows":  # nothing was moved: the old result stands, whole
    assert snapshot(out) == before
  else:  # the old predictions.csv went first, so nothing looks complete; the next run says so
    assert not (out / "predictions.csv").exists()
    said = outputs.OutputFolder(str(out), "predict").report_interrupted()
    assert any("interrupted while moving" in line for line in said)


def test_formula_names_are_neutralised_and_tiny_images_flagged(classifier, tmp_path):
  images = films(tmp_path / "images", ["=1+2.png", "@cmd.png", "-0.5.png", "plain.png"])
  Image.fromarray(np.full((1, 1), 128, np.uint8)).save(images / "tiny.png")
  out = tmp_path / "out"
  predict_files.predict(classifier, str(images), str(out), progress=False)
  got = {r["path"]: r for r in rows(out / "predictions.csv")}
  assert set(got) == {"'-0.5.png", "'=1+2.png", "'@cmd.png", "plain.png", "tiny.png"}
  assert got["plain.png"]["warning"] == ""
  assert "1x1" in got["tiny.png"]["warning"] and "32x32" in got["tiny.png"]["warning"]
  assert got["tiny.png"]["Effusion raw"] != ""  # flagged, still predicted
