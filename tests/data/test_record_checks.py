"""Bad records fail before the first training step (mdx.data.check): a corrupt PNG, a zero-byte JPEG
and a NaN scan are named up front; on_error='skip' drops and lists them; the cache decodes nothing
twice but checks a changed file again."""

import csv
import importlib.util
import logging
import os
import re

import ml_collections
import nibabel as nib
import numpy as np
import pytest
from absl import flags
from fixture_files import write_msd
from PIL import Image
from real_layouts import make_nih_dir, write_png

from mdx import config as config_lib
from mdx.data import check, sources
from mdx.data.image import images
from mdx.runtime import BatchGeometry
from mdx.train import run as runner
from mdx.train.classification import ClassificationTask

flags.FLAGS.mark_as_parsed()
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments")


@pytest.fixture(autouse=True)
def check_cache(tmp_path, monkeypatch):
  """Each test its own check cache (never the user's ~/.cache)."""
  monkeypatch.setenv("MDX_CHECK_CACHE", str(tmp_path / "check_cache"))
  return tmp_path / "check_cache"


def truncate(path):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])


def make_folders(root, patients=10):
  """NORMAL/ and PNEUMONIA/ of 16 px random films, two per patient (p<k>_<j>), PNG and JPEG."""
  for k in range(patients):
    cls = "PNEUMONIA" if k % 2 else "NORMAL"
    write_png(str(root / cls / f"p{k}_0.png"), size=(16, 16), seed=k)
    pixels = np.random.default_rng(100 + k).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(pixels).save(str(root / cls / f"p{k}_1.jpeg"))
  return root


def folder_config(root, **data):
  c = config_lib.defaults()
  c.data.source = "folders"
  c.data.root = str(root)
  c.data.negative_class = "NORMAL"
  c.data.patient_regex = r"^(p\d+)_"
  c.data.image_size = 32
  c.data.split = dict(by="patient", test=0.2, val=0.2)
  c.data.update(data)
  c.model.name = "densenet_tiny"
  c.model.num_classes = 1
  c.train.batch_size = 4
  c.train.steps = 2
  c.eval.bootstrap = 0
  return config_lib.resolve(c)


def msd_config(root, **data):
  spec = importlib.util.spec_from_file_location(
    "msd_exp", os.path.join(EXPERIMENTS, "msd_hippocampus_unet3d.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.root = str(root)
  c.data.patch_size = (8, 8, 8)
  c.data.split.val = 0.34
  c.data.update(data)
  c.model.base_width, c.model.depth = 2, 2
  c.train.steps = 2
  return config_lib.resolve(c)


def read_rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def listed(error) -> list[dict]:
  """The rows of the CSV an error message names ('all are listed in PATH.')."""
  return read_rows(re.search(r"all are listed in (\S+)\. ", str(error.value)).group(1))


def test_corrupt_png_in_nih_layout_fails_before_the_first_step(tmp_path):
  data = make_nih_dir(tmp_path / "nih")
  bad = data / "images_002" / "images" / "00000003_001.png"
  write_png(str(bad), size=(32, 32), seed=1)  # noise: the cut falls in the pixel data
  truncate(bad)
  c = config_lib.defaults()
  c.data.update(
    source="nih",
    metadata=str(data / "Data_Entry_2017.csv"),
    images=str(data),
    image_size=32,
    split=dict(by="patient", test=0.34, val=0.34),  # one patient each: the config is otherwise fine
  )
  c.model.name = "densenet_tiny"
  c.train.steps = 2
  work = tmp_path / "work"
  with pytest.raises(ValueError, match=r"1 of 6 records cannot be used.*00000003_001\.png") as e:
    runner.run(c, str(work), "train")
  assert "on_error='skip'" in str(e.value) and "image file is truncated" in str(e.value)
  assert "\n" not in str(e.value)
  assert not (work / "checkpoints").exists()  # no step ran
  assert [r["path"] for r in listed(e)] == [str(bad)]


def test_zero_byte_jpeg_in_folders_is_named(tmp_path):
  root = make_folders(tmp_path / "data")
  empty = root / "NORMAL" / "p4_1.jpeg"
  empty.write_bytes(b"")
  with pytest.raises(ValueError, match=r"p4_1\.jpeg \(cannot decode image file"):
    ClassificationTask(folder_config(root))


def test_skip_drops_bad_files_lists_them_and_training_data_flows(tmp_path):
  root = make_folders(tmp_path / "data")
  truncate(root / "PNEUMONIA" / "p3_0.png")
  (root / "NORMAL" / "p4_1.jpeg").write_bytes(b"")
  work = tmp_path / "work"
  work.mkdir()
  task = ClassificationTask(folder_config(root, on_error="skip"), workdir=str(work))
  assert len(task.source) == 18 and task.source.skipped == 2
  rows = read_rows(work / "skipped_records.csv")
  assert sorted(r["record"] for r in rows) == ["NORMAL/p4_1.jpeg", "PNEUMONIA/p3_0.png"]
  assert all(r["reason"].startswith("cannot decode image file") for r in rows)
  assert sum(len(v) for v in task.splits.values()) == 18
  # every record left decodes in the pipeline: a training batch and every evaluation split
  geometry = BatchGeometry(4)
  batch = next(iter(task.train_data(geometry)))
  assert batch["image"].shape == (4, 32, 32, 1)
  for split in ("validation", "test"):
    seen = sum(int(b["mask"].sum()) for b in task.eval_data(split, geometry))
    assert seen == len(task.splits[split])


def _nan_case(root):
  write_msd(str(root), AFFINE, n=6)
  path = root / "imagesTr" / "hippocampus_002.nii.gz"
  image = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
  image[1, 2, 3] = np.nan
  nib.save(nib.Nifti1Image(image, AFFINE), str(path))
  return path


def test_nan_volume_fails_before_training_and_evaluation(tmp_path):
  path = _nan_case(tmp_path / "msd")
  work = tmp_path / "work"
  for mode in ("train", "eval"):  # --mode=eval checks too (before looking for a checkpoint)
    with pytest.raises(
      ValueError, match=r"hippocampus_002\.nii\.gz \(contains 1 NaN and 0 Inf"
    ) as e:
      runner.run(msd_config(tmp_path / "msd"), str(work), mode)
    assert [r["path"] for r in listed(e)] == [str(path)]
  assert not (work / "checkpoints").exists()


def test_nan_volume_is_skipped_with_skip(tmp_path):
  from mdx.train.segmentation import SegmentationTask

  _nan_case(tmp_path / "msd")
  task = SegmentationTask(msd_config(tmp_path / "msd", on_error="skip"), workdir=str(tmp_path))
  assert len(task.source) == 5 and "hippocampus_002" not in task.source.case_ids()
  assert [r["record"] for r in read_rows(tmp_path / "skipped_records.csv")] == ["hippocampus_002"]


def test_constant_images_are_a_warning_with_a_count(tmp_path, caplog):
  root = make_folders(tmp_path / "data")
  write_png(str(root / "NORMAL" / "p0_0.png"), size=(16, 16), value=0)
  write_png(str(root / "PNEUMONIA" / "p1_0.png"), size=(16, 16), value=200)
  source = sources.make_source(folder_config(root).data, 0)
  with caplog.at_level(logging.WARNING):
    kept, result = check.check_source(source, "folders", workdir=str(tmp_path))
  assert kept is source and len(result.constant) == 2
  assert "2 of 20 images are constant" in caplog.text
  rows = read_rows(tmp_path / "constant_records.csv")
  assert sorted(r["reason"] for r in rows) == ["every pixel is 0", "every pixel is 200"]


def test_cache_skips_decoding_and_rechecks_a_changed_file(tmp_path, monkeypatch, check_cache):
  root = make_folders(tmp_path / "data")
  source = sources.make_source(folder_config(root).data, 0)
  decoded = []
  real = images.read_image
  monkeypatch.setattr(images, "read_image", lambda p, c=1: decoded.append(p) or real(p, c))
  _, first = check.check_source(source, "folders")
  assert first.decoded == 20 and len(decoded) == 20
  assert len(list(check_cache.glob("*.json"))) == 1
  decoded.clear()
  _, second = check.check_source(source, "folders")
  assert second.decoded == 0 and decoded == [] and second.status == first.status
  changed = root / "NORMAL" / "p2_0.png"
  truncate(changed)  # a new size (and modification time): checked again, now bad
  with pytest.raises(ValueError, match=r"1 of 20 records.*p2_0\.png"):
    check.check_source(source, "folders")
  assert decoded == [str(changed)]


def test_prepared_records_are_checked_from_the_records(tmp_path, monkeypatch):

  root = make_folders(tmp_path / "data", patients=4)
  cfg = folder_config(root, prepared_dir=str(tmp_path / "records")).data
  sources.prepare(cfg, 0)
  prepared = sources.make_source(cfg, 0)
  monkeypatch.setattr(images, "read_image", None)  # the originals are never decoded again
  _, first = check.check_source(prepared, "prepared folders")
  assert first.decoded == 8 and first.status == ["ok"] * 8
  _, second = check.check_source(prepared, "prepared folders")
  assert second.decoded == 0
  kept = prepared.select([1, 3])
  assert list(kept.image_ids()) == [prepared.image_ids()[1], prepared.image_ids()[3]]
  assert kept[1]["image_id"] == prepared[3]["image_id"]


def test_check_command_says_what_a_run_of_the_experiment_would_do(tmp_path, check_cache):
  """python -m mdx check: findings under the experiment's own on_error, listed in
  bad_records.csv (--out, else the user's check cache: not the --cold scratch, which is gone)."""
  from mdx.commands import check as check_cli

  root = make_folders(tmp_path / "data")
  truncate(root / "PNEUMONIA" / "p3_0.png")
  write_png(str(root / "NORMAL" / "p0_0.png"), size=(16, 16), value=0)
  out = tmp_path / "out"
  text, status = check_cli.report(folder_config(root), out=str(out))
  assert status == 1 and "20 records checked" in text and "1 unusable, 1 constant" in text
  assert "a run stops on them before step 1 (config.data.on_error='raise')" in text
  assert "on_error='skip')" not in text and "skipped" not in text
  assert sorted(os.listdir(out)) == ["bad_records.csv", "constant_records.csv"]
  assert [r["record"] for r in read_rows(out / "bad_records.csv")] == ["PNEUMONIA/p3_0.png"]
  assert [r["record"] for r in read_rows(out / "constant_records.csv")] == ["NORMAL/p0_0.png"]

  text, status = check_cli.report(folder_config(root, on_error="skip"), cold=True)
  assert status == 1 and "a run leaves them out (config.data.on_error='skip')" in text
  listing = re.search(r"all are listed in (\S+); a run", text).group(1)
  assert os.path.dirname(listing) == str(check_cache)
  assert os.path.basename(listing).startswith("bad_records-")
  assert [r["record"] for r in read_rows(listing)] == ["PNEUMONIA/p3_0.png"]

  (root / "PNEUMONIA" / "p3_0.png").unlink()
  write_png(str(root / "NORMAL" / "p0_0.png"), size=(16, 16), seed=3)
  text, status = check_cli.report(folder_config(root))
  assert status == 0 and "19 records checked" in text and "0 unusable, 0 constant" in text


def rewrite_in_place_keeping_mtime(path, data):
  """A file rewritten with the same size and its modification time set back (as cp -p, rsync -t or
  touch -r would): the case a size-and-mtime cache called good."""
  st = os.stat(path)
  assert len(data) == st.st_size
  with open(path, "r+b") as f:
    f.write(data)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size


def test_a_file_corrupted_in_place_with_its_mtime_kept_is_found_and_skip_then_drops_it(tmp_path):
  """The issue's case: the cache reported 0 bad files for files corrupted in place with their
  mtime kept, then the advice on_error='skip' failed the same way. Now the cache keys on what a
  rewrite cannot keep; the file is found, and following the advice works."""
  root = make_folders(tmp_path / "data")
  source = sources.make_source(folder_config(root).data, 0)
  _, first = check.check_source(source, "folders")
  assert first.decoded == 20 and len(first.bad) == 0
  bad = root / "NORMAL" / "p2_0.png"
  rewrite_in_place_keeping_mtime(bad, b"\0" * os.path.getsize(bad))
  # what a run meets when it reads the file: a message whose advice is on_error='skip'
  index = [str(p) for p in source.paths()].index(str(bad))
  with pytest.raises(ValueError, match=r"set config\.data\.on_error='skip'"):
    source[index]
  with pytest.raises(ValueError, match=r"1 of 20 records cannot be used.*p2_0\.png") as e:
    check.check_source(source, "folders")
  assert "set config.data.on_error='skip' to train without them" in str(e.value)
  work = tmp_path / "work"
  kept, result = check.check_source(source, "folders", on_error="skip", workdir=str(work))
  assert result.decoded == 0  # the cache now holds the file's new verdict
  assert len(kept) == 19 and str(bad) not in map(str, kept.paths())
  assert [r["path"] for r in read_rows(work / "skipped_records.csv")] == [str(bad)]
  for i in range(len(kept)):  # every record left decodes, as training will read it
    assert kept[i]["image"].shape == (16, 16, 1)


def test_the_fingerprint_holds_the_content_of_both_ends(tmp_path):
  """Where a file system keeps no usable ctime, the sha256 of the first and last 64 KiB still
  tells a rewrite of either end; oracle: hashlib over the same bytes."""
  import hashlib

  size = 3 * check.HASHED
  path = tmp_path / "f.bin"
  data = bytearray(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
  path.write_bytes(bytes(data))
  want = hashlib.sha256(bytes(data[: check.HASHED] + data[-check.HASHED :])).hexdigest()[:32]
  st = os.stat(path)
  assert check.file_fingerprint(str(path)) == (
    size,
    st.st_mtime_ns,
    st.st_ctime_ns,
    st.st_ino,
    want,
  )
  hashes = {want}
  for offset in (0, size - 1):  # one byte at either end changes the hash
    changed = bytearray(data)
    changed[offset] ^= 0xFF
    path.write_bytes(bytes(changed))
    hashes.add(check.file_fingerprint(str(path))[4])
  assert len(hashes) == 3


def test_bad_records_csv_neutralises_a_formula_like_file_name(tmp_path):
  """An NIH image named '=1+2.png' is listed as the text "'=1+2.png" (a spreadsheet would run
  =1+2.png as a formula), and the file is whole: no temporary file beside it."""
  from real_layouts import NIH_COLUMNS, write_csv

  names = ["=1+2.png", "00000002_000.png", "00000003_000.png"]
  for k, name in enumerate(names):
    write_png(str(tmp_path / "images" / name), size=(32, 32), seed=k)
  truncate(tmp_path / "images" / names[0])
  rows = [(n, "Mass", 0, k, 50, "M", "PA") for k, n in enumerate(names)]
  write_csv(str(tmp_path / "meta.csv"), NIH_COLUMNS, rows)
  c = ml_collections.ConfigDict(
    dict(source="nih", metadata=str(tmp_path / "meta.csv"), images=str(tmp_path / "images"))
  )
  source = sources.make_source(c, 0)
  work = tmp_path / "work"
  with pytest.raises(ValueError, match=r"1 of 3 records cannot be used"):
    check.check_source(source, "nih", workdir=str(work))
  lines = (work / "bad_records.csv").read_text().splitlines()
  assert lines[0] == "path,record,reason"
  assert lines[1].startswith(f"{tmp_path / 'images' / '=1+2.png'},'=1+2.png,")
  assert os.listdir(work) == ["bad_records.csv"]


def test_the_skip_advice_of_a_preparation_meeting_a_corrupt_file_works(tmp_path):
  """With config.data.prepared_dir the images are decoded while the records are built: a corrupt
  one stops it with the advice on_error='skip', and a run that follows it builds the records
  without that image."""
  from real_layouts import make_nih_dir

  from mdx.data import prepare

  data = make_nih_dir(tmp_path / "nih")
  bad = data / "images_002" / "images" / "00000003_001.png"
  rewrite_in_place_keeping_mtime(bad, b"\0" * os.path.getsize(bad))
  c = ml_collections.ConfigDict(
    dict(
      source="nih",
      metadata=str(data / "Data_Entry_2017.csv"),
      images=str(data),
      image_size=8,
      prepared_dir=str(tmp_path / "records"),
      split=dict(by="patient", test=0.34, val=0.34),
    )
  )
  with pytest.raises(ValueError, match=r"00000003_001\.png.*set config\.data\.on_error='skip'"):
    prepare.prepare_dataset(c, 0, sources.IMAGE)
  c.on_error = "skip"
  got = prepare.prepare_dataset(c, 0, sources.IMAGE)
  assert sorted(got.source.image_ids()) == sorted(
    f"0000000{p}_00{k}.png" for p, k in [(1, 0), (1, 1), (2, 0), (3, 0), (3, 2)]
  )
