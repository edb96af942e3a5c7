"""Predict with a bundle on new files:

  python -m mdx predict --bundle=DIR --input=PATH --output=DIR [--batch_size=N]
      [--gradcam=Finding1,Finding2] [--gradcam_layer=LAYER] [--overwrite] [--debug]
      [--backend=jax|flax|stablehlo|onnxruntime] [--onnx=FILE]

--input is an image or scan file, a folder (searched recursively) or a CSV list of files (column
'path'). Writes OUTPUT/predictions.csv, OUTPUT/errors.csv and, for a segmenter, one label NIfTI per
scan (see mdx.inference.predict_files). It needs only the bundle: no config, no training data.
A file in --output that mdx did not write (a user's predictions.csv, ground-truth label maps) is
never replaced: predict refuses in one line before reading any input, unless --overwrite.

--backend: what runs the network (mdx.inference.engines). 'jax' (default): the bundle's StableHLO
export when it carries one for this platform (./launch.sh export-model --format=stablehlo; no
tracing, a start-up in a fraction of a second) and no Grad-CAM is asked for, else the Flax model;
'flax' or 'stablehlo' force one of them; 'onnxruntime' runs --onnx=FILE or the bundle's
export/model.onnx (pip install '.[export]'). The same preprocessing and outputs whichever runs it.

Run as several processes (python -m mdx local N python -m mdx predict ..., or ./launch.sh tpu ...
predict, which adds --jax_distributed), each process predicts its share of the files on its own
devices and writes its label maps; process 0 writes the CSVs and prints the summary. Several hosts
need an --output folder they all see for the label maps to land in one place.

A user's mistake (a missing or damaged bundle, no usable input, an unknown finding) prints one line
`error: ...` and exits 2 (mdx.cli); --debug (or MDX_DEBUG=1) shows its traceback too.
"""

from __future__ import annotations

import jax
from absl import app, flags

from mdx import runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("bundle", None, "The bundle folder a run wrote (WORKDIR/bundle).")
  flags.DEFINE_string("input", None, "An image/scan file, a folder of them, or a CSV list.")
  flags.DEFINE_string("output", None, "Folder for predictions.csv, errors.csv and label maps.")
  flags.DEFINE_integer("batch_size", None, "Images (or windows) per forward pass.")
  flags.DEFINE_list("gradcam", [], "Findings to draw Grad-CAM overlays for (classifiers).")
  flags.DEFINE_string("gradcam_layer", None, "Grad-CAM layer (default: the model's own).")
  flags.DEFINE_enum(
    "backend",
    "jax",
    ["jax", "flax", "stablehlo", "onnxruntime"],
    "What runs the network: jax (the bundle's StableHLO export if it has one, else Flax), flax, "
    "stablehlo, or onnxruntime.",
  )
  flags.DEFINE_string("onnx", None, "ONNX file for --backend=onnxruntime (default: the bundle's).")
  flags.DEFINE_bool(
    "overwrite", False, "Replace files in --output that mdx did not write (refused otherwise)."
  )
  # ./launch.sh tpu NAME ZONE predict ... appends it on every worker
  flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize() (multi-host).")


def main(argv) -> int:
  runtime.quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --input=PATH")
  missing = [f"--{name}" for name in ("bundle", "input", "output") if not FLAGS[name].value]
  if missing:
    raise app.UsageError(
      f"{', '.join(missing)} missing; usage: python -m mdx predict --bundle=DIR --input=PATH "
      "--output=DIR"
    )
  runtime.join_processes(FLAGS.jax_distributed)
  from mdx.inference import predict_files

  runtime.enable_compilation_cache()
  # A missing or damaged bundle, no usable input: ValueError or FileNotFoundError, one line
  runtime.require_accelerator()  # $MDX_ACCELERATOR, as ./launch.sh sets it
  summary = predict_files.predict(
    FLAGS.bundle,
    FLAGS.input,
    FLAGS.output,
    batch_size=FLAGS.batch_size,
    gradcam=FLAGS.gradcam,
    gradcam_layer=FLAGS.gradcam_layer or None,
    overwrite=FLAGS.overwrite,
    backend=FLAGS.backend,
    onnx=FLAGS.onnx or None,
  )
  if jax.process_index() == 0:  # the totals of every process: one line, not one per process
    print(
      f"mdx.predict: {summary['predicted']} predicted, {summary['errors']} errors, "
      f"{summary['ignored']} files of other types ignored; see {summary['output']}",
      flush=True,
    )
  return 0
