"""Segmentation metrics per class and case: Dice, sensitivity, specificity, HD95, normalised
surface Dice (NSD); report and overlays.

Conventions for empty structures (stated so that averages are honest):
  Dice = 1 when the class is absent from both label and prediction, 0 when absent from only one.
  Sensitivity is undefined (nan) when the label has no voxel of the class; specificity is nan when
  every voxel belongs to the class. HD95 is 0 when both are empty and nan (not inf) when only one
  is: averages use the defined values and count the undefined ones. NSD is 1 when both are empty
  and 0 when exactly one is (no surface can be within tolerance of a missing one).
Surfaces are the mask voxels with a 6-neighbour outside the mask (the volume edge counts as
outside); distances between them are Euclidean in mm (the case's spacing).
Masks are classes (int label maps, class k = label == k) or regions (binary [..., R] maps).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scipy import ndimage

from mdx import jsonio, outputs


def binary_masks(label: np.ndarray, num_classes: int, regions: bool) -> np.ndarray:
  """-> bool [K, D, H, W]; classes: one mask per class id; regions: the channels of [D, H, W, R]."""
  label = np.asarray(label)
  if regions:
    return np.moveaxis(label.astype(bool), -1, 0)
  return np.stack([label == k for k in range(num_classes)])


def _surface(mask: np.ndarray) -> np.ndarray:
  """Boundary voxels: in the mask with a 6-neighbour outside it (the volume edge counts as
  outside)."""
  eroded = ndimage.binary_erosion(
    mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0
  )
  return mask & ~eroded


NSD_TOLERANCE_MM = 1.0  # case_metrics' default NSD tolerance (set it per structure and task)


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing=None):
  """(distance in mm from each pred surface voxel to the truth surface [n_pred_surface], and from
  each truth surface voxel to the pred surface [n_truth_surface]); both masks must be non-empty."""
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  spacing = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, np.float64)
  sp, st = _surface(pred), _surface(truth)
  dist_to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
  dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
  return dist_to_t[sp], dist_to_p[st]


def _hd95(to_truth: np.ndarray, to_pred: np.ndarray) -> float:
  return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def _nsd(to_truth: np.ndarray, to_pred: np.ndarray, tolerance_mm: float) -> float:
  within = (to_truth <= tolerance_mm).sum() + (to_pred <= tolerance_mm).sum()
  return float(within / (len(to_truth) + len(to_pred)))


def _check_tolerance(tolerance_mm) -> float:
  tol = float(tolerance_mm)
  if not np.isfinite(tol) or tol < 0:
    raise ValueError(f"NSD tolerance_mm={tolerance_mm}: expected a distance >= 0 in mm")
  return tol


def _empty(pred: np.ndarray, truth: np.ndarray, both: float, one: float) -> float | None:
  """The convention's value when a mask is empty (module docstring), else None."""
  if not pred.any() and not truth.any():
    return both
  if not pred.any() or not truth.any():
    return one
  return None


def hd95(pred: np.ndarray, truth: np.ndarray, spacing=None) -> float:
  """95th-percentile symmetric Hausdorff distance between the surfaces of two binary masks (in mm).

  max(P95 of distances from pred surface to truth surface, P95 the other way), as in MedPy and the
  BraTS evaluation. 0 if both empty, nan if only one is.
  """
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  empty = _empty(pred, truth, 0.0, float("nan"))
  return empty if empty is not None else _hd95(*surface_distances(pred, truth, spacing))


def nsd(
  pred: np.ndarray, truth: np.ndarray, spacing=None, tolerance_mm: float = NSD_TOLERANCE_MM
) -> float:
  """Normalised surface Dice (Nikolov et al. 2021) of two binary masks, in [0, 1].

  (pred surface voxels within tolerance_mm of the truth surface + truth surface voxels within
  tolerance_mm of the pred surface) / (pred surface voxels + truth surface voxels): the share of
  both surfaces a reader would not need to correct at that tolerance (distance <= tolerance).
  Surface voxels counted as MONAI's SurfaceDice without sub-voxels. 1 if both are empty, 0 if
  exactly one is.
  """
  tol = _check_tolerance(tolerance_mm)
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  empty = _empty(pred, truth, 1.0, 0.0)
  return empty if empty is not None else _nsd(*surface_distances(pred, truth, spacing), tol)


def case_metrics(
  pred: np.ndarray,
  label: np.ndarray,
  class_names,
  regions: bool = False,
  spacing=None,
  with_hd95: bool = True,
  nsd_tolerance: float | None = NSD_TOLERANCE_MM,
) -> dict[str, dict[str, float]]:
  """{class_name: {dice, sensitivity, specificity, hd95, nsd, nsd_tolerance_mm, tp, fp, fn, tn}}
  for one case.

  with_hd95 switches the surface metrics, HD95 and NSD (their distance transforms are the slow
  part; validation during training leaves them out); nsd_tolerance (mm) None leaves NSD out."""
  tol = None if nsd_tolerance is None else _check_tolerance(nsd_tolerance)
  k = len(class_names)
  pm, tm = binary_masks(pred, k, regions), binary_masks(label, k, regions)
  if pm.shape != tm.shape:
    raise ValueError(f"prediction masks {pm.shape} and label masks {tm.shape} differ in shape")
  out = {}
  for c, name in enumerate(class_names):
    p, t = pm[c], tm[c]
    tp = int((p & t).sum())
    fp = int((p & ~t).sum())
    fn = int((~p & t).sum())
    tn = int((~p & ~t).sum())
    dice = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    m = {
      "dice": dice,
      "sensitivity": sens,
      "specificity": spec,
      "tp": tp,
      "fp": fp,
      "fn": fn,
      "tn": tn,
    }
    if with_hd95:
      empty = _empty(p, t, 0.0, float("nan"))
      dists = surface_distances(p, t, spacing) if empty is None else None  # one pass for both
      m["hd95"] = empty if dists is None else _hd95(*dists)
      if tol is not None:
        m["nsd"] = _empty(p, t, 1.0, 0.0) if dists is None else _nsd(*dists, tol)
        m["nsd_tolerance_mm"] = tol
    out[name] = m
  return out


def summarize(
  per_case: dict[str, dict[str, dict[str, float]]], skip=("background",)
) -> dict[str, Any]:
  """Means over cases per class and metric (nan left out and counted), and the mean over classes;
  'nsd_tolerance_mm' says at which tolerance NSD was measured (None when it was not)."""
  if not per_case:
    raise ValueError("no cases to summarise")
  names = list(next(iter(per_case.values())))
  metrics = ("dice", "sensitivity", "specificity", "hd95", "nsd")
  tolerances = {
    float(m["nsd_tolerance_mm"])
    for case in per_case.values()
    for m in case.values()
    if m.get("nsd_tolerance_mm") is not None
  }
  if len(tolerances) > 1:
    raise ValueError(
      f"per-case NSD was measured at tolerances {sorted(tolerances)} mm; a mean needs one: "
      "compute every case's case_metrics with the same nsd_tolerance"
    )
  summary: dict[str, Any] = {
    "num_cases": len(per_case),
    "nsd_tolerance_mm": tolerances.pop() if tolerances else None,
    "per_class": {},
  }
  for name in names:
    s = {}
    for m in metrics:
      vals = np.asarray([per_case[c][name].get(m, np.nan) for c in per_case], np.float64)
      ok = ~np.isnan(vals)
      s[m] = float(vals[ok].mean()) if ok.any() else float("nan")
      s[f"{m}_undefined_cases"] = int((~ok).sum())
    summary["per_class"][name] = s
  fg = [n for n in names if n not in skip] or names
  for m in metrics:
    vals = [summary["per_class"][n][m] for n in fg]
    summary[f"mean_{m}"] = float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan")
  return summary


def bundle_results(summary: dict[str, Any]) -> dict[str, Any]:
  """A bundle's results entry of a summary: cases, mean Dice, per class Dice, sensitivity,
  specificity, HD95 and NSD, and the NSD tolerance."""
  return {
    "n_cases": summary["num_cases"],
    "mean_dice": summary["mean_dice"],
    "per_class": {
      name: {k: s[k] for k in ("dice", "sensitivity", "specificity", "hd95", "nsd") if k in s}
      for name, s in summary["per_class"].items()
    },
    "nsd_tolerance_mm": summary.get("nsd_tolerance_mm"),
  }


def write_metrics(path: str, per_case, summary) -> None:
  """metrics.json: {'summary': ..., 'per_case': ...}; undefined values are written as null. Whole
  or not at all (mdx.outputs.write_json)."""
  outputs.write_json(path, jsonio.jsonable({"summary": summary, "per_case": per_case}))


_COLOURS = np.asarray([[1, 0.2, 0.2], [0.2, 1, 0.2], [0.3, 0.5, 1], [1, 1, 0.2], [1, 0.3, 1]])


def overlay_png(
  path: str,
  image: np.ndarray,
  label: np.ndarray,
  pred: np.ndarray,
  class_names,
  regions: bool = False,
  title: str = "",
) -> None:
  """Axial slice with the most foreground: image, truth and prediction contours side by side."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  k = len(class_names)
  tm, pm = binary_masks(label, k, regions), binary_masks(pred, k, regions)
  first = 0 if regions else 1
  fg = tm[first:].any(0) | pm[first:].any(0)
  z = int(np.argmax(fg.sum((0, 1)))) if fg.any() else image.shape[2] // 2
  img = np.asarray(image)[..., z, 0] if image.ndim == 4 else np.asarray(image)[..., z]
  lo, hi = np.percentile(img, [1, 99])
  img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
  fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
  for ax, masks, what in zip(axes, (None, tm, pm), ("image", "label", "prediction")):
    rgb = np.repeat(img[..., None], 3, -1)
    if masks is not None:
      for c in range(first, k):
        m = masks[c][..., z]
        rgb[m] = 0.5 * rgb[m] + 0.5 * _COLOURS[(c - first) % len(_COLOURS)]
    ax.imshow(np.transpose(rgb, (1, 0, 2)), origin="lower")
    ax.set_title(what)
    ax.axis("off")
  fig.suptitle(f"{title} (slice {z})")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def write_report(path: str, summary: dict[str, Any], overlays: list[str] = ()) -> None:
  """A short markdown report: per-class table and the overlay pictures (linked relative to it),
  written whole or not at all (mdx.outputs.write_text)."""
  tol = summary.get("nsd_tolerance_mm")
  nsd_head = f"NSD ({tol:g} mm)" if tol is not None else "NSD"
  lines = [
    f"# Segmentation report ({summary['num_cases']} cases)",
    "",
    f"| class | Dice | sensitivity | specificity | HD95 (mm) | {nsd_head} |",
    "|---|---|---|---|---|---|",
  ]
  for name, s in summary["per_class"].items():
    lines.append(
      f"| {name} | {s['dice']:.4f} | {s['sensitivity']:.4f} | {s['specificity']:.4f} | "
      f"{s['hd95']:.2f} | {s.get('nsd', float('nan')):.4f} |"
    )
  lines += ["", f"Mean Dice over foreground classes: {summary['mean_dice']:.4f}"]
  if tol is not None:
    lines += [
      "",
      f"Mean normalised surface Dice over foreground classes (tolerance {tol:g} mm): "
      f"{summary.get('mean_nsd', float('nan')):.4f}",
    ]
  lines.append("")
  if summary.get("plan"):
    lines += ["## Plan", "", *(f"- {line}" for line in summary["plan"]), ""]
  parts = summary.get("inference") or {}
  if parts.get("mean_dice"):
    names = [k for k in next(iter(parts["mean_dice"].values())) if k != "mean"]
    lines += [
      f"## Inference, part by part ({parts['split']} split, Dice)",
      "",
      "| prediction | mean | " + " | ".join(names) + " |",
      "|---|---|" + "---|" * len(names),
    ]
    for way, dice in parts["mean_dice"].items():
      cells = " | ".join(f"{dice[n]:.4f}" for n in names)
      lines.append(f"| {way} | {dice['mean']:.4f} | {cells} |")
    decision = parts.get("postprocess")
    if decision is not None:
      kept = ", ".join(decision["largest_component"]) or "no class"
      lines += ["", f"Largest connected component kept for: {kept} (decided on validation)."]
    lines.append("")
  lines += [
    f"![{os.path.basename(p)}]({os.path.relpath(p, os.path.dirname(os.path.abspath(path)))})"
    for p in overlays
  ]
  outputs.write_text(path, "\n".join(lines) + "\n")
