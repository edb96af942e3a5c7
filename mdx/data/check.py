"""Every record of a source opened and decoded once before training, so that bad data fails early.

Images are decoded when the pipeline first uses them, so without this check a corrupt PNG surfaced
only at the final test evaluation and a zero-byte JPEG crashed a long run mid-training. The tasks
call check_source right after building their source and before splitting it:

  on_error='raise' (default): one ValueError listing every bad record (the first few in the message,
    all of them in bad_records.csv) and the fix;
  on_error='skip': the bad records are dropped (as if their files were deleted, so the splits are
    those of the cleaned dataset), counted in the log and listed in WORKDIR/skipped_records.csv.

A record is bad when it cannot be read or decoded (the reason is the decoder's) or when its image
holds NaN or Inf values (a NaN scan would be scored as all background, or turn the loss into nan);
both count as bad for on_error. An image whose pixels (or a volume channel whose voxels) are all
equal is only a warning, with a count (and WORKDIR/constant_records.csv).

python -m mdx check runs scan, the decoding without a policy, and says what a run would
do with what it found under the experiment's on_error.

Sources whose records come from files offer record_files(i) (the files record i reads) and
record_name(i); sources generated in memory (phantoms) do not, and are not checked: they cannot be
unreadable and are finite by construction. Prepared records (TFDS ArrayRecords) are read back as
stored, not decoded from the original files again.

Decoding runs in a thread pool (PIL and zlib release the GIL) behind a progress bar, and each result
is cached under MDX_CHECK_CACHE (default ~/.cache/mdx/checks; empty turns the cache off) keyed by
every file's path and a fingerprint no rewrite keeps: size, modification time, status-change time
(st_ctime changes on every write and no user can set it back, unlike the modification time that
`touch -r` or a copy tool restores), inode, and a sha256 of its first and last 64 KiB. A second run
on the same data decodes nothing; a file replaced or corrupted in place is checked again, so a bad
file the cache once called good is found, and on_error='skip' then drops it. The cache lives with
the user, not the run: the files belong to the dataset, and every new workdir of a sweep would
otherwise decode everything again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import logging

from mdx import outputs

CHECK_VERSION = 2  # bump when what a check finds or the cache keys change: older files are ignored
OK, UNREADABLE, NONFINITE, CONSTANT = "ok", "unreadable", "nonfinite", "constant"
BAD = (UNREADABLE, NONFINITE)
ON_ERROR = ("raise", "skip")
SHOWN = 3  # bad records named in an error message (the rest are in the CSV)
HASHED = 64 * 1024  # bytes of a file's start and of its end in its cache fingerprint


@dataclasses.dataclass
class CheckResult:
  """What check_source found; indices are those of the source it was given."""

  name: str
  total: int
  status: list[str]  # per record: OK, UNREADABLE, NONFINITE or CONSTANT
  reasons: list[str]  # per record ('' when OK)
  paths: list[str]  # per record: the file (or prepared record) it reads first
  records: list[str]  # per record: image or case id
  decoded: int = 0  # records decoded by this call (the rest came from the cache)
  seconds: float = 0.0

  def indices(self, *statuses: str) -> np.ndarray:
    return np.asarray([i for i, s in enumerate(self.status) if s in statuses], np.int64)

  @property
  def bad(self) -> np.ndarray:
    return self.indices(*BAD)

  @property
  def constant(self) -> np.ndarray:
    return self.indices(CONSTANT)

  def keep(self) -> np.ndarray:
    return np.asarray([i for i, s in enumerate(self.status) if s not in BAD], np.int64)

  def rows(self, indices) -> list[dict[str, str]]:
    return [
      {"path": self.paths[i], "record": self.records[i], "reason": self.reasons[i]} for i in indices
    ]


def is_checkable(source) -> bool:
  """True for sources that read files (they offer record_files); phantoms are generated."""
  return hasattr(source, "record_files")


def inspect(record: dict) -> tuple[str, str]:
  """(status, reason) of a decoded record's image: NaN/Inf values, or constant pixels/channels."""
  image = np.asarray(record["image"])
  if image.size == 0:
    return UNREADABLE, f"empty image of shape {image.shape}"
  if image.dtype.kind == "f":
    finite = np.isfinite(image)
    if not finite.all():
      nan = int(np.isnan(image).sum())
      inf = int(image.size - finite.sum()) - nan
      return NONFINITE, f"contains {nan} NaN and {inf} Inf values (of {image.size})"
  if image.ndim == 4:  # a volume [D, H, W, C]: one empty modality is worth knowing about
    flat = image.reshape(-1, image.shape[-1])
    same = np.flatnonzero(flat.min(0) == flat.max(0))
    if len(same):
      return CONSTANT, f"channel(s) {same.tolist()} constant (value {flat[0, same[0]]:g})"
    return OK, ""
  low, high = image.min(), image.max()
  if low == high:
    return CONSTANT, f"every pixel is {low:g}"
  return OK, ""


def check_record(source, index: int) -> tuple[str, str]:
  """Decodes record `index` as training would and inspects it; any failure is UNREADABLE."""
  try:
    read = getattr(source, "read_record", None)  # bypasses a source's in-memory cache
    record = read(index) if read is not None else source[index]
  except Exception as e:  # any decoder error means the file is unusable; the reason says which
    return UNREADABLE, _one_line(e)
  return inspect(record)


def check_source(
  source,
  name: str,
  on_error: str = "raise",
  workdir: str | None = None,
  threads: int | None = None,
  cache_dir: str | None = None,
  progress: bool = True,
):
  """-> (source, CheckResult | None): every record of `source` decoded (or found in the cache) and
  inspected; bad records raise a ValueError listing them, or with on_error='skip' are dropped
  (source.select). workdir receives the CSV lists (None: the cache folder, named in the log).
  Sources that are not checkable come back unchanged with None."""
  if on_error not in ON_ERROR:
    raise ValueError(f"config.data.on_error={on_error!r}; choose one of {list(ON_ERROR)}")
  if not is_checkable(source):
    return source, None
  result = scan(source, name, threads, cache_dir, progress)
  _warn_constant(result, workdir, cache_dir)
  bad = result.bad
  n = result.total
  if not len(bad):
    return source, result
  if on_error == "raise":
    listing = write_list(result, bad, "bad_records.csv", workdir, cache_dir)
    raise ValueError(_error_message(result, bad, listing))
  if len(bad) == n:
    listing = write_list(result, bad, "skipped_records.csv", workdir, cache_dir)
    raise ValueError(
      f"{name}: all {n} records are unusable (e.g. {examples(result, bad)}); listed in "
      f"{listing}: fix the data folder (config.data.root / images)"
    )
  listing = write_list(result, bad, "skipped_records.csv", workdir, cache_dir)
  logging.warning(
    "%s: skipped %d of %d records that cannot be used (config.data.on_error='skip'), e.g. %s; "
    "all are listed in %s",
    name,
    len(bad),
    n,
    examples(result, bad),
    listing,
  )
  return source.select(result.keep()), result


def scan(
  source,
  name: str,
  threads: int | None = None,
  cache_dir: str | None = None,
  progress: bool = True,
) -> CheckResult:
  """Every record of a checkable `source` decoded (or found in the cache) and inspected, with no
  policy: what bad records mean is the caller's (check_source for a run, the check command)."""
  start = time.perf_counter()
  n = len(source)
  files = [tuple(source.record_files(i)) for i in range(n)]
  cache = _Cache.open(cache_dir, context(source), [f for fs in files for f in fs])
  threads = threads or _default_threads()
  stats = _all_stats(files, threads) if cache else [None] * n
  keys = [cache.key(fs, i) if cache else "" for i, fs in enumerate(files)]
  result = CheckResult(
    name,
    n,
    [""] * n,
    [""] * n,
    [fs[0] if fs else _prepared_path(source, i) for i, fs in enumerate(files)],
    [str(source.record_name(i)) for i in range(n)],
  )
  todo = []
  for i in range(n):
    hit = cache.get(keys[i], stats[i]) if cache else None
    if hit is None:
      todo.append(i)
    else:
      result.status[i], result.reasons[i] = hit
  if todo:
    bar = _progress(len(todo), f"checking {name}", progress)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      for i, (status, reason) in zip(todo, pool.map(lambda i: check_record(source, i), todo)):
        result.status[i], result.reasons[i] = status, reason
        if cache and stats[i] is not None:
          cache.put(keys[i], stats[i], status, reason)
        bar.update(1)
    bar.close()
    if cache:
      cache.save()
  result.decoded = len(todo)
  result.seconds = time.perf_counter() - start
  logging.info(
    "Checked %d records of %s in %.1f s (%d decoded, %d from the cache %s): %d bad, %d constant",
    n,
    name,
    result.seconds,
    len(todo),
    n - len(todo),
    cache.file if cache else "(off)",
    len(result.bad),
    len(result.constant),
  )
  return result


def _error_message(result: CheckResult, bad: np.ndarray, listing: str) -> str:
  kinds = []
  for status, what in ((UNREADABLE, "unreadable"), (NONFINITE, "with NaN or Inf values")):
    count = sum(result.status[i] == status for i in bad)
    if count:
      kinds.append(f"{count} {what}")
  return (
    f"{result.name}: {len(bad)} of {result.total} records cannot be used ({', '.join(kinds)}): "
    f"{examples(result, bad)}; all are listed in {listing}. Remove or replace these files, or "
    "set config.data.on_error='skip' to train without them"
  )


def examples(result: CheckResult, indices) -> str:
  shown = [f"{result.paths[i]} ({result.reasons[i]})" for i in indices[:SHOWN]]
  more = f" and {len(indices) - SHOWN} more" if len(indices) > SHOWN else ""
  return ", ".join(shown) + more


def _warn_constant(result: CheckResult, workdir: str | None, cache_dir: str | None) -> None:
  constant = result.constant
  if not len(constant):
    return
  where = ""
  if workdir:
    where = "; all are listed in " + write_list(
      result, constant, "constant_records.csv", workdir, cache_dir
    )
  logging.warning(
    "%s: %d of %d images are constant (every pixel or a whole channel the same value), e.g. %s%s",
    result.name,
    len(constant),
    result.total,
    examples(result, constant),
    where,
  )


def write_list(
  result: CheckResult,
  indices,
  file_name: str,
  workdir: str | None = None,
  cache_dir: str | None = None,
) -> str:
  """Writes (path, record, reason) rows into workdir (else the cache folder, else the temporary
  folder, with a digest of the records' paths in the file name); returns the path."""
  if workdir:
    folder = workdir
  else:
    folder = cache_folder(cache_dir) or tempfile.gettempdir()
    digest = hashlib.sha1("\0".join(result.paths).encode()).hexdigest()[:12]
    stem, ext = os.path.splitext(file_name)
    file_name = f"{stem}-{digest}{ext}"
  path = os.path.join(folder, file_name)
  columns = ["path", "record", "reason"]
  # whole or not at all, and a file named '=1+2.png' is no formula in a spreadsheet
  with outputs.atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = outputs.csv_writer(f, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([row[c] for c in columns] for row in result.rows(indices))
  return path


def _one_line(error: BaseException) -> str:
  """An exception as one line, without the advice after '; ' (the check gives its own)."""
  text = " ".join(str(error).split()).split("; ")[0]
  if not isinstance(error, (ValueError, FileNotFoundError)):
    text = f"{type(error).__name__}: {text}"
  return text or type(error).__name__


def _default_threads() -> int:
  return int(os.environ.get("MDX_CHECK_THREADS", 0)) or min(16, 2 * (os.cpu_count() or 1))


def _progress(total: int, desc: str, enabled: bool):
  from tqdm import tqdm

  return tqdm(total=total, unit="record", desc=desc, file=sys.stderr, disable=not enabled)


def _all_stats(files: list[tuple[str, ...]], threads: int) -> list[tuple | None]:
  """_stats of every record's files, read in parallel (a warm run reads every file's ends)."""
  if len(files) < 64:
    return [_stats(fs) for fs in files]
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    return list(pool.map(_stats, files, chunksize=32))


def _stats(files) -> tuple | None:
  """(fingerprint per file), or None when one is missing or unreadable (never cached)."""
  try:
    return tuple(file_fingerprint(f) for f in files)
  except OSError:
    return None


def file_fingerprint(path: str) -> tuple[int, int, int, int, str]:
  """(size, mtime_ns, ctime_ns, inode, sha256 of the first and last HASHED bytes) of a file: what a
  rewrite cannot keep. The modification time can be set back (touch -r, cp -p, rsync -t); the
  status-change time cannot, and moves on every write; the content hash catches a rewrite where
  the file system keeps no usable ctime, except in the middle of a large file."""
  with open(path, "rb") as f:
    st = os.fstat(f.fileno())
    h = hashlib.sha256(f.read(HASHED))
    if st.st_size > HASHED:
      f.seek(max(HASHED, st.st_size - HASHED))
      h.update(f.read(HASHED))
  return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, h.hexdigest()[:32])


def _prepared_path(source, index: int) -> str:
  return f"{getattr(source, 'path', 'prepared records')} record {index}"


def context(source) -> str:
  """What else decides a record's result besides its files (the decoding settings; for prepared
  records the stored files' fingerprint)."""
  parts = [type(source).__name__]
  for attr in ("channels", "num_channels", "class_names", "label_mode"):
    parts.append(f"{attr}={getattr(source, attr, None)}")
  if hasattr(source, "fingerprint"):
    parts.append(source.fingerprint())
  return ";".join(parts)


def cache_folder(cache_dir: str | None) -> str:
  if cache_dir is not None:
    return cache_dir
  return os.environ.get(
    "MDX_CHECK_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mdx", "checks")
  )


class _Cache:
  """Results of one record set: a JSON file holding a header line {'root', 'context'} and a line
  {record key: [[size, mtime_ns, ctime_ns, inode, sha256 of the ends] per file, status, reason]}.
  Keys are the record's files relative to the common folder of all files (or 'record <i>' for
  prepared records, whose context holds the files' fingerprint)."""

  def __init__(self, file: str, root: str, context: str):
    self.file, self.root, self.context = file, root, context
    self.entries: dict[str, list] = {}
    self.changed = False
    try:
      with open(file) as f:
        f.readline()
        self.entries = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
      self.entries = {}  # none yet, or damaged: checked again

  @classmethod
  def open(cls, cache_dir: str | None, context: str, all_files: list[str]) -> _Cache | None:
    folder = cache_folder(cache_dir)
    if not folder:
      return None
    folders = {os.path.dirname(os.path.abspath(f)) for f in all_files}
    root = os.path.commonpath(sorted(folders)) if folders else ""
    digest = hashlib.sha1(f"{CHECK_VERSION}\0{root}\0{context}".encode()).hexdigest()[:20]
    return cls(os.path.join(folder, f"{digest}.json"), root, context)

  def key(self, files, index: int) -> str:
    if not files:
      return f"record {index}"
    cut = len(self.root.rstrip(os.sep)) + 1
    return "\0".join(os.path.abspath(f)[cut:] for f in files)

  def get(self, key: str, stats) -> tuple[str, str] | None:
    entry = self.entries.get(key)
    if entry is None or stats is None or [list(s) for s in stats] != entry[0]:
      return None
    return entry[1], entry[2]

  def put(self, key: str, stats, status: str, reason: str) -> None:
    self.entries[key] = [[list(s) for s in stats], status, reason]
    self.changed = True

  def save(self) -> None:
    if not self.changed:
      return
    try:
      os.makedirs(os.path.dirname(self.file), exist_ok=True)
      _prune(os.path.dirname(self.file), keep=self.file)
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.file), suffix=".tmp")
      with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"root": self.root, "context": self.context}) + "\n")
        f.write(json.dumps(self.entries) + "\n")
      os.replace(tmp, self.file)  # atomic: a concurrent run reads the old or the new file
    except OSError as e:  # a read-only home must not stop training; the next run checks again
      logging.warning("could not write the record-check cache %s (%s)", self.file, e)


def _prune(folder: str, keep: str, min_age_s: float = 3600.0) -> None:
  """Removes cache files whose data folder no longer exists (temporary datasets, tests), reading
  only their header line; files younger than min_age_s are left to runs that may be using them."""
  now = time.time()
  for entry in os.scandir(folder):
    if not entry.name.endswith(".json") or entry.path == keep:
      continue
    try:
      if now - entry.stat().st_mtime < min_age_s:
        continue
      with open(entry.path) as f:
        root = json.loads(f.readline()).get("root", "")
      if root and not os.path.exists(root):
        os.remove(entry.path)
    except (OSError, ValueError):
      continue


def check_configured(source, data_config, workdir: str | None = None, progress: bool = True):
  """check_source with config.data's on_error and the source's name (what the tasks call)."""
  from mdx.data.image.file_source import config_get

  return check_source(
    source,
    str(getattr(source, "name", None) or data_config.source),
    on_error=config_get(data_config, "on_error", "raise"),
    workdir=workdir,
    progress=progress,
  )
