"""Figures a training run adds to its report: loss curves and example images with predictions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curves(history: list[dict], path: str) -> tuple[str, str]:
  train = [(h["step"], h["train_loss"]) for h in history if "train_loss" in h]
  val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
  auroc = [(h["step"], h["val_auroc"]) for h in history if "val_auroc" in h]
  fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
  if train:
    ax[0].plot(*zip(*train), label="train (batch)", lw=1)
  if val:
    ax[0].plot(*zip(*val), "o-", label="validation")
  ax[0].set(xlabel="step", ylabel="weighted BCE loss", title="Loss")
  ax[0].legend()
  if auroc:
    ax[1].plot(*zip(*auroc), "o-", color="C2")
  ax[1].axhline(0.5, color="grey", ls=":", lw=1)
  ax[1].set(xlabel="step", ylabel="mean AUROC", title="Validation mean AUROC", ylim=(0.4, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return ("Training loss (per logged batch) and validation loss and mean AUROC at each checkpoint",
          path)


def examples(source, pred: dict, findings, path: str, count: int = 8,
             seed: int = 0) -> tuple[str, str]:
  """A grid of test images, each titled with its true findings and the model's top probabilities."""
  labels = pred["labels"]
  rng = np.random.default_rng(seed)
  positive = np.flatnonzero(np.nansum(labels, 1) > 0)
  negative = np.flatnonzero(np.nansum(labels, 1) == 0)
  n_pos = min(len(positive), max(count - count // 4, 1))
  rows = np.concatenate([rng.choice(positive, n_pos, replace=False) if n_pos else [],
                         rng.choice(negative, min(len(negative), count - n_pos), replace=False)])
  rows = rows.astype(int)
  cols = 4
  nrows = max(1, int(np.ceil(len(rows) / cols)))
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.7 * nrows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, r in zip(axes.ravel(), rows):
    image = np.asarray(source[int(pred["index"][r])]["image"])
    ax.imshow(image[..., 0] if image.ndim == 3 else image, cmap="gray")
    truth = [f for f, y in zip(findings, labels[r]) if y == 1] or ["No Finding"]
    top = np.argsort(-pred["probs"][r])[:3]
    guess = ", ".join(f"{findings[k]} {pred['probs'][r][k]:.2f}" for k in top)
    ax.set_title(f"true: {', '.join(truth)}\npred: {guess}", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return ("Example test images: true findings and the model's three most probable findings", path)
