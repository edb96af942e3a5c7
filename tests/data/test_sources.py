"""Real-layout sources: NIH, CheXpert, class folders, expert labels, prepared TFDS records, and the
chest X-ray datasets of issue 25 (MIMIC-CXR, PadChest, VinDr, RSNA, SIIM, NLM, TBX11K) built from a
config through mdx.config on tiny files in their published layouts."""

import csv
import importlib
import json
import os
import pathlib
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image
from real_layouts import NIH_COLUMNS, write_csv, write_png

from mdx.data import sources
from mdx.data.cxr import chexpert, findings
from mdx.data.image import tfds_builders


def C(**kw):
  return ml_collections.ConfigDict(kw)


def test_nih_layout_labels_and_ids(nih_dir):
  s = sources.make_source(
    C(source="nih", metadata=str(nih_dir / "Data_Entry_2017.csv"), images=str(nih_dir)), 0
  )
  assert len(s) == 6 and s.findings == findings.NIH_FINDINGS
  lab = s.labels()
  col = {f: i for i, f in enumerate(findings.NIH_FINDINGS)}
  np.testing.assert_array_equal(lab[1].nonzero()[0], sorted([col["Cardiomegaly"], col["Effusion"]]))
  assert lab[2].sum() == 0 and lab[5, col["Hernia"]] == 1 and lab[5, col["Mass"]] == 1
  assert s.patient_ids().tolist() == ["1", "1", "2", "3", "3", "3"]
  rec = s[4]
  assert rec["image"].shape == (20, 24, 1) and rec["image"].dtype == np.uint8
  assert int(rec["image"][0, 0, 0]) == 40 and rec["image_id"] == "00000003_001.png"
  pa = sources.make_source(
    C(
      source="nih",
      metadata=str(nih_dir / "Data_Entry_2017.csv"),
      images=str(nih_dir),
      view_positions=["PA"],
      findings=["Mass"],
    ),
    0,
  )
  assert len(pa) == 4 and pa.labels()[:, 0].tolist() == [0, 0, 1, 0]


def test_nih_errors(nih_dir, tmp_path):
  rows = [("a.png", "Cardiomegaly|Pneumonitis", 0, 1, 1, "M", "PA")]
  write_csv(str(tmp_path / "bad.csv"), NIH_COLUMNS, rows)
  with pytest.raises(ValueError, match=r"row 2 .*'Pneumonitis'"):
    sources.make_source(C(source="nih", metadata=str(tmp_path / "bad.csv"), images=str(nih_dir)), 0)
  write_csv(str(tmp_path / "nocol.csv"), ["Image Index", "Finding Labels"], [("a.png", "Mass")])
  with pytest.raises(ValueError, match="Patient ID"):
    sources.make_source(
      C(source="nih", metadata=str(tmp_path / "nocol.csv"), images=str(nih_dir)), 0
    )
  os.remove(nih_dir / "images_002" / "images" / "00000003_001.png")
  meta = str(nih_dir / "Data_Entry_2017.csv")
  with pytest.raises(FileNotFoundError, match="1 of 6 image files are missing"):
    sources.make_source(C(source="nih", metadata=meta, images=str(nih_dir)), 0)
  s = sources.make_source(C(source="nih", metadata=meta, images=str(nih_dir), on_error="skip"), 0)
  assert len(s) == 5 and s.skipped == 1
  (nih_dir / "images_001" / "images" / "00000002_000.png").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="00000002_000.png"):
    s[2]
  with pytest.raises(ValueError, match="unknown; choose"):
    sources.make_source(C(source="mimic_cxr"), 0)


CHEX_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *chexpert.OBSERVATIONS]


def _chexpert(tmp_path):
  root = tmp_path / "chex"
  rel = [
    "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
    "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg",
    "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg",
  ]
  cells = [
    {"Atelectasis": "-1.0", "Edema": "1.0", "Cardiomegaly": ""},
    {"Atelectasis": "0.0", "Edema": "-1.0", "Cardiomegaly": "1.0"},
    {"Atelectasis": "", "Edema": "0.0", "Cardiomegaly": "-1.0"},
  ]
  rows = []
  for r, c in zip(rel, cells):
    write_png(str(root / r), seed=1)
    rows.append(
      [
        r,
        "Male",
        60,
        "Lateral" if "lateral" in r else "Frontal",
        "AP",
        *[c.get(o, "") for o in chexpert.OBSERVATIONS],
      ]
    )
  write_csv(str(root / "CheXpert-v1.0-small" / "train.csv"), CHEX_COLUMNS, rows)
  return root


def test_chexpert_policies_and_patients(tmp_path):
  root = _chexpert(tmp_path)
  meta = str(root / "CheXpert-v1.0-small" / "train.csv")
  f = ["Atelectasis", "Cardiomegaly", "Edema"]
  ign = sources.make_source(C(source="chexpert", metadata=meta, images=str(root), findings=f), 0)
  np.testing.assert_array_equal(ign.labels(), [[np.nan, 0, 1], [0, 1, np.nan], [0, np.nan, 0]])
  assert ign.patient_ids().tolist() == ["patient00001", "patient00001", "patient00002"]
  ones = sources.make_source(
    C(
      source="chexpert",
      metadata=meta,
      images=str(root),
      findings=f,
      uncertain="ones",
      blank="ignore",
    ),
    0,
  )
  np.testing.assert_array_equal(ones.labels(), [[1, np.nan, 1], [0, 1, 1], [np.nan, 1, 0]])
  mixed = sources.make_source(
    C(
      source="chexpert",
      metadata=meta,
      images=str(root / "CheXpert-v1.0-small"),
      findings=f,
      uncertain={"Atelectasis": "ones", "Cardiomegaly": "zeros", "Edema": "zeros"},
      frontal_only=True,
    ),
    0,
  )
  np.testing.assert_array_equal(mixed.labels(), [[1, 0, 1], [0, 0, 0]])
  assert mixed[1]["image"].shape == (20, 24, 1)
  with pytest.raises(ValueError, match="'maybe'"):
    sources.make_source(C(source="chexpert", metadata=meta, images=str(root), uncertain="maybe"), 0)


def test_chexpert_bad_cell(tmp_path):
  write_csv(
    str(tmp_path / "t.csv"),
    CHEX_COLUMNS,
    [["x/patient00009/s/v.jpg", "", "", "Frontal", "", *(["2"] * len(chexpert.OBSERVATIONS))]],
  )
  with pytest.raises(ValueError, match=r"row 2 .*'Atelectasis' has '2'"):
    sources.make_source(
      C(source="chexpert", metadata=str(tmp_path / "t.csv"), images=str(tmp_path)), 0
    )


def test_folders_with_patient_regex(tmp_path):
  for name in ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "NORMAL2-IM-0007-0001.jpeg"]:
    write_png(str(tmp_path / "NORMAL" / name))
  for name in ["person1_virus_6.jpeg", "person1_bacteria_2.jpeg", "person22_virus_3.jpeg"]:
    write_png(str(tmp_path / "PNEUMONIA" / name))
  regex = r"^(person\d+|(?:NORMAL2-)?IM-\d+)"
  s = sources.make_source(
    C(source="folders", root=str(tmp_path), negative_class="NORMAL", patient_regex=regex), 0
  )
  assert s.findings == ("PNEUMONIA",)
  assert s.labels()[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
  assert s.patient_ids().tolist() == [
    "IM-0001",
    "IM-0001",
    "NORMAL2-IM-0007",
    "person1",
    "person1",
    "person22",
  ]
  onehot = sources.make_source(C(source="folders", root=str(tmp_path)), 0)
  assert onehot.findings == ("NORMAL", "PNEUMONIA") and onehot.labels().sum(1).tolist() == [1] * 6
  write_png(str(tmp_path / "PNEUMONIA" / "scan.jpeg"))
  with pytest.raises(ValueError, match="scan.jpeg"):
    sources.make_source(C(source="folders", root=str(tmp_path), patient_regex=regex), 0)
  s = sources.make_source(
    C(source="folders", root=str(tmp_path), patient_regex=regex, on_error="skip"), 0
  )
  assert len(s) == 6 and s.skipped == 1


def test_nih_expert_labels(nih_dir, tmp_path):
  cols = [*NIH_COLUMNS, "Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass", "Set Id"]
  write_csv(
    str(tmp_path / "google.csv"),
    cols,
    [
      ("00000001_000.png", "Cardiomegaly", 0, 1, 50, "M", "PA", "NO", "NO", "YES", "NO", "test"),
      ("00000003_002.png", "Mass", 2, 3, 32, "F", "AP", "NO", "YES", "NO", "YES", "val"),
      ("00009999_000.png", "Mass", 0, 9, 32, "F", "AP", "NO", "NO", "NO", "YES", "test"),
    ],
  )
  cfg = C(
    source="nih_expert", metadata=str(tmp_path / "google.csv"), images=str(nih_dir), on_error="skip"
  )
  s = sources.make_source(cfg, 0)
  assert len(s) == 2 and s.skipped == 1
  np.testing.assert_array_equal(s.labels(), [[0, 0, 1, 0], [0, 1, 0, 1]])
  cfg.set = "test"
  assert sources.make_source(cfg, 0).image_ids().tolist() == ["00000001_000.png"]


def test_prepared_records_roundtrip(nih_dir, tmp_path):
  cfg = C(
    source="nih",
    metadata=str(nih_dir / "Data_Entry_2017.csv"),
    images=str(nih_dir),
    image_size=8,
    prepared_dir=str(tmp_path / "records"),
  )
  out = sources.prepare(cfg, 0)  # ahead of time (./launch.sh prepare)
  assert out["records"] == 6
  prepared = sources.make_source(cfg, 0)
  assert isinstance(prepared, tfds_builders.PreparedSource)
  raw_cfg = C(**{**cfg.to_dict(), "prepared_dir": ""})
  raw = sources.make_source(raw_cfg, 0)
  np.testing.assert_array_equal(prepared.labels(), raw.labels())
  np.testing.assert_array_equal(prepared.patient_ids(), raw.patient_ids())
  for i in range(6):
    rec = prepared[i]
    assert rec["image"].shape == (8, 8, 1) and rec["image_id"] == raw.image_ids()[i]
    assert int(rec["image"][0, 0, 0]) == 10 * i  # constant images survive the resize
  other = C(**{**cfg.to_dict(), "image_size": 4})
  assert tfds_builders.prepared_path(other) != tfds_builders.prepared_path(cfg)


def test_sources_own_their_facts():
  """Modality, synthetic or not, allowed flips and label values are the sources' (what the model
  card, external validation and the segmentation task read), not tables elsewhere."""
  from mdx.data.volume import brain_phantoms, brats

  for name, spec in sources.SOURCES.items():
    assert spec.modality, f"source {name!r} does not say what its images are"
  assert {n for n, s in sources.SOURCES.items() if s.synthetic} == {"phantoms", "brain_phantoms"}
  for name in CXR:  # the chest X-ray datasets' sentences are their modules' FACTS
    module = importlib.import_module(f"mdx.data.cxr.{name}")
    assert sources.spec(name).modality == module.FACTS["modality"]
  assert "not images of patients" in sources.spec("phantoms").modality
  assert sources.spec("brats").flip_axes == (0,)  # left-right only
  assert sources.spec("msd").flip_axes is None  # an MSD task's classes may name directions
  image = {n: s.flip_axes for n, s in sources.SOURCES.items() if s.kind == sources.IMAGE}
  films = ("phantoms", "nih", "chexpert", "nih_expert", *CXR)
  assert image == {n: () for n in films} | {"folders": None, "mixture": None}
  # BraTS class 3 is enhancing tumour, label 4 on disk; regions are written by index
  assert brats.label_values("classes") == (0, 1, 2, 4)
  assert brats.label_values("regions") == (0, 1, 2)
  phantoms_classes = brain_phantoms.BrainPhantoms(1, (16, 16, 16), label_mode="classes")
  assert phantoms_classes.label_values == (0, 1, 2, 4)
  assert len(phantoms_classes.label_values) == len(phantoms_classes.class_names)


def test_msd_label_values_are_the_class_indices(tmp_path):
  from fixture_files import write_msd

  write_msd(str(tmp_path), np.eye(4), n=2)  # no dataset.json: the config names the classes
  names = ("background", "anterior", "posterior")
  s = sources.make_source(C(source="msd", root=str(tmp_path), class_names=names), 0)
  assert s.label_values == (0, 1, 2)
  with open(tmp_path / "dataset.json", "w") as f:
    json.dump({"labels": {"0": "background", "1": "lesion"}}, f)
  s = sources.make_source(C(source="msd", root=str(tmp_path)), 0, sources.VOLUME)
  assert s.class_names == ("background", "lesion") and s.label_values == (0, 1)


def test_an_augmentation_preset_may_not_flip_where_the_source_forbids_it():
  import pytest

  from mdx import config as config_lib

  def resolved(source, augment):
    cfg = config_lib.defaults("classification")
    cfg.data.source, cfg.data.augment = source, augment
    if source == "folders":
      cfg.data.root = "/nonexistent"
    return config_lib.resolve(cfg)

  assert sources.SOURCES["nih"].flip_axes == () and sources.SOURCES["folders"].flip_axes is None
  for preset in ("dermatology", "fundus", "histopathology"):
    with pytest.raises(ValueError, match=rf"augment='{preset}' flips .* source 'phantoms' forbids"):
      resolved("phantoms", preset)
  resolved("phantoms", "chest_xray")
  resolved("phantoms", "chest_xray_lr_flip")  # the ablation measuring the mistake, with a warning
  resolved("folders", "dermatology")  # a folder tree cannot say: the preset decides


# --------------------------------------------------------------------------------------------------
# The chest X-ray datasets of issue 25, registered: built from a config that mdx.config checked.
FIXTURES = pathlib.Path(__file__).parent / "cxr" / "fixtures"
CXR = ("mimic", "padchest", "vindr", "rsna", "siim", "nlm", "tbx11k", "openi")


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _png(path, value=90, dtype=np.uint8):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image = np.full((12, 10), value, dtype)
  image[2:5, 3:6] = value // 2  # not constant: the record check would refuse a flat film
  Image.fromarray(image).save(path)


def cxr_dataset(name: str, folder: pathlib.Path) -> tuple[dict, int]:
  """(config.data fields, relative paths, of a tiny copy of dataset `name` written under folder
  in its published layout; the number of records it gives). Tables are the committed fixtures of
  tests/data/cxr/fixtures; images are small generated films (PNG or JPEG; converted copies
  where the source reads them, a DICOM tree for SIIM)."""
  folder.mkdir(parents=True)
  if name == "mimic":
    shutil.copytree(FIXTURES / "mimic", folder / "m", dirs_exist_ok=True)
    rows = _rows(FIXTURES / "mimic" / "mimic-cxr-2.0.0-metadata.csv")
    for k, r in enumerate(rows):
      s = r["subject_id"]
      _png(
        folder
        / "m"
        / "files"
        / f"p{s[:2]}"
        / f"p{s}"
        / f"s{r['study_id']}"
        / f"{r['dicom_id']}.jpg",
        40 + 10 * k,
      )
    return {"root": "m"}, None
  if name == "padchest":
    table = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    shutil.copy(FIXTURES / "padchest" / table, folder / table)
    for k, r in enumerate(_rows(folder / table)):
      # ImageDir is the zip's number, written '0.0' in some rows of the published table
      _png(
        folder / "images" / str(int(float(r["ImageDir"]))) / r["ImageID"], 1000 * k + 700, np.uint16
      )
    # the fixture misspells one term on purpose (test_padchest): counted, not refused, here
    return {"root": ".", "unknown_terms": "ignore"}, None
  if name == "vindr":
    shutil.copy(FIXTURES / "vindr" / "train.csv", folder / "train.csv")
    ids = sorted({r["image_id"] for r in _rows(folder / "train.csv")})
    for k, i in enumerate(ids):
      _png(folder / "train" / f"{i}.png", 30 + 5 * k)
    return {"metadata": "train.csv", "images": "train", "extension": ".png"}, len(ids)
  if name == "rsna":
    for f in ("stage_2_train_labels.csv", "stage_2_detailed_class_info.csv"):
      shutil.copy(FIXTURES / "rsna" / f, folder / f)
    ids = sorted({r["patientId"] for r in _rows(folder / "stage_2_train_labels.csv")})
    for k, i in enumerate(ids):
      _png(folder / "stage_2_train_images" / f"{i}.png", 30 + 5 * k)
    fields = {
      "metadata": "stage_2_train_labels.csv",
      "classes": "stage_2_detailed_class_info.csv",
      "images": "stage_2_train_images",
      "extension": ".png",
    }
    return fields, len(ids)
  if name == "siim":
    from fixture_files import write_dicom

    shutil.copy(FIXTURES / "siim" / "train-rle.csv", folder / "train-rle.csv")
    ids = sorted({r["ImageId"] for r in _rows(folder / "train-rle.csv")})
    for k, i in enumerate(ids):
      path = folder / "dicom-images-train" / f"1.2.{k}" / f"1.3.{k}" / f"{i}.dcm"
      path.parent.mkdir(parents=True)
      pixels = np.full((12, 10), 100 + k, np.uint16)
      pixels[2:5, 3:6] = 7
      write_dicom(str(path), pixels)
    fields = {"metadata": "train-rle.csv", "images": "dicom-images-train", "patient_id": "image_id"}
    return fields, len(ids)
  if name == "nlm":
    for stem in ("MCUCXR_0001_0", "MCUCXR_0002_0", "MCUCXR_0104_1"):
      _png(folder / "MontgomerySet" / "CXR_png" / f"{stem}.png")
    return {"root": ".", "set": "montgomery"}, 3
  if name == "tbx11k":
    for sub, n in (("health", 2), ("sick", 1), ("tb", 2)):
      for k in range(n):
        _png(folder / "imgs" / sub / f"{sub}{k}.png", 50 + 20 * k)
    return {"root": "."}, 5
  if name == "openi":  # the report XMLs, their PNGs unpacked beside them
    shutil.copytree(FIXTURES / "openi" / "ecgen-radiology", folder / "ecgen-radiology")
    images = [
      "CXR1_1_IM-0001-3001",
      "CXR1_1_IM-0001-4001",
      "CXR2_IM-0652-1001",
      "CXR2_IM-0652-2001",
      "CXR3_IM-1384-1001",
      "CXR4_IM-2050-1001",
      "CXR6_IM-2100-1001",
    ]
    for k, image in enumerate(images):
      _png(folder / f"{image}.png", 40 + 20 * k)
    return {"root": "."}, 6  # 4.xml is not indexed: left out
  raise AssertionError(name)


@pytest.mark.parametrize("name", CXR)
def test_each_chest_xray_dataset_builds_from_a_checked_config(name, tmp_path, monkeypatch):
  """The config names the source and its fields (relative paths, made absolute once); the built
  source's findings are the ones the config told (model.num_classes) and its patients and images
  are listed; a misspelt field of that source is refused before anything is read."""
  from mdx import config as config_lib

  fields, count = cxr_dataset(name, tmp_path / "data")
  monkeypatch.chdir(tmp_path / "data")
  cfg = config_lib.defaults()
  cfg.data.source = name
  cfg.data.update(fields)
  resolved = config_lib.resolve(cfg)
  for field in sources.spec(name).paths:
    if field in fields:
      assert resolved.data[field] == os.path.abspath(fields[field])
  monkeypatch.chdir(tmp_path)  # the resolved paths no longer depend on the current directory
  s = sources.make_source(resolved.data, 0)
  assert s.findings == sources.output_names(resolved.data)
  assert resolved.model.num_classes == len(s.findings)
  assert len(s) == (count if count is not None else len(s)) and len(s) > 0
  assert len(s.patient_ids()) == len(s.image_ids()) == len(s) and s.labels().shape[1] == len(
    s.findings
  )
  record = s[0]
  assert record["image"].ndim == 3 and record["labels"].shape == (len(s.findings),)
  bad = config_lib.defaults()
  bad.data.source = name
  bad.data.update(fields)
  bad.data.on_eror = "skip"
  with pytest.raises(ValueError, match=r"unknown config field 'data.on_eror'.*data.on_error"):
    config_lib.resolve(bad)


def test_prepared_mimic_keeps_its_official_split(tmp_path):
  """Prepared records carry the text and number columns of a source's extra, so MIMIC's
  split.by='official' means the same sets read raw or prepared; per-record lists are left out."""
  from mdx.data import splits

  fields, _ = cxr_dataset("mimic", tmp_path / "data")
  raw_cfg = C(source="mimic", root=str(tmp_path / "data" / fields["root"]), image_size=8)
  raw = sources.make_source(raw_cfg, 0)
  cfg = C(**raw_cfg.to_dict(), prepared_dir=str(tmp_path / "records"))
  prepared = sources.make_source(cfg, 0)
  assert isinstance(prepared, tfds_builders.PreparedSource)
  for key in ("official_split", "view", "study_id"):
    np.testing.assert_array_equal(prepared.extra[key], raw.extra[key])
  by = C(split=C(by="official"))
  sets_raw, sets_prepared = splits.make_split(by, raw, 0), splits.make_split(by, prepared, 0)
  official = raw.extra["official_split"]
  for key, name in (("train", "train"), ("validation", "validate"), ("test", "test")):
    np.testing.assert_array_equal(sets_raw[key], np.flatnonzero(official == name))
    np.testing.assert_array_equal(sets_prepared[key], sets_raw[key])
  kept = prepared.select([0, 2])
  assert kept.extra["official_split"].tolist() == official[[0, 2]].tolist()
  vindr_fields, _ = cxr_dataset("vindr", tmp_path / "vindr")
  vindr_cfg = {k: str(tmp_path / "vindr" / v) for k, v in vindr_fields.items() if k != "extension"}
  vindr = sources.make_source(
    C(
      source="vindr",
      extension=".png",
      image_size=8,
      prepared_dir=str(tmp_path / "records"),
      **vindr_cfg,
    ),
    0,
  )
  assert "boxes" not in vindr.extra and "readers" in vindr.extra  # lists stay with the raw files


def test_split_by_official_needs_a_source_that_has_one(nih_dir):
  from mdx.data import splits

  nih = sources.make_source(
    C(source="nih", metadata=str(nih_dir / "Data_Entry_2017.csv"), images=str(nih_dir)), 0
  )
  with pytest.raises(ValueError, match=r"by='official': .* carries no official split.*'patient'"):
    splits.make_split(C(split=C(by="official")), nih, 0)
