"""The classification evaluation as numbers: per finding and averaged, each with a bootstrap CI.

evaluate_classification() returns a JSON-ready dict (nan -> None = undefined). Thresholds are chosen
on validation predictions when given (else on the evaluated set, and the dict says so), then held
fixed in every bootstrap resample. Platt and isotonic maps are fitted on validation only.

A bundle evaluated on an external dataset brings its own operating points and calibration, fixed on
the internal validation set: `thresholds` then replaces the policy, and `calibrated_probs` (the
bundle's calibrated probabilities) carries Brier and ECE, while AUROC, average precision and the
threshold metrics stay on the scores `probs` the thresholds were chosen on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mdx.evaluate import bootstrap as B
from mdx.evaluate import calibration as C
from mdx.evaluate import metrics as M
from mdx.evaluate import thresholds as T

# Metrics whose macro average and micro (pooled) value the report gives.
MACRO_METRICS = ("auroc", "average_precision", "brier", "ece", *M.THRESHOLD_METRICS)
MICRO_METRICS = (
  "auroc",
  "average_precision",
  "brier",
  "accuracy",
  "sensitivity",
  "specificity",
  "ppv",
  "npv",
  "f1",
)
ECE_BINS = 10


def _check(labels, probs, findings) -> tuple[np.ndarray, np.ndarray]:
  labels = np.asarray(labels, np.float64)
  probs = np.asarray(probs, np.float64)
  if labels.ndim != 2 or labels.shape != probs.shape:
    raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be [N, C]")
  if labels.shape[1] != len(findings):
    raise ValueError(
      f"{labels.shape[1]} label columns but {len(findings)} findings {list(findings)}"
    )
  bad = ~np.isnan(labels) & (labels != 0) & (labels != 1)
  if bad.any():
    i, j = np.argwhere(bad)[0]
    raise ValueError(f"labels[{i}, {j}] ({findings[j]}) = {labels[i, j]}: must be 0, 1 or nan")
  if np.isnan(probs).any() or (probs < 0).any() or (probs > 1).any():
    i, j = np.argwhere(np.isnan(probs) | (probs < 0) | (probs > 1))[0]
    raise ValueError(
      f"probs[{i}, {j}] ({findings[j]}) = {probs[i, j]}: probabilities must lie in "
      "[0, 1] (apply a sigmoid to logits)"
    )
  return labels, probs


def _num(x) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None


def _prevalence_of(prevalence, finding: str) -> float | None:
  if prevalence is None:
    return None
  if isinstance(prevalence, Mapping):
    return prevalence.get(finding)
  return float(prevalence)


def _describe(policy, fixed: bool) -> str:
  """The policy's readable name; for given thresholds, whatever names how they were chosen."""
  try:
    return T.describe_policy(policy)
  except ValueError:
    if not fixed:
      raise
    return f"{policy} (given per finding)" if policy else "given per finding"


def recalibrate(val_labels, val_probs, probs) -> list[dict[str, np.ndarray]]:
  """Per finding: {'platt': p', 'isotonic': p'} fitted on validation, applied to probs [N, C].

  A finding whose validation labels lack positives or negatives gets {} (nothing to fit).
  """
  val_labels, val_probs = np.asarray(val_labels, np.float64), np.asarray(val_probs, np.float64)
  probs = np.asarray(probs, np.float64)
  out = []
  for j in range(probs.shape[1]):
    yv = val_labels[:, j]
    if len(np.unique(yv[~np.isnan(yv)])) < 2:
      out.append({})
      continue
    maps = {
      "platt": C.fit_platt(yv, val_probs[:, j]),
      "isotonic": C.fit_isotonic(yv, val_probs[:, j]),
    }
    out.append({k: m(probs[:, j]) for k, m in maps.items()})
  return out


def evaluate_classification(
  labels,
  probs,
  findings: Sequence[str],
  *,
  patient_ids=None,
  val_labels=None,
  val_probs=None,
  threshold_policy: str | float = "youden",
  bootstrap: int = 1000,
  seed: int = 0,
  ci_level: float = 0.95,
  prevalence: float | Mapping[str, float] | None = None,
  keep_bootstrap: Sequence[str] = (),
  thresholds: Sequence[float | None] | None = None,
  thresholds_chosen_on: str | None = None,
  calibrated_probs=None,
  calibrated_with: str | None = None,
) -> dict:
  """Per-finding, macro and micro metrics with patient-level bootstrap CIs.

  labels [N, C] (nan = unknown), probs [N, C]; val_* the validation predictions used to choose
  thresholds and fit recalibration; prevalence: also report PPV/NPV at this stated prevalence
  (one number or one per finding). bootstrap=0 skips the intervals. keep_bootstrap: metric names
  (e.g. 'auroc') whose bootstrap samples per finding are returned under 'bootstrap_samples'
  {'<finding>/<metric>': [B]} (not JSON: pop it before writing).

  Fixed operating points and calibration (a bundle on an external dataset): thresholds [C] on the
  scale of probs (None / nan = none for that finding) are used as they are, threshold_policy then
  only names how they were chosen, and thresholds_chosen_on says where (e.g. "fixed in the bundle,
  chosen on the internal validation set"). calibrated_probs [N, C]: Brier and ECE are measured on
  them instead of on probs; calibrated_with says what they are.
  """
  findings = tuple(findings)
  labels, probs = _check(labels, probs, findings)
  n, c = labels.shape
  have_val = val_labels is not None and val_probs is not None
  if have_val:
    val_labels, val_probs = _check(val_labels, val_probs, findings)
  fixed = thresholds is not None
  if fixed:
    thresholds = np.array([np.nan if t is None else float(t) for t in thresholds], np.float64)
    if thresholds.shape != (c,):
      raise ValueError(f"{thresholds.size} thresholds for {c} findings {list(findings)}")
  else:
    sel_labels, sel_probs = (val_labels, val_probs) if have_val else (labels, probs)
    thresholds = np.array(
      [T.choose_threshold(sel_labels[:, j], sel_probs[:, j], threshold_policy) for j in range(c)]
    )
  calibrated = probs if calibrated_probs is None else _check(labels, calibrated_probs, findings)[1]
  recal = recalibrate(val_labels, val_probs, probs) if have_val else [{} for _ in range(c)]
  prevs = [_prevalence_of(prevalence, f) for f in findings]
  known = ~np.isnan(labels)

  def all_metrics(w: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every number with a CI, for weights w ([b, n] or None = the sample itself)."""
    out: dict[str, np.ndarray] = {}
    per: dict[str, list] = {m: [] for m in MACRO_METRICS}
    for j, f in enumerate(findings):
      y, p = labels[:, j], probs[:, j]
      t = thresholds[j] if np.isfinite(thresholds[j]) else None
      vals = M.finding_metrics(y, p, w, threshold=t, prevalence=prevs[j])
      if t is None:
        vals.update({m: np.full(np.shape(vals["auroc"]), np.nan) for m in M.THRESHOLD_METRICS})
      q = calibrated[:, j]
      if calibrated_probs is not None:
        vals["brier"] = M.brier(y, q, w)
      vals["ece"] = C.expected_calibration_error(y, q, ECE_BINS, w)
      for name, r in recal[j].items():
        vals[f"brier_{name}"] = M.brier(y, r, w)
        vals[f"ece_{name}"] = C.expected_calibration_error(y, r, ECE_BINS, w)
      for k, v in vals.items():
        out[f"{f}/{k}"] = v
      for m in MACRO_METRICS:
        per[m].append(vals[m])
    for m in MACRO_METRICS:
      stack = np.stack([np.asarray(v, np.float64) for v in per[m]], 0)
      ok = np.isfinite(stack)
      cnt = ok.sum(0)
      out[f"macro/{m}"] = np.where(
        cnt > 0, np.where(ok, stack, 0).sum(0) / np.maximum(cnt, 1), np.nan
      )
    # Micro: every known (case, finding) pair pooled; confusion counts at each finding's threshold.
    rows, cols = np.nonzero(known)
    y, p = labels[rows, cols], probs[rows, cols]
    wm = None if w is None else w[..., rows]
    out["micro/auroc"] = M.roc_auc(y, p, wm)
    out["micro/average_precision"] = M.average_precision(y, p, wm)
    out["micro/brier"] = M.brier(y, calibrated[rows, cols], wm)
    has_t = np.isfinite(thresholds[cols])
    pred = (p >= np.where(has_t, thresholds[cols], np.inf)).astype(np.float64)
    wt = (np.ones_like(y) if w is None else wm) * has_t
    counts = {
      "tp": wt @ (y * pred),
      "fp": wt @ ((1 - y) * pred),
      "tn": wt @ ((1 - y) * (1 - pred)),
      "fn": wt @ (y * (1 - pred)),
    }
    micro = M.from_counts(**counts)
    for m in MICRO_METRICS[3:]:
      out[f"micro/{m}"] = micro[m]
    return out

  point = all_metrics(None)
  samples = {}
  if bootstrap > 0:
    # Bound memory by the pooled (micro) width, about N * C columns.
    samples = B.bootstrap(
      all_metrics,
      patient_ids,
      n,
      bootstrap,
      seed,
      chunk_elems=max(1, 2_000_000 // max(int(known.sum(1).mean()) if n else 1, 1)),
    )

  def entry(key: str) -> dict:
    lo, hi = B.percentile_ci(samples[key], ci_level) if key in samples else (np.nan, np.nan)
    return {"value": _num(point[key]), "ci": [_num(lo), _num(hi)]}

  per_finding = {}
  for j, f in enumerate(findings):
    y, p = labels[:, j], probs[:, j]
    t = thresholds[j]
    counts = M.confusion_counts(y, p, t) if np.isfinite(t) else {}
    keys = sorted(
      {k.split("/", 1)[1] for k in point if k.startswith(f + "/")},
      key=lambda k: (k not in MACRO_METRICS, k),
    )
    per_finding[f] = {
      "n": int(known[:, j].sum()),
      "n_positive": int(np.nansum(y)),
      "n_unknown": int((~known[:, j]).sum()),
      "threshold": _num(t),
      "confusion": {k: int(v) for k, v in counts.items()},
      "stated_prevalence": prevs[j],
      "metrics": {k: entry(f"{f}/{k}") for k in keys},
    }
  unit = "patient" if patient_ids is not None else "image (no patient ids given)"
  kept = {
    k: np.asarray(v, np.float64)
    for k, v in samples.items()
    if k.split("/", 1)[0] in findings and k.split("/", 1)[1] in keep_bootstrap
  }
  return {
    "n_images": int(n),
    "n_patients": int(B.patient_index(patient_ids, n)[1]),
    "findings": list(findings),
    "settings": {
      "bootstrap_resamples": int(bootstrap),
      "seed": int(seed),
      "ci_level": ci_level,
      "resampling_unit": unit,
      "threshold_policy": str(threshold_policy),
      "threshold_policy_description": _describe(threshold_policy, fixed),
      "thresholds_fixed": fixed,
      "thresholds_chosen_on": (
        (thresholds_chosen_on or "given by the caller, held fixed")
        if fixed
        else "validation set"
        if have_val
        else "the evaluated set itself (no validation set given: optimistic)"
      ),
      "calibration_metrics_on": (
        (calibrated_with or "calibrated probabilities given by the caller")
        if calibrated_probs is not None
        else None
      ),
      "recalibration_fitted_on": "validation set" if have_val else None,
      "ece_bins": ECE_BINS,
      "prevalence": (dict(prevalence) if isinstance(prevalence, Mapping) else prevalence),
    },
    "per_finding": per_finding,
    "macro": {m: entry(f"macro/{m}") for m in MACRO_METRICS},
    "micro": {m: entry(f"micro/{m}") for m in MICRO_METRICS},
    **({"bootstrap_samples": kept} if keep_bootstrap else {}),
  }


def compare_models(
  labels,
  probs_a,
  probs_b,
  findings: Sequence[str],
  *,
  patient_ids=None,
  bootstrap: int = 1000,
  seed: int = 0,
) -> dict:
  """Per finding: AUROC(a) - AUROC(b) on the same cases, by DeLong and by paired patient bootstrap.

  DeLong assumes independent cases; the paired bootstrap respects patients. Both are reported.
  """
  findings = tuple(findings)
  labels, probs_a = _check(labels, probs_a, findings)
  _, probs_b = _check(labels, probs_b, findings)
  out = {}
  for j, f in enumerate(findings):
    dl = B.delong_test(labels[:, j], probs_a[:, j], probs_b[:, j])
    entry = {
      "auroc_a": _num(dl["auroc_a"]),
      "auroc_b": _num(dl["auroc_b"]),
      "diff": _num(dl["diff"]),
      "delong": {"ci": [_num(dl["ci_low"]), _num(dl["ci_high"])], "p_value": _num(dl["p_value"])},
    }
    if bootstrap > 0:
      bs = B.paired_bootstrap_auroc(
        labels[:, j], probs_a[:, j], probs_b[:, j], patient_ids, bootstrap, seed
      )
      entry["paired_bootstrap"] = {
        "ci": [_num(bs["ci_low"]), _num(bs["ci_high"])],
        "p_value": _num(bs["p_value"]),
      }
    out[f] = entry
  return out
