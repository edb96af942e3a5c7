"""Report pictures (matplotlib, Agg): ROC, PR, reliability and confusion matrices, one panel per finding."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mdx.evaluate import calibration as C  # noqa: E402
from mdx.evaluate import metrics as M  # noqa: E402


def _fmt(entry: Mapping | None, digits: int = 3) -> str:
  """'0.812 [0.774, 0.855]' or 'undefined'."""
  if not entry or entry.get("value") is None:
    return "undefined"
  v = f"{entry['value']:.{digits}f}"
  lo, hi = entry.get("ci", [None, None])
  return v if lo is None else f"{v} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _grid(n: int, panel: float = 3.0):
  cols = min(4, max(n, 1))
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(panel * cols, panel * rows + 0.3), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  return fig, list(axes.flat[:n])


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _empty(ax, text="undefined:\nno positives or\nno negatives"):
  ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="gray")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)


def roc_png(path: str, labels, probs, findings: Sequence[str], result: Mapping) -> str:
  """ROC curve per finding, the chosen operating point marked, AUROC [CI] in the title."""
  fig, axes = _grid(len(findings))
  for j, (ax, f) in enumerate(zip(axes, findings)):
    pf = result["per_finding"][f]
    ax.plot([0, 1], [0, 1], color="lightgray", lw=1)
    if pf["metrics"]["auroc"]["value"] is None:
      _empty(ax)
    else:
      fpr, tpr, _ = M.roc_curve(labels[:, j], probs[:, j])
      ax.plot(fpr, tpr, lw=1.5)
      se, sp = pf["metrics"]["sensitivity"]["value"], pf["metrics"]["specificity"]["value"]
      if se is not None and sp is not None:
        ax.plot([1 - sp], [se], "o", color="crimson", ms=5, label=f"t={pf['threshold']:.3g}")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_title(f"{f}\nAUROC {_fmt(pf['metrics']['auroc'])}", fontsize=8)
    ax.set_xlabel("1 - specificity", fontsize=7)
    ax.set_ylabel("sensitivity", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_aspect("equal")
  return _save(fig, path)


def pr_png(path: str, labels, probs, findings: Sequence[str], result: Mapping) -> str:
  """Precision-recall curve per finding with the prevalence (a useless model's precision) as baseline."""
  fig, axes = _grid(len(findings))
  for j, (ax, f) in enumerate(zip(axes, findings)):
    pf = result["per_finding"][f]
    if pf["metrics"]["average_precision"]["value"] is None:
      _empty(ax, "undefined:\nno positives")
    else:
      prec, rec, _ = M.pr_curve(labels[:, j], probs[:, j])
      ax.step(rec, prec, where="post", lw=1.5)
      prev = pf["n_positive"] / max(pf["n"], 1)
      ax.axhline(prev, color="lightgray", lw=1, ls="--")
    ax.set_title(f"{f}\nAP {_fmt(pf['metrics']['average_precision'])}", fontsize=8)
    ax.set_xlabel("recall (sensitivity)", fontsize=7)
    ax.set_ylabel("precision (PPV)", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=7)
  return _save(fig, path)


def reliability_png(path: str, labels, probs, findings: Sequence[str], result: Mapping,
                    recalibrated: Sequence[Mapping[str, np.ndarray]] = (), n_bins: int = 10) -> str:
  """Reliability diagram per finding: observed frequency vs mean probability, before/after recalibration."""
  fig, axes = _grid(len(findings))
  styles = {"raw": ("o-", "C0"), "platt": ("s--", "C1"), "isotonic": ("^:", "C2")}
  for j, (ax, f) in enumerate(zip(axes, findings)):
    pf = result["per_finding"][f]
    ax.plot([0, 1], [0, 1], color="lightgray", lw=1)
    series = {"raw": probs[:, j]}
    if j < len(recalibrated):
      series.update(recalibrated[j])
    if pf["n"] == 0:
      _empty(ax, "no known labels")
    for name, p in series.items():
      if pf["n"] == 0:
        break
      curve = C.reliability_curve(labels[:, j], p, n_bins)
      ece = pf["metrics"]["ece" if name == "raw" else f"ece_{name}"]
      style, color = styles[name]
      ax.plot(curve["mean_predicted"], curve["fraction_positive"], style, color=color, ms=3, lw=1,
              label=f"{name} ECE {_fmt(ece, 2)}")
    if pf["n"]:
      ax.legend(loc="upper left", fontsize=6)
    ax.set_title(f, fontsize=8)
    ax.set_xlabel("mean predicted probability", fontsize=7)
    ax.set_ylabel("observed frequency", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
  return _save(fig, path)


def confusion_png(path: str, findings: Sequence[str], result: Mapping) -> str:
  """2x2 confusion matrix per finding at its chosen threshold (counts of cases)."""
  fig, axes = _grid(len(findings), panel=2.6)
  for ax, f in zip(axes, findings):
    pf = result["per_finding"][f]
    cm = pf["confusion"]
    if not cm:
      _empty(ax, "no threshold:\nno positives or\nno negatives")
      ax.set_title(f, fontsize=8)
      ax.axis("off")
      continue
    mat = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(mat.max(), 1))
    for (r, c), v in np.ndenumerate(mat):
      ax.text(c, r, f"{['TN', 'FP', 'FN', 'TP'][2 * r + c]}\n{v}", ha="center", va="center",
              fontsize=8, color="white" if v > mat.max() / 2 else "black")
    ax.set_xticks([0, 1], ["pred -", "pred +"], fontsize=7)
    ax.set_yticks([0, 1], ["true -", "true +"], fontsize=7)
    ax.set_title(f"{f}\nthreshold {pf['threshold']:.3g}", fontsize=8)
  return _save(fig, path)
