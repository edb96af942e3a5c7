"""Soft Dice loss and segmentation metrics against hand computation from the definitions."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mdx import losses
from mdx.evaluate import segmentation as seg


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_soft_dice_softmax_by_hand_with_empty_class():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 3, 4, 2, 3)).astype(np.float32)
  labels = rng.integers(0, 2, (2, 3, 4, 2))  # class 2 absent from every label
  eps = 1e-5
  p = _softmax(logits.astype(np.float64))
  got = np.asarray(
    losses.soft_dice_per_class(jnp.asarray(logits), jnp.asarray(labels), epsilon=eps)
  )
  got_sq = np.asarray(
    losses.soft_dice_per_class(jnp.asarray(logits), jnp.asarray(labels), epsilon=eps, squared=True)
  )
  for b in range(2):
    for k in range(3):
      pk, gk = p[b, ..., k], (labels[b] == k).astype(np.float64)
      np.testing.assert_allclose(
        got[b, k], (2 * (pk * gk).sum() + eps) / (pk.sum() + gk.sum() + eps), rtol=1e-5
      )
      np.testing.assert_allclose(
        got_sq[b, k], (2 * (pk * gk).sum() + eps) / ((pk**2).sum() + (gk**2).sum() + eps), rtol=1e-5
      )
  loss = np.asarray(losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels), epsilon=eps))
  np.testing.assert_allclose(loss, 1 - got.mean(-1), rtol=1e-5)
  nobg = np.asarray(
    losses.soft_dice_loss(
      jnp.asarray(logits), jnp.asarray(labels), epsilon=eps, include_background=False
    )
  )
  np.testing.assert_allclose(nobg, 1 - got[:, 1:].mean(-1), rtol=1e-5)
  # cross-entropy term: voxel mean of -log p_true
  ce = -np.log(np.take_along_axis(p, labels[..., None], -1))[..., 0].mean((1, 2, 3))
  with_ce = np.asarray(
    losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels), epsilon=eps, ce_weight=0.5)
  )
  np.testing.assert_allclose(with_ce, 1 - got.mean(-1) + 0.5 * ce, rtol=1e-5)


def test_soft_dice_empty_class_is_one_and_perfect_prediction_zero_loss():
  labels = np.zeros((1, 2, 2, 2), np.int64)
  logits = np.zeros((1, 2, 2, 2, 2), np.float32)
  logits[..., 0] = 50.0  # confidently background everywhere; class 1 absent from both
  d = np.asarray(losses.soft_dice_per_class(jnp.asarray(logits), jnp.asarray(labels), epsilon=1.0))
  np.testing.assert_allclose(d[0], [1.0, 1.0], atol=1e-6)
  assert float(losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels))[0]) < 1e-5


def test_soft_dice_sigmoid_regions_and_mask():
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((1, 4, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 2, (1, 4, 4, 4, 3)).astype(np.uint8)
  mask = np.zeros((1, 4, 4, 4), np.float32)
  mask[:, :2] = 1
  eps = 1e-5
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  got = np.asarray(
    losses.soft_dice_per_class(
      jnp.asarray(logits), jnp.asarray(labels), "sigmoid", eps, mask=jnp.asarray(mask)
    )
  )
  pk, gk = p[0, :2], labels[0, :2].astype(np.float64)
  expect = (2 * (pk * gk).sum((0, 1, 2)) + eps) / (pk.sum((0, 1, 2)) + gk.sum((0, 1, 2)) + eps)
  np.testing.assert_allclose(got[0], expect, rtol=1e-5)
  with pytest.raises(ValueError, match="activation"):
    losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels), "relu")


def test_case_metrics_by_hand_including_empty_classes():
  label = np.zeros((4, 4, 2), np.int32)
  label[0, :2, 0] = 1  # 2 voxels of class 1
  pred = np.zeros((4, 4, 2), np.int32)
  pred[0, :3, 0] = 1  # 3 voxels: tp 2, fp 1
  pred[3, 3, 1] = 2  # class 2: absent from the label (fp 1)
  m = seg.case_metrics(pred, label, ("bg", "a", "b", "c"))
  n = label.size
  assert m["a"]["tp"] == 2 and m["a"]["fp"] == 1 and m["a"]["fn"] == 0
  assert m["a"]["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1))
  assert m["a"]["sensitivity"] == pytest.approx(1.0)
  assert m["a"]["specificity"] == pytest.approx((n - 3) / (n - 2))
  assert m["b"]["dice"] == 0.0 and np.isnan(m["b"]["sensitivity"]) and np.isnan(m["b"]["hd95"])
  assert m["c"]["dice"] == 1.0 and np.isnan(m["c"]["sensitivity"]) and m["c"]["hd95"] == 0.0
  # NSD: 0 when only the prediction has the class, 1 when neither has it
  assert m["b"]["nsd"] == 0.0 and m["c"]["nsd"] == 1.0 and m["a"]["nsd_tolerance_mm"] == 1.0
  assert m["c"]["specificity"] == 1.0
  s = seg.summarize({"x": m, "y": m}, skip=("bg",))
  assert s["per_class"]["b"]["sensitivity_undefined_cases"] == 2
  assert s["mean_dice"] == pytest.approx(np.mean([0.8, 0.0, 1.0]))


def _brute_surface(m, spacing):
  """Surface voxels by the definition (a 6-neighbour outside the mask or the volume), in mm."""
  pts = np.argwhere(m)
  pad = np.pad(m, 1)
  keep = [
    not all(pad[tuple(q + 1 + d)] for d in np.vstack([np.eye(3, dtype=int), -np.eye(3, dtype=int)]))
    for q in pts
  ]
  return pts[np.asarray(keep, bool)] * spacing


def _brute_hd95(p, t, spacing):
  d = cdist(_brute_surface(p, spacing), _brute_surface(t, spacing))
  return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def _brute_nsd(p, t, spacing, tol):
  """Every pairwise distance between the two surfaces (Nikolov et al.'s definition, MONAI's
  SurfaceDice without sub-voxels): the share of both surfaces within tol of the other."""
  d = cdist(_brute_surface(p, spacing), _brute_surface(t, spacing))
  return ((d.min(1) <= tol).sum() + (d.min(0) <= tol).sum()) / (d.shape[0] + d.shape[1])


def test_hd95_against_brute_force_surface_distances():
  rng = np.random.default_rng(2)
  spacing = np.array([1.0, 1.5, 2.0])
  p = np.zeros((12, 12, 10), bool)
  t = np.zeros_like(p)
  p[2:8, 3:9, 2:7] = True
  t[3:10, 2:8, 3:9] = True
  t[rng.integers(0, 12, 5), rng.integers(0, 12, 5), rng.integers(0, 10, 5)] = True  # outliers
  np.testing.assert_allclose(seg.hd95(p, t, spacing), _brute_hd95(p, t, spacing), rtol=1e-6)
  assert seg.hd95(p, p, spacing) == 0.0


def test_regions_report_and_overlay(tmp_path):
  label = np.zeros((8, 8, 6, 3), np.uint8)
  label[2:6, 2:6, 2:4, 0] = 1
  label[3:5, 3:5, 2:4, 1] = 1
  pred = label.copy()
  pred[3:5, 3:5, 2:4, 2] = 1  # false positive enhancing region
  m = seg.case_metrics(pred, label, ("wt", "tc", "et"), regions=True, spacing=(1, 1, 1))
  assert m["wt"]["dice"] == 1.0 and m["et"]["dice"] == 0.0
  s = seg.summarize({"c1": m}, skip=())
  seg.write_metrics(str(tmp_path / "metrics.json"), {"c1": m}, s)
  data = json.load(open(tmp_path / "metrics.json"))
  assert (
    data["per_case"]["c1"]["et"]["hd95"] is None
    and data["summary"]["per_class"]["wt"]["dice"] == 1.0
  )
  png = str(tmp_path / "c1.png")
  seg.overlay_png(
    png,
    np.random.default_rng(0).random((8, 8, 6, 4)),
    label,
    pred,
    ("wt", "tc", "et"),
    regions=True,
    title="c1",
  )
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  seg.write_report(str(tmp_path / "report.md"), s, [png])
  assert "| wt | 1.0000" in open(tmp_path / "report.md").read()


def test_curves_png(tmp_path):
  from mdx.evaluate import plots

  hist = [
    {"step": 1, "train_loss": 1.0},
    {"step": 2, "train_loss": 0.5},
    {"step": 2, "val_dice": 0.4, "val_dice_a": 0.3},
  ]
  _, path = plots.training_curves_png(
    hist, str(tmp_path / "c.png"), "val_dice", "Dice", "loss", ylim=(0, 1)
  )
  assert open(path, "rb").read(4) == b"\x89PNG"


def test_nsd_by_hand_and_against_brute_force_surface_distances():
  # by hand: a 3x3x3 cube and the same cube one voxel further along D (spacing 1 mm). Each
  # surface is the cube less its centre: 26 voxels. At tolerance 0 only voxels on both surfaces
  # count: the 18 shared voxels less pred's centre (3,3,3) and truth's centre (4,3,3): 16 each
  # way, 32 / 52. At 1 mm every surface voxel is a face step from the other surface: 1.
  p = np.zeros((8, 8, 8), bool)
  t = np.zeros_like(p)
  p[2:5, 2:5, 2:5] = True
  t[3:6, 2:5, 2:5] = True
  assert seg.nsd(p, t, (1, 1, 1), 0.0) == pytest.approx(32 / 52)
  assert seg.nsd(p, t, (1, 1, 1), 1.0) == 1.0
  # voxels 2 mm apart along D: pred's slice D=2 and truth's D=5 (9 voxels each) are 2 mm from
  # the other surface; the centres (4,3,3) and (3,3,3) have an in-plane neighbour on it at 1 mm
  assert seg.nsd(p, t, (2, 1, 1), 1.0) == pytest.approx(2 * (26 - 9) / 52)
  # against every pairwise distance, anisotropic spacing, with outliers; tolerances below, at
  # (1.5 mm is a distance on this grid: <= counts it, as the definition) and above the distances
  rng = np.random.default_rng(3)
  spacing = np.array([1.0, 1.5, 2.0])
  p = np.zeros((12, 12, 10), bool)
  t = np.zeros_like(p)
  p[2:8, 3:9, 2:7] = True
  t[3:10, 2:8, 3:9] = True
  t[rng.integers(0, 12, 5), rng.integers(0, 12, 5), rng.integers(0, 10, 5)] = True
  p[rng.integers(0, 12, 3), rng.integers(0, 12, 3), rng.integers(0, 10, 3)] = True
  for tol in (0.0, 1.0, 1.5, 1.6, 2.5, 4.0, 100.0):
    # the same distances (sqrt of the same sums of squares): exact up to float rounding
    np.testing.assert_allclose(seg.nsd(p, t, spacing, tol), _brute_nsd(p, t, spacing, tol), 1e-12)
  assert seg.nsd(p, t, spacing, 100.0) == 1.0 and seg.nsd(p, t, spacing, 0.0) < 0.5
  assert seg.nsd(p, p, spacing, 0.0) == 1.0
  # the conventions: 1 when both are empty, 0 when exactly one is
  empty = np.zeros_like(p)
  assert seg.nsd(empty, empty, spacing) == 1.0
  assert seg.nsd(p, empty, spacing) == 0.0 and seg.nsd(empty, t, spacing) == 0.0
  with pytest.raises(ValueError, match="tolerance"):
    seg.nsd(p, t, spacing, -1.0)
  # case_metrics computes NSD per class at its tolerance, as the function does
  label, pred = t.astype(np.int32), p.astype(np.int32)
  m = seg.case_metrics(pred, label, ("bg", "x"), spacing=spacing, nsd_tolerance=2.5)
  assert m["x"]["nsd"] == pytest.approx(_brute_nsd(p, t, spacing, 2.5))
  assert m["x"]["hd95"] == pytest.approx(_brute_hd95(p, t, spacing))
  assert m["bg"]["nsd"] == pytest.approx(_brute_nsd(~p, ~t, spacing, 2.5))
  assert (
    "nsd" not in seg.case_metrics(pred, label, ("bg", "x"), spacing=spacing, with_hd95=False)["x"]
  )
  assert "nsd" not in seg.case_metrics(pred, label, ("bg", "x"), nsd_tolerance=None)["x"]


def test_nsd_flows_into_summary_json_and_report_like_hd95(tmp_path):
  label = np.zeros((8, 8, 6), np.int32)
  label[2:6, 2:6, 1:5] = 1
  shifted = np.roll(label, 1, axis=0)  # one voxel off along D
  names = ("background", "organ")
  per_case = {
    "same": seg.case_metrics(label, label, names, spacing=(1, 1, 1), nsd_tolerance=0.5),
    "off": seg.case_metrics(shifted, label, names, spacing=(1, 1, 1), nsd_tolerance=0.5),
    "missed": seg.case_metrics(np.zeros_like(label), label, names, nsd_tolerance=0.5),
  }
  s = seg.summarize(per_case)
  off = seg.nsd(shifted == 1, label == 1, (1, 1, 1), 0.5)
  assert 0 < off < 1  # a face of each surface is 1 mm off: beyond 0.5 mm
  # the mean over cases: 1 (identical), off, 0 (missed entirely: one side empty); HD95 is nan
  # for the missed case and left out, NSD is defined for every case
  assert s["per_class"]["organ"]["nsd"] == pytest.approx((1 + off + 0) / 3)
  assert s["per_class"]["organ"]["nsd_undefined_cases"] == 0
  assert s["per_class"]["organ"]["hd95_undefined_cases"] == 1
  assert s["mean_nsd"] == pytest.approx(s["per_class"]["organ"]["nsd"])  # background skipped
  assert s["nsd_tolerance_mm"] == 0.5
  seg.write_metrics(str(tmp_path / "metrics.json"), per_case, s)
  data = json.load(open(tmp_path / "metrics.json"))
  assert data["per_case"]["missed"]["organ"]["nsd"] == 0.0
  assert data["summary"]["per_class"]["organ"]["nsd"] == pytest.approx((1 + off) / 3)
  assert data["summary"]["nsd_tolerance_mm"] == 0.5
  seg.write_report(str(tmp_path / "report.md"), s)
  text = open(tmp_path / "report.md").read()
  assert "| HD95 (mm) | NSD (0.5 mm) |" in text
  assert f"| {(1 + off) / 3:.4f} |" in text
  assert f"(tolerance 0.5 mm): {(1 + off) / 3:.4f}" in text
  # cases measured at different tolerances have no one mean
  per_case["other"] = seg.case_metrics(label, label, names, nsd_tolerance=1.0)
  with pytest.raises(ValueError, match="tolerances"):
    seg.summarize(per_case)
