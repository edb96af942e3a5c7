"""JSON any reader can parse from what mdx computes: undefined numbers as null, numpy as Python.

Why one function: metrics are often undefined (an AUROC on a set without positives is NaN) and come
as numpy numbers and arrays. Python's json writes NaN and Infinity, tokens that are not JSON (jq,
browsers and most other readers refuse the whole file), and refuses numpy values outright. Every
file mdx writes from numbers (metrics.json of a report, a bundle's spec.json) goes through
`jsonable`, so all of them say "undefined" the same way. A bottom module (it imports nothing of
mdx), so every room may use it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(x: Any) -> Any:
  """x with dicts, lists and tuples walked: non-finite floats -> None, numpy scalars -> their
  Python values, numpy arrays -> (nested) lists, dict keys that are not strings -> str(key) (as
  json writes an int or a finite float; a numpy key becomes its Python value first). Anything
  else is left for json to write (or refuse)."""
  if isinstance(x, dict):
    return {_key(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _key(key: Any) -> str:
  if isinstance(key, str):
    return key
  return str(key.item() if isinstance(key, np.generic) else key)
