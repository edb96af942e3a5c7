"""A bundle's network exported for deployment, as ONNX or serialized StableHLO:

  python -m mdx export_model --bundle=DIR --format=onnx|stablehlo [--output=FILE]
      [--dtype=float32|float16] [--platforms=cpu,cuda,tpu] [--overwrite]

(./launch.sh export-model ... runs the same.) Without --output the export goes into the bundle
(DIR/export/model.onnx or DIR/export/model.stablehlo), recorded in its bundle.json with its digest,
so predict can serve the carried StableHLO without tracing the model; with --output it is written
to FILE alone. ONNX: input "input" [batch, ...] float32 (or --dtype=float16), output
"probabilities", the bundle's preprocessing, thresholds, calibration or windowing in its metadata
(key "mdx"), checked against the model on a probe batch. StableHLO: lowered for each of
--platforms in one artifact (mdx.inference.export explains both). A file mdx did not write where
the export goes is refused unless --overwrite. A user's mistake is one line `error: ...` and exit
status 2 (mdx.cli).
"""

from __future__ import annotations

import time

from absl import app, flags

FLAGS = flags.FLAGS
FORMATS = ("onnx", "stablehlo")


def define_flags() -> None:
  flags.DEFINE_string("bundle", None, "the bundle folder to export")
  flags.DEFINE_enum("format", None, list(FORMATS), "onnx or stablehlo")
  flags.DEFINE_string("output", None, "the export's file (default: into the bundle's export/)")
  flags.DEFINE_enum("dtype", "float32", ["float32", "float16"], "ONNX: weights, input and output")
  flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"], "StableHLO: platforms to lower for")
  flags.DEFINE_bool("overwrite", False, "replace a file mdx did not write at the export's place")
  flags.mark_flags_as_required(["bundle", "format"])


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --bundle=DIR")
  from mdx.inference import export

  fmt = FLAGS.format
  if fmt == "stablehlo" and FLAGS.dtype != "float32":
    raise ValueError(
      f"--dtype={FLAGS.dtype} is for --format=onnx; the StableHLO export computes as the bundle "
      "predicts (float32 in and out)"
    )
  if fmt == "onnx" and FLAGS["platforms"].present:
    raise ValueError(
      "--platforms is for --format=stablehlo; an ONNX graph runs wherever onnxruntime does"
    )
  platforms = export.check_platforms(FLAGS.platforms)
  start = time.perf_counter()
  options = dict(dtype=FLAGS.dtype, platforms=platforms, overwrite=FLAGS.overwrite)
  if FLAGS.output:
    path = export.export_file(FLAGS.bundle, fmt, FLAGS.output, **options)
    where = "written"
  else:
    path = export.add_to_bundle(FLAGS.bundle, fmt, **options)
    where = "carried by the bundle (recorded in its bundle.json)"
  detail = f"{FLAGS.dtype}" if fmt == "onnx" else f"for {','.join(platforms)}"
  print(
    f"{fmt} export ({detail}) of {FLAGS.bundle} -> {path}, {where}, in "
    f"{time.perf_counter() - start:.1f} s"
  )
  return 0
