"""Predicting on files with only a bundle: image formats, errors.csv, folders and CSV lists, the
bundle's calibration and thresholds, Grad-CAM overlays, damaged bundles and NIfTI label maps.

Fixtures are real files written here (PNG 8/16 bit, JPEG, DICOM, NIfTI); the models are tiny and
randomly initialised, which is enough: every check compares predict's output with an oracle computed
from the same bundle (the classifier on the same pixels, the Platt map, the segmenter).
"""

import csv
import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from bundle_fixtures import write_classifier_bundle, write_segmenter_bundle
from fixture_files import write_dicom
from PIL import Image

from mdx.evaluate.calibration import Platt, map_to_spec
from mdx.inference import bundle as bundle_lib
from mdx.inference import predict_files
from mdx.inference.segmenter import VolumeSegmenter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINDINGS = ("Effusion", "Nodule", "Mass")
PLATT = {"Effusion": Platt(1.5, -0.2), "Nodule": Platt(0.7, 0.1)}  # Mass: not calibrated
THRESHOLDS = {"Effusion": 0.5, "Nodule": 0.45, "Mass": None}
SIZE = 32


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  return write_classifier_bundle(
    str(tmp_path_factory.mktemp("cls") / "bundle"),
    FINDINGS,
    THRESHOLDS,
    {"mode": "dataset", "mean": [0.5], "std": [0.25]},
    SIZE,
    calibration={
      "method": "platt",
      "fitted_on": None,
      "maps": {f: map_to_spec(PLATT.get(f), "test") for f in FINDINGS},
    },
  )


@pytest.fixture(scope="module")
def classifier(classifier_dir):
  return bundle_lib.load(classifier_dir)


def film(seed):
  """A 64 x 64 8-bit film of constant 2 x 2 blocks spanning 0..255: area-averaging it to 32 px is
  exact in 8 and 16 bit alike, and the DICOM window (min..max) maps it back to the same values."""
  rng = np.random.default_rng(seed)
  small = np.clip(rng.normal(100 + 20 * seed, 60, (SIZE, SIZE)), 0, 255).astype(np.uint8)
  small[0, 0], small[-1, -1] = 0, 255
  return np.kron(small, np.ones((2, 2), np.uint8))


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def column(rows, name):
  return np.array([float(r[name]) for r in rows])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A folder of films in every format, a subfolder, broken files and a file of another type."""
  root = tmp_path_factory.mktemp("images")
  v8 = film(0)
  Image.fromarray(v8).save(root / "a8.png")
  Image.fromarray(v8.astype(np.uint16) * 257).save(root / "a16.png")  # 16-bit, same film
  # MONOCHROME1 stores the film inverted; the display chain inverts it back (bone bright)
  write_dicom(root / "a_m1.dcm", (255 - v8.astype(np.uint16)) * 257, "MONOCHROME1")
  write_dicom(root / "IM0001", v8.astype(np.uint16) * 257, "MONOCHROME2")  # DICOM, no suffix
  (root / "sub").mkdir()
  Image.fromarray(film(1)).save(root / "sub" / "b.png")
  Image.fromarray(np.stack([film(2)] * 3, -1)).save(root / "sub" / "c.jpg", quality=95)
  (root / "empty.png").write_bytes(b"")
  Image.fromarray(film(3)).save(root / "sub" / "cut.png")
  data = (root / "sub" / "cut.png").read_bytes()
  (root / "sub" / "cut.png").write_bytes(data[: len(data) // 2])  # truncated
  (root / "notes.txt").write_text("not an image")
  Image.fromarray(v8).save(root / ".hidden.png")  # hidden: neither predicted nor counted
  return root


def test_folder_formats_errors_and_gradcam(classifier, images, tmp_path):
  out = tmp_path / "out"
  summary = predict_files.predict(classifier, str(images), str(out), gradcam=["Nodule"])
  assert summary["predicted"] == 6 and summary["errors"] == 2 and summary["ignored"] == 1
  assert summary["predictions"] == str(out / "predictions.csv")
  rows = read_csv(out / "predictions.csv")
  paths = [r["path"] for r in rows]
  assert paths == ["IM0001", "a16.png", "a8.png", "a_m1.dcm", "sub/b.png", "sub/c.jpg"]
  assert list(rows[0]) == ["path", *FINDINGS, *(f"{f} raw" for f in FINDINGS)] + [
    f"{f} call" for f in FINDINGS
  ] + ["warning"]
  assert all(r["warning"] == "" for r in rows)  # 64 px films for a 32 px model: nothing to say
  raw = np.stack([column(rows, f"{f} raw") for f in FINDINGS], 1)
  by = dict(zip(paths, raw))
  # The 16-bit PNG (v * 257), the MONOCHROME1 DICOM and the suffix-less DICOM decode to the same
  # rational v / 255 as the 8-bit PNG, rounded once to float32: identical model inputs. The only
  # slack is the CSV's 6 decimals (5e-7) and float summation order in another batch position.
  for name in ("a16.png", "a_m1.dcm", "IM0001"):
    np.testing.assert_allclose(by[name], by["a8.png"], atol=2e-6, err_msg=name)
  assert np.ptp(raw[:, 0]) > 1e-4  # different films give different scores (the check can fail)

  errors = read_csv(out / "errors.csv")
  assert [e["path"] for e in errors] == ["empty.png", "sub/cut.png"]
  assert all(e["reason"] for e in errors)

  for name in paths:
    assert (out / "gradcam" / f"{name}__Nodule.png").stat().st_size > 0
  assert not (out / "gradcam" / "empty.png__Nodule.png").exists()
  assert not (out / "gradcam" / "a8.png__Effusion.png").exists()
  with Image.open(out / "gradcam" / "sub" / "b.png__Nodule.png") as im:
    assert im.size[0] > SIZE  # a figure, not a copy of the input


def test_csv_list_calibration_and_thresholds(classifier, images, tmp_path):
  # thresholds between the scores of the films, so the call column must hold both 0 and 1
  first = predict_files.predict(classifier, str(images), str(tmp_path / "first"), progress=False)
  first_rows = read_csv(first["predictions"])
  raw = {r["path"]: float(r["Effusion raw"]) for r in first_rows}
  assert abs(raw["a8.png"] - raw["sub/b.png"]) > 1e-5
  spec = json.loads(json.dumps(classifier.spec))
  spec["thresholds"]["values"]["Effusion"] = (raw["a8.png"] + raw["sub/b.png"]) / 2
  bundle = dataclasses.replace(classifier, spec=spec)

  (tmp_path / "lists").mkdir()
  listing = tmp_path / "lists" / "list.csv"
  up = os.path.relpath(images, listing.parent)  # relative to the CSV's folder
  listed = [f"{up}/{n}" for n in ("sub/b.png", "a8.png", "missing.png", "notes.txt", "IM0001")]
  listing.write_text("id,path\n" + "".join(f"{i},{p}\n" for i, p in enumerate(listed)))
  # batches of 2: decoding runs a batch ahead, errors fall between predicted rows
  summary = predict_files.predict(
    bundle, str(listing), str(tmp_path / "out"), batch_size=2, progress=False
  )
  assert (summary["predicted"], summary["errors"], summary["ignored"]) == (3, 2, 0)
  rows = read_csv(summary["predictions"])
  assert [r["path"] for r in rows] == [listed[0], listed[1], listed[4]]  # as listed
  errors = read_csv(summary["errors_csv"])
  assert [e["path"] for e in errors] == [listed[2], listed[3]]
  assert "does not exist" in errors[0]["reason"] and "line 4" in errors[0]["reason"]

  both = first_rows + rows
  for f in FINDINGS:
    raw_f = column(both, f"{f} raw")
    expect = PLATT[f](raw_f) if f in PLATT else raw_f
    # 6-decimal raw scores feed the oracle: slope of the Platt map (<= 2 here) x 5e-7, plus 5e-7
    np.testing.assert_allclose(column(both, f), expect, atol=2e-6, err_msg=f)
  for rs, thresholds in ((first_rows, THRESHOLDS), (rows, spec["thresholds"]["values"])):
    for f in ("Effusion", "Nodule"):
      calls = column(rs, f"{f} call")
      np.testing.assert_array_equal(calls, column(rs, f"{f} raw") >= thresholds[f], err_msg=f)
  assert set(column(rows, "Effusion call")) == {0.0, 1.0}  # the threshold splits b.png and a8.png
  assert {r["Mass call"] for r in both} == {""}  # no threshold: no call


def run_cli(args):
  env = {k: v for k, v in os.environ.items() if k != "MDX_DEBUG"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, MDX_COMPILATION_CACHE="")
  return subprocess.run(
    [sys.executable, "-m", "mdx", "predict", *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=300,
  )


@pytest.mark.slow  # spawns processes: the full tier
def test_command_line_on_one_file(classifier_dir, images, tmp_path):
  out = tmp_path / "cli"
  args = [f"--bundle={classifier_dir}", f"--input={images / 'sub' / 'b.png'}", f"--output={out}"]
  proc = run_cli([*args, "--gradcam=Mass"])
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip().splitlines() == [
    f"mdx.predict: 1 predicted, 0 errors, 0 files of other types ignored; see {out}"
  ]
  assert "predicted 1 images, 0 errors" in proc.stderr  # the summary log line
  assert [r["path"] for r in read_csv(out / "predictions.csv")] == ["b.png"]  # the file's name
  assert read_csv(out / "errors.csv") == [] and (out / "errors.csv").read_text().strip() == (
    "path,reason"
  )
  assert [p.name for p in (out / "gradcam").iterdir()] == ["b.png__Mass.png"]


def test_usage_errors_are_one_line_and_write_nothing(classifier, images, tmp_path):
  with pytest.raises(ValueError, match=r"\['Cardiomegaly'\].*Effusion"):
    predict_files.predict(classifier, str(images), str(tmp_path / "o1"), gradcam=["Cardiomegaly"])
  with pytest.raises(FileNotFoundError, match="nowhere"):
    predict_files.predict(classifier, str(tmp_path / "nowhere"), str(tmp_path / "o2"))
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is an existing file"):
    predict_files.predict(classifier, str(images), str(tmp_path / "file"))
  (tmp_path / "texts").mkdir()
  (tmp_path / "texts" / "a.txt").write_text("x")
  with pytest.raises(ValueError, match=r"texts holds no .png.*1 files of other types"):
    predict_files.predict(classifier, str(tmp_path / "texts"), str(tmp_path / "o3"))
  assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_damaged_bundle_is_one_line_naming_the_part(classifier_dir, images, tmp_path):
  cases = {}
  for name in ("no_spec", "no_variables", "no_field"):
    cases[name] = str(tmp_path / name)
    shutil.copytree(classifier_dir, cases[name])
  os.remove(os.path.join(cases["no_spec"], "bundle.json"))
  shutil.rmtree(os.path.join(cases["no_variables"], "variables"))
  spec_path = os.path.join(cases["no_field"], "bundle.json")
  with open(spec_path) as f:
    spec = json.load(f)
  del spec["output"]["findings"]
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  expect = {
    "no_spec": (FileNotFoundError, "has no bundle.json"),
    "no_variables": (FileNotFoundError, "has no variables/ folder"),
    "no_field": (ValueError, "'output' has no 'findings'"),
  }
  for name, (error, message) in expect.items():
    with pytest.raises(error, match=message) as info:
      predict_files.predict(cases[name], str(images), str(tmp_path / "out"), progress=False)
    assert "\n" not in str(info.value)

  # the command line: exactly one line on stderr, exit code 2
  args = [f"--bundle={cases['no_spec']}", f"--input={images}", f"--output={tmp_path / 'cli'}"]
  proc = run_cli(args)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: bundle "), proc.stderr
  assert "bundle.json" in lines[0] and proc.stdout == ""


SCAN = (20, 18, 16)
AFFINE = np.array(
  [[1.2, 0, 0, -30.0], [0, 0.9, 0, 12.5], [0, 0, 2.0, -7.0], [0, 0, 0, 1]], np.float64
)


@pytest.fixture(scope="module")
def segmenter_dir(tmp_path_factory):
  return write_segmenter_bundle(str(tmp_path_factory.mktemp("seg") / "bundle"))


def test_segmenter_writes_label_maps_with_the_input_affine(segmenter_dir, tmp_path):
  rng = np.random.default_rng(0)
  scans = tmp_path / "scans"
  (scans / "sub").mkdir(parents=True)
  one = rng.normal(0, 1, SCAN).astype(np.float32)
  one[5:12, 4:10, 6:12] += 4.0  # a bright blob
  nib.save(nib.Nifti1Image(one, AFFINE), scans / "one.nii.gz")
  two = rng.normal(2, 3, (*SCAN, 1)).astype(np.float32)  # 4-D with one channel
  nib.save(nib.Nifti1Image(two, AFFINE * 0.5 + np.diag([0, 0, 0, 0.5])), scans / "sub" / "two.nii")
  nib.save(
    nib.Nifti1Image(rng.normal(0, 1, (*SCAN, 2)).astype(np.float32), AFFINE), scans / "2ch.nii.gz"
  )
  data = gzip.compress((scans / "sub" / "two.nii").read_bytes())
  (scans / "broken.nii.gz").write_bytes(data[: len(data) // 3])  # truncated download
  (scans / "README.md").write_text("scans")
  nan = one.copy()
  nan[3, 4, 5] = np.nan  # refused, as training refuses such a case: it would spread
  nib.save(nib.Nifti1Image(nan, AFFINE), scans / "nan.nii.gz")
  nib.save(nib.Nifti1Image(np.zeros(SCAN, np.float32), AFFINE), scans / "blank.nii.gz")

  out = tmp_path / "labels"
  summary = predict_files.predict(segmenter_dir, str(scans), str(out), progress=False)
  assert (summary["predicted"], summary["errors"], summary["ignored"]) == (3, 3, 1)
  errors = {e["path"]: e["reason"] for e in read_csv(summary["errors_csv"])}
  assert set(errors) == {"2ch.nii.gz", "broken.nii.gz", "nan.nii.gz"}
  assert "2 channels" in errors["2ch.nii.gz"]
  assert errors["nan.nii.gz"].startswith("the scan contains 1 NaN and 0 Inf values")

  segmenter = VolumeSegmenter(bundle_lib.load(segmenter_dir))
  rows = {r["path"]: r for r in read_csv(summary["predictions"])}
  assert list(rows) == ["blank.nii.gz", "one.nii.gz", "sub/two.nii"]
  # a blank scan is segmented, with a warning that says why its labels mean nothing
  assert (
    rows["blank.nii.gz"]["warning"]
    == "the scan has channel(s) [0] constant (value 0): check the file"
  )
  assert rows["one.nii.gz"]["warning"] == rows["sub/two.nii"]["warning"] == ""
  for name, image in (("one.nii.gz", one[..., None]), ("sub/two.nii", two)):
    written = nib.load(out / name)
    source = nib.load(scans / name)
    np.testing.assert_allclose(written.affine, source.affine)
    labels = np.asarray(written.dataobj)
    assert labels.shape == SCAN and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, segmenter.segment(image))
    assert rows[name]["output"] == name
    assert int(rows[name]["lesion voxels"]) == int((labels == 3).sum())
    assert int(rows[name]["background voxels"]) == int((labels == 0).sum())


def test_a_bundle_with_an_unknown_standardisation_is_refused_when_written(tmp_path):
  # otherwise every image would fail alone at predict time with the same reason
  spec = bundle_lib.classification_spec(
    {"name": "densenet_tiny", "num_classes": 1, "dtype": "float32"},
    image_size=32,
    channels=1,
    standardize={"mode": "fixed", "mean": [0.5], "std": [0.25]},
    findings=["Effusion"],
  )
  with pytest.raises(ValueError, match=r"standardize mode 'fixed' is unknown; choose one of"):
    bundle_lib.write(str(tmp_path / "bundle"), spec, {})
  assert not (tmp_path / "bundle").exists()
