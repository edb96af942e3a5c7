"""The grain pipeline: deterministic, sharded by process, resumable, nothing dropped in
evaluation."""

import numpy as np
import pytest
from absl import flags

from mdx.data import augment, pipeline
from mdx.data.image import records

flags.FLAGS.mark_as_parsed()  # grain worker processes need parsed absl flags


class TinySource:
  """Records whose image encodes the record index (pixel [0, 0]) so batches can be traced back."""

  findings = ("A", "B")

  def __init__(self, n=50):
    self.n = n
    rng = np.random.default_rng(0)
    self._labels = (rng.random((n, 2)) < 0.3).astype(np.float32)
    self._labels[3, 1] = np.nan  # one unknown label

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    image = np.full((12, 12, 1), 7, np.uint8)
    image[0, 0] = i
    return {
      "image": image,
      "labels": self._labels[i],
      "patient_id": f"p{i // 2}",
      "image_id": f"img{i}",
    }

  def labels(self):
    return self._labels


def take(it, n):
  return [next(it) for _ in range(n)]


def train_dataset(src, indices, *, image_size, seed=0, transforms=(), **kwargs):
  """The classification task's training stream over `src` (2D records, unknown labels masked)."""
  return pipeline.train_dataset(
    records.LoadImageRecord(src, image_size),
    pipeline.epochs(indices, seed),
    seed=seed,
    transforms=[*transforms, records.mask_unknown_labels],
    **kwargs,
  )


def eval_dataset(src, indices, *, image_size, **kwargs):
  return pipeline.eval_dataset(
    records.LoadImageRecord(src, image_size),
    indices,
    transforms=[records.mask_unknown_labels],
    **kwargs,
  )


def test_to_float_image_scales_and_resizes():
  img16 = np.full((10, 20), 65535, np.uint16)
  out = records.to_float_image(img16, 8)
  assert out.shape == (8, 8, 1) and out.dtype == np.float32
  np.testing.assert_allclose(out, 1.0, atol=1e-6)
  rgb = np.zeros((4, 4, 3), np.uint8)
  rgb[..., 1] = 255
  out = records.to_float_image(rgb, None)
  assert out.shape == (4, 4, 3) and out[..., 1].min() == 1.0 and out[..., 0].max() == 0.0
  with pytest.raises(ValueError, match="expected an image"):
    records.to_float_image(np.zeros((2, 2, 2, 2)), 4)


def test_training_stream_is_deterministic_and_covers_each_epoch():
  src = TinySource(40)
  indices = np.arange(0, 40, 2)  # a 20-record training split
  kwargs = dict(batch_size=5, steps=8, image_size=12, seed=3)
  a = take(iter(train_dataset(src, indices, **kwargs)), 8)
  b = take(iter(train_dataset(src, indices, **kwargs)), 8)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["index"], y["index"])
  epoch1 = np.concatenate([x["index"] for x in a[:4]])
  epoch2 = np.concatenate([x["index"] for x in a[4:]])
  assert sorted(epoch1) == sorted(indices) == sorted(epoch2)  # every record once per epoch
  assert not np.array_equal(epoch1, epoch2)  # reshuffled each epoch
  assert a[0]["image"].shape == (5, 12, 12, 1)


def test_unknown_labels_are_masked():
  src = TinySource(10)
  batch = next(iter(eval_dataset(src, np.arange(10), batch_size=10, image_size=12)))
  row = list(batch["index"]).index(3)
  assert batch["label_mask"][row].tolist() == [1.0, 0.0] and batch["labels"][row, 1] == 0.0


def test_processes_share_each_global_batch():
  """Each process's records are disjoint and together make the global batch, augmented exactly as
  one process augments them (a record's random draw follows its global position)."""
  src = TinySource(40)
  indices = np.arange(40)
  kwargs = dict(batch_size=8, steps=4, image_size=12, seed=1, transforms=augment.make("chest_xray"))
  single = take(iter(train_dataset(src, indices, **kwargs)), 4)
  shares = [
    take(iter(train_dataset(src, indices, process_index=p, process_count=2, **kwargs)), 4)
    for p in range(2)
  ]
  for g in range(4):
    a, b = shares[0][g], shares[1][g]
    assert len(a["index"]) == 4 and not set(a["index"]) & set(b["index"])
    union = np.concatenate([a["index"], b["index"]])
    assert sorted(union) == sorted(single[g]["index"])
    # process p holds global rows p, p + 2, ...: same records, same augmented pixels
    np.testing.assert_array_equal(a["index"], single[g]["index"][0::2])
    np.testing.assert_array_equal(a["image"], single[g]["image"][0::2])
    np.testing.assert_array_equal(b["image"], single[g]["image"][1::2])


@pytest.mark.slow  # spawns processes: the full tier
def test_worker_processes_give_the_same_augmented_batches():
  src = TinySource(30)
  kwargs = dict(batch_size=6, steps=5, image_size=12, seed=5, transforms=augment.make("chest_xray"))
  inline = take(iter(train_dataset(src, np.arange(30), **kwargs)), 5)
  workers = take(iter(train_dataset(src, np.arange(30), workers=2, **kwargs)), 5)
  for x, y in zip(inline, workers):
    np.testing.assert_array_equal(x["index"], y["index"])
    np.testing.assert_array_equal(x["image"], y["image"])
  # augmentation really is random per element
  assert not np.allclose(inline[0]["image"][0], inline[0]["image"][1])


def test_a_stream_started_at_a_step_continues_exactly_with_any_process_count():
  """What resume relies on: the stream from start_step=3 is batches 3.. of the uninterrupted
  stream, augmented identically, whether 1 or 2 processes read it (a checkpoint of 2 processes
  resumes on 1)."""
  src = TinySource(30)
  kwargs = dict(
    batch_size=4, steps=20, image_size=12, seed=2, transforms=augment.make("chest_xray")
  )
  full = take(iter(train_dataset(src, np.arange(30), **kwargs)), 7)
  resumed = take(iter(train_dataset(src, np.arange(30), start_step=3, **kwargs)), 4)
  halves = [
    take(
      iter(
        train_dataset(src, np.arange(30), start_step=3, process_index=p, process_count=2, **kwargs)
      ),
      4,
    )
    for p in range(2)
  ]
  for g, expected in enumerate(full[3:]):
    for key in ("index", "image"):
      np.testing.assert_array_equal(resumed[g][key], expected[key])
      np.testing.assert_array_equal(halves[0][g][key], expected[key][0::2])
      np.testing.assert_array_equal(halves[1][g][key], expected[key][1::2])


def test_eval_pads_and_masks_and_keeps_order():
  src = TinySource(23)
  indices = np.arange(3, 23)  # 20 records, global batch 8 -> 3 batches, 4 padded rows
  batches = list(eval_dataset(src, indices, batch_size=8, image_size=12))
  assert len(batches) == 3 and all(b["image"].shape[0] == 8 for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  order = np.concatenate([b["index"] for b in batches])
  assert mask.sum() == 20 and mask[-4:].sum() == 0
  np.testing.assert_array_equal(order[mask > 0], indices)
  # Two processes: each takes half of every global batch; together the same rows.
  shares = [
    list(eval_dataset(src, indices, batch_size=8, image_size=12, process_index=p, process_count=2))
    for p in range(2)
  ]
  for g in range(3):
    joined = np.concatenate([shares[0][g]["index"], shares[1][g]["index"]])
    np.testing.assert_array_equal(joined, batches[g]["index"])


def test_empty_eval_split_is_an_error():
  with pytest.raises(ValueError, match="evaluation split is empty"):
    eval_dataset(TinySource(5), np.array([], np.int64), batch_size=4, image_size=12)


def test_mixed_epochs_draw_each_dataset_by_its_weight():
  """Datasets of 30 and 10 training records, weights 1 and 3: an epoch of 40 draws
  round(40 * 1/4) = 10 from the first and 30 from the second. The second repeats each of its
  records three times (its own epochs one after another), the first shows 10 different records,
  other ones in the next epoch; the same seed gives the same epochs."""
  first, second = np.arange(30), np.arange(100, 110)
  fn = pipeline.mixed_epochs([first, second], [1, 3], seed=5)
  assert fn.counts == (10, 30)
  e0, e1 = fn(0), fn(1)
  assert len(e0) == len(e1) == 40
  from_first = e0[e0 < 100]
  assert len(from_first) == 10 and len(set(from_first)) == 10
  assert np.bincount(e0[e0 >= 100] - 100).tolist() == [3] * 10
  assert set(e1[e1 < 100]) != set(from_first)
  np.testing.assert_array_equal(pipeline.mixed_epochs([first, second], [1, 3], seed=5)(1), e1)
  # the records are interleaved, not one dataset after the other
  assert 0 < np.flatnonzero(e0 >= 100)[0] < 10
  stream = pipeline.EpochStream(fn, positions=200)
  assert stream.epoch_len == 40 and stream[45] == e1[5]
  with pytest.raises(ValueError, match="must all be > 0"):
    pipeline.mixed_epochs([first, second], [1, 0], seed=5)
  with pytest.raises(ValueError, match="dataset 1 of the mixture has no training records"):
    pipeline.mixed_epochs([first, second[:0]], [1, 1], seed=5)


def test_mixed_epochs_resample_within_each_dataset():
  """A resample policy applies to each dataset's own records: dataset b's only positive is
  repeated to balance b, and b still gets its weight's share of the epoch."""
  labels = np.zeros((20, 1), np.float32)
  labels[[0, 1, 2, 3, 4], 0] = 1  # a: 5 positives of 10
  labels[15, 0] = 1  # b: 1 positive of 10
  a, b = np.arange(10), np.arange(10, 20)
  policy = {"mode": "oversample", "ratio": 1.0}
  fn = pipeline.mixed_epochs([a, b], [1, 1], 0, policy, labels, ("A",))
  epoch = fn(0)
  from_b = epoch[epoch >= 10]
  assert len(from_b) == fn.counts[1]
  own = pipeline.epochs(b, 1, policy, labels, ("A",))(0)  # b's own resampled epoch
  assert (own == 15).sum() == 9  # oversampled to as many visits as b's 9 negatives
  assert set(from_b) <= set(own.tolist())
  assert (from_b == 15).mean() > 0.3  # 1 in 10 without resampling; b's draws keep its balance
