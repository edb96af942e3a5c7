"""TFDS builders that store a source's images, resized, as ArrayRecord files (no TensorFlow).

Training then reads small fixed-size records by index instead of decoding 1024 px PNGs or DICOMs:
any real source with config.data.prepared_dir set reads them back (sources.make_source ->
load_prepared), preparing them there on first use (with one log line) when they are missing;
`python -m mdx prepare --config=experiments/X.py` (./launch.sh prepare) does it ahead.
Experiments put them in the per-user cache (file_source.records_dir: ~/.cache/mdx/records, or
MDX_RECORDS).
The dependency runs one way: mdx.data.sources imports this module and passes each call the
function that builds the raw source (`build`), so this module never imports the registry.

One builder per preparable source (BUILDERS: NIH, CheXpert, class folders, expert labels and the
chest X-ray datasets of issue 25). The index also keeps the source's per-record metadata (extra)
whose values are text or numbers, e.g. MIMIC's official split; per-record lists (boxes, mask
files) stay with the raw files. The raw files are
the builder's manual_dir input; the builder config name is '<size>px-<hash>', the hash covering
every config.data field that changes the records, so a changed label policy or resolution never
reuses stale records. All records go into one split, 'records': mdx splits by patient itself.
Records are written in the source's order (shuffling disabled) and an index (labels, patients,
image ids) is saved next to them so splits and class weights never decode an image.

The index is what makes records complete, so it must appear with them: TFDS builds into a scratch
folder beside them (<config>/.incomplete-*), the index is saved there too, and only then is the
version folder renamed to <config>/<version>. A killed preparation leaves nothing that looks
complete (the next one removes its leftover); TFDS's own rename alone would leave records without
an index after a kill between the two. Preparation holds a file lock (<config>/.prepare.lock):
of several processes (of one run, or of runs started together) one prepares and the others wait and
then read its records. A lock, not a barrier: the default folder is on each host's own disk, so
every host of a pod prepares its own copy, while on a shared disk the lock lets only one of them
write.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mdx.data import check
from mdx.data.image import file_source
from mdx.data.image import images as images_lib

# config.data fields that change what is stored.
RECORD_FIELDS = (
  "source",
  "metadata",
  "images",
  "root",
  "findings",
  "view_positions",
  "uncertain",
  "blank",
  "frontal_only",
  "classes",
  "negative_class",
  "patient_regex",
  "set",
  "channels",
  "image_size",
  "bit_depth",
  "extensions",
  # the chest X-ray sources of issue 25 (mdx.data.sources._CXR_SOURCES)
  "labeler",
  "views",
  "unknown_terms",
  "readers",
  "extension",
  "boxes",
  "headers",
  "read_headers",
  "patients",
  "patient_id",
  "list",
  "annotations",
  "masks",
  "reports",
  "view_table",
)
INDEX_FILE = "mdx_index.npz"
LOCK_FILE = ".prepare.lock"
INCOMPLETE = ".incomplete-"  # prefix of a preparation in progress (or killed)


def _plain(value):
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in sorted(value.items())}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def config_name(data_config) -> str:
  fields = {f: _plain(file_source.config_get(data_config, f)) for f in RECORD_FIELDS}
  for f in ("metadata", "images", "root"):  # the same files however the path is spelled
    if fields[f]:
      fields[f] = os.path.realpath(fields[f])
  digest = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
  return f"{int(file_source.require(data_config, 'image_size', fields['source']))}px-{digest}"


class _Prepared(tfds.core.GeneratorBasedBuilder):
  """Resized images + labels + ids of one mdx source."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Images resized at prepare time; labels float32 with nan = unknown.",
    # records prepared before carry no per-record metadata: a new version prepares them again
    "1.1.0": "The index keeps each record's metadata (study, view, sex, age, official split).",
  }
  SOURCE = ""
  # No checksums or metadata files ship with mdx (the data is the user's manual_dir); a plain None
  # also stops TFDS from resolving the package as a resource path, which fails under some importers.
  code_path = None

  def __init__(self, *, data_config, build, seed: int = 0, **kwargs):
    self._data_config = data_config
    self._seed = seed
    self._make = build  # (config.data, seed) -> the raw source (mdx.data.sources passes it)
    self._size = int(file_source.require(data_config, "image_size", self.SOURCE))
    self._channels = int(file_source.config_get(data_config, "channels", 1))
    self._dtype = (
      np.uint16 if int(file_source.config_get(data_config, "bit_depth", 8)) == 16 else np.uint8
    )
    self._source = None
    self.written: dict[str, list] = {"labels": [], "patient_ids": [], "image_ids": []}
    self.written_index: list[int] = []  # the source's index of each written record
    self.skipped_files: list[str] = []
    kwargs.setdefault("config", tfds.core.BuilderConfig(name=config_name(data_config)))
    super().__init__(**kwargs)

  def source(self):
    if self._source is None:
      self._source = self._make(self._data_config, self._seed)
    return self._source

  def _info(self) -> tfds.core.DatasetInfo:
    # The number of findings is known only from the source; read it lazily (cheap, no images).
    num = len(self.source().findings)
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"mdx source {self.SOURCE!r} resized to {self._size}px",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(
            shape=(self._size, self._size, self._channels), dtype=self._dtype
          ),
          "labels": tfds.features.Tensor(shape=(num,), dtype=np.float32),
          "patient_id": tfds.features.Text(),
          "image_id": tfds.features.Text(),
        }
      ),
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(findings=list(self.source().findings)),
    )

  def _split_generators(self, dl_manager):
    return {"records": self._generate_examples()}

  def _generate_examples(self):
    source = self.source()
    on_error = file_source.config_get(self._data_config, "on_error", "raise")
    for i in range(len(source)):
      try:
        record = source[i]
      except (ValueError, FileNotFoundError) as e:
        if on_error != "skip":
          raise
        self.skipped_files.append(str(e).split(";")[0])
        continue
      image = record["image"]
      if image.dtype == np.uint16 and self._dtype == np.uint8:
        image = (image >> 8).astype(np.uint8)
      elif image.dtype == np.uint8 and self._dtype == np.uint16:
        image = image.astype(np.uint16) * 257
      image = images_lib.resize(image, self._size)
      for key in self.written:
        self.written[key].append(record["labels"] if key == "labels" else record[key[:-1]])
      self.written_index.append(i)
      yield (
        i,
        {
          "image": image,
          "labels": record["labels"].astype(np.float32),
          "patient_id": str(record["patient_id"]),
          "image_id": str(record["image_id"]),
        },
      )


class NihChestXray14(_Prepared):
  """NIH ChestX-ray14 (manual_dir: the folder of images or images_001..012)."""

  SOURCE = "nih"


class Chexpert(_Prepared):
  """CheXpert (manual_dir: the folder that train.csv's paths are relative to)."""

  SOURCE = "chexpert"


class ClassFolders(_Prepared):
  """A folder-per-class dataset (manual_dir: the folder of class folders)."""

  SOURCE = "folders"


class NihExpertLabels(_Prepared):
  """NIH images with the Google adjudicated expert labels (manual_dir: the NIH image folder)."""

  SOURCE = "nih_expert"


class MimicCxr(_Prepared):
  """MIMIC-CXR-JPG (manual_dir: the folder of the tables and files/)."""

  SOURCE = "mimic"


class Padchest(_Prepared):
  """PadChest (manual_dir: the dataset folder)."""

  SOURCE = "padchest"


class VindrCxr(_Prepared):
  """VinDr-CXR (manual_dir: the folder of its DICOMs)."""

  SOURCE = "vindr"


class RsnaPneumonia(_Prepared):
  """RSNA Pneumonia Detection, stage 2 (manual_dir: stage_2_train_images/)."""

  SOURCE = "rsna"


class SiimPneumothorax(_Prepared):
  """SIIM-ACR Pneumothorax (manual_dir: dicom-images-train/)."""

  SOURCE = "siim"


class NlmTuberculosis(_Prepared):
  """NLM Montgomery or Shenzhen (manual_dir: the folder holding the set)."""

  SOURCE = "nlm"


class Tbx11k(_Prepared):
  """TBX11K (manual_dir: the folder holding imgs/)."""

  SOURCE = "tbx11k"


class OpenI(_Prepared):
  """OpenI, Indiana University (manual_dir: the folder holding ecgen-radiology/ and the PNGs)."""

  SOURCE = "openi"


BUILDERS = {
  b.SOURCE: b
  for b in (
    NihChestXray14,
    Chexpert,
    ClassFolders,
    NihExpertLabels,
    MimicCxr,
    Padchest,
    VindrCxr,
    RsnaPneumonia,
    SiimPneumothorax,
    NlmTuberculosis,
    Tbx11k,
    OpenI,
  )
}
# Prepared records keep the source's per-record metadata (source.extra) whose values are text or
# numbers (MIMIC's official_split, views, sex, age), saved in the index as EXTRA_PREFIX + key;
# per-record lists (boxes, mask files) are not kept.
EXTRA_PREFIX = "extra."


def _stored_extra(source, written_index: list[int]) -> dict[str, np.ndarray]:
  out = {}
  for key, values in getattr(source, "extra", {}).items():
    values = np.asarray(values)
    if values.ndim == 1 and values.dtype.kind in "UbifS":
      out[EXTRA_PREFIX + key] = values[np.asarray(written_index, np.int64)]
  return out


def builder_for(data_config, build, seed: int = 0, data_dir: str | None = None) -> _Prepared:
  """The builder of config.data, writing under data_dir (default config.data.prepared_dir);
  build: (config.data, seed) -> the raw source whose images it stores."""
  name = file_source.require(data_config, "source", "?")
  if name not in BUILDERS:
    raise ValueError(
      f"no TFDS builder for config.data.source={name!r}; choose one of {sorted(BUILDERS)}"
    )
  data_dir = data_dir or file_source.require(data_config, "prepared_dir", name)
  return BUILDERS[name](
    data_config=data_config, build=build, seed=seed, data_dir=data_dir, file_format="array_record"
  )


def prepared_path(data_config) -> str:
  """Where the records of config.data live: prepared_dir/<builder>/<size>px-<hash>/<version>."""
  name = file_source.require(data_config, "source", "?")
  if name not in BUILDERS:
    raise ValueError(
      f"no TFDS builder for config.data.source={name!r}; choose one of {sorted(BUILDERS)}"
    )
  return os.path.join(
    file_source.require(data_config, "prepared_dir", name),
    BUILDERS[name].name,
    config_name(data_config),
    str(_Prepared.VERSION),
  )


def prepare(data_config, build, seed: int = 0, first_use: bool = False) -> dict[str, Any]:
  """Builds the records and their index unless they exist -> {'dir', 'records', 'skipped',
  'built'} ('skipped': unreadable images left out under on_error='skip'; 'built': False when they
  existed). build: (config.data, seed) -> the raw source (mdx.data.sources.prepare passes its
  registry's, so this module never imports the registry). first_use: called by a run that needs
  them (the log line says so)."""
  path = prepared_path(data_config)
  folder = os.path.dirname(path)
  with _locked(folder, path) as locked:
    if os.path.exists(os.path.join(path, INDEX_FILE)):
      logging.info("records already prepared in %s", path)
      return {"dir": path, "records": _count(path), "skipped": 0, "built": False}
    if locked:  # else another process may be writing its scratch folder right now
      _remove_incomplete(folder, path)
    logging.info(
      "preparing records of %s at %s px into %s%s",
      file_source.config_get(data_config, "source"),
      file_source.config_get(data_config, "image_size"),
      path,
      " (once; ./launch.sh prepare does it ahead)" if first_use else "",
    )
    start = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix=INCOMPLETE, dir=folder)
    try:
      result = _build(data_config, build, seed, scratch, path)
    finally:
      shutil.rmtree(scratch, ignore_errors=True)
  # TFDS's own last line names the scratch folder: this one says where they are now
  logging.info(
    "prepared %d records in %s in %.1f s", result["records"], path, time.perf_counter() - start
  )
  examples = result.pop("examples")
  if result["skipped"]:
    logging.warning(
      "prepare skipped %d unreadable images (on_error='skip'), e.g. %s", result["skipped"], examples
    )
  return result


def _build(data_config, build, seed: int, scratch: str, path: str) -> dict[str, Any]:
  """Records and index written under scratch, then renamed to path (complete, or not there)."""
  builder = builder_for(data_config, build, seed, data_dir=scratch)
  manual = file_source.config_get(data_config, "images") or file_source.config_get(
    data_config, "root"
  )
  built = os.path.join(scratch, builder.name, builder.builder_config.name, str(builder.version))
  if os.path.abspath(builder.data_dir) != os.path.abspath(built):
    raise RuntimeError(f"TFDS writes to {builder.data_dir}, expected {built}")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  w = builder.written
  if not w["image_ids"]:
    raise ValueError(f"prepare wrote no records for {data_config.source}; every image failed")
  np.savez(
    os.path.join(built, INDEX_FILE),
    labels=np.asarray(w["labels"], np.float32),
    patient_ids=np.asarray(w["patient_ids"]),
    image_ids=np.asarray(w["image_ids"]),
    findings=np.asarray(builder.source().findings),
    **_stored_extra(builder.source(), builder.written_index),
  )
  try:
    os.rename(built, path)  # the one step that makes them complete
  except OSError:
    if not os.path.exists(os.path.join(path, INDEX_FILE)):
      raise
    logging.info("another process prepared %s first (no file lock here); using those", path)
  return {
    "dir": path,
    "records": len(w["image_ids"]),
    "skipped": len(builder.skipped_files),
    "built": True,
    "examples": builder.skipped_files[:3],
  }


def _count(path: str) -> int:
  with np.load(os.path.join(path, INDEX_FILE)) as z:
    return len(z["image_ids"])


@contextlib.contextmanager
def _locked(folder: str, path: str):
  """Holds folder/.prepare.lock (released by the kernel if the holder dies); yields whether it
  could be taken."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, LOCK_FILE), "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info("waiting for another process that prepares the records in %s", path)
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError as e:  # a filesystem without locks: preparing twice is slow, not wrong
      logging.warning("cannot lock %s (%s); preparing without a lock", f.name, e)
      yield False
      return
    yield True


def _remove_incomplete(folder: str, path: str) -> None:
  """Removes what a killed preparation left (the lock is held: nobody else is writing), and a
  record folder without its index (written by mdx before the index moved into the rename)."""
  for entry in os.scandir(folder):
    if entry.name.startswith(INCOMPLETE) and entry.is_dir():
      logging.warning("removing %s, left by a preparation that did not finish", entry.path)
      shutil.rmtree(entry.path, ignore_errors=True)
  if os.path.isdir(path):
    logging.warning(
      "removing %s: it has no %s, so its preparation did not finish", path, INDEX_FILE
    )
    shutil.rmtree(path)


class PreparedSource:
  """Random access to prepared records: images already resized (uint8/uint16 [S, S, C])."""

  def __init__(self, data_source, index: dict[str, np.ndarray], name: str, path: str = ""):
    self._ds = data_source
    self.findings = tuple(str(f) for f in index["findings"])
    self._labels = index["labels"].astype(np.float32)
    self._patients = index["patient_ids"].astype(str)
    self._image_ids = index["image_ids"].astype(str)
    self._stored = np.arange(len(self._image_ids))  # record i is stored record _stored[i]
    self.extra = {k[len(EXTRA_PREFIX) :]: v for k, v in index.items() if k.startswith(EXTRA_PREFIX)}
    self.name = name
    self.path = path
    if len(self._ds) != len(self._image_ids):
      raise ValueError(
        f"{name}: {len(self._ds)} records but {len(self._image_ids)} index rows; "
        f"delete {path} (the next run prepares it again)"
      )

  def __len__(self) -> int:
    return len(self._image_ids)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self._ds[int(self._stored[index])]
    image_id = ex["image_id"].decode() if isinstance(ex["image_id"], bytes) else str(ex["image_id"])
    if image_id != self._image_ids[index]:
      raise ValueError(
        f"{self.name}: record {index} is {image_id!r} but the index says "
        f"{self._image_ids[index]!r}; delete {self.path} (the next run prepares it again)"
      )
    return {
      "image": np.asarray(ex["image"]),
      "labels": np.asarray(ex["labels"], np.float32),
      "patient_id": self._patients[index],
      "image_id": image_id,
    }

  def labels(self) -> np.ndarray:
    return self._labels

  def patient_ids(self) -> np.ndarray:
    return self._patients

  def image_ids(self) -> np.ndarray:
    return self._image_ids

  # --- for mdx.data.check: stored records are read back as they are, not decoded again ---

  def record_files(self, index: int) -> tuple[str, ...]:
    return ()  # the records share their files: fingerprint() stands for them

  def record_name(self, index: int) -> str:
    return self._image_ids[index]

  def fingerprint(self) -> str:
    """The stored files' names and check.file_fingerprint (a rebuilt folder, or a file rewritten
    in place with its modification time kept, checks again)."""
    stats = []
    for folder, _, names in os.walk(self.path):
      for n in sorted(names):
        path = os.path.join(folder, n)
        stats.append((os.path.relpath(path, self.path), *check.file_fingerprint(path)))
    return (
      f"{os.path.abspath(self.path)}:"
      + hashlib.sha1(json.dumps(sorted(stats)).encode()).hexdigest()
    )

  def select(self, indices) -> PreparedSource:
    """The records at `indices`."""
    out = copy.copy(self)
    indices = np.asarray(indices, np.int64)
    out._stored = self._stored[indices]
    out._labels = self._labels[indices]
    out._patients = self._patients[indices]
    out._image_ids = self._image_ids[indices]
    out.extra = {k: v[indices] for k, v in self.extra.items()}
    return out


def load_prepared(data_config, build, seed: int = 0) -> PreparedSource:
  """The prepared records of config.data, prepared first (from build(config.data, seed), the raw
  source) if they are missing."""
  path = prepared_path(data_config)
  index_path = os.path.join(path, INDEX_FILE)
  if not os.path.exists(index_path):
    prepare(data_config, build, seed, first_use=True)
  with np.load(index_path) as z:
    index = {k: z[k] for k in z.files}
  # Read back from the folder alone: the raw files need not be present at training time.
  builder = tfds.builder_from_directory(path)
  return PreparedSource(
    builder.as_data_source(split="records"), index, f"prepared {data_config.source}", path
  )
