"""A PyTorch state dict becomes a bundle whose classifier gives the PyTorch model's sigmoid outputs
on the same preprocessed input; the card names the findings and says there are no thresholds; a
head/findings mismatch is a one-line error."""

import hashlib

import numpy as np
import pytest
from torch_reference import TorchDenseNet, randomize_batchnorm

from mdx import commands
from mdx.data.image import records
from mdx.inference import bundle, classifier, from_weights

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _reference(classes=3, seed=0, head=True):
  """mdx's 'densenet_tiny' in PyTorch with random weights and BN statistics; the stem scaled for
  inputs in [-1024, 1024]."""
  torch.manual_seed(seed)
  ref = TorchDenseNet(classes, blocks=(2, 2), growth=8, init=16, bn_size=2, head=head).eval()
  with torch.no_grad():
    ref.features.conv0.weight.mul_(1 / 1024)
  return randomize_batchnorm(ref, seed)


def test_bundle_predicts_like_torch(tmp_path):
  ref = _reference()
  state = ref.state_dict()
  state["op_threshs"] = torch.rand(3)  # torchxrayvision's extra buffer: not a weight
  torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "xrv.pt")
  path = from_weights.bundle_from_weights(
    "densenet_tiny",
    "torch",
    str(tmp_path / "xrv.pt"),
    str(tmp_path / "bundle"),
    findings="Effusion, Pneumonia,Lung Opacity",
    image_size=32,
    standardize="xrv",
  )
  b = bundle.load(path)
  assert b.spec["output"]["findings"] == ["Effusion", "Pneumonia", "Lung Opacity"]
  assert b.spec["input"]["channels"] == 1  # from the stem convolution
  imported = b.spec["provenance"]["imported_from"]
  digest = hashlib.sha256((tmp_path / "xrv.pt").read_bytes()).hexdigest()
  assert imported == {
    "file": str(tmp_path / "xrv.pt"),
    "sha256": digest,
    "format": "torch",
    "model": "densenet_tiny",
  }
  assert set(b.spec["thresholds"]["values"].values()) == {None}
  assert b.spec["calibration"]["method"] == "none"

  clf = classifier.ImageClassifier(b, batch_size=4)
  images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
  x = np.stack([clf.preprocess(im) for im in images])
  # the xrv preset is torchxrayvision's scaling, x * 2048 - 1024, to the last float32 bit
  unit = np.stack([records.to_float_image(im[..., None], 32) for im in images])
  np.testing.assert_array_equal(x, unit * np.float32(2048) - np.float32(1024))
  assert x.min() >= -1024 and x.max() <= 1024 and x.max() - x.min() > 1500
  with torch.no_grad():
    expected = torch.sigmoid(ref(torch.from_numpy(x.transpose(0, 3, 1, 2)))).numpy()
  got = clf.predict(x)
  assert got.shape == (5, 3) and expected.std() > 0.01  # not saturated: the test can fail
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert np.isnan(clf.call(got)).all()
  np.testing.assert_allclose(clf.calibrate(got), got)

  card = (tmp_path / "bundle" / "model_card.md").read_text()
  assert "Effusion, Pneumonia, Lung Opacity" in card
  thresholds = card.split("## Operating thresholds")[1].split("\n## ")[0]
  assert thresholds.strip().startswith("None") and "no positive/negative calls" in thresholds
  assert "No thresholds and no calibration" in card and digest in card


def test_findings_count_and_missing_head_are_one_line_errors(tmp_path, capsys):
  torch.save(_reference(classes=3).state_dict(), tmp_path / "w.pt")
  args = [
    "--model=densenet_tiny",
    "--source=torch",
    f"--input={tmp_path / 'w.pt'}",
    f"--output={tmp_path / 'b'}",
    "--image_size=32",
  ]
  assert commands.call("from_weights", args + ["--findings=A,B"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert "2 names" in err and "3 outputs" in err
  assert commands.call("from_weights", args + ["--findings=xrv"]) == 2  # the preset names 18
  assert "18 names" in capsys.readouterr().err
  assert not (tmp_path / "b").exists()

  torch.save(_reference(head=False).state_dict(), tmp_path / "nohead.pt")
  with pytest.raises(ValueError, match="a bundle needs a head"):
    from_weights.bundle_from_weights(
      "densenet_tiny",
      "torch",
      str(tmp_path / "nohead.pt"),
      str(tmp_path / "b"),
      findings=["A"],
      image_size=32,
    )
  assert commands.call("from_weights", args + ["--findings=A,B,C", "--channels=3"]) == 2
  assert "--channels=1" in capsys.readouterr().err
  (tmp_path / "notabundle").mkdir()
  out = f"--output={tmp_path / 'notabundle'}"
  assert commands.call("from_weights", args[:3] + [out, "--image_size=32", "--findings=A,B,C"]) == 2
  assert "is not a bundle" in capsys.readouterr().err


def test_standardize_presets_and_user_errors():
  xrv = from_weights.standardize_spec("xrv")
  assert xrv["mode"] == "dataset" and xrv["mean"] == [0.5]
  imagenet = from_weights.standardize_spec("imagenet", channels=3)
  assert np.allclose(np.add(imagenet["std"], 1e-6), [0.229, 0.224, 0.225], rtol=0, atol=1e-12)
  assert from_weights.standardize_spec("dataset", "0.4,0.5,0.6", "0.2", 3)["mean"] == [
    0.4,
    0.5,
    0.6,
  ]
  for args, match in [
    (("dataset", None, None), "needs --mean and --std"),
    (("dataset", "0.1,0.2", "0.3", 3), "2 values for a 3-channel"),
    (("per_image", "0.5", None), "dataset only"),
    (("xrv", "0.5", None), "preset"),
    (("per_slice",), "unknown"),
    (("dataset", "0.5", "0"), "> 0"),
  ]:
    with pytest.raises(ValueError, match=match):
      from_weights.standardize_spec(*args)
  assert len(from_weights.parse_findings("xrv")) == 18
  with pytest.raises(ValueError, match="more than once"):
    from_weights.parse_findings("A,B,A")
