"""The dataset fingerprint on tiny MSD folders in the real NIfTI layout: every value against numpy
on the written arrays, the per-case sampling's equal weight, the cache (a second call reads no
scan, a changed file is read again) and `python -m mdx fingerprint` in this process."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from mdx import commands
from mdx.data.volume import brain_phantoms, fingerprint, msd, nifti

# (spacing D, H, W in mm, shape): different sizes, so a voxel-weighted statistic would differ
CASES = [
  ((1.0, 0.5, 2.0), (8, 10, 6)),
  ((1.5, 0.5, 3.0), (10, 12, 8)),
  ((0.8, 0.6, 2.5), (6, 8, 8)),
]
FOREGROUND_VALUES = [(100.0, -5.0), (300.0, 7.0), (200.0, 1.0)]  # per case, per channel


def _write_case(root, i, spacing, image, label, dataset="Task03_Liver"):
  affine = np.diag([*spacing, 1.0])
  for folder, data in (("imagesTr", image), ("labelsTr", label)):
    os.makedirs(f"{root}/{folder}", exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), f"{root}/{folder}/liver_{i:03d}.nii.gz")


def _msd_folder(tmp_path, constant=True):
  """Three two-channel cases: classes 1 and 2 in boxes; foreground intensities constant per case
  and channel (constant=True) or noise; background noise far from them."""
  root = str(tmp_path / "Task03_Liver")
  rng = np.random.default_rng(0)
  arrays = []
  for i, (spacing, shape) in enumerate(CASES):
    label = np.zeros(shape, np.uint8)
    label[1:4, 2:5, 1 : 3 + i] = 1  # 18, 27, 36 voxels
    label[4:6, 1:3, 2:5] = 2 if i != 2 else 1  # case 2 has no class 2
    image = rng.normal(-1000, 10, (*shape, 2)).astype(np.float32)
    fg = label > 0
    if constant:
      image[fg] = FOREGROUND_VALUES[i]
    else:
      image[fg] = rng.normal(50 * (i + 1), 10, (int(fg.sum()), 2))
    _write_case(root, i, spacing, image, label)
    arrays.append((image, label))
  return root, arrays


def test_fingerprint_values_against_numpy(tmp_path):
  root, arrays = _msd_folder(tmp_path, constant=False)
  fp = fingerprint.fingerprint(msd.MSDSource(root), foreground_samples=50)
  assert (fp["num_cases"], fp["num_channels"], fp["num_classes"]) == (3, 2, 3)
  assert fp["modality"] == "CT"  # the source's fact (Task03 Liver: CT, three classes)
  spacings = np.asarray([c[0] for c in CASES])
  shapes = np.asarray([c[1] for c in CASES])
  for key, rows in (("spacing", spacings), ("shape", shapes)):
    # float32 header spacings: 1e-6 relative covers their rounding
    np.testing.assert_allclose(fp[key]["median"], np.median(rows, 0), rtol=1e-6)
    np.testing.assert_allclose(fp[key]["min"], rows.min(0), rtol=1e-6)
    np.testing.assert_allclose(fp[key]["max"], rows.max(0), rtol=1e-6)
  volumes = {1: [], 2: []}
  for case, (image, label), (spacing, shape) in zip(fp["cases"], arrays, CASES):
    assert case["shape"] == list(shape)
    np.testing.assert_allclose(case["spacing"], spacing, rtol=1e-6)
    counts = np.bincount(label.ravel())
    assert case["class_voxels"] == {str(k): int(n) for k, n in enumerate(counts)}
    fg = image[label > 0]  # [n, 2]
    assert case["foreground_voxels"] == len(fg)
    for c in range(2):
      stats = case["intensity"][c]
      # float64 statistics of float32 values: 1e-6 relative is far above their rounding
      np.testing.assert_allclose(stats["mean"], fg[:, c].mean(dtype=np.float64), rtol=1e-6)
      np.testing.assert_allclose(stats["std"], fg[:, c].std(dtype=np.float64), rtol=1e-6)
      assert stats["min"] == fg[:, c].min() and stats["max"] == fg[:, c].max()
      np.testing.assert_allclose(
        [stats["percentile_00_5"], stats["percentile_99_5"]],
        np.percentile(fg[:, c].astype(np.float64), [0.5, 99.5]),
        rtol=1e-6,
      )
    for k in (1, 2):
      n = int((label == k).sum())
      if n:
        volumes[k].append(n * np.prod(spacing) / 1000)  # mm^3 -> mL
  for k in (1, 2):
    got = fp["classes"][str(k)]
    assert got["cases"] == len(volumes[k]) == (3 if k == 1 else 2)
    np.testing.assert_allclose(got["volume_ml"]["median"], np.median(volumes[k]), rtol=1e-6)
    np.testing.assert_allclose(got["volume_ml"]["min"], min(volumes[k]), rtol=1e-6)
    np.testing.assert_allclose(got["volume_ml"]["max"], max(volumes[k]), rtol=1e-6)
  assert "0" not in fp["classes"]  # background is not a class volume
  # the samples are foreground voxels of the cases: never a background value (about -1000)
  pooled = np.concatenate([img[lab > 0] for img, lab in arrays])
  for c in range(2):
    s = fp["intensity"][c]
    assert s["samples"] == 3 * 50
    assert pooled[:, c].min() <= s["min"] <= s["percentile_00_5"] <= s["mean"]
    assert s["mean"] <= s["percentile_99_5"] <= s["max"] <= pooled[:, c].max()


def test_every_case_weighs_the_same_in_the_dataset_statistics(tmp_path):
  # Foreground constant per case: each case's samples are all its value, so the statistics are
  # those of each value repeated foreground_samples times, whatever the case's size.
  root, _ = _msd_folder(tmp_path, constant=True)
  n = 40
  fp = fingerprint.fingerprint(msd.MSDSource(root), foreground_samples=n, seed=3)
  for c in range(2):
    expect = np.repeat([v[c] for v in FOREGROUND_VALUES], n)
    s = fp["intensity"][c]
    np.testing.assert_allclose(s["mean"], expect.mean(), rtol=1e-9)
    np.testing.assert_allclose(s["std"], expect.std(), rtol=1e-9)
    np.testing.assert_allclose(
      [s["percentile_00_5"], s["median"], s["percentile_99_5"]],
      np.percentile(expect, [0.5, 50, 99.5]),
      rtol=1e-9,
    )
    assert (s["min"], s["max"]) == (expect.min(), expect.max())
  # a voxel-weighted mean (all foreground voxels pooled) differs by far more: the test can tell
  sizes = [case["foreground_voxels"] for case in fp["cases"]]
  weighted = np.average([v[0] for v in FOREGROUND_VALUES], weights=sizes)
  assert abs(weighted - fp["intensity"][0]["mean"]) > 1


def _failing(path, *args, **kwargs):
  raise AssertionError(f"read {path} although it is cached")


def test_second_call_reads_only_the_cache_and_a_changed_file_is_read_again(tmp_path, monkeypatch):
  root, _ = _msd_folder(tmp_path)
  cache = str(tmp_path / "cache")
  first = fingerprint.fingerprint(msd.MSDSource(root), cache_dir=cache, foreground_samples=20)
  reads = []
  real = nifti.load_nifti

  monkeypatch.setattr(nifti, "load_nifti", _failing)
  again = fingerprint.fingerprint(msd.MSDSource(root), cache_dir=cache, foreground_samples=20)
  assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)

  # case 1's label rewritten with class 2 grown: only that case is read again
  path = f"{root}/labelsTr/liver_001.nii.gz"
  label = np.asarray(nib.load(path).dataobj).astype(np.uint8)
  label[:, :, 7] = 2
  nib.save(nib.Nifti1Image(label, nib.load(path).affine), path)

  def counting(path, *args, **kwargs):
    reads.append(os.path.basename(path))
    return real(path, *args, **kwargs)

  monkeypatch.setattr(nifti, "load_nifti", counting)
  changed = fingerprint.fingerprint(msd.MSDSource(root), cache_dir=cache, foreground_samples=20)
  assert sorted(reads) == ["liver_001.nii.gz", "liver_001.nii.gz"]  # its image and label
  assert changed["cases"][1]["class_voxels"]["2"] == int((label == 2).sum())
  assert changed["cases"][0] == first["cases"][0]
  # other parameters are another cache entry: every case is read
  reads.clear()
  fingerprint.fingerprint(msd.MSDSource(root), cache_dir=cache, foreground_samples=21)
  assert len(reads) == 6


def test_regions_phantoms_and_a_case_without_foreground():
  source = brain_phantoms.BrainPhantoms(num_cases=2, shape=(16, 16, 16), seed=0)
  fp = fingerprint.fingerprint(source, foreground_samples=10)
  assert fp["label_mode"] == "regions" and fp["num_classes"] == 3 and fp["num_channels"] == 4
  for i, case in enumerate(fp["cases"]):
    label = source[i]["label"]  # [D, H, W, 3] regions
    assert case["class_voxels"] == {str(r): int(label[..., r].sum()) for r in range(3)}
    assert case["foreground_voxels"] == int(label.any(-1).sum())
  record = {
    "image": np.ones((4, 4, 4, 1), np.float32),
    "label": np.zeros((4, 4, 4), np.int32),
    "spacing": np.ones(3, np.float32),
    "case_id": "empty",
  }
  case, samples = fingerprint.case_fingerprint(record, 10, 0)
  assert case["intensity"] == [None] and samples.shape == (1, 0)
  with pytest.raises(ValueError, match="spacing"):
    fingerprint.case_fingerprint({**record, "spacing": np.array([1, 0, 1])}, 10, 0)


def test_write_and_read_back(tmp_path):
  root, _ = _msd_folder(tmp_path)
  fp = fingerprint.fingerprint(msd.MSDSource(root), foreground_samples=5)
  path = str(tmp_path / "out" / "fp.json")
  fingerprint.write(fp, path)
  assert fingerprint.read(path) == json.loads(json.dumps(fp))
  assert any("3 cases, 2 channel(s) (CT)" in line for line in fingerprint.summary(fp))
  with open(path, "w") as f:
    json.dump({**fp, "version": 99}, f)
  with pytest.raises(ValueError, match="fp.json.*'version'"):
    fingerprint.read(path)


def test_fingerprint_command_prints_and_writes(tmp_path, capsys, monkeypatch):
  root, _ = _msd_folder(tmp_path)
  experiment = tmp_path / "liver.py"
  experiment.write_text(
    "from mdx.config import defaults\n\n\n"
    "def get_config():\n"
    "  c = defaults('segmentation')\n"
    "  c.data.source = 'msd'\n"
    f"  c.data.root = {root!r}\n"
    "  c.data.split.test = 0.0\n"
    "  c.data.split.val = 0.34\n"
    "  return c\n"
  )
  out, plan_out = tmp_path / "o" / "fp.json", tmp_path / "o" / "plan.json"
  argv = [f"--config={experiment}", f"--output={out}", f"--plan_output={plan_out}"]
  assert commands.call("fingerprint", argv) == 0
  printed = capsys.readouterr().out
  # the training cases of the run's split (two of three) plan, as in a run
  assert "2 cases, 2 channel(s) (CT)" in printed and "normalisation: CT per channel" in printed
  written = json.loads(out.read_text())
  assert written["num_cases"] == 2 and written["cases"][0]["case_id"].startswith("liver_00")
  assert json.loads(plan_out.read_text())["normalization"]["mode"] == "ct"
  # a second run reads no scan (the check's cache and MDX_CHECK_CACHE/fingerprints) and replaces
  # mdx's own files
  assert os.listdir(tmp_path / "record-checks" / "fingerprints")
  monkeypatch.setattr(nifti, "load_nifti", _failing)
  assert commands.call("fingerprint", argv) == 0
  assert json.loads(out.read_text()) == written
  # a file mdx did not write is refused before any work
  out.write_text("mine")
  assert commands.call("fingerprint", argv) == 2
  assert "fp.json" in capsys.readouterr().err and out.read_text() == "mine"
  # not a volume source: one line naming the choices
  experiment.write_text(
    "from mdx.config import defaults\n\n\ndef get_config():\n  return defaults('classification')\n"
  )
  assert commands.call("fingerprint", [f"--config={experiment}"]) == 2
  assert "volume" in capsys.readouterr().err
