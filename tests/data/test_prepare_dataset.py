"""One path from config.data to a run's records (mdx.data.prepare.prepare_dataset): the source,
the record check under on_error, the split by patient and its audit, the same for both tasks and,
without the split, for external validation."""

import json

import ml_collections
import numpy as np
import pytest
from real_layouts import write_png

from mdx.data import prepare, sources, splits


def _folders(root, patients=10):
  """NORMAL/ and PNEUMONIA/ of 16 px random films, two per patient (p<k>_<j>.png)."""
  for k in range(patients):
    cls = "PNEUMONIA" if k % 2 else "NORMAL"
    for j in range(2):
      write_png(str(root / cls / f"p{k}_{j}.png"), size=(16, 16), seed=10 * k + j)
  return root


def _data(**fields):
  return ml_collections.ConfigDict(
    dict(split=dict(by="patient", test=0.2, val=0.2), image_size=32, **fields)
  )


def _folder_data(root, **fields):
  return _data(
    source="folders",
    root=str(root),
    negative_class="NORMAL",
    patient_regex=r"^(p\d+)_",
    **fields,
  )


def test_phantoms_are_split_by_patient_and_audited(tmp_path):
  data = _data(source="phantoms", num_patients=40)
  got = prepare.prepare_dataset(data, 3, sources.IMAGE, str(tmp_path))
  assert got.check is None  # generated in memory: nothing to decode
  want = splits.make_split(data, sources.make_source(data, 3, sources.IMAGE), 3)
  assert got.splits.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got.splits[name], want[name])
  assert got.audit["leak"] is False
  assert got.audit["sets"]["test"]["images"] == len(want["test"])
  assert json.loads((tmp_path / prepare.AUDIT_FILE).read_text()) == got.audit


def test_a_corrupt_file_is_named_or_skipped_before_the_split(tmp_path):
  root = _folders(tmp_path / "data")
  (root / "PNEUMONIA" / "p3_1.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match=r"p3_1\.png.*on_error='skip'") as info:
    prepare.prepare_dataset(_folder_data(root), 0, sources.IMAGE, str(tmp_path / "raise"))
  assert "\n" not in str(info.value)
  assert not (tmp_path / "raise" / prepare.AUDIT_FILE).exists()  # nothing split

  work = tmp_path / "skip"
  data = _folder_data(root, on_error="skip")
  got = prepare.prepare_dataset(data, 0, sources.IMAGE, str(work))
  assert len(got.source) == 19 and "PNEUMONIA/p3_1.png" not in set(got.source.image_ids())
  assert got.check.total == 20 and len(got.check.bad) == 1
  assert "p3_1.png" in (work / "skipped_records.csv").read_text()
  # split as if the file had been deleted: every kept record in exactly one set
  assert sorted(np.concatenate(list(got.splits.values())).tolist()) == list(range(19))
  assert (work / prepare.AUDIT_FILE).exists()


def test_external_validation_takes_every_record_checked_but_unsplit(tmp_path):
  root = _folders(tmp_path / "data")
  (root / "NORMAL" / "p0_0.png").write_bytes(b"")
  data = _folder_data(root, on_error="skip")
  got = prepare.prepare_dataset(data, 0, sources.IMAGE, str(tmp_path / "out"), split=False)
  assert got.splits is None and got.audit is None
  assert len(got.source) == 19 and got.source.skipped == 1
  assert "p0_0.png" in (tmp_path / "out" / "skipped_records.csv").read_text()
  assert not (tmp_path / "out" / prepare.AUDIT_FILE).exists()
  with pytest.raises(ValueError, match=r"p0_0\.png"):
    prepare.prepare_dataset(_folder_data(root), 0, sources.IMAGE, None, split=False)


def test_a_volume_source_is_split_by_case_without_an_audit(tmp_path):
  split = dict(by="patient", test=0.0, val=0.34)
  data = ml_collections.ConfigDict(
    dict(source="brain_phantoms", num_cases=6, shape=(16, 16, 16), split=split)
  )
  got = prepare.prepare_dataset(data, 0, sources.VOLUME, str(tmp_path))
  assert set(got.splits) == {"train", "validation"} and got.audit is None
  assert sum(len(v) for v in got.splits.values()) == 6
  assert not (tmp_path / prepare.AUDIT_FILE).exists()


def test_an_unknown_source_kind_is_refused():
  with pytest.raises(ValueError, match="unknown for volume tasks"):
    prepare.prepare_dataset(_data(source="phantoms"), 0, sources.VOLUME)


def test_the_audit_command_audits_the_split_a_run_trains_on(tmp_path):
  """python -m mdx audit --config prepares the data as a run does: a file on_error='skip' drops is
  in no set of the audit either."""
  from mdx import config as config_lib
  from mdx.commands import audit

  root = _folders(tmp_path / "data")
  (root / "NORMAL" / "p2_0.png").write_bytes(b"broken")
  c = config_lib.defaults()
  c.data.update(_folder_data(root, on_error="skip"))
  c.model.name = "densenet_tiny"
  config = config_lib.resolve(c)
  report = audit.audit_config(config)
  run = prepare.prepare_dataset(config.data, config.seed, sources.IMAGE)
  assert {n: s["images"] for n, s in report["sets"].items()} == {
    n: len(i) for n, i in run.splits.items()
  }
  assert sum(s["images"] for s in report["sets"].values()) == 19 and not report["leak"]
