"""Splits by patient, test-first sampling with a minimum positive share, k-fold, official NIH; the
split and audit commands."""

import ml_collections
import numpy as np
import pytest
from real_layouts import NIH_COLUMNS, write_csv

from mdx import commands
from mdx.data import splits


def _population(n_patients=300, seed=0):
  rng = np.random.default_rng(seed)
  pids, pos = [], []
  for p in range(n_patients):
    k = int(rng.integers(1, 6))
    sick = rng.random() < 0.15
    pids += [f"p{p}"] * k
    pos += list(sick & (rng.random(k) < 0.7))
  return np.array(pids), np.array(pos)


def test_test_first_split_shares_sizes_and_no_leak():
  pids, pos = _population()
  out = splits.test_first_split(pids, pos, 60, 50, 0.5, seed=1)
  assert sum(len(v) for v in out.values()) == len(pids)
  sets = [set(pids[out[k]]) for k in ("train", "validation", "test")]
  assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
  for name, size in (("test", 60), ("validation", 50)):
    assert len(out[name]) >= size and pos[out[name]].mean() >= 0.5
  assert pos[out["train"]].mean() < 0.5
  again = splits.test_first_split(pids, pos, 60, 50, 0.5, seed=1)
  assert all(np.array_equal(out[k], again[k]) for k in out)
  with pytest.raises(ValueError, match="min_positive_share"):
    splits.test_first_split(pids, pos, 400, 50, 0.9, seed=1)


def test_kfold_by_patient():
  pids, _ = _population(50)
  folds = splits.patient_kfold(pids, 5, seed=0)
  held = np.concatenate([h for _, h in folds])
  assert sorted(held.tolist()) == list(range(len(pids)))
  for train, h in folds:
    assert not set(pids[train]) & set(pids[h]) and len(train) + len(h) == len(pids)
  sizes = [len(h) for _, h in folds]
  assert max(sizes) - min(sizes) <= 5  # balanced by images (max 5 per patient)


def test_official_nih_split(tmp_path):
  ids = [f"{p:08d}_{k:03d}.png" for p in range(10) for k in range(2)]
  pids = [str(p) for p in range(10) for _ in range(2)]
  (tmp_path / "test_list.txt").write_text("\n".join(ids[:6]) + "\n")
  (tmp_path / "train_val_list.txt").write_text("\n".join(ids[6:]) + "\n")
  out = splits.official_nih_split(ids, pids, str(tmp_path), 0.25, seed=0)
  assert out["test"].tolist() == list(range(6))
  assert len(out["validation"]) == 4 and not set(out["validation"]) & set(out["train"])
  (tmp_path / "test_list.txt").write_text("\n".join(ids[:5]) + "\n")
  with pytest.raises(ValueError, match="neither"):
    splits.official_nih_split(ids, pids, str(tmp_path), 0.25, seed=0)


class _Src:
  findings = ("A", "B")

  def __init__(self, pids, labels):
    self._p, self._l = np.asarray(pids), labels

  def patient_ids(self):
    return self._p

  def labels(self):
    return self._l

  def image_ids(self):
    return np.array([f"i{i}" for i in range(len(self._p))])


def test_make_split_dispatch():
  pids, pos = _population(200)
  src = _Src(pids, np.stack([pos, np.zeros_like(pos)], 1).astype(np.float32))
  cfg = ml_collections.ConfigDict(
    dict(
      split=dict(by="test_first", test_size=20, val_size=20, min_positive_share=0.5, findings=["A"])
    )
  )
  out = splits.make_split(cfg, src, 0)
  assert pos[out["test"]].mean() >= 0.5
  cfg.split = dict(by="kfold", k=4, fold=3)
  assert set(splits.make_split(cfg, src, 0)) == {"train", "validation"}
  cfg.split = dict(by="patient", test=0.2, val=0.1)
  assert set(splits.make_split(cfg, src, 0)) == {"train", "validation", "test"}
  cfg.split = dict(by="study")
  with pytest.raises(ValueError, match="unknown"):
    splits.make_split(cfg, src, 0)


def test_image_split_runs_only_inside_the_ablation_switch_and_the_audit_reports_it(caplog):
  from mdx import config as config_lib

  pids, pos = _population(100)
  src = _Src(pids, np.stack([pos, np.zeros_like(pos)], 1).astype(np.float32))
  cfg = ml_collections.ConfigDict(dict(split=dict(by="image", test=0.2, val=0.2)))
  with pytest.raises(ValueError, match="ALLOW_IMAGE_SPLIT"):
    splits.make_split(cfg, src, 0)  # the data layer refuses it
  normal = config_lib.defaults()
  normal.data.split = dict(by="image", test=0.2, val=0.2)
  with pytest.raises(ValueError, match=r"config.data.split.by='image'.*leakage"):
    config_lib.resolve(normal)  # and so does a config, before anything is built
  with caplog.at_level("WARNING", logger="absl"):
    with splits.image_split_allowed("a test"):
      out = splits.make_split(cfg, src, 0)
      config_lib.resolve(normal)
  assert "LEAKAGE SWITCH ON (a test)" in caplog.text
  assert sorted(np.concatenate(list(out.values())).tolist()) == list(range(len(pids)))
  assert abs(len(out["test"]) - 0.2 * len(pids)) <= 1  # a share of images, not of patients
  report = splits.audit(
    {
      name: {"patient_ids": pids[i], "image_ids": np.arange(len(pids))[i]}
      for name, i in out.items()
    }
  )
  assert report["leak"] and splits.audit_json(report)["pairs"]["train&test"]["patients"] > 0
  with pytest.raises(ValueError, match="ALLOW_IMAGE_SPLIT"):
    splits.make_split(cfg, src, 0)  # the switch ends with its block


def _nih_csv(path, n_patients=40, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for p in range(n_patients):
    for k in range(int(rng.integers(1, 4))):
      lab = (
        "Mass"
        if rng.random() < 0.2
        else ("Pneumonia|Effusion" if rng.random() < 0.1 else "No Finding")
      )
      rows.append((f"{p:08d}_{k:03d}.png", lab, k, p, 40, "M", "PA"))
  write_csv(str(path), NIH_COLUMNS, rows)
  return rows


def test_split_cli_and_audit_cli(tmp_path, capsys):
  rows = _nih_csv(tmp_path / "Data_Entry_2017.csv")
  rc = commands.call(
    "split",
    [
      "--source=nih",
      f"--metadata={tmp_path / 'Data_Entry_2017.csv'}",
      f"--out={tmp_path / 'out'}",
      "--test_size=10",
      "--val_size=10",
      "--min_positive_share=0.5",
      "--findings=Mass,Pneumonia",
      "--seed=3",
    ],
  )
  out = capsys.readouterr().out
  assert rc == 0 and "OK: no patient is in two sets" in out
  files = [str(tmp_path / "out" / f"{n}.csv") for n in ("train", "validation", "test")]
  from mdx.data.image import file_source

  loaded = [file_source.read_csv(f) for f in files]
  assert all(cols == NIH_COLUMNS for cols, _ in loaded)
  assert sum(len(r) for _, r in loaded) == len(rows)
  assert commands.call("audit", files) == 0
  # An image-level random split of the same rows leaks patients: the audit says so and exits 1.
  perm = np.random.default_rng(0).permutation(len(rows))
  thirds = np.array_split(perm, 3)
  for i, idx in enumerate(thirds):
    write_csv(str(tmp_path / f"img{i}.csv"), NIH_COLUMNS, [rows[j] for j in idx])
  capsys.readouterr()
  images = [str(tmp_path / f"img{i}.csv") for i in range(3)]
  assert commands.call("audit", [*images, "--patient_column=Patient ID"]) == 1
  assert "LEAK" in capsys.readouterr().out


def test_audit_reports_shared_items():
  rep = splits.audit(
    {
      "a": {
        "patient_ids": np.array(["1", "2"]),
        "image_ids": np.array(["x", "y"]),
        "labels": np.array([[1, 0], [0, 0]]),
      },
      "b": {
        "patient_ids": np.array(["2", "3"]),
        "image_ids": np.array(["y", "z"]),
        "labels": np.array([[0, 1], [0, 0]]),
      },
    },
    ["F", "G"],
  )
  pair = rep["pairs"][("a", "b")]
  assert pair["patients"].tolist() == ["2"] and pair["images"].tolist() == ["y"]
  assert pair["findings_only_in_one"] == ["F", "G"] and rep["leak"]
  assert "LEAK" in splits.format_audit(rep)


def test_empty_split_and_missing_column(tmp_path, capsys):
  with pytest.raises(ValueError, match="empty"):
    splits.patient_split(["a", "b"], {"test": 0.1}, 0)
  write_csv(str(tmp_path / "x.csv"), ["Image Index", "Finding Labels"], [("a.png", "Mass")])
  assert commands.call("audit", [str(tmp_path / "x.csv"), str(tmp_path / "x.csv")]) == 2
  assert "x.csv: no patient column" in capsys.readouterr().err


# ------------------------------------------------------------------------------ one dispatcher
def test_training_and_the_split_command_share_one_dispatcher_and_its_lists(tmp_path, capsys):
  """The split command's flags are a config.data.split policy split by training's dispatcher: the
  same policy in a config splits the source into the same sets, and a run given the command's
  CSVs (by='lists') trains on exactly those sets."""
  from real_layouts import write_png

  from mdx.data import prepare, sources
  from mdx.data.image import file_source

  rows = _nih_csv(tmp_path / "Data_Entry_2017.csv", n_patients=80)
  for k, row in enumerate(rows):
    write_png(str(tmp_path / "images" / row[0]), size=(16, 16), seed=k)
  out = tmp_path / "sets"
  flags = ["--test_size=12", "--val_size=12", "--min_positive_share=0.3", "--findings=Mass"]
  metadata = f"--metadata={tmp_path / 'Data_Entry_2017.csv'}"
  assert commands.call("split", ["--source=nih", metadata, f"--out={out}", "--seed=3", *flags]) == 0
  printed = capsys.readouterr().out
  assert f"--config.data.split.by=lists --config.data.split.lists_dir={out}" in printed
  listed = {
    name: {r["Image Index"] for r in file_source.read_csv(out / f"{name}.csv")[1]}
    for name in ("train", "validation", "test")
  }
  policy = dict(by="test_first", test_size=12, val_size=12, min_positive_share=0.3)
  data = ml_collections.ConfigDict(
    dict(
      source="nih",
      metadata=str(tmp_path / "Data_Entry_2017.csv"),
      images=str(tmp_path / "images"),
      image_size=32,
      split=dict(policy, findings=["Mass"]),
    )
  )
  source = sources.make_source(data, 3)
  same = splits.make_split(data, source, 3)
  assert {n: set(source.image_ids()[i]) for n, i in same.items()} == listed
  data.split = dict(by="lists", lists_dir=str(out))
  for seed in (0, 7):  # the lists decide, not the seed
    got = prepare.prepare_dataset(data, seed, sources.IMAGE)
    assert {n: set(got.source.image_ids()[i]) for n, i in got.splits.items()} == listed
    assert got.audit["leak"] is False


def _lists(folder, **sets):
  for name, rows in sets.items():
    write_csv(str(folder / f"{name}.csv"), ["Path", "Patient"], rows)
  return str(folder)


def test_lists_match_longer_paths_and_may_lack_a_test_set(tmp_path):
  """A list may name an image by a longer path than the source's id (CheXpert's Path column holds
  the dataset folder); without test.csv there is no test set; listed images the source lacks (its
  filters or on_error dropped them) are counted, not an error."""
  ids = ["train/p1/s1/v1.jpg", "train/p1/s2/v1.jpg", "train/p2/s1/v1.jpg", "train/p3/s1/v1.jpg"]
  pids = ["p1", "p1", "p2", "p3"]
  folder = _lists(
    tmp_path,
    train=[("CheXpert-v1.0-small/" + ids[i], pids[i]) for i in (0, 1, 3)]
    + [("CheXpert-v1.0-small/train/p9/s1/v1.jpg", "p9")],
    validation=[("CheXpert-v1.0-small/" + ids[2], "p2")],
  )
  out = splits.lists_split(ids, pids, folder)
  assert set(out) == {"train", "validation"}
  assert out["train"].tolist() == [0, 1, 3] and out["validation"].tolist() == [2]


def test_lists_that_do_not_place_every_record_once_by_patient_are_errors(tmp_path):
  ids, pids = ["a.png", "b.png", "c.png"], ["1", "1", "2"]
  rules = [
    (dict(validation=[("a.png", "1")]), FileNotFoundError, r"has no train.csv"),
    (
      dict(train=[("a.png", "1"), ("b.png", "1")], validation=[("c.png", "2"), ("a.png", "1")]),
      ValueError,
      r"validation.csv: image a.png is also in train.csv",
    ),
    (
      dict(train=[("a.png", "1"), ("c.png", "2")], validation=[("b.png", "1")]),
      ValueError,
      r"patient 1 has images in train.csv and validation.csv",
    ),
    (
      dict(train=[("a.png", "1"), ("b.png", "1")], validation=[]),
      ValueError,
      r"1 of 3 records are in none of the lists .*\['c.png'\]",
    ),
  ]
  for k, (sets, error, message) in enumerate(rules):
    with pytest.raises(error, match=message):
      splits.lists_split(ids, pids, _lists(tmp_path / str(k), **sets))
  src = _Src(pids, np.zeros((3, 2), np.float32))
  cfg = ml_collections.ConfigDict(dict(split=dict(by="lists")))
  with pytest.raises(ValueError, match=r"by='lists' needs config.data.split.lists_dir"):
    splits.make_split(cfg, src, 0)


def test_the_split_command_names_its_flags_in_the_dispatchers_messages(tmp_path, capsys):
  _nih_csv(tmp_path / "Data_Entry_2017.csv")
  metadata = f"--metadata={tmp_path / 'Data_Entry_2017.csv'}"
  rc = commands.call(
    "split", [metadata, f"--out={tmp_path}", "--test_size=5", "--val_size=5", "--findings=Nope"]
  )
  lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
  assert rc == 2 and len(lines) == 1
  assert "--findings ['Nope'] not in" in lines[0] and "Data_Entry_2017.csv's findings" in lines[0]


def test_official_split_carried_by_the_source():
  """split.by='official' over a source whose extra names each record's official set (MIMIC-CXR:
  train / validate / test) takes those sets as they are, without lists_dir; a set of another
  name or a patient in two sets is one line naming it."""

  class Official(splits.ArrayRecords):
    def __init__(self, pids, sets):
      super().__init__(pids, [f"i{k}" for k in range(len(pids))], whose="mimic")
      self.extra = {"official_split": np.asarray(sets)}
      self.name = "mimic"

  records = Official(["a", "a", "b", "c", "d"], ["train", "train", "validate", "test", "train"])
  out = splits.split_records({"by": "official"}, records, 0)
  assert {k: v.tolist() for k, v in out.items()} == {
    "train": [0, 1, 4],
    "validation": [2],
    "test": [3],
  }
  with pytest.raises(ValueError, match=r"official set 'holdout'.*known sets"):
    splits.split_records(
      {"by": "official"}, Official(["a", "b", "c"], ["train", "holdout", "test"]), 0
    )
  with pytest.raises(ValueError, match="puts patient a in both train and test"):
    splits.split_records(
      {"by": "official"}, Official(["a", "a", "b"], ["train", "test", "validate"]), 0
    )
  with pytest.raises(ValueError, match="the source carries no official split"):
    splits.split_records({"by": "official"}, splits.ArrayRecords(["a", "b"], ["x", "y"]), 0)
