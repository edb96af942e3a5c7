"""Reference standards from several readers: majority vote with a tie rule, and agreement
statistics.

A reference standard is only as good as the readers behind it: consensus voting reduces single-
reader error, and kappa tells how much the readers agree beyond chance (Cohen's for two readers,
Fleiss' for any fixed number of readers per image).
"""

from __future__ import annotations

import numpy as np

TIE_RULES = ("positive", "negative", "unknown", "reader:<k>")


def majority_vote(reads: np.ndarray, tie: str = "unknown") -> np.ndarray:
  """Binary consensus over readers.

  Args:
    reads: [N, R] or [N, R, C] of 0/1 with nan where a reader gave no read.
    tie: what an equal split (or no read at all) gives: 'positive' (1), 'negative' (0), 'unknown'
      (nan, e.g. to send the image to adjudication), or 'reader:k' (the read of reader k, e.g.
      the most senior; nan if that reader gave none).
  Returns:
    float32 [N] or [N, C] labels.
  """
  reads = np.asarray(reads, np.float64)
  if reads.ndim not in (2, 3):
    raise ValueError(
      f"reads must be [N, readers] or [N, readers, classes]; got shape {reads.shape}"
    )
  known = ~np.isnan(reads)
  if np.any((reads[known] != 0) & (reads[known] != 1)):
    raise ValueError("reads must be 0, 1 or nan (binary reads per reader)")
  pos = np.where(known, reads, 0).sum(1)
  neg = known.sum(1) - pos
  out = np.where(pos > neg, 1.0, np.where(neg > pos, 0.0, np.nan))
  ties = pos == neg
  if tie == "positive":
    out[ties] = 1.0
  elif tie == "negative":
    out[ties] = 0.0
  elif tie == "unknown":
    pass
  elif tie.startswith("reader:"):
    try:
      k = int(tie.split(":", 1)[1])
    except ValueError:
      raise ValueError(f"tie rule {tie!r}: write 'reader:<index>'") from None
    if not 0 <= k < reads.shape[1]:
      raise ValueError(f"tie rule {tie!r}: only {reads.shape[1]} readers")
    out[ties] = reads[:, k][ties]
  else:
    raise ValueError(f"tie rule {tie!r} is unknown; choose one of {TIE_RULES}")
  return out.astype(np.float32)


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
  """Cohen's kappa of two readers' categorical labels (pairs with a nan are left out)."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"cohen_kappa: readers have {a.size} and {b.size} labels")
  both = ~(np.isnan(a) | np.isnan(b))
  a, b = a[both], b[both]
  if a.size == 0:
    raise ValueError("cohen_kappa: no image has labels from both readers")
  cats = np.union1d(a, b)
  ia, ib = np.searchsorted(cats, a), np.searchsorted(cats, b)
  table = np.zeros((len(cats), len(cats)))
  np.add.at(table, (ia, ib), 1)
  table /= table.sum()
  observed = np.trace(table)
  expected = float(table.sum(1) @ table.sum(0))
  if expected == 1.0:
    return 1.0 if observed == 1.0 else 0.0
  return float((observed - expected) / (1.0 - expected))


def fleiss_kappa(counts: np.ndarray) -> float:
  """Fleiss' kappa from counts [N, K]: how many readers put image i in category k (same n per
  image)."""
  counts = np.asarray(counts, np.float64)
  n = counts.sum(1)
  if counts.ndim != 2 or np.any(n != n[0]) or n[0] < 2:
    raise ValueError(
      "fleiss_kappa needs counts [N, categories] with the same number (>= 2) of "
      "readers for every image"
    )
  n = n[0]
  p_j = counts.sum(0) / counts.sum()
  p_i = ((counts * (counts - 1)).sum(1)) / (n * (n - 1))
  p_bar, p_e = p_i.mean(), float((p_j**2).sum())
  if p_e == 1.0:
    return 1.0
  return float((p_bar - p_e) / (1.0 - p_e))


def reads_to_counts(reads: np.ndarray) -> np.ndarray:
  """[N, R] categorical reads (no nan) -> Fleiss counts [N, categories]."""
  reads = np.asarray(reads)
  cats = np.unique(reads)
  return np.stack([(reads == c).sum(1) for c in cats], axis=1)
