"""Predict on files and external validation as 2 joined processes (mdx.local, 2 fake CPU devices
each) give what one process gives: the same predictions.csv and errors.csv (rows in input order,
written once), the same label maps, the same external-validation metrics.

One folder serves both: data/ holds class folders of PNG films (the external dataset) and two broken
files sit beside it, first and last in input order, so that each process's share (8 and 7 of the
15 files) has an error. The 1-process references run in this process; each 2-process command is one
subprocess run (~15-25 s on 2 cores), sharing a compilation cache.
"""

import csv
import json
import os
import subprocess
import sys

import ml_collections
import nibabel as nib
import numpy as np
import pytest
from bundle_fixtures import write_classifier_bundle, write_segmenter_bundle
from PIL import Image

from mdx import config as config_lib
from mdx import outputs
from mdx.inference import external, predict_files

pytestmark = pytest.mark.slow  # several processes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FINDINGS = ("Effusion", "Nodule", "Mass")
SIZE = 32
CLASSES = {"Effusion": 4, "Nodule": 4, "Normal": 5}  # 13 films: an odd number of records
SCAN = (20, 18, 16)


def _classifier(path):
  thresholds = {"Effusion": 0.5, "Nodule": 0.45, "Mass": None}
  return write_classifier_bundle(path, FINDINGS, thresholds, {"mode": "per_image"}, SIZE)


def _films(root):
  """data/<class>/pNN_k.png films whose brightness and texture depend on the class (so AUROCs of
  a random network still vary), a broken file before data/ and a truncated one after it."""
  rng = np.random.default_rng(0)
  k = 0
  for c, (name, count) in enumerate(CLASSES.items()):
    os.makedirs(root / "data" / name)
    for _ in range(count):
      small = np.clip(rng.normal(80 + 40 * c, 50, (SIZE, SIZE)), 0, 255).astype(np.uint8)
      Image.fromarray(np.kron(small, np.ones((2, 2), np.uint8))).save(
        root / "data" / name / f"p{k // 2:02d}_{k}.png"
      )
      k += 1
  (root / "a_empty.png").write_bytes(b"")
  data = (root / "data" / "Normal" / f"p{(k - 1) // 2:02d}_{k - 1}.png").read_bytes()
  (root / "z_cut.png").write_bytes(data[: len(data) // 2])


def _scans(root):
  rng = np.random.default_rng(1)
  affine = np.diag([1.2, 0.9, 2.0, 1.0])
  for i in range(3):  # 3 scans: shares of 2 and 1
    scan = rng.normal(0, 1, SCAN).astype(np.float32)
    scan[4 + i : 12, 4:10, 6:12] += 4.0
    nib.save(nib.Nifti1Image(scan, affine), root / f"s{i}.nii.gz")


def local(*command, cache):
  """`command` as 2 joined processes of 2 CPU devices each."""
  proc = subprocess.run(
    [sys.executable, "-m", "mdx", "local", "2", sys.executable, "-m", *command],
    cwd=ROOT,
    env=dict(
      os.environ,
      MDX_LOCAL_DEVICES="2",
      JAX_PLATFORMS="cpu",
      MDX_COMPILATION_CACHE=str(cache),
      PYTHONPATH=ROOT,
    ),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  return proc


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multiprocess")
  (tmp / "images").mkdir()
  _films(tmp / "images")
  (tmp / "scans").mkdir()
  _scans(tmp / "scans")
  data = dict(source="folders", root=str(tmp / "images" / "data"), negative_class="Normal")
  data.update(patient_regex=r"^(p\d+)_", image_size=SIZE)
  experiment = tmp / "external_folders.py"
  experiment.write_text(
    "from mdx.config import defaults\n\n\ndef get_config():\n  c = defaults()\n"
    + "".join(f"  c.data.{k} = {v!r}\n" for k, v in data.items())
    + "  return c\n"
  )
  return {
    "tmp": tmp,
    "classifier": _classifier(str(tmp / "classifier")),
    "segmenter": write_segmenter_bundle(str(tmp / "segmenter")),
    "data": data,
    "experiment": experiment,
    "cache": tmp / "cache",
  }


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def assert_same_table(got, want):
  """Equal tables; numbers may differ by one unit of the 6th decimal (float summation order)."""
  assert len(got) == len(want) and got[0] == want[0]
  for g, w in zip(got[1:], want[1:]):
    assert len(g) == len(w) and g[0] == w[0]
    for a, b in zip(g[1:], w[1:]):
      if a == b:
        continue
      assert abs(float(a) - float(b)) <= 1.01e-6, (g, w)


def assert_same_json(got, want, where="metrics"):
  if isinstance(want, dict):
    assert isinstance(got, dict) and set(got) == set(want), where
    for k in want:
      assert_same_json(got[k], want[k], f"{where}.{k}")
  elif isinstance(want, list):
    assert isinstance(got, list) and len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      assert_same_json(g, w, f"{where}[{i}]")
  elif isinstance(want, float):
    assert got == pytest.approx(want, abs=1e-6), where
  else:
    assert got == want, where


@pytest.mark.xdist_group("multiprocess_predict")
def test_predict_on_images_two_processes_equal_one(files):
  tmp = files["tmp"]
  one = predict_files.predict(
    files["classifier"], str(tmp / "images"), str(tmp / "one"), progress=False
  )
  assert (one["predicted"], one["errors"]) == (13, 2)
  out = tmp / "two"
  proc = local(
    "mdx",
    "predict",
    f"--bundle={files['classifier']}",
    f"--input={tmp / 'images'}",
    f"--output={out}",
    "--gradcam=Effusion",
    cache=files["cache"],
  )
  # one summary line, from process 0, counting both processes' files
  summary = [line for line in proc.stdout.splitlines() if "mdx.predict:" in line]
  assert summary == [
    f"[p0] mdx.predict: 13 predicted, 2 errors, 0 files of other types ignored; see {out}"
  ]
  want = read_csv(tmp / "one" / "predictions.csv")
  got = read_csv(out / "predictions.csv")
  assert [r[0] for r in got[1:]] == [r[0] for r in want[1:]]  # input order, each file once
  assert_same_table(got, want)
  errors = read_csv(out / "errors.csv")
  assert errors == read_csv(tmp / "one" / "errors.csv")
  assert [e[0] for e in errors[1:]] == ["a_empty.png", "z_cut.png"]  # one from each share
  # the CSVs and each process's Grad-CAM overlays; nothing else (no scratch files left)
  assert sorted(os.listdir(out)) == [outputs.MANIFEST, "errors.csv", "gradcam", "predictions.csv"]
  overlays = sorted(
    os.path.relpath(os.path.join(d, f), out / "gradcam")
    for d, _, names in os.walk(out / "gradcam")
    for f in names
  )
  assert overlays == sorted(f"{r[0]}__Effusion.png" for r in want[1:])


@pytest.mark.xdist_group("multiprocess_predict")
def test_external_validation_two_processes_equal_one(files):
  tmp = files["tmp"]
  config = config_lib.resolve(ml_collections.ConfigDict({"data": files["data"]}))
  one = external.evaluate_external(
    files["classifier"], config, str(tmp / "ext_one"), bootstrap=50, progress=False
  )
  assert one["n_images"] == sum(CLASSES.values())
  for f in ("Effusion", "Nodule"):
    auroc = one["per_finding"][f]["metrics"]["auroc"]
    assert auroc["value"] is not None and None not in auroc["ci"]
  out = tmp / "ext_two"
  proc = local(
    "mdx",
    "evaluate",
    f"--bundle={files['classifier']}",
    f"--config={files['experiment']}",
    f"--out={out}",
    "--bootstrap=50",
    cache=files["cache"],
  )
  assert [line for line in proc.stdout.splitlines() if line.endswith("report.html")] == [
    f"[p0] {out}/report.html"
  ]
  two = json.loads((out / "metrics.json").read_text())
  # every number of the report: AUROCs and their bootstrap CIs, calls at thresholds, calibration
  assert_same_json(two, one)
  assert read_csv(out / "probs.csv") == read_csv(tmp / "ext_one" / "probs.csv")


@pytest.mark.xdist_group("multiprocess_predict")
def test_segmentation_two_processes_write_the_label_maps_of_one(files):
  tmp = files["tmp"]
  one = predict_files.predict(
    files["segmenter"], str(tmp / "scans"), str(tmp / "seg_one"), progress=False
  )
  assert one["predicted"] == 3
  out = tmp / "seg_two"
  local(
    "mdx",
    "predict",
    f"--bundle={files['segmenter']}",
    f"--input={tmp / 'scans'}",
    f"--output={out}",
    cache=files["cache"],
  )
  assert read_csv(out / "predictions.csv") == read_csv(tmp / "seg_one" / "predictions.csv")
  assert read_csv(out / "errors.csv") == [["path", "reason"]]
  for i in range(3):
    got = np.asarray(nib.load(out / f"s{i}.nii.gz").dataobj)
    want = np.asarray(nib.load(tmp / "seg_one" / f"s{i}.nii.gz").dataobj)
    np.testing.assert_array_equal(got, want)
  assert int(read_csv(out / "predictions.csv")[1][3]) > 0  # some lesion voxels: a real check
