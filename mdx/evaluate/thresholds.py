"""Operating thresholds: chosen on validation predictions by a stated policy, then applied to test.

Policies (strings, so they fit a config or a flag):
  'youden'            maximise sensitivity + specificity - 1
  'f1'                maximise F1
  'sensitivity=0.9'   the highest threshold whose sensitivity is >= 0.9 (best specificity there)
  'specificity=0.95'  the lowest threshold whose specificity is >= 0.95 (best sensitivity there)
  '0.5' (a number)    that fixed threshold
A case is called positive when its probability is >= the threshold.
"""

from __future__ import annotations

import numpy as np

from mdx.evaluate import metrics as M


def parse_policy(policy: str | float) -> tuple[str, float | None]:
  """('youden' | 'f1' | 'sensitivity' | 'specificity' | 'fixed', value) or ValueError."""
  if isinstance(policy, (int, float)):
    kind, value = "fixed", float(policy)
  else:
    text = str(policy).strip().lower()
    if text in ("youden", "f1"):
      return text, None
    if "=" in text:
      kind, _, raw = text.partition("=")
      kind = kind.strip()
      try:
        value = float(raw)
      except ValueError:
        value = float("nan")
      if kind not in ("sensitivity", "specificity") or not 0.0 < value <= 1.0:
        raise ValueError(
          f"threshold policy {policy!r}: use 'sensitivity=T' or 'specificity=T' with 0 < T <= 1"
        )
      return kind, value
    try:
      kind, value = "fixed", float(text)
    except ValueError:
      raise ValueError(
        f"unknown threshold policy {policy!r}: use 'youden', 'f1', "
        "'sensitivity=0.9', 'specificity=0.9' or a number in [0, 1]"
      ) from None
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"fixed threshold {value} must lie in [0, 1]")
  return kind, value


def describe_policy(policy: str | float) -> str:
  """Readable name of a policy for the report."""
  kind, value = parse_policy(policy)
  if kind == "youden":
    return "maximum Youden's J (sensitivity + specificity - 1)"
  if kind == "f1":
    return "maximum F1"
  if kind == "sensitivity":
    return f"highest threshold with sensitivity >= {value:g}"
  if kind == "specificity":
    return f"lowest threshold with specificity >= {value:g}"
  return f"fixed threshold {value:g}"


def choose_threshold(y_true, y_prob, policy: str | float = "youden") -> float:
  """The threshold that `policy` picks on (y_true, y_prob); nan when it cannot be chosen.

  Candidates are the distinct probabilities. nan when the labels lack positives or negatives
  (except for a fixed threshold), or when no candidate meets a target.
  """
  kind, value = parse_policy(policy)
  if kind == "fixed":
    return float(value)
  y = np.asarray(y_true, np.float64)
  p = np.asarray(y_prob, np.float64)
  keep = ~np.isnan(y)
  y, p = y[keep], p[keep]
  n_pos, n_neg = (y == 1).sum(), (y == 0).sum()
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  fpr, tpr, thr = M.roc_curve(y, p)
  fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop the +inf point: call nothing positive
  if kind == "youden":
    return float(thr[np.argmax(tpr - fpr)])  # first max = highest threshold among equals
  if kind == "f1":
    tp, fp = tpr * n_pos, fpr * n_neg
    f1 = 2 * tp / (tp + fp + n_pos)
    return float(thr[np.argmax(f1)])
  if kind == "sensitivity":
    ok = np.flatnonzero(tpr >= value - 1e-12)
    return float(thr[ok[0]]) if len(ok) else float("nan")
  ok = np.flatnonzero(1.0 - fpr >= value - 1e-12)  # specificity falls as the threshold drops
  return float(thr[ok[-1]]) if len(ok) else float("nan")
