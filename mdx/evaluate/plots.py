"""Report pictures (matplotlib, Agg): ROC, PR, reliability and confusion matrices, one panel per
finding; training curves and example images for a run's report.

The training curves serve classification (validation AUROC) and segmentation (validation Dice)
alike, so that a run's loss is drawn by one function whatever the task.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence

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
  """Precision-recall curve per finding with the prevalence (a useless model's precision) as
  baseline."""
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


def reliability_png(
  path: str,
  labels,
  probs,
  findings: Sequence[str],
  result: Mapping,
  recalibrated: Sequence[Mapping[str, np.ndarray]] = (),
  n_bins: int = 10,
) -> str:
  """Reliability diagram per finding: observed frequency vs mean probability, before/after
  recalibration."""
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
      ax.plot(
        curve["mean_predicted"],
        curve["fraction_positive"],
        style,
        color=color,
        ms=3,
        lw=1,
        label=f"{name} ECE {_fmt(ece, 2)}",
      )
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
      ax.text(
        c,
        r,
        f"{['TN', 'FP', 'FN', 'TP'][2 * r + c]}\n{v}",
        ha="center",
        va="center",
        fontsize=8,
        color="white" if v > mat.max() / 2 else "black",
      )
    ax.set_xticks([0, 1], ["pred -", "pred +"], fontsize=7)
    ax.set_yticks([0, 1], ["true -", "true +"], fontsize=7)
    ax.set_title(f"{f}\nthreshold {pf['threshold']:.3g}", fontsize=8)
  return _save(fig, path)


def training_curves_png(
  history: Sequence[Mapping],
  path: str,
  metric: str = "val_auroc",
  metric_label: str = "mean AUROC",
  loss_label: str = "loss",
  *,
  ylim: tuple[float | None, float] | None = None,
  chance: float | None = None,
) -> tuple[str, str]:
  """Loss (left) and a validation metric (right) over training steps, from history.jsonl rows.

  Left: train_loss per logged batch and val_loss where the history has it. Right: `metric` and
  its per-class variants (keys '{metric}_*', e.g. val_dice_tumour) at each checkpoint; `chance`
  draws a dotted line at a useless model's value (0.5 for AUROC). ylim (low, high) bounds the
  right axis; low None: the lowest value drawn, rounded down to a multiple of 0.05 (a Dice curve
  that climbs from 0.84 to 0.89 is a flat line on 0-1). Rows without a key are skipped, so a
  history without validation rows still draws. Returns (caption, path).
  """

  def series(key):
    return [(h["step"], h[key]) for h in history if key in h]

  train, val = series("train_loss"), series("val_loss")
  keys = sorted(
    {k for h in history for k in h if k == metric or k.startswith(metric + "_")},
    key=lambda k: (k != metric, k),
  )  # the overall metric first, then per class
  fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
  if train:
    ax[0].plot(*zip(*train), label="train (batch)", lw=1)
  if val:
    ax[0].plot(*zip(*val), "o-", label="validation")
  ax[0].set(xlabel="step", ylabel=loss_label, title="Loss")
  if train or val:
    ax[0].legend()
  for n, k in enumerate(keys):
    ax[1].plot(*zip(*series(k)), "o-", color=f"C{(n + 2) % 10}", label=k)
  if chance is not None:
    ax[1].axhline(chance, color="grey", ls=":", lw=1)
  ax[1].set(xlabel="step", ylabel=metric_label, title=f"Validation {metric_label}")
  if ylim is not None:
    low, high = ylim
    if low is None:
      drawn = [v for k in keys for _, v in series(k) if np.isfinite(v)]
      low = max(0.0, np.floor(min(drawn, default=0.0) / 0.05 - 1e-9) * 0.05)
    ax[1].set_ylim(low, high)
  if len(keys) > 1:
    ax[1].legend(fontsize=7)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  what = "validation loss and " if val else "validation "
  return (f"Training loss (per logged batch) and {what}{metric_label} at each checkpoint", path)


def examples_png(
  image_fn: Callable[[int], np.ndarray],
  labels,
  probs,
  index,
  findings: Sequence[str],
  path: str,
  count: int = 8,
  seed: int = 0,
  scores: str = "probabilities",
  raw_findings: Sequence[str] = (),
) -> tuple[str, str]:
  """A grid of test images, each titled with its true findings and the model's top probabilities.

  scores: what probs are, for the caption (e.g. 'raw scores', 'calibrated probabilities');
  raw_findings: findings whose column is a raw score among calibrated ones (marked 'raw').
  labels [N, C] (nan unknown) and probs [N, C] are rows of the evaluated split, index [N] their
  record indices; image_fn(record index) -> the image as stored [H, W] or [H, W, C]. About three
  quarters of the images show a finding (the rest none), drawn with `seed`. Returns (caption, path).
  """
  labels, probs = np.asarray(labels), np.asarray(probs)
  rng = np.random.default_rng(seed)
  positive = np.flatnonzero(np.nansum(labels, 1) > 0)
  negative = np.flatnonzero(np.nansum(labels, 1) == 0)
  n_pos = min(len(positive), max(count - count // 4, 1))
  rows = np.concatenate(
    [
      rng.choice(positive, n_pos, replace=False) if n_pos else [],
      rng.choice(negative, min(len(negative), count - n_pos), replace=False),
    ]
  )
  rows = rows.astype(int)
  cols = 4
  nrows = max(1, int(np.ceil(len(rows) / cols)))
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.7 * nrows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, r in zip(axes.ravel(), rows):
    image = np.asarray(image_fn(int(index[r])))
    ax.imshow(image[..., 0] if image.ndim == 3 else image, cmap="gray")
    truth = [f for f, y in zip(findings, labels[r]) if y == 1] or ["No Finding"]
    top = np.argsort(-probs[r])[:3]
    guess = ", ".join(
      f"{findings[k]} {probs[r][k]:.2f}" + (" raw" if findings[k] in raw_findings else "")
      for k in top
    )
    ax.set_title(f"true: {', '.join(truth)}\npred: {guess}", fontsize=7)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return (f"Example test images: true findings and the model's three highest {scores}", path)


def ablation_png(
  path: str,
  variants: Sequence[str],
  panels: Sequence[tuple[str, Mapping[str, Sequence[float]]]],
  delta: tuple[str, Mapping[str, tuple[float, float, float]]] | None = None,
  title: str = "",
) -> str:
  """An ablation at a glance: per panel (title, {variant: value of each seed}) the seeds as dots
  and their mean +- standard deviation as a bar; then (title, {variant: (diff, ci_low, ci_high)})
  each variant's difference from the baseline with its 95% CI against a zero line."""
  n = len(panels) + (delta is not None)
  fig, axes = _grid(n, panel=3.4)
  x = np.arange(len(variants))
  for ax, (name, values) in zip(axes, panels):
    undefined = []
    for i, v in enumerate(variants):
      seeds = np.asarray([s for s in values.get(v, ()) if s is not None], np.float64)
      seeds = seeds[np.isfinite(seeds)]
      if not len(seeds):
        undefined.append(v)
        continue
      jitter = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else np.zeros(1)
      ax.plot(i + jitter, seeds, "o", color=f"C{i}", alpha=0.6, ms=5)
      sd = seeds.std(ddof=1) if len(seeds) > 1 else 0.0
      ax.errorbar(i + 0.3, seeds.mean(), yerr=sd, fmt="_", color="k", ms=14, capsize=3)
    if undefined:  # an empty panel would read as a plotting bug; say the value is undefined
      where = "every variant" if len(undefined) == len(variants) else ", ".join(undefined)
      ax.text(0.5, 0.5, f"n/a for {where}\n(undefined on this test set)", transform=ax.transAxes,
              ha="center", va="center", fontsize=8, color="gray")  # fmt: skip
    ax.set_title(name, fontsize=9)
    ax.set_xticks(x, variants, rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
  if delta is not None:
    ax = axes[-1]
    name, diffs = delta
    for i, v in enumerate(variants):
      if v in diffs and diffs[v][0] is not None and np.isfinite(diffs[v][0]):
        d, lo, hi = (np.nan if t is None else t for t in diffs[v])
        yerr = [[d - lo], [hi - d]] if np.isfinite(lo) and np.isfinite(hi) else None
        ax.errorbar(i, d, yerr=yerr, fmt="o", color=f"C{i}", capsize=4)
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax.set_title(name, fontsize=9)
    ax.set_xticks(x, variants, rotation=30, ha="right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def heatmap_png(
  path: str,
  values,
  rows: Sequence[str],
  columns: Sequence[str],
  notes: Sequence[Sequence[str]],
  *,
  title: str = "",
  label: str = "",
  limits: tuple[float, float] = (0.5, 1.0),
  missing: str = "not evaluable",
) -> str:
  """A matrix at a glance: values [R, C] (nan = no number) as coloured cells, each annotated with
  its note (e.g. '0.81\\n[0.77, 0.85]'); a cell without a number is grey and says `missing`, never
  a colour a number would have. limits: the value range the colours span (values beyond take the
  end colours: a cell below chance is as red as chance); label: the colour bar's."""
  values = np.asarray(values, np.float64).reshape(len(rows), len(columns))
  cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#d9d9d9")
  width = max(4.0, 1.5 * len(columns) + 2.5)
  height = max(2.5, 0.85 * len(rows) + 1.6)
  fig, ax = plt.subplots(figsize=(width, height))
  lo, hi = limits
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
  for i in range(len(rows)):
    for j in range(len(columns)):
      v = values[i, j]
      if np.isfinite(v):
        shade = cmap((min(max(v, lo), hi) - lo) / max(hi - lo, 1e-12))
        dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
        text, color = notes[i][j], "white" if dark else "black"
      else:
        text, color = missing, "dimgray"
      ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
  ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
  ax.set_yticks(range(len(rows)), rows, fontsize=8)
  ax.set_xticks(np.arange(len(columns) + 1) - 0.5, minor=True)
  ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
  ax.grid(which="minor", color="white", lw=2)
  ax.tick_params(which="minor", length=0)
  bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
  bar.set_label(label, fontsize=8)
  bar.ax.tick_params(labelsize=7)
  if title:
    ax.set_title(title, fontsize=9)
  return _save(fig, path)
