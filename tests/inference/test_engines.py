"""predict by backend (mdx.inference.engines): a bundle's carried StableHLO serves predict without
its weights or the Flax model, onnxruntime runs an ONNX export with the same preprocessing and
files, the mistakes are one line; docs/deploy_onnx.py (numpy, Pillow and onnxruntime only)
reproduces predict's predictions.csv from the ONNX file alone.

Oracles: the Flax model's own predict (today's path) for the StableHLO and ONNX backends; for
onnxruntime's wiring, a hand-built ONNX graph (sigmoid of a fixed linear map) whose scores numpy
computes from mdx's preprocessed images; mdx's own preprocessing and calibration functions for the
deployment script's copies of them.

Tolerances: predictions.csv rounds to 6 decimals (up to 5e-7 each side), and the backends run the
same float32 network in another runtime or program (~1e-7 on these tiny networks, summation order):
2e-6 bounds two roundings plus that. The slow tier's full chain through jax2onnx uses the issue's
1e-5. Label maps must be equal (an argmax of probabilities ~1e-7 apart).
"""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from bundle_fixtures import calibration, write_classifier_bundle, write_segmenter_bundle
from PIL import Image

from mdx.data import standardize as standardize_lib
from mdx.data.image import images as images_lib
from mdx.data.image import records
from mdx.evaluate import calibration as calibration_lib
from mdx.inference import bundle as bundle_lib
from mdx.inference import classifier as classifier_lib
from mdx.inference import engines, export, predict_files
from mdx.inference import predict as predict_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "docs", "deploy_onnx.py")
FINDINGS = ["Effusion", "Mass", "Nodule"]
THRESHOLDS = {"Effusion": 0.5, "Mass": None, "Nodule": 0.45}
CALIBRATION = calibration(FINDINGS)
STANDARDIZE = {"mode": "dataset", "mean": [0.45], "std": [0.25]}
SIZE = 32
CSV_TOLERANCE = 2e-6  # the module docstring
pytestmark = pytest.mark.xdist_group("engines")  # one worker builds the bundles once


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  """A tiny classifier bundle carrying a CPU StableHLO export (export.add_to_bundle)."""
  path = write_classifier_bundle(
    str(tmp_path_factory.mktemp("cls") / "bundle"),
    FINDINGS,
    THRESHOLDS,
    STANDARDIZE,
    SIZE,
    calibration=CALIBRATION,
  )
  export.add_to_bundle(path, "stablehlo", platforms=("cpu",))
  return path


@pytest.fixture(scope="module")
def films(tmp_path_factory):
  """Real-format films: 8-bit gray, 16-bit gray, RGB JPEG in a subfolder, palette, one at the
  model's size, one tiny (warned), one damaged, one text file (ignored)."""
  folder = tmp_path_factory.mktemp("films")
  rng = np.random.default_rng(0)
  (folder / "sub").mkdir()
  Image.fromarray(rng.integers(0, 256, (40, 50), np.uint8)).save(folder / "a.png")
  Image.fromarray(rng.integers(0, 65536, (33, 47), np.uint16)).save(folder / "b16.png")
  Image.fromarray(rng.integers(0, 256, (70, 60, 3), np.uint8)).save(folder / "sub" / "rgb.jpg")
  Image.fromarray(rng.integers(0, 256, (45, 45), np.uint8)).convert("P").save(folder / "p.png")
  Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), np.uint8)).save(folder / "exact.png")
  Image.fromarray(rng.integers(0, 256, (5, 6), np.uint8)).save(folder / "tiny.png")
  (folder / "broken.png").write_bytes(b"not a png")
  (folder / "notes.txt").write_text("not an image")
  return str(folder)


def rows(path):
  with open(path, newline="") as f:
    return list(csv.reader(f))


def assert_same_predictions(a, b, tolerance=CSV_TOLERANCE):
  """Two predictions.csv: the same header, paths, calls and warnings; numbers within tolerance."""
  a, b = rows(a), rows(b)
  assert a[0] == b[0] and [r[0] for r in a] == [r[0] for r in b]
  numbers = slice(1, 1 + 2 * len(FINDINGS))
  for x, y in zip(a[1:], b[1:]):
    got = np.array([float(v) if v else np.nan for v in x[numbers]])
    want = np.array([float(v) if v else np.nan for v in y[numbers]])
    np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
    assert x[numbers.stop :] == y[numbers.stop :]


def deploy_module():
  spec = importlib.util.spec_from_file_location("deploy_onnx", DEPLOY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def linear_onnx(path, spec, weights, metadata=True):
  """A hand-built ONNX classifier: probabilities = sigmoid(reshape(input, [N, S*S*C]) @ weights),
  input [batch, S, S, C], with deployment_metadata(spec) under 'mdx' (none with metadata=False)."""
  onnx = pytest.importorskip("onnx")
  from onnx import TensorProto, helper, numpy_helper

  shape = export.input_shape(spec)
  nodes = [
    helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
    helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
    helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
  ]
  graph = helper.make_graph(
    nodes,
    "linear",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
    [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(FINDINGS)])],
    [
      numpy_helper.from_array(np.array([-1, int(np.prod(shape))], np.int64), "flat_shape"),
      numpy_helper.from_array(weights.astype(np.float32), "weights"),
    ],
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  if metadata:
    helper.set_model_props(model, {"mdx": json.dumps(export.deployment_metadata(spec))})
  onnx.save(model, path)
  return path


# ----------------------------------------------------------------------------- the jax backends
def test_carried_stablehlo_serves_predict_without_weights_model_or_tracing(
  classifier_dir, films, tmp_path, monkeypatch
):
  flax_out = predict_files.predict(
    classifier_dir, films, str(tmp_path / "flax"), backend="flax", progress=False
  )
  assert flax_out["predicted"] == 6 and flax_out["errors"] == 1

  def never(*args, **kwargs):
    raise AssertionError("the StableHLO path restored, checked or traced the Flax model")

  # what serving by the export makes unnecessary: Orbax, the eval_shape check, the model, tracing
  monkeypatch.setattr(bundle_lib, "_restore_variables", never)
  monkeypatch.setattr(bundle_lib, "_check_variables", never)
  monkeypatch.setattr(bundle_lib.Bundle, "model", never)
  monkeypatch.setattr(predict_lib, "make_predict_step", never)
  bundle = engines.load(classifier_dir, "jax")
  assert bundle.variables is None
  assert engines.make(bundle, "jax").backend == "stablehlo"
  out = predict_files.predict(classifier_dir, films, str(tmp_path / "jax"), progress=False)
  assert out["predicted"] == 6
  assert_same_predictions(out["predictions"], flax_out["predictions"])
  assert rows(out["errors_csv"]) == rows(flax_out["errors_csv"])


def test_a_second_process_reads_the_compiled_export_from_disk(
  classifier_dir, films, tmp_path, monkeypatch
):
  """The compiled export is kept under the export's digest (mdx.inference.executables): the next
  process neither lowers it nor hashes it again, and predicts the same file for file."""
  from mdx.inference import executables

  monkeypatch.setattr(executables, "folder", lambda: str(tmp_path / "programs"))
  first = predict_files.predict(classifier_dir, films, str(tmp_path / "a"), progress=False)
  assert len(os.listdir(tmp_path / "programs")) >= 1
  monkeypatch.setattr(executables, "_compile", lambda *a: pytest.fail("compiled again"))
  second = predict_files.predict(classifier_dir, films, str(tmp_path / "b"), progress=False)
  assert rows(second["predictions"]) == rows(first["predictions"])


def test_grad_cam_and_flax_keep_the_model_and_weights(classifier_dir):
  spec = bundle_lib.load(classifier_dir, variables=False).spec
  assert not engines.needs_variables(spec, "jax")
  assert engines.needs_variables(spec, "jax", model=True)  # Grad-CAM differentiates the model
  assert engines.needs_variables(spec, "flax")
  assert not engines.needs_variables(spec, "onnxruntime")
  without = {k: v for k, v in spec.items() if k != bundle_lib.EXPORTS}
  assert engines.needs_variables(without, "jax")  # nothing carried: the Flax model
  bundle = engines.load(classifier_dir, "jax", model=True)
  assert bundle.variables is not None
  assert engines.make(bundle, "jax", model=True).backend == "flax"
  assert engines.make(bundle, "stablehlo").backend == "stablehlo"


def test_a_run_batches_no_more_than_its_files(classifier_dir, tmp_path, monkeypatch):
  """One film runs a batch of one (not seven zeros beside it); many run full batches, the last
  padded so the run compiles one shape."""
  seen = []
  bundle = engines.load(classifier_dir, "jax")
  engine = engines.make(bundle, "jax")
  recording = engines.Engine(
    engine.backend, lambda x: seen.append(len(x)) or engine.forward(x), engine.devices
  )
  monkeypatch.setattr(engines, "make", lambda *args, **kwargs: recording)
  folder = tmp_path / "films"
  folder.mkdir()
  for i in range(11):
    Image.fromarray(np.full((40, 40), 20 * i, np.uint8)).save(folder / f"{i:02d}.png")
  predict_files.predict(bundle, str(folder / "00.png"), str(tmp_path / "one"), progress=False)
  assert seen == [1]
  seen.clear()
  predict_files.predict(bundle, str(folder), str(tmp_path / "all"), progress=False, batch_size=4)
  assert seen == [4, 4, 4]


def test_segmenter_stablehlo_label_maps_equal_the_flax_models(tmp_path):
  path = write_segmenter_bundle(str(tmp_path / "seg"))
  export.add_to_bundle(path, "stablehlo", platforms=("cpu",))
  scans = tmp_path / "scans"
  scans.mkdir()
  rng = np.random.default_rng(1)
  for i, shape in enumerate([(20, 18, 22), (12, 16, 16)]):  # one smaller than the patch
    image = nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), np.diag([2, 1, 1, 1]))
    nib.save(image, str(scans / f"s{i}.nii.gz"))
  maps = {}
  for backend in ("flax", "jax"):
    out = tmp_path / backend
    predict_files.predict(path, str(scans), str(out), backend=backend, progress=False)
    maps[backend] = [np.asarray(nib.load(str(out / f"s{i}.nii.gz")).dataobj) for i in range(2)]
  assert engines.load(path, "jax").variables is None
  # both labels somewhere: a comparison that can fail
  assert set(np.unique(np.concatenate([m.ravel() for m in maps["flax"]]))) == {0, 3}
  for served, flax in zip(maps["jax"], maps["flax"]):
    np.testing.assert_array_equal(served, flax)


# ---------------------------------------------------------------------------------- onnxruntime
@pytest.fixture(scope="module")
def linear_model(classifier_dir, tmp_path_factory):
  """(ONNX file, weights [S*S, F]) of linear_onnx for the classifier bundle's spec."""
  spec = bundle_lib.load(classifier_dir, variables=False).spec
  # small weights: logits ~ +-0.2, so the float32 dot product's rounding stays ~1e-6 (below)
  weights = np.random.default_rng(2).normal(0, 0.005, (SIZE * SIZE, len(FINDINGS)))
  path = str(tmp_path_factory.mktemp("onnx") / "linear.onnx")
  return linear_onnx(path, spec, weights), weights.astype(np.float32)


def test_onnxruntime_runs_the_file_with_predicts_preprocessing(
  classifier_dir, films, linear_model, tmp_path
):
  pytest.importorskip("onnxruntime")
  path, weights = linear_model
  out = predict_files.predict(
    classifier_dir,
    films,
    str(tmp_path / "ort"),
    backend="onnxruntime",
    onnx=path,
    batch_size=4,  # 6 films: a batch of 4 and an unpadded one of 2
    progress=False,
  )
  assert out["predicted"] == 6 and out["errors"] == 1 and out["ignored"] == 1
  got = rows(out["predictions"])
  spec = bundle_lib.load(classifier_dir, variables=False).spec
  k = len(FINDINGS)
  for row in got[1:]:
    image = images_lib.read_image(os.path.join(films, row[0]), 1)
    x = classifier_lib.preprocess(image, spec["input"]).astype(np.float64)
    raw = 1 / (1 + np.exp(-(x.reshape(-1) @ weights)))
    calibrated = [
      calibration_lib.map_from_spec(CALIBRATION["maps"][f])(raw[j : j + 1])[0]
      for j, f in enumerate(FINDINGS)
    ]
    # onnxruntime sums the 1024 products in float32, numpy here in float64: ~sqrt(1024) * 2^-24
    # * sum|x w| (~3) ~ 6e-6 on the logit, a quarter of it on the sigmoid, plus the CSV's 5e-7
    np.testing.assert_allclose([float(v) for v in row[1 + k : 1 + 2 * k]], raw, atol=1e-5)
    np.testing.assert_allclose([float(v) for v in row[1 : 1 + k]], calibrated, atol=1e-5)
    calls = [
      "" if THRESHOLDS[f] is None else str(int(float(row[1 + k + j]) >= THRESHOLDS[f]))
      for j, f in enumerate(FINDINGS)
    ]
    assert row[1 + 2 * k : 1 + 3 * k] == calls
  warned = {row[0]: row[-1] for row in got[1:]}
  assert "5x6" in warned["tiny.png"] and warned["a.png"] == ""


def test_deploy_script_reproduces_predict_from_the_onnx_file(
  classifier_dir, films, linear_model, tmp_path
):
  """docs/deploy_onnx.py (in this process; the slow tier runs it with mdx and jax blocked)."""
  pytest.importorskip("onnxruntime")
  path, _ = linear_model
  want = predict_files.predict(
    classifier_dir, films, str(tmp_path / "mdx"), backend="onnxruntime", onnx=path, progress=False
  )
  assert deploy_module().main([path, films, str(tmp_path / "deploy")]) == 0
  assert_same_predictions(str(tmp_path / "deploy" / "predictions.csv"), want["predictions"])
  got_errors = [r[0] for r in rows(str(tmp_path / "deploy" / "errors.csv"))]
  assert got_errors == [r[0] for r in rows(want["errors_csv"])] == ["path", "broken.png"]


@pytest.mark.parametrize("image", ["gray8", "gray16", "rgb", "rgb_gray", "rgba", "la", "exact"])
@pytest.mark.parametrize(
  "standardize",
  [
    {"mode": "none"},
    {"mode": "per_image"},
    {"mode": "dataset", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]},
    {"mode": "per_channel"},
    {"mode": "nonzero"},
  ],
)
def test_deploy_preprocessing_is_mdxs(image, standardize, tmp_path):
  """The script's copy of decoding, channels, resizing and standardisation equals mdx's, bit for
  bit (the same numpy and PIL operations), for 1 and 3 channels."""
  deploy = deploy_module()
  rng = np.random.default_rng(3)
  arrays = {
    "gray8": rng.integers(0, 256, (37, 29), np.uint8),
    "gray16": rng.integers(0, 65536, (41, 23), np.uint16),
    "rgb": rng.integers(0, 256, (30, 44, 3), np.uint8),
    "rgb_gray": np.repeat(rng.integers(0, 256, (30, 30, 1), np.uint8), 3, -1),
    "rgba": rng.integers(0, 256, (26, 26, 4), np.uint8),
    "la": rng.integers(0, 256, (26, 31, 2), np.uint8),
    "exact": rng.integers(0, 256, (SIZE, SIZE), np.uint8),
  }
  arrays["gray8"][:4] = 0  # zeros for 'nonzero' to leave out
  mode = {"rgba": "RGBA", "la": "LA"}.get(image)
  path = str(tmp_path / "x.png")
  Image.fromarray(arrays[image], mode).save(path)
  for channels in (1, 3):
    spec = dict(standardize)
    if spec["mode"] == "dataset":
      spec = {**spec, "mean": spec["mean"][:channels], "std": spec["std"][:channels]}
    mdx = classifier_lib.preprocess(
      images_lib.read_image(path, channels),
      {"image_size": SIZE, "channels": channels, "standardize": spec},
    )
    script = deploy.standardize(
      deploy.to_float_image(deploy.read_image(path, channels), SIZE), spec
    )
    assert script.dtype == mdx.dtype == np.float32
    np.testing.assert_array_equal(script, mdx)
  # and each piece against mdx's own function, for the record
  raw = deploy.read_image(path, 1)
  np.testing.assert_array_equal(raw, images_lib.read_image(path, 1))
  np.testing.assert_array_equal(deploy.to_float_image(raw, SIZE), records.to_float_image(raw, SIZE))
  x = records.to_float_image(raw, SIZE)
  spec1 = {**standardize, **({"mean": [0.4], "std": [0.2]} if "mean" in standardize else {})}
  np.testing.assert_array_equal(
    deploy.standardize(x, spec1),
    standardize_lib.standardize(x, spec1["mode"], spec1.get("mean"), spec1.get("std")),
  )


def test_deploy_calibration_maps_are_mdxs():
  deploy = deploy_module()
  p = np.concatenate([np.linspace(0, 1, 101), [1e-9, 1 - 1e-9]])
  for spec in CALIBRATION["maps"].values():
    np.testing.assert_allclose(
      deploy.calibration_map(spec)(p), calibration_lib.map_from_spec(spec)(p), atol=1e-12
    )


# --------------------------------------------------------------------- one-line usage mistakes
def test_mistakes_are_one_line_and_write_nothing(
  classifier_dir, films, linear_model, tmp_path, monkeypatch
):
  out = tmp_path / "out"

  def refused(match, **kwargs):
    with pytest.raises(ValueError, match=match) as e:
      predict_files.predict(classifier_dir, films, str(out), progress=False, **kwargs)
    assert "\n" not in str(e.value)
    assert not out.exists()

  refused("Grad-CAM.*onnxruntime.*--backend=jax", backend="onnxruntime", gradcam=["Mass"])
  refused(r"carries no ONNX export.*export_model --bundle=.* --format=onnx", backend="onnxruntime")
  refused("--onnx=nowhere.onnx.*does not exist", backend="onnxruntime", onnx="nowhere.onnx")
  refused("--onnx=.*read by --backend=onnxruntime", onnx=linear_model[0])
  refused("backend='tensorflow'; choose one of", backend="tensorflow")
  spec = bundle_lib.load(classifier_dir, variables=False).spec
  weights = np.zeros((SIZE * SIZE, len(FINDINGS)))
  other = {**spec, "thresholds": {**spec["thresholds"], "values": {f: 0.9 for f in FINDINGS}}}
  mismatch = linear_onnx(str(tmp_path / "other.onnx"), other, weights)
  refused("exported from another model.*'thresholds'", backend="onnxruntime", onnx=mismatch)
  foreign = linear_onnx(str(tmp_path / "foreign.onnx"), spec, weights, metadata=False)
  refused("has no mdx metadata", backend="onnxruntime", onnx=foreign)
  monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
  refused(r"needs onnxruntime.*pip install '\.\[export\]'", backend="onnxruntime", onnx=foreign)


def test_forcing_stablehlo_without_an_export_is_one_line(tmp_path):
  path = write_classifier_bundle(
    str(tmp_path / "plain"), FINDINGS, THRESHOLDS, {"mode": "none"}, SIZE
  )
  with pytest.raises(ValueError, match="no StableHLO export for cpu.*--format=stablehlo"):
    engines.make(bundle_lib.load(path, variables=False), "stablehlo")


# --------------------------------------------------------------------- the slow tier: full chain
BLOCKED = """
import runpy, sys

BLOCKED = {"jax", "jaxlib", "flax", "mdx", "torch", "onnx", "scipy"}


class Block:  # what a machine with only numpy, Pillow and onnxruntime lacks
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{name} is blocked: the deployment script must not need it")


sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_onnx_export_deploys_without_mdx(classifier_dir, films, tmp_path):
  """The bundle exported by jax2onnx: docs/deploy_onnx.py in a process where jax, flax, mdx,
  torch, onnx and scipy cannot be imported reproduces `mdx predict`'s predictions.csv (Flax model)
  within 1e-5, and so does predict --backend=onnxruntime."""
  bundle = str(tmp_path / "bundle")
  shutil.copytree(classifier_dir, bundle)
  onnx_file = export.add_to_bundle(bundle, "onnx")
  jax_out = predict_files.predict(
    bundle, films, str(tmp_path / "flax"), backend="flax", progress=False
  )
  ort_out = predict_files.predict(
    bundle, films, str(tmp_path / "ort"), backend="onnxruntime", progress=False
  )
  assert_same_predictions(ort_out["predictions"], jax_out["predictions"], 1e-5)
  deployed = tmp_path / "deployed"
  proc = subprocess.run(
    [sys.executable, "-c", BLOCKED, DEPLOY, onnx_file, films, str(deployed)],
    cwd=str(tmp_path),  # not the checkout: `import mdx` would find it there
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "6 predicted, 1 errors, 1 files of other types ignored" in proc.stdout
  assert_same_predictions(str(deployed / "predictions.csv"), jax_out["predictions"], 1e-5)


@pytest.mark.slow
def test_segmenter_onnxruntime_label_maps_equal_the_jax_backends(tmp_path):
  path = write_segmenter_bundle(str(tmp_path / "seg"))
  export.add_to_bundle(path, "onnx")
  scans = tmp_path / "scans"
  scans.mkdir()
  rng = np.random.default_rng(4)
  for i, shape in enumerate([(20, 18, 22), (17, 16, 30)]):
    image = nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), np.eye(4))
    nib.save(image, str(scans / f"s{i}.nii.gz"))
  maps = {}
  for backend in ("jax", "onnxruntime"):
    out = tmp_path / backend
    predict_files.predict(path, str(scans), str(out), backend=backend, progress=False)
    maps[backend] = [np.asarray(nib.load(str(out / f"s{i}.nii.gz")).dataobj) for i in range(2)]
    assert rows(str(out / "predictions.csv"))[1][0] == "s0.nii.gz"
  assert set(np.unique(np.concatenate([m.ravel() for m in maps["jax"]]))) == {0, 3}
  for ort_map, jax_map in zip(maps["onnxruntime"], maps["jax"]):
    np.testing.assert_array_equal(ort_map, jax_map)


MESH = """
import sys
import numpy as np
from mdx.inference import bundle as bundle_lib, engines
from mdx.inference.classifier import ImageClassifier

bundle = bundle_lib.load(sys.argv[1])
x = np.random.default_rng(0).normal(size=(6, 32, 32, 1)).astype(np.float32)
out = {}
for backend in ("flax", "stablehlo"):
  engine = engines.make(bundle, backend)
  assert engine.devices == 4, engine.devices
  out[backend] = ImageClassifier(bundle, batch_size=5, engine=engine).predict(x)
assert out["flax"].shape == (6, 3)
print("max difference", float(np.abs(out["flax"] - out["stablehlo"]).max()))
"""


@pytest.mark.slow
def test_stablehlo_runs_over_every_device_of_the_mesh(classifier_dir):
  """4 fake CPU devices: the export (lowered for one device) runs on each device's rows under
  shard_map and equals the Flax model over the same mesh."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run(
    [sys.executable, "-c", MESH, classifier_dir],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  difference = float(proc.stdout.split("max difference")[1])
  assert difference <= 1e-6  # float32 scores of the same program (module docstring)
