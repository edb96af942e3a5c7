"""A task's bundles are a kind (mdx.inference.bundle.BundleKind) that every reader looks up by the
spec's task: a kind registered from outside mdx (a toy task scoring films, tests/bundle_fixtures.py)
is written with its own card, checked for its own fields and weights, loaded, and predicted on files
of its own type, with no change to bundle.py, predict_files.py or the model card."""

import csv
import json
import os

import numpy as np
import pytest
from bundle_fixtures import TOY_KIND, TOY_TASK, toy_spec
from PIL import Image

from mdx.inference import bundle as bundle_lib
from mdx.inference import classifier, predict_files
from mdx.models import registry

MODEL = {"name": "densenet_tiny", "num_classes": 1, "dtype": "float32"}
SIZE = 32


@pytest.fixture
def toy(monkeypatch):
  monkeypatch.setitem(bundle_lib.KINDS, TOY_TASK, "bundle_fixtures:TOY_KIND")


def test_a_registered_kind_is_written_loaded_and_predicts_with_no_reader_changed(toy, tmp_path):
  variables = registry.random_variables(MODEL, (1, SIZE, SIZE, 1))
  path = bundle_lib.write(str(tmp_path / "bundle"), toy_spec(MODEL, image_size=SIZE), variables)
  card = open(os.path.join(path, bundle_lib.CARD)).read()
  assert card == "# Toy card: densenet_tiny scores score\n"  # the kind's card, and only it
  assert bundle_lib.render_card(json.load(open(os.path.join(path, bundle_lib.SPEC)))) == card
  bundle = bundle_lib.load(path)
  assert bundle.kind is TOY_KIND

  films = tmp_path / "films"
  films.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a.png", "b.png"):
    Image.fromarray(rng.integers(0, 256, (40, 40), np.uint8)).save(films / name)
  (films / "c.jpg").write_bytes(b"")  # not this kind's file type: ignored, not an error
  (films / "broken.png").write_bytes(b"")  # this kind's type, unreadable: an error row
  summary = predict_files.predict(bundle, str(films), str(tmp_path / "out"), progress=False)
  assert (summary["predicted"], summary["errors"], summary["ignored"]) == (2, 1, 1)
  with open(summary["predictions"], newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["path"] for r in rows] == ["a.png", "b.png"]
  model = bundle.model()
  for r in rows:
    x = classifier.preprocess(
      np.asarray(Image.open(films / r["path"]))[..., None], bundle.spec["input"]
    )
    want = float(model.apply(bundle.variables, x[None], train=False)[0, 0])
    assert abs(float(r["score"]) - want) < 1e-5

  # Grad-CAM is an option of the classifier kind, not of this one
  with pytest.raises(ValueError, match="Grad-CAM is for image classifiers.*toy_score model"):
    predict_files.predict(bundle, str(films), str(tmp_path / "o2"), gradcam=["score"])
  with pytest.raises(ValueError, match=r"neither an image file \(.png\) nor a .csv list"):
    predict_files.predict(bundle, str(films / "c.jpg"), str(tmp_path / "o3"))


def test_the_kind_decides_required_fields_and_the_weight_check(toy, tmp_path):
  spec = toy_spec(MODEL, image_size=SIZE)
  del spec["output"]["name"]
  with pytest.raises(ValueError, match="'output' has no 'name'"):
    bundle_lib.write(str(tmp_path / "a"), spec, {})
  wrong = registry.random_variables({**MODEL, "num_classes": 3}, (1, SIZE, SIZE, 1))
  path = bundle_lib.write(str(tmp_path / "b"), toy_spec(MODEL, image_size=SIZE), wrong)
  with pytest.raises(ValueError, match="do not fit model 'densenet_tiny'"):
    bundle_lib.load(path)


def test_an_unregistered_task_is_refused_naming_the_kinds(tmp_path):
  spec = toy_spec(MODEL, image_size=SIZE)  # toy_score is not registered here
  with pytest.raises(
    ValueError, match=r"'task' is 'toy_score'; expected one of \('classification'"
  ):
    bundle_lib.write(str(tmp_path / "bundle"), spec, {})
