"""A bundle's network exported to ONNX and serialized StableHLO (issue 27) equals the bundle's own
predictions; the ONNX metadata alone reproduces predict's outputs (a classifier's calibrated
probabilities and calls, a segmenter's windowed label map, both computed here with numpy, PIL and
onnxruntime only, from the recipe the metadata states); a bundle carries its exports under its
digests; the export command's mistakes are one line.

Tolerances: the exports run the same float32 operations as the bundle's predict, in another
runtime (onnxruntime's MLAS convolutions) or the same one (the StableHLO is jax's own program), so
they differ only by summation order: ~1e-7 on probabilities in [0, 1] for these tiny networks
(6e-8 measured for the classifier).
1e-5 is the issue's bound and leaves 100x margin; a graph that loses a row of a feature map (what
jax2onnx's pooling does unaided) is off by 1e-2.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bundle_fixtures import calibration, write_classifier_bundle, write_segmenter_bundle
from flax import linen as nn
from PIL import Image

from mdx import commands, outputs
from mdx.data.volume import nifti
from mdx.inference import bundle as bundle_lib
from mdx.inference import export
from mdx.inference import segmenter as segmenter_lib
from mdx.inference.classifier import ImageClassifier
from mdx.inference.segmenter import VolumeSegmenter
from mdx.models import registry

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FINDINGS = ["Effusion", "Mass"]
THRESHOLDS = {"Effusion": 0.5, "Mass": None}
CALIBRATION = calibration(FINDINGS)
TOLERANCE = 1e-5  # the module docstring
pytestmark = pytest.mark.xdist_group("export")  # one worker builds the exports once


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("cls") / "bundle")
  return write_classifier_bundle(
    path, FINDINGS, THRESHOLDS, {"mode": "per_image"}, size=32, calibration=CALIBRATION
  )


@pytest.fixture(scope="module")
def films(tmp_path_factory):
  """Three real-format films: 8-bit gray 40 px, 16-bit gray 48 px, 8-bit RGB 36 px."""
  folder = tmp_path_factory.mktemp("films")
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (40, 40), np.uint8)).save(folder / "a.png")
  Image.fromarray(rng.integers(0, 65536, (48, 48), np.uint16)).save(folder / "b.png")
  Image.fromarray(rng.integers(0, 256, (36, 36, 3), np.uint8)).save(folder / "c.png")
  return [str(folder / n) for n in ("a.png", "b.png", "c.png")]


@pytest.fixture(scope="module")
def classifier_onnx(classifier_dir, tmp_path_factory):
  """The classifier's ONNX export, saved as a user receives it."""
  path = str(tmp_path_factory.mktemp("onnx") / "model.onnx")
  onnx.save(export.onnx_model(bundle_lib.load(classifier_dir)), path)
  return path


@pytest.fixture(scope="module")
def segmenter_dir(tmp_path_factory):
  return write_segmenter_bundle(str(tmp_path_factory.mktemp("seg") / "bundle"), (0, 2))


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
  """A NIfTI scan [20, 18, 12] (one axis shorter than the window: padded), read back as predict
  reads it."""
  path = str(tmp_path_factory.mktemp("scan") / "case.nii.gz")
  data = np.random.default_rng(1).normal(100, 20, (20, 18, 12)).astype(np.float32)
  nifti.save_nifti(path, data, np.diag([1.0, 1.0, 2.0, 1.0]), dtype=np.float32)
  return nifti.load_nifti(path, np.float32).data[..., None]


# ------------------------------------------------------------------- what a user without mdx does
def session(model_or_path):
  data = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
  return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def film_by_recipe(path, meta):
  """A film prepared as the metadata's preprocessing says, with PIL and numpy alone (8/16-bit
  PNG; the recipe's DICOM step is mdx's decoder, not exercised here)."""
  inp = meta["input"]
  size, channels = inp["image_size"], inp["channels"]
  image = np.asarray(Image.open(path))
  image = image[..., None] if image.ndim == 2 else image
  if image.shape[-1] == 3 and channels == 1:
    gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    image = np.round(gray).astype(image.dtype)[..., None]
  scale = 255.0 if image.dtype == np.uint8 else 65535.0
  resized = []
  for c in range(image.shape[-1]):
    if image.dtype == np.uint16:
      ch = Image.fromarray(image[..., c].astype(np.float32)).resize((size, size), Image.BOX)
      resized.append(np.clip(np.round(np.asarray(ch)), 0, 65535))
    else:
      resized.append(np.asarray(Image.fromarray(image[..., c]).resize((size, size), Image.BOX)))
  x = np.stack(resized, -1).astype(np.float32) / np.float32(scale)
  assert inp["standardize"]["mode"] == "per_image"
  return ((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32)


def calibrated(raw, spec_map):
  """The metadata's calibration recipe."""
  if spec_map["kind"] == "platt":
    p = np.clip(raw, 1e-7, 1 - 1e-7)
    return 1 / (1 + np.exp(-(spec_map["a"] * (np.log(p) - np.log1p(-p)) + spec_map["b"])))
  if spec_map["kind"] == "isotonic":
    return np.interp(raw, spec_map["x"], spec_map["y"])
  return raw


def windowed(run, scan, meta):
  """A segmenter's probabilities [D, H, W, K] by the metadata's windowing recipe, all windows in
  one batch (run: the graph on [N, *patch, C])."""
  w = meta["windowing"]
  patch, overlap = w["patch_size"], w["overlap"]
  assert meta["input"]["standardize"]["mode"] == "per_channel"
  x = scan.astype(np.float32)
  x = (x - x.mean((0, 1, 2))) / np.maximum(x.std((0, 1, 2)), 1e-8)
  shape = x.shape[:3]
  padded = [max(s, p) for s, p in zip(shape, patch)]
  x = np.pad(x, [(0, p - s) for p, s in zip(padded, shape)] + [(0, 0)])

  def starts(size, window):
    if size <= window:
      return [0]
    step = max(1, int(window * (1 - overlap)))
    n = int(np.ceil((size - window) / step)) + 1
    return sorted({int(round(s)) for s in np.linspace(0, size - window, n)})

  axes = [np.arange(p) - (p - 1) / 2 for p in patch]
  bumps = [np.exp(-0.5 * (a / (w["sigma_scale"] * p)) ** 2) for a, p in zip(axes, patch)]
  importance = bumps[0][:, None, None] * bumps[1][None, :, None] * bumps[2][None, None, :]
  importance = np.maximum(importance / importance.max(), 1e-3)
  corners = [(a, b, c) for a in starts(padded[0], patch[0]) for b in starts(padded[1], patch[1])
             for c in starts(padded[2], patch[2])]  # fmt: skip
  windows = np.stack(
    [x[a : a + patch[0], b : b + patch[1], c : c + patch[2]] for a, b, c in corners]
  )
  mirror = w["mirror_axes"]
  subsets = [[a for i, a in enumerate(mirror) if n >> i & 1] for n in range(2 ** len(mirror))]
  probs = 0
  for subset in subsets:
    flip = [a + 1 for a in subset]
    probs = probs + np.flip(run(np.ascontiguousarray(np.flip(windows, flip))), flip)
  probs = probs / len(subsets)
  out = np.zeros((*padded, probs.shape[-1]))
  norm = np.zeros(padded)
  for (a, b, c), p in zip(corners, probs):
    where = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
    out[where] += p * importance[..., None]
    norm[where] += importance
  return (out / norm[..., None])[: shape[0], : shape[1], : shape[2]]


# -------------------------------------------------------------------------------------- classifier
@pytest.mark.slow  # jax2onnx's start-up (~15 s) and a conversion: the full tier
def test_classifier_onnx_metadata_alone_reproduces_predict(classifier_dir, classifier_onnx, films):
  meta = export.read_metadata(classifier_onnx)
  s = session(classifier_onnx)
  assert [i.name for i in s.get_inputs()] == ["input"]
  assert s.get_inputs()[0].shape[1:] == [32, 32, 1] and isinstance(s.get_inputs()[0].shape[0], str)
  x = np.stack([film_by_recipe(f, meta) for f in films])  # batch 3: the export's probe took 2
  raw = s.run(["probabilities"], {"input": x})[0]

  classifier = ImageClassifier(bundle_lib.load(classifier_dir))
  mdx_x = np.stack([classifier.read(f) for f in films])
  np.testing.assert_allclose(x, mdx_x, atol=1e-6)  # the recipe is mdx's preprocessing
  mdx_raw = classifier.predict(mdx_x)
  np.testing.assert_allclose(raw, mdx_raw, atol=TOLERANCE, rtol=0)
  probs = np.stack(
    [calibrated(raw[:, j], meta["calibration"]["maps"][f]) for j, f in enumerate(FINDINGS)], 1
  )
  np.testing.assert_allclose(probs, classifier.calibrate(mdx_raw), atol=TOLERANCE, rtol=0)
  t = meta["thresholds"]["values"]
  calls = np.stack([raw[:, j] >= t[f] if t[f] is not None else [np.nan] * 3
                    for j, f in enumerate(FINDINGS)], 1).astype(float)  # fmt: skip
  np.testing.assert_array_equal(calls, classifier.call(mdx_raw))
  assert 0.01 < raw.min() and raw.max() < 0.99  # not saturated: the comparison says something


def test_classifier_stablehlo_equals_predict_at_any_batch(classifier_dir, films):
  bundle = bundle_lib.load(classifier_dir)
  exported = jax.export.deserialize(export.stablehlo(bundle).serialize())
  assert exported.platforms == ("cpu", "cuda", "tpu")
  assert not isinstance(exported.in_avals[0].shape[0], int)  # the batch is symbolic
  classifier = ImageClassifier(bundle)
  x = np.stack([classifier.read(f) for f in films])
  for batch in (x, x[:1], np.concatenate([x, x])):  # 3, 1 and 6 images
    np.testing.assert_allclose(
      np.asarray(exported.call(batch)), classifier.predict(batch), atol=TOLERANCE, rtol=0
    )


@pytest.mark.slow  # jax2onnx's start-up (~15 s) and a conversion: the full tier
def test_metadata_round_trip(classifier_dir, classifier_onnx):
  spec = bundle_lib.load(classifier_dir).spec
  meta = export.read_metadata(classifier_onnx)
  want = export.deployment_metadata(spec)
  assert meta["graph"].pop("opset") >= 17
  assert meta == json.loads(json.dumps(want))
  assert meta["format"] == "mdx-onnx/1" and meta["task"] == "classification"
  assert meta["input"] == spec["input"] and meta["output"]["findings"] == FINDINGS
  assert meta["thresholds"]["values"] == THRESHOLDS
  assert meta["calibration"]["maps"] == CALIBRATION["maps"]
  assert meta["graph"]["input"] == {
    "name": "input",
    "shape": ["batch", 32, 32, 1],
    "dtype": "float32",
  }
  assert export.read_metadata(onnx.load(classifier_onnx)) == export.read_metadata(classifier_onnx)

  plain = onnx.load(classifier_onnx)
  del plain.metadata_props[:]
  with pytest.raises(ValueError, match="has no 'mdx' metadata: it was not exported by mdx"):
    export.read_metadata(plain)


@pytest.mark.slow  # a conversion of its own: the fast tier keeps one per kind
def test_float16_onnx_says_its_dtypes_and_stays_close(classifier_dir, films):
  bundle = bundle_lib.load(classifier_dir)
  model = export.onnx_model(bundle, "float16")
  half = onnx.TensorProto.FLOAT16
  assert model.graph.input[0].type.tensor_type.elem_type == half
  assert model.graph.output[0].type.tensor_type.elem_type == half
  meta = export.read_metadata(model)["graph"]
  assert meta["input"]["dtype"] == meta["output"]["dtype"] == "float16"
  weights = [i.data_type for i in model.graph.initializer if len(i.dims) == 4]
  assert weights and set(weights) == {half}  # convolution kernels stored in half precision
  classifier = ImageClassifier(bundle)
  x = np.stack([classifier.read(f) for f in films])
  got = export.run_onnx(model, x.astype(np.float16)).astype(np.float32)
  # float16 carries 11 significant bits (relative 4.9e-4 per rounding); through this 8-layer
  # network and a sigmoid (slope <= 1/4) the scores move by ~1e-4 (measured 2e-4): 5e-3 is a
  # 25x margin and still an order below what a wrong graph gives
  np.testing.assert_allclose(got, classifier.predict(x), atol=5e-3, rtol=0)


# --------------------------------------------------------------------------------------- segmenter
@pytest.mark.slow  # jax2onnx's start-up (~15 s) and a conversion: the full tier
def test_segmenter_onnx_windowed_by_metadata_reproduces_label_map(segmenter_dir, scan):
  bundle = bundle_lib.load(segmenter_dir)
  model = export.onnx_model(bundle)
  meta = export.read_metadata(model)
  assert meta["windowing"]["mirror_axes"] == [0, 2] and meta["windowing"]["patch_size"] == [16] * 3
  s = session(model)
  probs = windowed(lambda b: s.run(["probabilities"], {"input": b})[0], scan, meta)

  segmenter = VolumeSegmenter(bundle)
  want = segmenter.probabilities(scan)
  np.testing.assert_allclose(probs, want, atol=TOLERANCE, rtol=0)
  labels = np.asarray(meta["output"]["label_values"])[probs.argmax(-1)]
  # a voxel whose two classes are within 1e-4 could fall either way by rounding alone
  sure = np.abs(want[..., 1] - want[..., 0]) > 1e-4
  assert sure.mean() > 0.9
  np.testing.assert_array_equal(labels[sure], segmenter.segment(scan)[sure])


def test_segmenter_stablehlo_serves_the_bundle(segmenter_dir, scan, tmp_path):
  path = shutil.copytree(segmenter_dir, str(tmp_path / "bundle"))
  export.add_to_bundle(path, "stablehlo", platforms=("cpu",))
  bare = bundle_lib.load(path, variables=False)
  assert bare.variables is None
  serve = export.serving(bare)
  i = bare.spec["input"]
  got = segmenter_lib.probabilities(
    serve,
    scan,
    standardize="per_channel",
    patch=i["patch_size"],
    overlap=i["overlap"],
    batch_size=3,  # not the bundle's 2
    mirror_axes=i["mirror_axes"],
  )
  want = VolumeSegmenter(bundle_lib.load(path)).probabilities(scan)
  np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


@pytest.mark.slow  # a conversion of its own: the fast tier keeps one per kind
def test_ensemble_exports_average_their_members(tmp_path, scan):
  members = [write_segmenter_bundle(str(tmp_path / f"m{k}"), seed=k) for k in range(2)]
  path = bundle_lib.write_ensemble(str(tmp_path / "ensemble"), members)
  bundle = bundle_lib.load(path)
  s = session(export.onnx_model(bundle))
  windows = np.random.default_rng(2).normal(size=(3, 16, 16, 16, 1)).astype(np.float32)
  singles = [VolumeSegmenter(bundle_lib.load(m))._predict(windows[:2]) for m in members]
  got = s.run(["probabilities"], {"input": windows})[0][:2]
  np.testing.assert_allclose(got, (singles[0] + singles[1]) / 2, atol=TOLERANCE, rtol=0)
  assert np.abs(singles[0] - singles[1]).max() > 1e-2  # the members differ: a mean was taken


# ----------------------------------------------------------------------------- carried by bundles
def flip_byte(path, at=-100):
  with open(path, "r+b") as f:
    f.seek(at, os.SEEK_END)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def test_bundle_carries_exports_under_its_digests(classifier_dir, films, tmp_path):
  path = shutil.copytree(classifier_dir, str(tmp_path / "bundle"))
  hlo = export.add_to_bundle(path, "stablehlo", platforms=("cpu", "tpu"))
  assert hlo == os.path.join(path, "export", "model.stablehlo")
  bundle = bundle_lib.load(path)
  exports = bundle.spec["exports"]
  assert exports["stablehlo"]["platforms"] == ["cpu", "tpu"]
  assert exports["stablehlo"]["jax_version"] == jax.__version__
  assert bundle.spec["files"][export.STABLEHLO_FILE] == outputs.digest(hlo)

  classifier = ImageClassifier(bundle)
  x = np.stack([classifier.read(f) for f in films])
  serve = export.serving(bundle_lib.load(path, variables=False))
  np.testing.assert_allclose(serve(x), classifier.predict(x), atol=TOLERANCE, rtol=0)

  flip_byte(hlo)
  for variables in (True, False):
    with pytest.raises(ValueError, match=r"export/model\.stablehlo differs from the sha256"):
      bundle_lib.load(path, variables=variables)
  flip_byte(hlo)  # back as exported
  bundle_lib.load(path)

  # new weights make the exports stale: a rewrite drops them, files and records
  bundle_lib.write(path, bundle.spec, bundle.variables)
  rewritten = bundle_lib.load(path)
  assert "exports" not in rewritten.spec and not os.path.exists(hlo)
  assert export.serving(rewritten) is None


@pytest.mark.slow  # jax2onnx's start-up and a conversion: the full tier
def test_bundle_carries_an_onnx_export_under_its_digest(classifier_dir, tmp_path):
  path = shutil.copytree(classifier_dir, str(tmp_path / "bundle"))
  export.add_to_bundle(path, "stablehlo", platforms=("cpu",))
  model = export.add_to_bundle(path, "onnx")
  assert model == os.path.join(path, "export", "model.onnx")
  bundle = bundle_lib.load(path)
  onnx_record = bundle.spec["exports"]["onnx"]
  assert onnx_record["dtype"] == "float32" and onnx_record["file"] == export.ONNX_FILE
  assert set(bundle.spec["exports"]) == {"onnx", "stablehlo"}  # the second kept the first
  assert bundle.spec["files"][export.ONNX_FILE] == outputs.digest(model)
  flip_byte(model)
  with pytest.raises(ValueError, match=r"export/model\.onnx differs from the sha256"):
    bundle_lib.load(path, variables=False)
  flip_byte(model)
  bundle_lib.write(path, bundle.spec, bundle.variables)  # new weights: both exports dropped
  assert not os.path.exists(model) and "exports" not in bundle_lib.load(path).spec


def test_serving_is_none_without_an_export_for_this_platform(classifier_dir, tmp_path):
  path = shutil.copytree(classifier_dir, str(tmp_path / "bundle"))
  assert export.serving(bundle_lib.load(path, variables=False)) is None
  export.add_to_bundle(path, "stablehlo", platforms=("tpu",))
  assert export.running_platform() == "cpu"
  assert export.serving(bundle_lib.load(path, variables=False)) is None


def test_exports_never_replace_a_users_file(classifier_dir, tmp_path):
  # StableHLO rather than ONNX keeps jax2onnx's start-up out of the fast tier: both formats are
  # written by the same add_to_bundle through the same OutputFolder
  path = shutil.copytree(classifier_dir, str(tmp_path / "bundle"))
  os.makedirs(os.path.join(path, "export"), exist_ok=True)
  mine = os.path.join(path, *export.STABLEHLO_FILE.split("/"))
  with open(mine, "w") as f:
    f.write("my own model")
  with pytest.raises(ValueError, match=r"export/model\.stablehlo is not one of the files bundle"):
    bundle_lib.load(path)
  with pytest.raises(outputs.OutputError, match="mdx never replaces a file it did not write"):
    export.add_to_bundle(path, "stablehlo", platforms=("cpu",))
  with open(mine) as f:
    assert f.read() == "my own model"
  export.add_to_bundle(path, "stablehlo", platforms=("cpu",), overwrite=True)
  assert export.serving(bundle_lib.load(path, variables=False)) is not None


def test_spec_naming_an_unrecorded_export_is_refused(classifier_dir, tmp_path):
  path = shutil.copytree(classifier_dir, str(tmp_path / "bundle"))
  spec_path = os.path.join(path, "bundle.json")
  with open(spec_path) as f:
    spec = json.load(f)
  spec["exports"] = {"stablehlo": {"file": export.STABLEHLO_FILE, "platforms": ["cpu"]}}
  with open(spec_path, "w") as f:
    json.dump(spec, f)
  with pytest.raises(ValueError, match="names export/model.stablehlo, which 'files' does not"):
    bundle_lib.load(path, variables=False)


# ---------------------------------------------------------------------------- the converter's gaps
@pytest.mark.slow  # jax2onnx's start-up (~15 s) and a conversion: the full tier
def test_an_operation_onnx_cannot_express_is_named():
  # lax.platform_dependent's 'platform_index' has no ONNX form (what portable_ops avoids)
  fn = lambda x: jax.lax.platform_dependent(x, cpu=jnp.sin, default=jnp.cos)
  with pytest.raises(ValueError, match=r"cannot express the JAX primitive 'platform_index'") as e:
    export.convert(fn, (4,), where="bundle B")
  assert "\n" not in str(e.value) and str(e.value).startswith("bundle B: jax2onnx")


@pytest.mark.slow  # four conversions
@pytest.mark.parametrize(
  "pool",
  [
    lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
    lambda x: nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME"),
    lambda x: nn.avg_pool(x, window_shape=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1))),
    lambda x: nn.avg_pool(
      x, window_shape=(3, 3), strides=(2, 2), padding=((1, 2), (0, 1)), count_include_pad=False
    ),
  ],
  ids=["max_explicit", "max_same", "avg_explicit", "avg_exclude_pad"],
)
def test_pools_keep_their_padding_in_onnx(pool):
  # jax2onnx 0.17 alone takes explicit padding as 'VALID' (DenseNet's stem lost a row and column)
  x = np.random.default_rng(3).normal(size=(3, 9, 10, 2)).astype(np.float32)
  got = export.run_onnx(export.convert(pool, x.shape[1:]), x)
  want = np.asarray(pool(x))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.slow  # a conversion of its own: the fast tier keeps one per kind
def test_a_wrong_graph_is_refused():
  model = export.convert(jnp.sin, (4,))
  with pytest.raises(ValueError, match="differs from the model .by 0.4"):
    export._check_onnx(model, lambda x: jnp.sin(x) + 0.4, (4,), "float32", "bundle B")


# ------------------------------------------------------------------------------------ the command
@pytest.mark.slow  # a conversion of its own: the fast tier keeps one per kind
def test_command_writes_and_refuses(classifier_dir, tmp_path, capsys):
  path = shutil.copytree(classifier_dir, str(tmp_path / "bundle"))
  out = str(tmp_path / "out" / "model.stablehlo")
  args = [f"--bundle={path}", "--format=stablehlo", "--platforms=cpu"]
  assert commands.call("export_model", [*args, f"--output={out}"]) == 0
  with open(out, "rb") as f:
    assert jax.export.deserialize(bytearray(f.read())).platforms == ("cpu",)
  assert "exports" not in bundle_lib.load(path).spec  # --output: the bundle is not changed

  assert commands.call("export_model", args) == 0  # into the bundle
  assert bundle_lib.load(path).spec["exports"]["stablehlo"]["platforms"] == ["cpu"]

  foreign = str(tmp_path / "theirs.onnx")
  with open(foreign, "w") as f:
    f.write("not mdx's")
  capsys.readouterr()
  mistakes = {
    (f"--bundle={path}", "--format=onnx", f"--output={foreign}"): "mdx never replaces a file",
    (f"--bundle={path}", "--format=stablehlo", "--dtype=float16"): "--dtype=float16 is for",
    (f"--bundle={path}", "--format=stablehlo", "--platforms=gpu"): "expected distinct names",
    (f"--bundle={path}", "--format=onnx", "--platforms=cpu"): "--platforms is for",
    (f"--bundle={path}", "--format=keras"): "--format",
    (f"--bundle={tmp_path / 'none'}", "--format=onnx"): "does not exist",
    (f"--bundle={path}", "--format=onnx", f"--output={path}/export/x.onnx"): "inside the bundle",
    (f"--bundle={path}", "--format=onnx", f"--output={tmp_path}"): "is a folder",
  }
  for argv, said in mistakes.items():
    assert commands.call("export_model", list(argv)) == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and said in err, (argv, err)
  with open(foreign) as f:
    assert f.read() == "not mdx's"
  argv = [f"--bundle={path}", "--format=onnx", f"--output={foreign}", "--overwrite"]
  assert commands.call("export_model", argv) == 0
  assert export.read_metadata(foreign)["task"] == "classification"


@pytest.mark.slow  # a conversion of its own: the fast tier keeps one per kind
def test_resnet_residuals_convert():
  # a block that adds two BatchNorm(conv(x)) (the downsampling one), then one that adds its input
  # to BatchNorm(conv(x)): jax2onnx's own BatchNorm left the first sum NCHW, so the second added
  # NCHW to NHWC (a graph onnxruntime refused); stage 2 here has the two
  model = registry.create("resnet_tiny", num_classes=2, stage_sizes=(1, 2, 1, 1))
  variables = registry.init_variables(model, (1, 32, 32, 3))
  fn = lambda x: model.apply(variables, x, train=False)
  x = np.random.default_rng(4).normal(size=(3, 32, 32, 3)).astype(np.float32)
  got = export.run_onnx(export.convert(fn, (32, 32, 3)), x)
  # logits of O(10): float32 rounding of a few 1e-6, 1e-4 is a 10x margin
  np.testing.assert_allclose(got, np.asarray(fn(x)), atol=1e-4, rtol=0)


# ------------------------------------------------------------------- full-size networks (slow tier)
# The networks at small input sizes (random weights: the graph, not the weights, is what
# the export converts). Tolerance 1e-5 on probabilities: float32 throughout and the same
# operations; only the convolution kernels (onnxruntime's MLAS, XLA:CPU's) and so the summation
# orders differ: over ~100 layers a relative rounding of ~1e-7 per layer reaches ~1e-6 on logits
# of O(1), times the sigmoid's slope <= 1/4.
# The head is scaled so the films' logits have standard deviation 1: random weights otherwise give
# logits in the hundreds (ResNet-50: 236) and saturated probabilities, a comparison that says
# nothing, or logits of 3e-4 (EfficientNet-B0), whose scaling by 3000 scales rounding too.
# Measured, ONNX (StableHLO): 1.5e-7 (1.2e-7) DenseNet-121, 2.7e-7 (2.7e-7) ResNet-50, 8.3e-7
# (5.1e-7) EfficientNet-B0, 7.2e-7 (6.0e-7) Inception-v3: 1e-5 leaves a 12x margin.
@pytest.mark.slow
@pytest.mark.parametrize(
  "name,size",
  [("densenet121", 64), ("resnet50", 64), ("efficientnet_b0", 64), ("inception_v3", 75)],
)
def test_full_size_classifiers_export_as_they_predict(name, size, tmp_path):
  from mdx.data.image import images as images_lib
  from mdx.inference import classifier as classifier_lib

  rng = np.random.default_rng(5)
  files = [str(tmp_path / f"{k}.png") for k in range(3)]
  Image.fromarray(rng.integers(0, 256, (size + 11, size + 7, 3), np.uint8)).save(files[0])
  Image.fromarray(rng.integers(0, 65536, (size * 2, size * 2), np.uint16)).save(files[1])
  Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)).save(files[2])
  model_spec = {"name": name, "num_classes": 3, "dtype": "float32"}
  spec = bundle_lib.classification_spec(
    model_spec, image_size=size, channels=3, standardize={"mode": "per_image"}, findings=list("abc")
  )
  x = np.stack(
    [classifier_lib.preprocess(images_lib.read_image(f, 3), spec["input"]) for f in files]
  )
  variables = registry.random_variables(model_spec, (1, size, size, 3))
  logits = registry.create_from_config(model_spec).apply(variables, x, train=False)
  head = variables["params"]["head"]["dense"]
  head["kernel"] = np.asarray(head["kernel"]) / max(float(np.std(logits)), 1e-6)
  path = bundle_lib.write(str(tmp_path / "bundle"), spec, variables, "# test")
  bundle = bundle_lib.load(path)
  classifier = ImageClassifier(bundle)
  films = np.stack([classifier.read(f) for f in files])
  want = classifier.predict(films)
  assert want.std() > 0.05  # not saturated

  got = export.run_onnx(export.onnx_model(bundle), films)  # batch 3; the probe was 2
  np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
  exported = jax.export.deserialize(export.stablehlo(bundle).serialize())
  for batch in (films, films[:1]):
    np.testing.assert_allclose(
      np.asarray(exported.call(batch)), want[: len(batch)], atol=TOLERANCE, rtol=0
    )


@pytest.mark.slow
def test_full_size_unet_exports_as_it_segments(tmp_path):
  # nnU-Net's defaults as mdx trains them: instance norm, the platform-chosen convolution, per-axis
  # pooling; softmax probabilities within 1e-5 (the argument above, with a softmax's slope <= 1/4)
  model_spec = {"name": "unet3d", "num_classes": 3, "dtype": "float32", "norm": "instance"}
  model_spec.update(base_width=16, strides=((1, 2, 2), (2, 2, 2), (2, 2, 2)))
  spec = bundle_lib.segmentation_spec(
    model_spec,
    channels=1,
    standardize="per_channel",
    patch_size=(16, 32, 32),
    overlap=0.5,
    batch_size=2,
    class_names=("background", "a", "b"),
    label_mode="classes",
    label_values=(0, 1, 2),
    mirror_axes=(1, 2),
  )
  variables = registry.random_variables(model_spec, (1, 16, 32, 32, 1))
  path = bundle_lib.write(str(tmp_path / "bundle"), spec, variables, "# test")
  scan_path = str(tmp_path / "case.nii.gz")
  data = np.random.default_rng(6).normal(50, 10, (20, 40, 36)).astype(np.float32)
  nifti.save_nifti(scan_path, data, np.eye(4), dtype=np.float32)
  scan = nifti.load_nifti(scan_path, np.float32).data[..., None]

  segmenter = VolumeSegmenter(bundle_lib.load(path))
  want = segmenter.probabilities(scan)
  model = export.onnx_model(bundle_lib.load(path))
  s = session(model)
  got = windowed(
    lambda b: s.run(["probabilities"], {"input": b})[0], scan, export.read_metadata(model)
  )
  np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
  top2 = np.sort(want, -1)[..., -2:]
  sure = top2[..., 1] - top2[..., 0] > 1e-4  # voxels rounding alone cannot flip
  assert sure.mean() > 0.9
  labels = np.asarray([0, 1, 2])[got.argmax(-1)]
  np.testing.assert_array_equal(labels[sure], segmenter.segment(scan)[sure])

  export.add_to_bundle(path, "stablehlo")
  serve = export.serving(bundle_lib.load(path, variables=False))
  i = spec["input"]
  served = segmenter_lib.probabilities(
    serve,
    scan,
    standardize="per_channel",
    patch=i["patch_size"],
    overlap=i["overlap"],
    batch_size=3,
    mirror_axes=i["mirror_axes"],
  )
  np.testing.assert_allclose(served, want, atol=TOLERANCE, rtol=0)
