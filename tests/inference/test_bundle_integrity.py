"""A bundle proves its integrity (issue 24): bundle.json records the sha256 of every file it holds
and load checks them and every spec field its kind reads, against the weights, before predict
writes anything; writing a bundle replaces an older bundle's own files and nothing of a user's."""

import functools
import json
import os
import shutil

import numpy as np
import pytest
from bundle_fixtures import write_classifier_bundle, write_segmenter_bundle
from PIL import Image

from mdx import outputs
from mdx.inference import bundle as bundle_lib
from mdx.inference import predict_files
from mdx.models import registry

FINDINGS = ["Effusion", "Mass"]
THRESHOLDS = {"Effusion": 0.5, "Mass": 0.25}
MODEL = {"name": "densenet_tiny", "num_classes": 2, "dtype": "float32"}


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("cls") / "bundle")
  return write_classifier_bundle(path, FINDINGS, THRESHOLDS, {"mode": "per_image"})


@pytest.fixture(scope="module")
def segmenter_dir(tmp_path_factory):
  return write_segmenter_bundle(str(tmp_path_factory.mktemp("seg") / "bundle"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (40, 40), np.uint8)).save(folder / "a.png")
  return str(folder)


def _copy(bundle_dir, tmp_path, name="copy"):
  return shutil.copytree(bundle_dir, str(tmp_path / name))


def _edit_spec(path, edit):
  spec_path = os.path.join(path, bundle_lib.SPEC)
  with open(spec_path) as f:
    spec = json.load(f)
  edit(spec)
  with open(spec_path, "w") as f:
    json.dump(spec, f)


def _weights_file(path):
  """The largest file of variables/ (the arrays), relative to the bundle."""
  found = outputs.tree_digests(os.path.join(path, bundle_lib.VARIABLES))
  biggest = max(found, key=lambda rel: os.path.getsize(os.path.join(path, "variables", rel)))
  return f"{bundle_lib.VARIABLES}/{biggest}"


def _refused_before_output(bundle_path, images, out, match):
  """predict refuses the bundle in one line, and its output folder is neither created nor
  written."""
  with pytest.raises(ValueError, match=match) as info:
    predict_files.predict(bundle_path, images, str(out), progress=False)
  assert "\n" not in str(info.value)
  assert not out.exists() or not any(out.iterdir())
  return str(info.value)


def test_the_spec_records_the_digest_of_every_file(classifier_dir):
  spec = json.load(open(os.path.join(classifier_dir, bundle_lib.SPEC)))
  assert spec["format"] == bundle_lib.FORMAT
  on_disk = {
    f"variables/{rel}": sha
    for rel, sha in outputs.tree_digests(os.path.join(classifier_dir, "variables")).items()
  }
  on_disk[bundle_lib.CARD] = outputs.digest(os.path.join(classifier_dir, bundle_lib.CARD))
  assert spec[bundle_lib.FILES] == on_disk and len(on_disk) > 2
  bundle_lib.load(classifier_dir)  # and load accepts them


def test_variables_of_another_model_of_the_same_architecture_are_refused(
  classifier_dir, images, tmp_path
):
  # the same spec with other weights of the same shapes
  spec = json.load(open(os.path.join(classifier_dir, bundle_lib.SPEC)))
  other = bundle_lib.write(str(tmp_path / "other"), spec, _variables(7), "# test")
  path = _copy(classifier_dir, tmp_path)
  shutil.rmtree(os.path.join(path, "variables"))
  shutil.copytree(os.path.join(other, "variables"), os.path.join(path, "variables"))
  message = _refused_before_output(path, images, tmp_path / "out", "changed after export")
  assert "variables/" in message and message.endswith("(export it again)")
  assert bundle_lib.load(other).variables  # the other bundle itself is whole


def test_a_flipped_byte_in_the_weights_is_refused_naming_the_file(classifier_dir, tmp_path):
  path = _copy(classifier_dir, tmp_path)
  rel = _weights_file(path)
  with open(os.path.join(path, rel), "r+b") as f:
    f.seek(os.path.getsize(os.path.join(path, rel)) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 1]))
  with pytest.raises(ValueError, match=f"{rel} differs from the sha256 bundle.json records"):
    bundle_lib.load(path)


def test_a_missing_or_extra_weights_file_is_refused(classifier_dir, tmp_path):
  missing = _copy(classifier_dir, tmp_path, "missing")
  rel = _weights_file(missing)
  os.remove(os.path.join(missing, rel))
  with pytest.raises(ValueError, match=f"{rel} is missing"):
    bundle_lib.load(missing)
  extra = _copy(classifier_dir, tmp_path, "extra")
  with open(os.path.join(extra, "variables", "stray"), "w") as f:
    f.write("x")
  with pytest.raises(ValueError, match="variables/stray is not one of the files"):
    bundle_lib.load(extra)
  # a bootstrap.npz no export wrote would be read as the internal CIs
  np.savez(os.path.join(_copy(classifier_dir, tmp_path, "boot"), "bootstrap.npz"), x=np.ones(2))
  with pytest.raises(ValueError, match="bootstrap.npz is not one of the files"):
    bundle_lib.load(str(tmp_path / "boot"))
  # a user's own note beside the bundle is not the bundle's
  noted = _copy(classifier_dir, tmp_path, "noted")
  with open(os.path.join(noted, "APPROVED.txt"), "w") as f:
    f.write("approved for the pilot\n")
  bundle_lib.load(noted)


def test_a_bundle_of_the_older_format_is_refused_with_the_fix(classifier_dir, tmp_path):
  path = _copy(classifier_dir, tmp_path)

  def older(spec):
    spec["format"] = "mdx-bundle/1"
    del spec[bundle_lib.FILES]

  _edit_spec(path, older)
  with pytest.raises(ValueError, match="written by an older mdx.*export it again"):
    bundle_lib.load(path)


@pytest.mark.parametrize(
  "edit,match",
  [
    (
      lambda s: s["output"].update(findings=["Effusion", "Mass", "Nodule"]),
      r"'output' 'findings' has 3 names but the model has 2 outputs",
    ),
    (
      lambda s: (
        s["output"].update(findings=["Effusion", "Mass", "Nodule"]),
        s["model"].update(num_classes=3),
        s["thresholds"]["values"].update(Nodule=None),
      ),
      r"'findings' has 3 names but the weights in variables/ have 2 outputs",
    ),
    (
      lambda s: s["output"].update(findings=["Mass", "Mass"]),
      r"'findings' names \['Mass'\] more than once",
    ),
    (lambda s: s["input"].update(image_size=224.5), r"'input' 'image_size' is 224.5; expected"),
    (lambda s: s["input"].update(image_size="224"), r"'image_size' is '224'; expected a positive"),
    (lambda s: s["input"].update(image_size=True), r"'image_size' is True"),
    (
      lambda s: s["input"].update(channels=3),
      r"'channels' is 3 but the weights in variables/ take 1-channel images",
    ),
    (
      lambda s: s["input"]["standardize"].update(mean=[0.5, 0.5]),
      r"'standardize' mean is \[0.5, 0.5\]; expected null, a number or 1 numbers",
    ),
    (
      lambda s: s["thresholds"].update(values={"Effusion": 0.5, "Nodule": 0.3}),
      r"'thresholds' 'values' is keyed by \['Effusion', 'Nodule'\]; expected the findings",
    ),
    (
      lambda s: s["thresholds"]["values"].update(Mass="0.3"),
      r"'values' 'Mass' is '0.3'; expected null or a finite number",
    ),
    (
      lambda s: s["calibration"].update(maps={"Nodule": {"kind": "identity"}}),
      r"'calibration' 'maps' has 'Nodule', which is not one of",
    ),
    (
      lambda s: s["calibration"].update(maps={"Mass": {"kind": "isotonic", "x": [0, 1], "y": []}}),
      r"'maps' 'Mass' cannot be applied",
    ),
  ],
)
def test_a_wrong_classifier_spec_field_is_one_line_before_any_output(
  classifier_dir, images, tmp_path, edit, match
):
  path = _copy(classifier_dir, tmp_path)
  _edit_spec(path, edit)  # bundle.json holds the digests, not one of its own
  message = _refused_before_output(path, images, tmp_path / "out", match)
  assert message.startswith(f"bundle {path}: bundle.json ") and "(export it again)" in message


@pytest.mark.parametrize(
  "edit,match",
  [
    (lambda s: s["input"].update(patch_size=[16, 16]), r"'patch_size' is \[16, 16\]; expected"),
    (lambda s: s["input"].update(patch_size=[16, 16, 0]), r"'patch_size' is \[16, 16, 0\]"),
    (lambda s: s["input"].update(overlap=1.0), r"'overlap' is 1.0; expected a number in \[0"),
    (lambda s: s["input"].update(batch_size=0), r"'batch_size' is 0; expected a positive"),
    (lambda s: s["output"].update(label_values=[0, 300]), r"'label_values' is \[0, 300\]"),
    (lambda s: s["output"].update(label_values=[0]), r"'label_values' has 1 values; expected 2"),
    (
      lambda s: s["output"].update(class_names=["background"]),
      r"'class_names' has 1 names but the model has 2 outputs",
    ),
    (lambda s: s["output"].update(label_mode="labels"), r"'label_mode' is 'labels'; expected"),
    (lambda s: s["output"].update(activation="sigmoid"), r"'activation' must be 'softmax'"),
  ],
)
def test_a_wrong_segmenter_spec_field_is_one_line_before_any_output(
  segmenter_dir, tmp_path, edit, match
):
  path = _copy(segmenter_dir, tmp_path)
  _edit_spec(path, edit)
  scans = tmp_path / "scans"
  scans.mkdir()
  (scans / "a.nii.gz").write_bytes(b"")  # never read: the bundle is refused first
  message = _refused_before_output(path, str(scans), tmp_path / "out", match)
  assert message.startswith(f"bundle {path}: bundle.json ")


def _spec(findings=FINDINGS):
  return bundle_lib.classification_spec(
    MODEL, image_size=32, channels=1, standardize={"mode": "per_image"}, findings=findings
  )


@functools.cache
def _variables(seed):
  return registry.random_variables(MODEL, (1, 32, 32, 1), seed=seed)


def test_writing_onto_a_bundle_replaces_its_files_and_keeps_a_users(tmp_path):
  path = str(tmp_path / "bundle")
  bundle_lib.write(path, _spec(), _variables(0), bootstrap={"test/Mass/auroc": np.ones(3)})
  with open(os.path.join(path, "APPROVED.txt"), "w") as f:
    f.write("approved by the committee\n")
  bundle_lib.write(path, _spec(), _variables(1))  # no bootstrap this time
  loaded = bundle_lib.load(path)
  want = _variables(1)["params"]["head"]["dense"]["kernel"]
  np.testing.assert_array_equal(loaded.variables["params"]["head"]["dense"]["kernel"], want)
  assert loaded.bootstrap() == {}  # the older bundle's samples went with it
  assert open(os.path.join(path, "APPROVED.txt")).read() == "approved by the committee\n"
  assert sorted(os.listdir(path)) == [
    outputs.MANIFEST,
    "APPROVED.txt",
    bundle_lib.SPEC,
    bundle_lib.CARD,
    "variables",
  ]


def test_a_users_file_where_the_bundle_goes_is_refused_unless_overwrite(tmp_path):
  path = tmp_path / "bundle"
  path.mkdir()
  (path / bundle_lib.CARD).write_text("my own notes\n")
  with pytest.raises(outputs.OutputError, match=r"model_card.md, which mdx did not write") as info:
    bundle_lib.write(str(path), _spec(), _variables(0))
  assert "\n" not in str(info.value)
  assert sorted(os.listdir(path)) == [bundle_lib.CARD]  # nothing written
  assert (path / bundle_lib.CARD).read_text() == "my own notes\n"
  bundle_lib.write(str(path), _spec(), _variables(0), overwrite=True)
  assert (path / bundle_lib.CARD).read_text() != "my own notes\n"
  bundle_lib.load(str(path))

  # a card edited after export is the user's now: refused again, replaced with overwrite
  (path / bundle_lib.CARD).write_text("edited\n")
  with pytest.raises(outputs.OutputError, match="model_card.md, which was changed since"):
    bundle_lib.write(str(path), _spec(), _variables(1))
  bundle_lib.write(str(path), _spec(), _variables(1), overwrite=True)
  bundle_lib.load(str(path))


def test_a_bundle_of_an_older_mdx_is_replaced_as_mdxs_own(tmp_path):
  """Written before manifests: its bundle.json (an older format) says it is mdx's; its card is
  mdx's too while it is the one mdx rendered, a user's once edited."""
  path = str(tmp_path / "bundle")
  bundle_lib.write(path, _spec(), _variables(0))  # the card rendered from the spec
  os.remove(os.path.join(path, outputs.MANIFEST))
  _edit_spec(path, lambda s: (s.update(format="mdx-bundle/1"), s.pop(bundle_lib.FILES)))
  card = open(os.path.join(path, bundle_lib.CARD)).read()
  spec = json.load(open(os.path.join(path, bundle_lib.SPEC)))
  assert card == bundle_lib.render_card(spec)
  bundle_lib.write(path, spec, _variables(1))  # its own spec, written again in this format
  assert bundle_lib.load(path).spec["format"] == bundle_lib.FORMAT

  edited = str(tmp_path / "edited")
  bundle_lib.write(edited, _spec(), _variables(0), "# a card someone wrote")
  os.remove(os.path.join(edited, outputs.MANIFEST))
  _edit_spec(edited, lambda s: s.update(format="mdx-bundle/1"))
  with pytest.raises(outputs.OutputError, match="model_card.md, which mdx did not write"):
    bundle_lib.write(edited, _spec(), _variables(1))


def test_an_older_mdx_leftover_beside_the_bundle_is_removed_or_reported(tmp_path, caplog):
  partial = tmp_path / ".bundle-abc123"  # an unfinished bundle: never final
  (partial / "variables").mkdir(parents=True)
  (partial / "bundle.json").write_text("{")
  aside = tmp_path / ".bundle-old-def456" / "b"  # a bundle moved aside: maybe the only copy
  aside.mkdir(parents=True)
  (aside / "bundle.json").write_text("{}")
  with caplog.at_level("WARNING"):
    bundle_lib.write(str(tmp_path / "bundle"), _spec(), _variables(0))
  assert not partial.exists()
  assert (aside / "bundle.json").read_text() == "{}"
  said = " ".join(r.getMessage() for r in caplog.records)
  assert ".bundle-abc123 was an unfinished bundle" in said
  assert ".bundle-old-def456 holds a bundle an older mdx moved aside" in said
  bundle_lib.load(str(tmp_path / "bundle"))


def test_a_bundle_written_is_staged_and_nothing_of_a_failed_write_is_final(tmp_path, monkeypatch):
  path = str(tmp_path / "bundle")
  bundle_lib.write(path, _spec(), _variables(0))
  before = outputs.tree_digests(path)

  def no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(bundle_lib.np, "savez_compressed", no_space)
  with pytest.raises(outputs.OutputError, match="no space left"):
    bundle_lib.write(path, _spec(), _variables(1), bootstrap={"a": np.ones(2)})
  assert outputs.tree_digests(path) == before  # the older bundle, whole, and no staging left
  bundle_lib.load(path)
