"""Predict on files with nothing but a bundle: images -> predictions.csv, scans -> label NIfTIs.

A trained model leaves its run as a bundle (mdx.inference.bundle); this applies it to new studies
without the training data, the config or the checkpoints. The input is one file, a folder (searched
recursively, sorted, hidden files skipped) or a CSV list (a .csv whose column 'path', or else its
first column, names the files; relative paths are resolved against the CSV's folder).

Every input ends up in exactly one place, so nothing is dropped silently: a row of predictions.csv,
a row of errors.csv (unreadable or damaged file, wrong channels, a listed file that is missing or of
the wrong type), or the count of ignored files (files of other types found in a folder).

OUTPUT/predictions.csv  classifier: path, <finding> (calibrated probability), <finding> raw (the
                        model's sigmoid score), <finding> call (1/0 at the bundle's threshold, blank
                        where it has none); 6 decimals, rows in input order.
                        segmenter: path, output (the label map, relative to OUTPUT), <class> voxels
OUTPUT/errors.csv       path, reason; always written (header only when nothing failed)
OUTPUT/gradcam/         classifier with gradcam=[findings]: <path>__<finding>.png overlays
OUTPUT/<path>           segmenter: uint8 label values [D, H, W] with the input's affine

The 'path' column is relative to the input folder (a single file: its name; a CSV list: the path
as listed). Images are decoded in chunks of the batch size on a thread pool, one chunk ahead of the
model, so memory holds two chunks and decoding overlaps the forward pass.

Several processes (mdx.local, a TPU pod) split the files: each predicts a contiguous block of them
(runtime.process_share) on its own devices (runtime.local_mesh, no collectives while predicting)
and writes its label maps and Grad-CAM overlays itself (every file has one writer). Their rows and
errors are gathered in input order and process 0 writes predictions.csv and errors.csv, the rows
one process would write. Label maps and overlays land in OUTPUT as each host sees it: give several
hosts a shared output folder.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from mdx import runtime
from mdx.data.cxr import images
from mdx.data.volume import nifti
from mdx.evaluate import gradcam as gradcam_lib
from mdx.inference import bundle as bundle_lib
from mdx.inference import predict as predict_lib
from mdx.inference.classifier import ImageClassifier
from mdx.inference.segmenter import VolumeSegmenter, label_volume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
SCAN_SUFFIXES = nifti.NIFTI_SUFFIXES
PREDICTIONS = "predictions.csv"
ERRORS = "errors.csv"
GRADCAM = "gradcam"


@dataclasses.dataclass
class Inputs:
  """The files to predict, in input order, and what could not even be tried."""

  root: str  # the folder relative paths start from
  files: list[tuple[int, str, str]]  # (input index, name for the path column, absolute path)
  # (input index, name, reason): rows of a CSV list that name no usable file
  errors: list[tuple[int, str, str]]
  ignored: int  # folder files of other types


def _suffixes(task: str) -> tuple[str, ...]:
  return SCAN_SUFFIXES if task == "segmentation" else IMAGE_SUFFIXES


def _kind(task: str) -> str:
  return "NIfTI scan" if task == "segmentation" else "image"


def _a(task: str) -> str:
  return "a NIfTI scan" if task == "segmentation" else "an image"


def _accepts(path: str, task: str) -> bool:
  """A file this task reads: by suffix, or (classifier) a DICOM file without the usual suffix."""
  if os.path.basename(path).lower().endswith(_suffixes(task)):
    return True
  return task == "classification" and images.has_dicom_preamble(path)


def _posix(path: str) -> str:
  return path.replace(os.sep, "/")


def list_inputs(input_path: str, task: str, exclude: Sequence[str] = ()) -> Inputs:
  """The files of a file, folder or CSV list that a `task` bundle reads (see the module docstring).

  exclude: absolute folders not to descend into (the output folder inside the input folder).
  Raises FileNotFoundError / ValueError (one line naming the path) when there is nothing to do.
  """
  path = os.path.abspath(os.path.expanduser(input_path))
  suffixes = " ".join(_suffixes(task))
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"input {path} does not exist; pass {_a(task)} file ({suffixes}), a folder of them, "
      "or a .csv list of files with a 'path' column"
    )
  if os.path.isdir(path):
    return _list_folder(path, task, exclude)
  if path.lower().endswith(".csv"):
    return _list_csv(path, task)
  if not _accepts(path, task):
    raise ValueError(
      f"input {path} is neither {_a(task)} file ({suffixes}) nor a .csv list; this "
      f"{task} bundle reads {suffixes}"
    )
  return Inputs(os.path.dirname(path), [(0, os.path.basename(path), path)], [], 0)


def _list_folder(root: str, task: str, exclude: Sequence[str]) -> Inputs:
  skip = {os.path.abspath(e) for e in exclude}
  found, ignored = [], 0
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [
      d for d in dirnames if not d.startswith(".") and os.path.join(dirpath, d) not in skip
    ]
    for name in filenames:
      if name.startswith("."):
        continue
      full = os.path.join(dirpath, name)
      if _accepts(full, task):
        found.append((_posix(os.path.relpath(full, root)), full))
      else:
        ignored += 1
  found.sort()
  if not found:
    raise ValueError(
      f"input folder {root} holds no {' '.join(_suffixes(task))} files ({ignored} files of "
      f"other types); pass the folder (or a CSV list) of the {_kind(task)}s this {task} "
      "bundle reads"
    )
  return Inputs(root, [(i, rel, full) for i, (rel, full) in enumerate(found)], [], ignored)


def _list_csv(csv_path: str, task: str) -> Inputs:
  folder = os.path.dirname(csv_path)
  try:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
  except (UnicodeDecodeError, csv.Error) as e:
    raise ValueError(
      f"input list {csv_path} is not a readable CSV ({e}); save it as UTF-8 CSV"
    ) from None
  if not rows:
    raise ValueError(f"input list {csv_path} is empty; list the files in a column 'path'")
  header = [h.strip() for h in rows[0][1]]
  if "path" in header:
    column, rows = header.index("path"), rows[1:]
  elif header[0].lower().endswith(_suffixes(task)):
    column = 0  # no header row: the first line already names a file
  else:
    column, rows = 0, rows[1:]
  files, errors = [], []
  suffixes = " ".join(_suffixes(task))
  for index, (line, row) in enumerate(rows):
    listed = row[column].strip() if column < len(row) else ""
    full = os.path.normpath(os.path.join(folder, os.path.expanduser(listed)))
    if not listed:
      errors.append((index, listed, f"line {line}: empty path"))
    elif not os.path.exists(full):
      errors.append(
        (index, listed, f"line {line}: {full} does not exist (relative paths start at {folder})")
      )
    elif os.path.isdir(full):
      errors.append((index, listed, f"line {line}: {full} is a folder, not a file"))
    elif not _accepts(full, task):
      errors.append(
        (index, listed, f"line {line}: not {_a(task)} file; this bundle reads {suffixes}")
      )
    else:
      files.append((index, listed, full))
  if not files:
    first = f"; first: {errors[0][2]}" if errors else ""
    raise ValueError(
      f"input list {csv_path} names no usable {_kind(task)} file ({len(errors)} rows{first}); "
      "fix the paths (relative paths are resolved against the CSV's folder)"
    )
  return Inputs(folder, files, errors, 0)


def _output_name(name: str) -> str:
  """A path-column name -> a relative path inside OUTPUT (absolute and '..' paths stay inside)."""
  parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]
  return os.path.join(*["_up_" if p == ".." else p for p in parts])


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _reason(error: BaseException) -> str:
  """One line for errors.csv (the path column already names the file)."""
  cause = error.__cause__
  if isinstance(error, FileNotFoundError):
    text = "the file does not exist (removed while predicting?)"
  elif cause is not None:
    text = f"cannot decode: {type(cause).__name__}: {cause}"
  else:
    text = f"{type(error).__name__}: {error}" if not isinstance(error, ValueError) else str(error)
  text = " ".join(text.split())
  return text if len(text) <= 400 else text[:397] + "..."


def _read_ahead(read: Callable[[str], Any], chunks, workers: int):
  """predict.read_ahead over (index, name, path) items: failures become errors.csv reasons."""
  for chunk, results in predict_lib.read_ahead(lambda item: read(item[2]), chunks, workers):
    yield chunk, [(v, None if e is None else _reason(e)) for v, e in results]


def _make_output(out: str) -> str:
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ValueError(
      f"cannot create output folder {out} ({e.strerror}); pass a writable folder"
    ) from None
  return out


def _fmt(v: float) -> str:
  return "" if not np.isfinite(v) else f"{v:.6f}"


def predict(
  bundle: str | os.PathLike | bundle_lib.Bundle,
  input_path: str,
  output_dir: str,
  *,
  batch_size: int | None = None,
  gradcam: Sequence[str] = (),
  gradcam_layer: str | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Applies a bundle (a folder or a loaded Bundle) to input_path and writes output_dir.

  See the module docstring for what is read and written. batch_size: images per forward pass
  (classifier) or windows per pass (segmenter) on each process; default the bundle's / 8 per
  device. gradcam: findings to draw Grad-CAM overlays for (classifier); gradcam_layer: the layer
  (default the model's). Returns {'predicted', 'errors', 'ignored', 'output', 'predictions',
  'errors_csv'}, counting every process's files (each process returns the same). Usage mistakes
  (no input, nothing usable, output is a file, unknown finding) raise ValueError or
  FileNotFoundError with one line naming the path and the fix, on every process, before anything
  is written.
  """
  if not isinstance(bundle, bundle_lib.Bundle):
    bundle = bundle_lib.load(os.fspath(bundle))
  if batch_size is not None and int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size}; pass a positive number (or none for the default)")
  gradcam = list(dict.fromkeys(g.strip() for g in gradcam if g.strip()))
  if gradcam and bundle.task != "classification":
    raise ValueError(
      f"Grad-CAM is for image classifiers; bundle {bundle.path} is a {bundle.task} model "
      "(drop --gradcam)"
    )
  if gradcam_layer and not gradcam:
    raise ValueError(
      f"gradcam_layer={gradcam_layer!r} without Grad-CAM findings; name them (--gradcam=A,B)"
    )
  if gradcam:
    findings = list(bundle.spec["output"]["findings"])
    unknown = [g for g in gradcam if g not in findings]
    if unknown:
      raise ValueError(
        f"Grad-CAM findings {unknown} are not outputs of bundle {bundle.path}; its findings are "
        f"{findings}"
      )
  out = os.path.abspath(os.path.expanduser(output_dir))
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"output {out} is an existing file; pass a folder (it is created if missing)")
  root = os.path.abspath(os.path.expanduser(input_path))
  # Our own outputs inside the input folder must not become inputs of a second run.
  exclude = [os.path.join(out, GRADCAM)] if out == root else [out]
  inputs = list_inputs(input_path, bundle.task, exclude)
  if bundle.task == "segmentation":
    for _, name, full in inputs.files:
      if os.path.join(out, _output_name(name)) == full:
        raise ValueError(
          f"output {out} would overwrite the input scan {full} with its label map; choose an "
          "output folder other than the input folder"
        )
  # The model is built (and a Grad-CAM layer checked) before anything is written.
  if bundle.task == "classification":
    runner = _Images(bundle, batch_size, gradcam, gradcam_layer)
  else:
    runner = _Scans(bundle, batch_size)
  out = _make_output(out)
  predictions_csv, errors_csv = os.path.join(out, PREDICTIONS), os.path.join(out, ERRORS)
  first, multi = jax.process_index() == 0, jax.process_count() > 1
  share = [inputs.files[i] for i in runtime.process_share(len(inputs.files))]
  errors = []  # (input index, name, reason) of this process's files
  # One process streams its rows into predictions.csv. Several each keep the rows of their block
  # (a contiguous run of the input order) and process 0 writes them all, in process order: the
  # rows travel by collectives, so the CSVs need no file system that every host shares.
  sink = io.StringIO() if multi else open(predictions_csv, "w", newline="")
  with sink:
    writer = csv.writer(sink)
    if first:
      writer.writerow(runner.header)
    desc = f"predict (process 0: {len(share)} of {len(inputs.files)})" if multi else "predict"
    with _bar(len(share), runner.unit, progress and first, desc) as bar:
      predicted = runner.run(share, out, writer, errors, bar)
    if multi:  # every process learns the totals; process 0 writes the rows
      predicted = int(runtime.gather_rows(np.array([predicted])).sum())
      errors = _from_csv(_gather_text(_to_csv(errors)))
      rows = _gather_text(sink.getvalue())
      if first:
        with open(predictions_csv, "w", newline="") as f:
          f.write(rows)
  errors = sorted(inputs.errors + errors)
  if first:
    with open(errors_csv, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["path", "reason"])
      writer.writerows([name, reason] for _, name, reason in errors)
    logging.info(
      "predicted %d %ss, %d errors (see %s), %d files of other types ignored",
      predicted,
      runner.unit,
      len(errors),
      errors_csv,
      inputs.ignored,
    )
  runtime.barrier("mdx.predict_files")  # every process returns with the CSVs written
  return {
    "predicted": predicted,
    "errors": len(errors),
    "ignored": inputs.ignored,
    "output": out,
    "predictions": predictions_csv,
    "errors_csv": errors_csv,
  }


def _bar(total: int, unit: str, progress: bool, desc: str):
  from tqdm import tqdm

  return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=not progress)


def _gather_text(text: str) -> str:
  """Every process's text, concatenated in process order (on every process)."""
  data = np.frombuffer(text.encode("utf-8"), np.uint8)
  return runtime.gather_rows(data).tobytes().decode("utf-8")


def _to_csv(errors: Sequence[tuple[int, str, str]]) -> str:
  buffer = io.StringIO()
  csv.writer(buffer).writerows(errors)
  return buffer.getvalue()


def _from_csv(text: str) -> list[tuple[int, str, str]]:
  return [(int(i), name, reason) for i, name, reason in csv.reader(io.StringIO(text, newline=""))]


class _Images:
  """A classifier over image files: decoded a chunk ahead on threads, predicted batch by batch."""

  unit = "image"

  def __init__(self, bundle, batch_size, gradcam: Sequence[str], layer: str | None):
    self.classifier = ImageClassifier(bundle, batch_size)
    self.findings = list(self.classifier.findings)
    self.header = ["path", *self.findings]
    self.header += [f"{f} raw" for f in self.findings] + [f"{f} call" for f in self.findings]
    self.gradcam, self.layer = list(gradcam), layer
    if self.gradcam:
      self.model = bundle.model()  # no mesh axis: Grad-CAM runs outside shard_map
      self.variables = jax.device_put(bundle.variables)
      size = int(self.classifier.input["image_size"])
      shape = (1, size, size, int(self.classifier.input["channels"]))
      # a wrong layer name is a usage error: raise it now, before any file is decoded
      gradcam_lib.resolve_layer(self.model, self.variables, np.zeros(shape, np.float32), layer)

  def run(self, files, out, writer, errors, bar) -> int:
    c, size = self.classifier, self.classifier.batch_size
    chunks = [files[i : i + size] for i in range(0, len(files), size)]
    predicted = 0
    for chunk, results in _read_ahead(c.read, chunks, min(8, os.cpu_count() or 1)):
      ok = [item for item, (_, reason) in zip(chunk, results) if reason is None]
      errors.extend((i, name, r) for (i, name, _), (_, r) in zip(chunk, results) if r is not None)
      if ok:
        x = np.stack([x for x, reason in results if reason is None])
        raw = c.predict(x)
        probs, calls = c.calibrate(raw), c.call(raw)
        for j, (_, name, _) in enumerate(ok):
          writer.writerow(
            [
              name,
              *(_fmt(v) for v in probs[j]),
              *(_fmt(v) for v in raw[j]),
              *("" if np.isnan(v) else str(int(v)) for v in calls[j]),
            ]
          )
        self._gradcam(x, probs, [name for _, name, _ in ok], out)
        predicted += len(ok)
      bar.update(len(chunk))
    return predicted

  def _gradcam(self, x, probs, names, out) -> None:
    if not self.gradcam:
      return
    # full batches: every call has one shape, so a compilation cache can serve repeats
    padded = np.zeros((self.classifier.batch_size, *x.shape[1:]), np.float32)
    padded[: len(x)] = x
    for finding in self.gradcam:
      k = self.findings.index(finding)
      heat = gradcam_lib.grad_cam(self.model, self.variables, padded, k, self.layer)
      for j, name in enumerate(names):
        path = os.path.join(out, GRADCAM, f"{_output_name(name)}__{_safe(finding)}.png")
        title = f"{name}\n{finding}: p={probs[j, k]:.2f}"
        gradcam_lib.overlay_png(x[j], heat[j], path, title=title)


class _Scans:
  """A segmenter over NIfTI scans: the next scan is read while this one is segmented."""

  unit = "scan"

  def __init__(self, bundle, batch_size):
    self.segmenter = VolumeSegmenter(bundle, batch_size)
    self.channels = int(bundle.spec["input"]["channels"])
    self.output = bundle.spec["output"]
    self.names = list(self.output["class_names"])
    self.header = ["path", "output", *(f"{n} voxels" for n in self.names)]

  def read(self, path: str):
    volume = nifti.load_nifti(path, np.float32)
    image = volume.data if volume.data.ndim == 4 else volume.data[..., None]
    if image.shape[-1] != self.channels:
      raise ValueError(
        f"the scan has {image.shape[-1]} channels {image.shape}; this model reads "
        f"{self.channels} (the bundle's input.channels)"
      )
    return image, volume.affine

  def run(self, files, out, writer, errors, bar) -> int:
    predicted = 0
    # one scan ahead: a whole scan is large, and the model is the slow part
    for chunk, results in _read_ahead(self.read, [[f] for f in files], 1):
      (index, name, _), (value, reason) = chunk[0], results[0]
      if reason is not None:
        errors.append((index, name, reason))
      else:
        image, affine = value
        pred = self.segmenter.predict(image)
        labels = label_volume(pred, self.output["label_mode"], self.output["label_values"])
        rel = _output_name(name)
        nifti.save_nifti(os.path.join(out, rel), labels, affine)
        if pred.ndim == 4:  # regions [D, H, W, R]
          voxels = pred.reshape(-1, pred.shape[-1]).sum(0)
        else:
          voxels = np.bincount(pred.ravel(), minlength=len(self.names))
        writer.writerow([name, _posix(rel), *(int(v) for v in voxels[: len(self.names)])])
        predicted += 1
      bar.update(1)
    return predicted
