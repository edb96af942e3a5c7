"""The classification task's data side: resampling reaches the training stream, splits are by
patient."""

import numpy as np
from absl import flags

from mdx import config as config_lib
from mdx.runtime import BatchGeometry
from mdx.train.classification import ClassificationTask

flags.FLAGS.mark_as_parsed()


def tiny_config(**data):
  c = config_lib.defaults()
  c.data.num_patients = 80
  c.data.image_size = 32
  c.data.update(data)
  c.model.name = "densenet_tiny"
  c.train.batch_size = 16
  c.train.steps = 12
  return c


def positive_share(task, k, batches=12):
  it = iter(task.train_data(BatchGeometry(task.config.train.batch_size)))
  labels = np.concatenate([next(it)["labels"] for _ in range(batches)])
  return labels[:, k].mean()


def test_oversampling_named_finding_raises_its_share_in_the_stream():
  plain = ClassificationTask(tiny_config())
  k = plain.findings.index("Effusion")
  resampled = ClassificationTask(
    tiny_config(resample=dict(mode="oversample", ratio=1.0, findings=["Effusion"]))
  )
  before = positive_share(plain, k)
  after = positive_share(resampled, k)
  assert before < 0.25 and after > 0.35, (before, after)


def test_splits_share_no_patient():
  task = ClassificationTask(tiny_config())
  sets = {name: set(task.patient_ids[idx]) for name, idx in task.splits.items()}
  assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["validation"])
  assert not (sets["test"] & sets["validation"])
  assert sum(len(v) for v in task.splits.values()) == len(task.source)


def test_a_freeze_policy_naming_a_stage_the_model_lacks_fails_when_the_config_is_read():
  """densenet_tiny has two dense blocks: 'from:block4' (right for DenseNet-121) is an error naming
  the model's stages before any data is read or any run of a sweep trains."""
  import pytest

  c = tiny_config()
  c.model.freeze = "from:block4"
  with pytest.raises(ValueError, match=r"config.model.freeze: .*'block4'.*'block2'"):
    config_lib.resolve(c)
  c.model.freeze = "from:block2"
  assert config_lib.resolve(c).model.freeze == "from:block2"


def test_the_task_reads_its_data_through_prepare_dataset(tmp_path):
  """The records, splits and audit are mdx.data.prepare's, exactly: the same split as
  splits.make_split on the source, the audit in WORKDIR/split_audit.json."""
  import json

  from mdx.data import prepare, sources, splits

  c = config_lib.resolve(tiny_config())
  task = ClassificationTask(c, workdir=str(tmp_path))
  want = splits.make_split(c.data, sources.make_source(c.data, c.seed), c.seed)
  assert task.splits.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(task.splits[name], want[name])
  assert json.loads((tmp_path / prepare.AUDIT_FILE).read_text()) == task.split_audit
  assert task.split_audit["leak"] is False and task.record_check is None  # phantoms: generated


def test_num_classes_left_unset_is_counted_from_the_listed_folders(tmp_path):
  """A class-per-folder source tells its findings only once listed: resolve leaves
  model.num_classes unset, the task counts it (in place, so config.json and the bundle state it);
  a number that differs is the one-line error naming both."""
  import pytest
  from PIL import Image

  rng = np.random.default_rng(0)
  root = tmp_path / "data"
  for k in range(12):
    cls = ("NORMAL", "MASS", "NODULE")[k % 3]
    (root / cls).mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(root / cls / f"p{k}_0.png")
  c = tiny_config()
  c.data.source = "folders"
  del c.data["num_patients"]
  c.data.update(root=str(root), negative_class="NORMAL", patient_regex=r"^(p\d+)_")
  c.data.split = dict(by="patient", test=0.25, val=0.25)
  c = config_lib.resolve(c)
  assert c.model.num_classes is None
  task = ClassificationTask(c)
  assert task.findings == ("MASS", "NODULE") and c.model.num_classes == 2
  assert task.model(None).num_classes == 2
  c.model.num_classes = 3
  with pytest.raises(ValueError) as info:
    ClassificationTask(c)
  assert str(info.value) == (
    "config.model.num_classes=3 but source 'folders' has 2 findings ['MASS', 'NODULE']; leave "
    "model.num_classes unset to take the source's"
  )
