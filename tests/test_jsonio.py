"""One JSON sanitiser (mdx.jsonio.jsonable) for every file mdx writes from numbers: undefined values
are null, numpy values Python's, and the writers of reports, segmentation metrics and bundles all
give files a strict JSON parser reads."""

import json
import math

import numpy as np
import pytest

from mdx import jsonio


def _strict(text: str):
  """json.loads that refuses NaN and Infinity (as jq and browsers do)."""

  def refuse(token):
    raise ValueError(f"not JSON: {token}")

  return json.loads(text, parse_constant=refuse)


def test_undefined_numbers_become_null_and_numpy_becomes_python():
  value = {
    "nan": float("nan"),
    "inf": np.float32("inf"),
    "ninf": -math.inf,
    "f32": np.float32(0.25),
    "i64": np.int64(7),
    "flag": np.bool_(True),
    "array": np.array([[1.0, np.nan], [2.0, 3.0]]),
    "tuple": (1, np.float64(np.nan), "s", None, False),
    "nested": [{"x": np.float64(0.5)}],
  }
  out = jsonio.jsonable(value)
  assert out == {
    "nan": None,
    "inf": None,
    "ninf": None,
    "f32": 0.25,
    "i64": 7,
    "flag": True,
    "array": [[1.0, None], [2.0, 3.0]],
    "tuple": [1, None, "s", None, False],
    "nested": [{"x": 0.5}],
  }
  assert type(out["i64"]) is int and type(out["f32"]) is float and type(out["flag"]) is bool
  _strict(json.dumps(out, allow_nan=False))


def test_keys_are_written_as_json_writes_them():
  """An int or finite float key is the text json would give it; a numpy key its Python value's."""
  out = jsonio.jsonable({1: "a", 0.5: "b", np.int64(2): "c", "s": "d"})
  assert out == {"1": "a", "0.5": "b", "2": "c", "s": "d"}
  assert json.dumps(out) == json.dumps({1: "a", 0.5: "b", 2: "c", "s": "d"})


def test_what_json_cannot_write_is_left_for_json_to_refuse():
  with pytest.raises(TypeError):
    json.dumps(jsonio.jsonable({"x": object()}))


def test_the_writers_give_strict_json(tmp_path):
  from mdx.evaluate import report
  from mdx.evaluate import segmentation as seg

  path = report.write_json(str(tmp_path / "m.json"), {"auroc": np.float64("nan"), "n": np.int64(3)})
  assert _strict(open(path).read()) == {"auroc": None, "n": 3}
  seg.write_metrics(
    str(tmp_path / "s.json"),
    {"case": {"lesion": {"dice": 0.0, "hd95": float("nan")}}},
    {"mean_dice": np.float64(0.0), "per_class": {"lesion": {"sensitivity": np.float32("nan")}}},
  )
  got = _strict(open(tmp_path / "s.json").read())
  assert got["per_case"]["case"]["lesion"]["hd95"] is None
  assert got["summary"]["per_class"]["lesion"]["sensitivity"] is None


def test_a_bundle_spec_is_strict_json(tmp_path):
  """bundle.write sanitises the spec (thresholds may be undefined: no positives on validation)."""
  from bundle_fixtures import write_classifier_bundle

  from mdx.inference import bundle as bundle_lib

  path = write_classifier_bundle(
    str(tmp_path / "b"),
    ["Mass", "Nodule"],
    {"Mass": np.float32(0.5), "Nodule": float("nan")},
    {"mode": "per_image"},
  )
  spec = _strict(open(f"{path}/{bundle_lib.SPEC}").read())
  assert spec["thresholds"]["values"] == {"Mass": 0.5, "Nodule": None}


def test_jsonio_is_the_only_sanitiser():
  """No room keeps a copy of its own (the three that did: report, segmentation metrics, bundle)."""
  import pathlib

  root = pathlib.Path(jsonio.__file__).parent
  copies = [
    str(p.relative_to(root.parent))
    for p in root.rglob("*.py")
    if p.name != "jsonio.py"
    and any(name in p.read_text() for name in ("def _jsonable", "def clean(", "def jsonable"))
  ]
  assert not copies, copies
