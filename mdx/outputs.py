"""How mdx writes what a user keeps: whole files or nothing, never over a file mdx did not write.

Every command that writes results into a folder a user names (predict, evaluate, export, the run's
reports, bundles) writes through an OutputFolder:

  folder = outputs.OutputFolder(out, "predict", overwrite=False, completes=("predictions.csv",))
  folder.claim(files=[...], folders=["gradcam"])  # refuses, before any work, to replace a file
                                                   # mdx did not write (one line naming it)
  with folder:                                     # a leftover of an interrupted run is reported
    write into folder.path("predictions.csv") ...  # files land in a hidden staging folder
  folder.commit()                                  # moved into place when the result is complete

- **Staging.** Files are written into OUT/.mdx-partial-p<process>/ and renamed into OUT only when
  the command has finished, so a killed run leaves the old complete result (or nothing) in OUT and
  its partial files in the hidden staging folder, which the next run into OUT reports and removes.
- **Completion files.** `completes` (predictions.csv, report.html, bundle.json) say a result is
  whole: while files are being moved in, the old ones are removed first and the new ones are moved
  last, so a run killed while moving leaves nothing that looks complete.
- **The manifest.** OUT/.mdx-outputs.json records every file mdx wrote there with its sha256. A
  file that exists where mdx would write and is not in the manifest, or was changed since, belongs
  to the user: it is never replaced unless the user passes overwrite (--overwrite). Other files in
  OUT are left alone. The manifest also records a commit in progress, so the next run can say that
  the last one was interrupted while moving its files.
- **A full disk** (ENOSPC, EDQUOT) is one line naming the file and the folder, and the staged files
  are removed: nothing half-written is left as final.

Several processes (mdx local, a TPU pod) stage their own files; predict's commit is then
begin_commit (process 0), move_staged (each), finish (process 0 with every process's digests).
Also here, for every CSV mdx writes: csv_writer neutralises cells a spreadsheet would run as a
formula. A bottom module: it imports nothing of mdx.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from absl import logging

MANIFEST = ".mdx-outputs.json"
STAGING = ".mdx-partial"
MANIFEST_FORMAT = "mdx-outputs/1"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutputError(ValueError):
  """A refusal or failure to write a user's output, said in one line (a user error for mdx.cli)."""


def now() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------- digests
def digest(path: str) -> str:
  """sha256 hex of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def tree_digests(folder: str) -> dict[str, str]:
  """{posix path relative to folder: sha256} of every file under folder, sorted by path."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames.sort()
    for name in sorted(filenames):
      full = os.path.join(dirpath, name)
      out[_posix(os.path.relpath(full, folder))] = digest(full)
  return dict(sorted(out.items()))


def _posix(path: str) -> str:
  return path.replace(os.sep, "/")


# ------------------------------------------------------------------------------- single files
def is_disk_full(error: BaseException) -> bool:
  return isinstance(error, OSError) and error.errno in DISK_FULL


def disk_full(path: str, error: OSError) -> OutputError:
  """The one line for a full disk (or quota) while writing `path`."""
  folder = os.path.dirname(os.path.abspath(path))
  try:
    free = shutil.disk_usage(folder).free / 2**20
    left = f"{free:.1f} MiB free"
  except OSError:
    left = "free space unknown"
  return OutputError(
    f"no space left writing {path} ({error.strerror}; {left} on its file system); nothing "
    "half-written was kept: free space or choose another output folder, then run again"
  )


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary sibling of `path` to write; renamed onto `path` when the block ends
  without an error (fsync'd first), removed otherwise. A full disk is an OutputError. For a
  single file outside an OutputFolder (a workdir's config.json); it does not ask who owns `path`.
  """
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path)
  )
  os.close(fd)
  os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the user's group
  try:
    yield tmp
    _fsync(tmp)
    os.replace(tmp, path)
  except OSError as e:
    _remove(tmp)
    if is_disk_full(e):
      raise disk_full(path, e) from None
    raise
  except BaseException:
    _remove(tmp)
    raise


def _umask() -> int:
  """The process's umask (read by setting it, so set back at once)."""
  mask = os.umask(0o22)
  os.umask(mask)
  return mask


def write_text(path: str, text: str) -> str:
  """`text` into `path` atomically (atomic_path); returns path."""
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def write_json(path: str, obj: Any) -> str:
  """obj as indented JSON into `path` atomically (use mdx.jsonio.jsonable first for numbers)."""
  return write_text(path, json.dumps(obj, indent=2) + "\n")


def _fsync(path: str) -> None:
  with open(path, "rb") as f:
    os.fsync(f.fileno())


def _remove(path: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


# ------------------------------------------------------------------------------------------ CSV
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def safe_cell(value: Any) -> Any:
  """A text cell a spreadsheet would run as a formula ('=1+2.png', '@SUM(...)', '-2+3') gets a
  leading apostrophe, as spreadsheet-safe exporters do (OWASP 'CSV injection'); numbers, and text
  that is a plain number ('-0.5'), are kept."""
  if isinstance(value, str) and value.startswith(FORMULA_START):
    try:
      float(value)
      return value
    except ValueError:
      return "'" + value
  return value


def original_cell(text: str) -> str:
  """A cell read back from a CSV written through safe_cell: the apostrophe it put before a
  formula-like text is dropped, as a spreadsheet shows the cell ("'=1+2.png" -> '=1+2.png'), so an
  id pairs with the same id in a user's own CSV (a user's text "'=x" reads as '=x' too, as a
  spreadsheet shows it). Any other text is returned as it is."""
  rest = text[1:]
  if text.startswith("'") and rest.startswith(FORMULA_START) and safe_cell(rest) == text:
    return rest
  return text


class _SafeWriter:
  def __init__(self, f, **kwargs):
    self._writer = csv.writer(f, **kwargs)

  def writerow(self, row: Iterable[Any]) -> Any:
    return self._writer.writerow([safe_cell(v) for v in row])

  def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
    for row in rows:
      self.writerow(row)


def csv_writer(f, **kwargs) -> _SafeWriter:
  """csv.writer whose text cells are spreadsheet-safe (safe_cell): every CSV mdx writes."""
  return _SafeWriter(f, **kwargs)


# ------------------------------------------------------------------------------- output folders
def read_manifest(folder: str) -> dict[str, Any]:
  """The folder's manifest ({'files': {rel: {'sha256', ...}}, ...}); empty when there is none. A
  damaged manifest owns nothing (so nothing is replaced) and says so in a warning."""
  path = os.path.join(folder, MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
      raise ValueError("not an mdx manifest")
    return manifest
  except FileNotFoundError:
    return {"files": {}}
  except (OSError, ValueError) as e:
    logging.warning(
      "%s is damaged (%s): mdx treats every file in %s as the user's", path, e, folder
    )
    return {"files": {}}


def _recorded(manifest: Mapping[str, Any]) -> dict[str, set[str]]:
  """{rel: sha256s} mdx answers for: the files the manifest lists, and those a commit that never
  finished was moving in (its 'committing' record lists them before it moves any)."""
  found: dict[str, set[str]] = {}
  for rel, entry in manifest.get("files", {}).items():
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
      found.setdefault(rel, set()).add(entry["sha256"])
  pending = manifest.get("committing")
  incoming = pending.get("incoming") if isinstance(pending, dict) else None
  for rel, sha in (incoming if isinstance(incoming, dict) else {}).items():
    if isinstance(sha, str):
      found.setdefault(rel, set()).add(sha)
  return found


def owned_files(folder: str) -> set[str]:
  """Absolute paths of the files the folder's manifest says mdx wrote (whatever their content):
  inputs listed from a folder skip them, so one run's outputs never become the next one's inputs."""
  folder = os.path.abspath(folder)
  return {os.path.join(folder, *rel.split("/")) for rel in _recorded(read_manifest(folder))}


def adopt(folder: str, files: Mapping[str, str], command: str) -> None:
  """Records `files` ({relative path: sha256}) in the folder's manifest as written by `command`:
  results an older mdx wrote before manifests existed, which the caller recognised as its own
  (a bundle's bundle.json names its format), so a new run replaces them as mdx's. Files the
  manifest already records keep their entries."""
  folder = os.path.abspath(folder)
  manifest = read_manifest(folder)
  stamp = now()
  for rel, sha in files.items():
    manifest["files"].setdefault(_posix(rel), {"sha256": sha, "by": command, "written": stamp})
  manifest["format"] = MANIFEST_FORMAT
  manifest["files"] = dict(sorted(manifest["files"].items()))
  write_json(os.path.join(folder, MANIFEST), manifest)


def _staged_in(staging: str) -> list[tuple[str, str]]:
  """(rel, path) of the files staged in the staging folder `staging`, sorted."""
  out = []
  for dirpath, dirnames, filenames in os.walk(staging):
    dirnames.sort()
    for name in sorted(filenames):
      full = os.path.join(dirpath, name)
      rel = _posix(os.path.relpath(full, staging))
      if rel != ".started":
        out.append((rel, full))
  return out


class OutputFolder:
  """A folder a command writes its results into (see the module docstring).

  command: who writes ('predict', 'evaluate', 'export'), for the manifest and messages.
  overwrite: replace files mdx did not write (the user's --overwrite).
  completes: files (relative) that say the result is whole: moved last, old ones removed first.
  process: this process's index (several processes stage separately).
  """

  def __init__(
    self,
    folder: str,
    command: str,
    *,
    overwrite: bool = False,
    completes: Sequence[str] = (),
    process: int = 0,
  ):
    self.folder = os.path.abspath(os.path.expanduser(folder))
    self.command = command
    self.overwrite = overwrite
    self.completes = tuple(_posix(c) for c in completes)
    self.process = process
    self.staging = os.path.join(self.folder, f"{STAGING}-p{process}")
    self.folders: tuple[str, ...] = ()  # claimed folders (claim)
    if os.path.exists(self.folder) and not os.path.isdir(self.folder):
      raise OutputError(
        f"output {self.folder} is an existing file; pass a folder (it is created if missing)"
      )

  # ------------------------------------------------------------------------------ before work
  def claim(self, files: Iterable[str] = (), folders: Iterable[str] = ()) -> None:
    """Raises OutputError naming the first file the command would replace that mdx did not write
    (or that was changed since): `files` relative paths it will write, `folders` relative folders
    whose every file it may replace: its files are the command's, and begin_commit removes the
    ones mdx wrote there before (a bundle's old variables/ must not mix with the new). Nothing to
    refuse with overwrite."""
    self.folders = tuple(_posix(f).strip("/") for f in folders)
    if self.overwrite or not os.path.isdir(self.folder):
      return
    manifest = _recorded(read_manifest(self.folder))
    foreign = []
    for rel in files:
      target = os.path.join(self.folder, *_posix(rel).split("/"))
      if os.path.isdir(target):
        foreign.append((target, "is a folder"))
      elif os.path.lexists(target):
        why = self._foreign(manifest, _posix(rel), target)
        if why:
          foreign.append((target, why))
      if foreign:
        break
    for sub in folders if not foreign else ():
      root = os.path.join(self.folder, *_posix(sub).split("/"))
      if os.path.lexists(root) and not os.path.isdir(root):
        foreign.append((root, "is a file where mdx writes a folder"))
        break
      for dirpath, _, filenames in os.walk(root):
        for name in sorted(filenames):
          target = os.path.join(dirpath, name)
          why = self._foreign(manifest, _posix(os.path.relpath(target, self.folder)), target)
          if why:
            foreign.append((target, why))
            break
        if foreign:
          break
      if foreign:
        break
    if foreign:
      target, why = foreign[0]
      raise OutputError(
        f"{self.command} would replace {target}, which {why}; mdx never replaces a file it did "
        f"not write: choose another output folder, move the file away, or pass --overwrite"
      )

  @staticmethod
  def _foreign(recorded: Mapping[str, set[str]], rel: str, target: str) -> str | None:
    """Why the file `target` (rel) is not mdx's to replace; None when it is (_recorded)."""
    if rel not in recorded:
      return f"mdx did not write (it is not in {MANIFEST})"
    if os.path.islink(target) or digest(target) not in recorded[rel]:
      return "was changed since mdx wrote it"
    return None

  # -------------------------------------------------------------------------------- staging
  def __enter__(self) -> OutputFolder:
    """Creates the staging folder (reporting and removing an interrupted run's)."""
    try:
      os.makedirs(self.folder, exist_ok=True)
    except OSError as e:
      raise OutputError(
        f"cannot create output folder {self.folder} ({e.strerror}); pass a writable folder"
      ) from None
    self.report_interrupted()
    try:
      os.makedirs(self.staging)
      with open(os.path.join(self.staging, ".started"), "w") as f:
        json.dump(
          {
            "command": self.command,
            "started": now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
          },
          f,
        )
    except OSError as e:
      _remove(self.staging)
      if is_disk_full(e):
        raise disk_full(self.staging, e) from None
      raise OutputError(
        f"cannot write into output folder {self.folder} ({e.strerror}); pass a writable folder"
      ) from None
    return self

  def __exit__(self, kind, error, tb) -> bool:
    """On an error the staged files are removed (a full disk becomes one OutputError line)."""
    if error is None:
      return False
    _remove(self.staging)
    if is_disk_full(error):
      raise disk_full(getattr(error, "filename", None) or self.folder, error) from None
    return False

  def report_interrupted(self) -> list[str]:
    """Warns about (and removes) what an interrupted run left: a staging folder of this process,
    a commit that never finished. Returns the warnings."""
    said = []
    if os.path.isdir(self.staging):
      started = {}
      with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(self.staging, ".started")) as f:
          started = json.load(f)
      said.append(
        f"{self.folder}: a {started.get('command', 'run')} started {started.get('started', '?')} "
        f"(pid {started.get('pid', '?')}) was interrupted before its results were complete; "
        f"its partial files ({STAGING}-p{self.process}/) are removed, nothing of it was final"
      )
      _remove(self.staging)
    if self.process == 0:
      pending = read_manifest(self.folder).get("committing")
      if pending:
        said.append(
          f"{self.folder}: a {pending.get('command', 'run')} started {pending.get('started', '?')} "
          "was interrupted while moving its files into place; files of it may sit beside older "
          f"ones, and its {', '.join(pending.get('completes', [])) or 'result'} is absent, so "
          "nothing looks complete: this run replaces them"
        )
    for line in said:
      logging.warning("%s", line)
    return said

  def path(self, rel: str) -> str:
    """Where to write the output file `rel` now: inside the staging folder (parents created)."""
    full = os.path.join(self.staging, *_posix(rel).split("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    return full

  # -------------------------------------------------------------------------------- commit
  def commit(self) -> dict[str, str]:
    """Moves every staged file into place (one process); returns {rel: sha256} of them."""
    self.begin_commit()
    moved = self.move_staged()
    self.finish(moved)
    return moved

  def begin_commit(self) -> None:
    """Process 0, before any process moves files: records the commit in the manifest first (the
    sha256 of every process's staged file, so a commit cut short leaves files mdx still answers
    for, and the one write that can meet a full disk comes before anything is touched), then
    removes the old completion files mdx wrote (and its old files in claimed folders), so a kill
    from here on leaves nothing looking complete."""
    manifest = read_manifest(self.folder)
    incoming = {}
    for name in sorted(os.listdir(self.folder)):
      if name.startswith(f"{STAGING}-p"):
        incoming.update(
          {rel: digest(full) for rel, full in _staged_in(os.path.join(self.folder, name))}
        )
    manifest["committing"] = {
      "command": self.command,
      "started": now(),
      "completes": list(self.completes),
      "incoming": incoming,
    }
    self._write_manifest(manifest)
    for rel in list(manifest["files"]):
      if rel in self.completes or any(rel.startswith(f + "/") for f in self.folders):
        _remove(os.path.join(self.folder, *rel.split("/")))  # only what mdx wrote: a user's stays

  def move_staged(self, include_completes: bool = False) -> dict[str, str]:
    """Renames this process's staged files into the folder (completion files too only when asked;
    finish moves them last). Returns {rel: sha256} of the files moved."""
    moved = {}
    for rel, staged in self._staged():
      if rel in self.completes and not include_completes:
        continue
      moved[rel] = self._move(rel, staged)
    return moved

  def finish(self, moved: Mapping[str, str]) -> None:
    """Process 0, after every process moved its files: moves the completion files last, records
    every file (`moved` from all processes) in the manifest and removes the staging folder."""
    done = dict(moved)
    for rel, staged in self._staged():
      if rel in self.completes:
        done[rel] = self._move(rel, staged)
    manifest = read_manifest(self.folder)
    manifest.pop("committing", None)
    stamp = now()
    for rel, sha in done.items():
      manifest["files"][rel] = {"sha256": sha, "by": self.command, "written": stamp}
    manifest["files"] = {  # what begin_commit removed and nothing replaced
      rel: entry
      for rel, entry in manifest["files"].items()
      if os.path.lexists(os.path.join(self.folder, *rel.split("/")))
    }
    self._write_manifest(manifest)
    _remove(self.staging)

  def discard(self) -> None:
    """Removes this process's staged files (after move_staged the folder is empty anyway)."""
    _remove(self.staging)

  def _staged(self) -> list[tuple[str, str]]:
    return _staged_in(self.staging)

  def _move(self, rel: str, staged: str) -> str:
    target = os.path.join(self.folder, *rel.split("/"))
    sha = digest(staged)
    try:
      _fsync(staged)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      if os.path.isdir(target) and not os.path.islink(target):
        raise OutputError(f"{self.command}: {target} is a folder where mdx writes a file; move it")
      os.replace(staged, target)
    except OSError as e:
      if is_disk_full(e):
        raise disk_full(target, e) from None
      raise
    return sha

  def _write_manifest(self, manifest: dict[str, Any]) -> None:
    manifest["format"] = MANIFEST_FORMAT
    manifest["files"] = dict(sorted(manifest["files"].items()))
    write_json(os.path.join(self.folder, MANIFEST), manifest)
