"""Import published weights into a pretrained checkpoint that fine-tuning starts from:

  python -m mdx import_weights --model=densenet121 --source=keras_h5 \
      --input=densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5 --output=weights/dn121

--source: keras_h5 | torch | safetensors (mdx.models.import_weights says what each reads; no pickle
code runs). The output is an Orbax checkpoint with provenance.json, for config.model.init_from. A
file of another format, or arrays that do not fit the model, is one line `error: ...` and exit
status 2 (mdx.cli); so is a --source whose reader is not installed (mdx installs neither torch nor
safetensors), before any work, naming the install command.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  from mdx.models.import_weights import READERS

  flags.DEFINE_string("model", None, "registry name, e.g. densenet121")
  flags.DEFINE_enum("source", None, sorted(READERS), "weight file format")
  flags.DEFINE_string("input", None, "weight file")
  flags.DEFINE_string("output", None, "output directory (Orbax checkpoint + provenance.json)")
  flags.mark_flags_as_required(["model", "source", "input", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags look like --input=PATH")
  from mdx.models.import_weights import import_weights

  out = import_weights(FLAGS.model, FLAGS.source, FLAGS.input, FLAGS.output)
  n = sum(v.size for v in jax.tree.leaves(out))
  where = os.path.abspath(FLAGS.output)
  print(f"imported {n:,} values of {FLAGS.model} from {FLAGS.input} into {where}")
