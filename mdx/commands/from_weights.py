"""Published classifier weights as a bundle, so they predict and are evaluated like a trained model:

  python -m mdx from_weights --model=densenet121 --source=torch --input=xrv-densenet121-all.pt \
      --output=bundles/xrv_all --findings=xrv --image_size=224 --channels=1 --standardize=xrv

The weights must include the classification head; --findings names one finding per output (or
the preset xrv, torchxrayvision's 18), --standardize the preprocessing they were trained with (a
mode or the presets xrv and imagenet; mdx.inference.from_weights explains them). A user's mistake
is one line `error: ...` and exit status 2 (mdx.cli).
"""

from __future__ import annotations

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  from mdx.inference import from_weights

  flags.DEFINE_string("model", None, "registry name, e.g. densenet121")
  flags.DEFINE_string("source", None, "keras_h5 | torch | safetensors")
  flags.DEFINE_string("input", None, "the weight file (with its classification head)")
  flags.DEFINE_string("output", None, "the bundle folder to write")
  flags.DEFINE_string("findings", None, "comma-separated, one per output, or a preset: xrv")
  flags.DEFINE_integer("image_size", None, "the side of the model's input")
  flags.DEFINE_integer("channels", None, "input channels (default: the weights' own)")
  flags.DEFINE_string(
    "standardize",
    "none",
    f"a mode {from_weights.IMAGE_MODES} or a preset {sorted(from_weights.STANDARDIZE_PRESETS)}",
  )
  flags.DEFINE_string("mean", None, "--standardize=dataset: per channel, comma-separated")
  flags.DEFINE_string("std", None, "--standardize=dataset: per channel, comma-separated")
  flags.mark_flags_as_required(["model", "source", "input", "output", "findings", "image_size"])


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --input=PATH")
  from mdx.inference.from_weights import bundle_from_weights

  path = bundle_from_weights(
    FLAGS.model,
    FLAGS.source,
    FLAGS.input,
    FLAGS.output,
    findings=FLAGS.findings,
    image_size=FLAGS.image_size,
    channels=FLAGS.channels,
    standardize=FLAGS.standardize,
    mean=FLAGS.mean,
    std=FLAGS.std,
  )
  print(f"bundle of {FLAGS.model} from {FLAGS.input} -> {path} (model card: {path}/model_card.md)")
  return 0
