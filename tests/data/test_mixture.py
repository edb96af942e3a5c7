"""Several datasets as one source (mdx.data.mixture): one finding list with unknowns, ids prefixed
by dataset, splits by patient within each dataset, and the config's checks of every entry."""

import ml_collections
import numpy as np
import pytest

from mdx import config as config_lib
from mdx.data import mixture, sources, splits

NAN = np.nan


class Tiny:
  """A source of a few records with given findings, labels and patients (no files)."""

  def __init__(self, findings, labels, patients, channels=1, ids=None):
    self.findings = tuple(findings)
    self._ids = np.asarray(ids if ids is not None else [f"img{i}" for i in range(len(patients))])
    self._labels = np.asarray(labels, np.float32).reshape(len(patients), len(findings))
    self._patients = np.asarray(patients).astype(str)
    self.channels = channels

  def __len__(self):
    return len(self._patients)

  def __getitem__(self, i):
    return {
      "image": np.full((4, 4, 1), int(self._ids[i][3:]), np.uint8),
      "labels": self._labels[i],
      "patient_id": self._patients[i],
      "image_id": self._ids[i],
    }

  def labels(self):
    return self._labels

  def patient_ids(self):
    return self._patients

  def image_ids(self):
    return self._ids

  def select(self, indices):
    indices = np.asarray(indices)
    return Tiny(
      self.findings,
      self._labels[indices],
      self._patients[indices],
      self.channels,
      self._ids[indices],
    )


def two():
  a = Tiny(("Effusion", "Mass"), [[1, 0], [0, 1], [NAN, 1]], ["p1", "p1", "p2"])
  # RSNA-like: labels Pneumonia and a name outside the canonical list
  b = Tiny(("Pneumonia", "Effusion", "Odd"), [[1, 0, 1], [0, 0, 0]], ["p1", "p3"])
  entries = [{"source": "phantoms", "name": "a"}, {"source": "phantoms", "name": "b"}]
  return a, b, entries


def test_labels_in_one_finding_list_with_unknown_where_a_dataset_does_not_label():
  a, b, entries = two()
  findings = mixture.canonical_union([a.findings, b.findings])
  # canonical order (NIH's: Effusion, Mass, Pneumonia), then the other name
  assert findings == ("Effusion", "Mass", "Pneumonia", "Odd")
  m = mixture.MixtureSource([a, b], entries, findings)
  expected = np.array(
    [
      [1, 0, NAN, NAN],
      [0, 1, NAN, NAN],
      [NAN, 1, NAN, NAN],
      [0, NAN, 1, 1],
      [0, NAN, 0, 0],
    ],
    np.float32,
  )
  np.testing.assert_array_equal(m.labels(), expected)
  np.testing.assert_array_equal(m[3]["labels"], expected[3])
  assert m.unlabelled == {"a": ("Pneumonia", "Odd"), "b": ("Mass",)}
  # two datasets' 'p1' are two patients
  assert m.patient_ids().tolist() == ["a:p1", "a:p1", "a:p2", "b:p1", "b:p3"]
  assert m.image_ids().tolist() == ["a:img0", "a:img1", "a:img2", "b:img0", "b:img1"]
  assert m[4]["patient_id"] == "b:p3" and int(m[4]["image"][0, 0, 0]) == 1  # b's record 1
  assert m.datasets().tolist() == ["a", "a", "a", "b", "b"]
  # findings asked for: only those, in that order; one no dataset labels is unknown everywhere
  asked = mixture.MixtureSource([a, b], entries, ("Mass", "Hernia"))
  np.testing.assert_array_equal(
    asked.labels(), np.array([[0, NAN], [1, NAN], [1, NAN], [NAN, NAN], [NAN, NAN]], np.float32)
  )


def test_two_datasets_names_of_one_finding_are_one_column():
  """NIH's 'Effusion' and CheXpert's 'Pleural Effusion' are one finding of the label space: one
  column, each dataset's labels in it; asked by either name, the same."""
  nih = Tiny(("Effusion", "Mass"), [[1, 0], [0, 1]], ["p1", "p2"])
  chexpert = Tiny(("Pleural Effusion", "Edema"), [[0, 1], [1, NAN]], ["q1", "q2"])
  entries = [{"source": "nih", "name": "nih"}, {"source": "chexpert", "name": "chexpert"}]
  findings = mixture.canonical_union([nih.findings, chexpert.findings])
  assert findings == ("Effusion", "Mass", "Edema")
  m = mixture.MixtureSource([nih, chexpert], entries, findings)
  expected = [[1, 0, NAN], [0, 1, NAN], [0, NAN, 1], [1, NAN, NAN]]
  np.testing.assert_array_equal(m.labels(), np.array(expected, np.float32))
  assert m.unlabelled == {"nih": ("Edema",), "chexpert": ("Mass",)}
  asked = mixture.MixtureSource([nih, chexpert], entries, ("Pleural Effusion",))
  np.testing.assert_array_equal(asked.labels()[:, 0], [1, 0, 0, 1])


def test_select_keeps_each_dataset_and_its_records():
  a, b, entries = two()
  m = mixture.MixtureSource([a, b], entries, ("Effusion", "Mass"))
  kept = m.select([0, 2, 4])
  assert kept.image_ids().tolist() == ["a:img0", "a:img2", "b:img1"]
  assert kept.offsets.tolist() == [0, 2, 3]
  with pytest.raises(ValueError, match="every record of dataset 'b' was left out"):
    m.select([0, 1])
  with pytest.raises(ValueError, match="ascending"):
    m.select([2, 0])


def test_split_by_patient_within_each_dataset():
  """Every dataset has its own train, validation and test patients (shares of ITS patients), a
  patient's films stay together, and an entry's own split overrides config.data.split."""
  rng = np.random.default_rng(0)
  a = Tiny(("Effusion",), rng.integers(0, 2, 60), [f"p{i // 2}" for i in range(60)])  # 30 pts
  b = Tiny(("Effusion",), rng.integers(0, 2, 20), [f"p{i}" for i in range(20)])  # 20 patients
  entries = [{"name": "a", "source": "phantoms"}, {"name": "b", "source": "phantoms"}]
  m = mixture.MixtureSource([a, b], entries, ("Effusion",))
  data = ml_collections.ConfigDict(dict(split=dict(by="patient", test=0.2, val=0.1)))
  sets = splits.make_split(data, m, 0)
  pids, names = m.patient_ids(), m.datasets()
  for name, patients in (("a", 30), ("b", 20)):
    count = {k: len(np.unique(pids[v][names[v] == name])) for k, v in sets.items()}
    assert count == {
      "train": patients - round(0.2 * patients) - round(0.1 * patients),
      "test": round(0.2 * patients),
      "validation": round(0.1 * patients),
    }
  assert sorted(np.concatenate(list(sets.values())).tolist()) == list(range(len(m)))
  for x, y in (("train", "test"), ("train", "validation"), ("test", "validation")):
    assert not set(pids[sets[x]]) & set(pids[sets[y]])
  # b split its own way: half its patients in test
  entries[1]["split"] = {"by": "patient", "test": 0.5, "val": 0.25}
  m = mixture.MixtureSource([a, b], entries, ("Effusion",))
  sets = splits.make_split(data, m, 0)
  assert len(np.unique(pids[sets["test"]][names[sets["test"]] == "b"])) == 10
  entries[1]["split"] = {"by": "kfold", "k": 2}
  m = mixture.MixtureSource([a, b], entries, ("Effusion",))
  with pytest.raises(ValueError, match=r"dataset 'b' is split into \['train', 'validation'\]"):
    splits.make_split(data, m, 0)


def mixture_config(*entries, **data):
  c = config_lib.defaults()
  c.data.source = "mixture"
  c.data.image_size = 32
  c.data.sources = list(entries)
  c.data.update(data)
  c.model.name = "densenet_tiny"
  return c


def test_the_config_checks_every_entry_as_a_config_of_its_own(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  a = dict(source="phantoms", name="a", num_patients=20, weight=2)
  b = dict(source="folders", name="b", root="folder_b", classes=["NORMAL", "OPACITY"])
  b.update(negative_class="NORMAL", weight=1)  # one output: OPACITY
  resolved = config_lib.resolve(mixture_config(a, b))
  assert resolved.data.sources[1]["root"] == str(tmp_path / "folder_b")  # its paths made absolute
  assert b["root"] == "folder_b"  # the experiment's own dict is left as it was
  # the findings: the union (phantoms' 14 NIH findings, then the folders' class) or data.findings
  assert resolved.model.num_classes == 15
  asked = config_lib.resolve(mixture_config(a, b, findings=["Effusion"]))
  assert asked.model.num_classes == 1
  with pytest.raises(ValueError, match=r"unknown field 'rot' in config.data.sources\[1\].*'root'"):
    config_lib.resolve(mixture_config(a, dict(b, rot="x")))
  with pytest.raises(ValueError, match=r"sources\[1\]: config.data.source='brats' is unknown for"):
    config_lib.resolve(mixture_config(a, dict(source="brats", root="x", weight=1)))
  with pytest.raises(ValueError, match="names 'a' twice"):
    config_lib.resolve(mixture_config(a, dict(a, num_patients=10)))
  with pytest.raises(ValueError, match="'b' has no weight while others have"):
    config_lib.resolve(mixture_config(a, {k: v for k, v in b.items() if k != "weight"}))
  with pytest.raises(ValueError, match=r"sources\[1\].weight=0 must be a number > 0"):
    config_lib.resolve(mixture_config(a, dict(b, weight=0)))
  with pytest.raises(ValueError, match="cannot hold a mixture"):
    config_lib.resolve(mixture_config(a, dict(source="mixture", name="m")))
  with pytest.raises(ValueError, match=r"unknown field 'tset' in config.data.sources\[0\].split"):
    config_lib.resolve(mixture_config(dict(a, split=dict(by="patient", tset=0.1)), b))
  with pytest.raises(ValueError, match="augment='dermatology' flips .* source 'phantoms' forbids"):
    config_lib.resolve(mixture_config(a, b, augment="dermatology"))
  with pytest.raises(ValueError, match=r"read \[1, 3\] channels.*the same 'channels'"):
    config_lib.resolve(mixture_config(a, dict(b, channels=3)))
  plain = config_lib.defaults()
  plain.data.sources = [a]
  with pytest.raises(ValueError, match="read when config.data.source='mixture'"):
    config_lib.resolve(plain)
  with pytest.raises(ValueError, match="needs config.data.sources"):
    config_lib.resolve(mixture_config())


def test_two_phantom_datasets_of_one_config_differ_and_keep_their_findings():
  c = config_lib.resolve(
    mixture_config(
      dict(source="phantoms", name="a", num_patients=6),
      dict(source="phantoms", name="b", num_patients=6, findings=["Effusion"]),
    )
  )
  m = sources.make_source(c.data, 0)
  assert isinstance(m, mixture.MixtureSource) and m.names == ("a", "b")
  a, b = m.parts
  assert len(a) and len(b) and m.findings == a.findings  # Effusion is one of a's
  assert not np.array_equal(a[0]["image"], b[0]["image"])  # each entry has its own seed
  k = m.findings.index("Effusion")
  known = ~np.isnan(m.labels()[m.datasets() == "b"])
  assert known[:, k].all() and known.sum() == len(b)  # b labels Effusion alone
