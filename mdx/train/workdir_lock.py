"""One run per workdir: a lock file naming the process that holds it.

Two trainings on one workdir share checkpoints and history: one crashes on the other's checkpoints
and history.jsonl gets every step twice. `hold(workdir)` creates WORKDIR/.mdx.lock atomically
(O_EXCL) with the holder's pid, host, start time and command; a second run is refused with a message
naming that process. A lock whose process is gone (same host, pid not running: a run killed with
SIGKILL) is taken over with a warning. With several processes, process 0 holds the lock for all.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time

from absl import logging

LOCK = ".mdx.lock"


class WorkdirInUse(ValueError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def _describe(holder: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  return (
    f"process {holder.get('pid')} on {holder.get('host')} (started {started}: "
    f"{holder.get('command', '?')})"
  )


def acquire(workdir: str) -> str:
  """Takes the lock of `workdir` (created if missing); returns the lock file's path."""
  path = os.path.join(workdir, LOCK)
  me = {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "started": time.time(),
    "command": " ".join(sys.argv)[:300],
  }
  for _ in range(3):  # a stale lock is removed, then the atomic create is tried again
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          holder = json.load(f)
      except (OSError, ValueError):  # half-written by a process killed while creating it
        holder = {}
      same_host = holder.get("host") == me["host"]
      if holder and (not same_host or _alive(int(holder.get("pid", -1)))):
        where = "" if same_host else " (another host: mdx cannot tell whether it still runs)"
        raise WorkdirInUse(
          f"workdir {workdir} is in use by {_describe(holder)}{where}; wait for that run to "
          f"finish, stop it, or choose another --workdir (if it is surely gone, delete {path})"
        ) from None
      logging.warning(
        "Taking over the stale lock of %s: %s is gone",
        workdir,
        _describe(holder) if holder else "an unreadable lock",
      )
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return path
  raise WorkdirInUse(f"could not take the lock {path}: other runs keep taking it")


def release(path: str) -> None:
  """Removes the lock if this process still holds it."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except (OSError, ValueError):
    return
  if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


@contextlib.contextmanager
def hold(workdir: str):
  """The workdir's lock for the duration of the block, taken by process 0; with several processes
  all of them learn whether it was taken (and all raise if not, instead of the others waiting at
  their first collective)."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  path, refused = None, None
  if jax.process_index() == 0:
    try:
      path = acquire(workdir)
    except WorkdirInUse as e:
      refused = e
  if jax.process_count() > 1:
    ok = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
    if not ok and refused is None:
      refused = WorkdirInUse(f"workdir {workdir} is in use (process 0's log says by whom)")
  if refused is not None:
    raise refused
  try:
    yield path
  finally:
    if path:
      release(path)
