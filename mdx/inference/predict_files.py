"""Predict on files with nothing but a bundle: images -> predictions.csv, scans -> label NIfTIs.

A trained model leaves its run as a bundle (mdx.inference.bundle); this applies it to new studies
without the training data, the config or the checkpoints. The input is one file, a folder (searched
recursively, sorted, hidden files skipped) or a CSV list (a .csv whose column 'path', or else its
first column, names the files; relative paths are resolved against the CSV's folder).

Every input ends up in exactly one place, so nothing is dropped silently: a row of predictions.csv,
a row of errors.csv (unreadable or damaged file, wrong channels, a scan holding NaN or Inf, a listed
file that is missing or of the wrong type), or the count of ignored files (files of other types
found in a folder).

OUTPUT/predictions.csv  classifier: path, <finding> (calibrated probability), <finding> raw (the
                        model's sigmoid score), <finding> call (1/0 at the bundle's threshold, blank
                        where it has none), warning; 6 decimals, rows in input order.
                        segmenter: path, output (the label map, relative to OUTPUT), <class> voxels,
                        warning. 'warning' is blank unless the input is far below the model's input
                        size (an image under a quarter of image_size, a scan under a quarter of the
                        patch along an axis) or a scan has a constant channel: it was predicted, but
                        look at it.
OUTPUT/errors.csv       path, reason; always written (header only when nothing failed)
OUTPUT/gradcam/         classifier with gradcam=[findings]: <path>__<finding>.png overlays
OUTPUT/<path>           segmenter: uint8 label values [D, H, W] with the input's affine
OUTPUT/.mdx-outputs.json  what mdx wrote in OUTPUT, with digests (mdx.outputs)

Nothing a user owns is replaced (mdx.outputs.OutputFolder): before any file is read, predict
refuses, in one line, to write where a file exists that mdx did not write (a user's
predictions.csv, the ground-truth label maps of a labelsTr folder), unless overwrite. Files are
written into a hidden staging folder and moved into OUTPUT when every input is done, predictions.csv
last, so a run killed halfway leaves the previous complete result (or nothing) and the next run says
what it found. Text cells a spreadsheet would run as a formula (a file named '=1+2.png') are
neutralised (mdx.outputs.csv_writer). Files mdx wrote into OUTPUT are never inputs, even when
OUTPUT is inside the input folder.

The 'path' column is relative to the input folder (a single file: its name; a CSV list: the path
as listed). Images are decoded in chunks of the batch size on a thread pool, one chunk ahead of the
model, so memory holds two chunks and decoding overlaps the forward pass.

The network runs on the backend asked for (mdx.inference.engines): the bundle's StableHLO export
when it carries one for this platform (no tracing, no Orbax restore: the fast start-up), the Flax
model, or onnxruntime on its ONNX export; the preprocessing and everything written are the same, so
two backends' outputs compare file by file.

What a bundle reads and writes is its kind's (mdx.inference.bundle.BundleKind, looked up by the
spec's task): the file types, and a Predictor that builds the model and turns files into rows and
files of its own (mdx.inference.classifier.ImageFiles, mdx.inference.segmenter.ScanFiles). This
module lists the inputs, splits them between processes and writes the CSVs, for any kind.

Several processes (mdx local, a TPU pod) split the files: each predicts a contiguous block of them
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
import json
import os
import re
import sys
from collections.abc import Callable, Sequence, Set
from typing import Any, Protocol

import jax
import numpy as np
from absl import logging

from mdx import outputs, runtime
from mdx.inference import bundle as bundle_lib
from mdx.inference import engines
from mdx.inference import predict as predict_lib

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


class Predictor(Protocol):
  """A bundle kind's predict over files (BundleKind.predictor builds it, and the model with it)."""

  unit: str  # what one input is, for the progress bar and the summary line ('image', 'scan')
  header: list[str]  # predictions.csv's columns, 'path' first

  def check_outputs(self, inputs: Inputs, out: str) -> None:
    """ValueError when a file it would write into `out` is one of the inputs (before writing)."""

  def writes(self, inputs: Inputs) -> tuple[list[str], list[str]]:
    """(files, folders) it writes into the output folder, relative, for inputs (claimed before
    any work: mdx.outputs.OutputFolder.claim)."""

  def run(self, files, out: str, writer, errors: list, bar) -> int:
    """Predicts files [(input index, name, absolute path)]: a row per file through the csv
    `writer`, its own files into `out` (the staging folder, laid out as the output folder),
    (index, name, reason) into `errors` for a file it cannot read (read_ahead gives the reason),
    bar.update per file; returns the number predicted."""


def _a(noun: str) -> str:
  return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def posix(path: str) -> str:
  return path.replace(os.sep, "/")


def list_inputs(
  input_path: str, task: str, exclude: Sequence[str] = (), skip_files: Set[str] = frozenset()
) -> Inputs:
  """The files of a file, folder or CSV list that a `task` bundle reads (see the module docstring).

  exclude: absolute folders not to descend into (the output folder inside the input folder);
  skip_files: absolute paths a folder's listing leaves out (what mdx wrote into the output folder).
  Raises FileNotFoundError / ValueError (one line naming the path) when there is nothing to do.
  """
  kind = bundle_lib.kind(task)
  path = os.path.abspath(os.path.expanduser(input_path))
  suffixes = " ".join(kind.suffixes)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"input {path} does not exist; pass {_a(kind.noun)} file ({suffixes}), a folder of them, "
      "or a .csv list of files with a 'path' column"
    )
  if os.path.isdir(path):
    return _list_folder(path, kind, exclude, skip_files)
  if path.lower().endswith(".csv"):
    return _list_csv(path, kind)
  if not kind.accepts(path):
    raise ValueError(
      f"input {path} is neither {_a(kind.noun)} file ({suffixes}) nor a .csv list; this "
      f"{task} bundle reads {suffixes}"
    )
  return Inputs(os.path.dirname(path), [(0, os.path.basename(path), path)], [], 0)


def _list_folder(
  root: str, kind: bundle_lib.BundleKind, exclude: Sequence[str], skip_files: Set[str]
) -> Inputs:
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
      if full in skip_files:
        continue
      if kind.accepts(full):
        found.append((posix(os.path.relpath(full, root)), full))
      else:
        ignored += 1
  found.sort()
  if not found:
    raise ValueError(
      f"input folder {root} holds no {' '.join(kind.suffixes)} files ({ignored} files of "
      f"other types); pass the folder (or a CSV list) of the {kind.noun}s this {kind.task} "
      "bundle reads"
    )
  return Inputs(root, [(i, rel, full) for i, (rel, full) in enumerate(found)], [], ignored)


def _list_csv(csv_path: str, kind: bundle_lib.BundleKind) -> Inputs:
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
  elif header[0].lower().endswith(kind.suffixes):
    column = 0  # no header row: the first line already names a file
  else:
    column, rows = 0, rows[1:]
  files, errors = [], []
  suffixes = " ".join(kind.suffixes)
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
    elif not kind.accepts(full):
      errors.append(
        (index, listed, f"line {line}: not {_a(kind.noun)} file; this bundle reads {suffixes}")
      )
    else:
      files.append((index, listed, full))
  if not files:
    first = f"; first: {errors[0][2]}" if errors else ""
    raise ValueError(
      f"input list {csv_path} names no usable {kind.noun} file ({len(errors)} rows{first}); "
      "fix the paths (relative paths are resolved against the CSV's folder)"
    )
  return Inputs(folder, files, errors, 0)


def output_name(name: str) -> str:
  """A path-column name -> a relative path inside OUTPUT (absolute and '..' paths stay inside)."""
  parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]
  return os.path.join(*["_up_" if p == ".." else p for p in parts])


def safe_name(text: str) -> str:
  """Text as a file-name part (letters, digits, '.', '_' and '-')."""
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


def read_ahead(read: Callable[[str], Any], chunks, workers: int):
  """predict.read_ahead over (index, name, path) items: failures become errors.csv reasons."""
  for chunk, results in predict_lib.read_ahead(lambda item: read(item[2]), chunks, workers):
    yield chunk, [(v, None if e is None else _reason(e)) for v, e in results]


SMALL = 4  # an input under 1/SMALL of the model's input size along an axis gets a warning


def size_warning(shape: Sequence[int], model: Sequence[int], what: str) -> str:
  """predictions.csv's 'warning' for an input of `shape` (spatial) where the model reads `model`:
  blank, or what is wrong when an axis is under 1/SMALL of the model's (a 1-pixel image is
  upsampled to the model's size and predicted, but the prediction means nothing)."""
  if all(SMALL * int(s) >= int(m) for s, m in zip(shape, model)):
    return ""
  x = "x".join
  return (
    f"{what} is {x(map(str, shape))}, far below the model's {x(map(str, model))} input (under "
    f"1/{SMALL} along an axis): check the file"
  )


def number(v: float) -> str:
  """A score as predictions.csv writes it: 6 decimals, blank when not finite."""
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
  overwrite: bool = False,
  backend: str = "jax",
  onnx: str | None = None,
) -> dict[str, Any]:
  """Applies a bundle (a folder or a loaded Bundle) to input_path and writes output_dir.

  See the module docstring for what is read and written. batch_size: images per forward pass
  (classifier) or windows per pass (segmenter) on each process; default the bundle's / 8 per
  device. gradcam: findings to draw Grad-CAM overlays for (classifier); gradcam_layer: the layer
  (default the model's). overwrite: replace files in output_dir that mdx did not write.
  backend: what runs the network (mdx.inference.engines.BACKENDS): 'jax' (the bundle's StableHLO
  export when it carries one for this platform and no Grad-CAM is asked for, else the Flax model),
  'flax', 'stablehlo', or 'onnxruntime' (the ONNX file `onnx`, default the bundle's own); the
  preprocessing and the files written are the same whichever runs it.
  Returns {'predicted', 'errors', 'ignored', 'output', 'predictions', 'errors_csv'}, counting
  every process's files (each process returns the same). Usage mistakes (no input, nothing
  usable, output is a file, unknown finding, a user's file where predict would write, Grad-CAM
  with onnxruntime, no ONNX file) raise ValueError or FileNotFoundError with one line naming the
  path and the fix, on every process, before anything is written; a full disk is one line too
  (mdx.outputs.OutputError), with nothing half-written left as final.
  """
  engines.check_backend(backend)
  gradcam = list(dict.fromkeys(g.strip() for g in gradcam if g.strip()))
  if gradcam and backend == "onnxruntime":
    raise ValueError(
      "Grad-CAM differentiates the bundle's Flax model, which --backend=onnxruntime does not run; "
      "drop --gradcam or use --backend=jax"
    )
  if not isinstance(bundle, bundle_lib.Bundle):
    bundle = engines.load(os.fspath(bundle), backend, model=bool(gradcam))
  if batch_size is not None and int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size}; pass a positive number (or none for the default)")
  kind = bundle.kind
  if gradcam and "gradcam" not in kind.options:
    raise ValueError(
      f"Grad-CAM is for image classifiers; bundle {bundle.path} is a {bundle.task} model "
      "(drop --gradcam)"
    )
  if gradcam_layer and not gradcam:
    raise ValueError(
      f"gradcam_layer={gradcam_layer!r} without Grad-CAM findings; name them (--gradcam=A,B)"
    )
  if "engine" not in kind.options and (backend not in ("jax", "flax") or onnx):
    raise ValueError(
      f"bundle {bundle.path} is a {bundle.task} model, which predicts with its own Flax model; "
      f"--backend={backend} is not available for it (use --backend=jax)"
    )
  # the options this kind's predictor takes (a kind without Grad-CAM was refused it above)
  options = {"gradcam": gradcam, "gradcam_layer": gradcam_layer}
  taken = {k: v for k, v in options.items() if k in kind.options}
  if kind.check_options is not None:
    kind.check_options(bundle, **taken)
  first, multi = jax.process_index() == 0, jax.process_count() > 1
  folder = outputs.OutputFolder(
    output_dir,
    "predict",
    overwrite=overwrite,
    completes=(PREDICTIONS,),
    process=jax.process_index(),
  )
  out = folder.folder
  root = os.path.abspath(os.path.expanduser(input_path))
  # Our own outputs inside the input folder must not become inputs of a second run.
  exclude = [os.path.join(out, GRADCAM)] if out == root else [out]
  inputs = list_inputs(input_path, bundle.task, exclude, outputs.owned_files(out))
  # The model is built (and e.g. a Grad-CAM layer checked) before anything is written.
  if "engine" in kind.options:
    taken["engine"] = engines.make(bundle, backend, onnx=onnx, model=bool(gradcam))
  runner = kind.predictor(bundle, batch_size, **taken)
  runner.check_outputs(inputs, out)
  files, folders = runner.writes(inputs)
  folder.claim(files=[PREDICTIONS, ERRORS, *files], folders=folders)
  predictions_csv, errors_csv = os.path.join(out, PREDICTIONS), os.path.join(out, ERRORS)
  share = [inputs.files[i] for i in runtime.process_share(len(inputs.files))]
  errors = []  # (input index, name, reason) of this process's files
  with folder:  # files land in its staging folder; an error removes them
    # One process streams its rows into predictions.csv. Several each keep the rows of their
    # block (a contiguous run of the input order) and process 0 writes them all, in process
    # order: the rows travel by collectives, so the CSVs need no file system every host shares.
    sink = io.StringIO() if multi else open(folder.path(PREDICTIONS), "w", newline="")
    with sink:
      writer = outputs.csv_writer(sink)
      if first:
        writer.writerow(runner.header)
      desc = f"predict (process 0: {len(share)} of {len(inputs.files)})" if multi else "predict"
      with _bar(len(share), runner.unit, progress and first, desc) as bar:
        predicted = runner.run(share, folder.staging, writer, errors, bar)
      if multi:  # every process learns the totals; process 0 writes the rows
        predicted = int(runtime.gather_rows(np.array([predicted])).sum())
        errors = _from_csv(_gather_text(_to_csv(errors)))
        rows = _gather_text(sink.getvalue())
        if first:
          with open(folder.path(PREDICTIONS), "w", newline="") as f:
            f.write(rows)
    errors = sorted(inputs.errors + errors)
    if first:
      with open(folder.path(ERRORS), "w", newline="") as f:
        writer = outputs.csv_writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows([name, reason] for _, name, reason in errors)
    _commit(folder, first, multi)
  if first:
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


def _commit(folder: outputs.OutputFolder, first: bool, multi: bool) -> None:
  """Moves every process's staged files into the output folder, predictions.csv last."""
  if not multi:
    folder.commit()
    return
  runtime.barrier("mdx.predict_files.staged")
  if first:  # the old predictions.csv goes first: from here on nothing looks complete
    folder.begin_commit()
  runtime.barrier("mdx.predict_files.begin_commit")
  moved = folder.move_staged()  # each process its own label maps and overlays
  # one JSON line per process (json.dumps writes no newline) gathered to every process
  every = [json.loads(line) for line in _gather_text(json.dumps(moved) + "\n").splitlines()]
  if first:
    folder.finish({k: v for part in every for k, v in part.items()})
  else:
    folder.discard()


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
