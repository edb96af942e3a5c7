"""Runs `python -m mdx COMMAND ...` on a disk that fills up: where no small file system can be
mounted (tests/test_fault_injection.py mounts a tmpfs when it may), a write error injected into
every file Python opens for writing under a folder, once a byte budget is spent there.

  python tests/full_disk.py FOLDER BUDGET_BYTES COMMAND [flags...]

Writes through builtins.open and io.open (csv, json, numpy, PIL, matplotlib, nibabel all use them)
raise OSError(ENOSPC) as the kernel would, after BUDGET bytes have gone to files under FOLDER.
"""

import builtins
import errno
import io
import os
import runpy
import sys

folder, budget = os.path.abspath(sys.argv[1]), int(sys.argv[2])
spent = [0]
real_open = builtins.open


class Filling:
  """A file object under FOLDER whose writes count against the budget."""

  def __init__(self, f, path):
    self._f, self._path = f, path

  def write(self, data):
    spent[0] += len(data)
    if spent[0] > budget:
      raise OSError(errno.ENOSPC, "No space left on device", self._path)
    return self._f.write(data)

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()

  def __iter__(self):
    return iter(self._f)


def filling_open(file, mode="r", *args, **kwargs):
  f = real_open(file, mode, *args, **kwargs)
  path = os.path.abspath(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
  if path.startswith(folder + os.sep) and any(c in mode for c in "wax+"):
    return Filling(f, path)
  return f


builtins.open = io.open = filling_open
sys.argv = ["mdx", *sys.argv[3:]]
runpy.run_module("mdx", run_name="__main__")
