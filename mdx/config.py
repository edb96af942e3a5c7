"""Config defaults and validation.

An experiment file (experiments/*.py) returns a ConfigDict with only what it changes; `resolve` lays it
over these defaults and rejects any field the defaults do not know, so a typo (train.stpes) is an error
instead of a silently ignored setting. Sections whose fields depend on a choice (data.* depends on the
source, model.* on the architecture) accept extra fields here and are checked by their builders.
"""

from __future__ import annotations

import difflib

import ml_collections

# Sections whose extra fields are checked by the code that consumes them (source builders, model registry).
OPEN_SECTIONS = ("data", "model", "loss", "eval")


def defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "classification"  # classification | segmentation
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      source="phantoms",
      num_patients=600,
      image_size=128,
      split=dict(by="patient", test=0.15, val=0.15),
      augment=None,            # preset name in mdx.data.augment, or None
      standardize="per_image",  # per_image | dataset | None
      resample=ml_collections.ConfigDict(),  # empty: no resampling (see mdx.data.resample)
      workers=0,               # grain worker processes (0: in the main process)
      prefetch=2,              # batches buffered per worker
  ))
  c.model = ml_collections.ConfigDict(dict(
      name="densenet121", num_classes=14, dtype="float32",
      init_from="",   # Orbax checkpoint of pretrained weights (backbone restored, new head)
      freeze="none",  # none | head | from:<block name>  (see mdx.train.finetune)
  ))
  c.loss = ml_collections.ConfigDict(dict(name="weighted_bce"))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,           # global batch, over all devices of all hosts
      steps=600,
      optimizer="adam",        # adam | adamw | sgd
      lr=1e-3,
      schedule="cosine",       # constant | cosine | warmup_cosine
      warmup_steps=0,
      weight_decay=0.0,
      grad_clip=0.0,           # global-norm clip; 0 disables
      log_every=10,
      checkpoint_every=100,
      keep_last=2,             # checkpoints kept besides the best one
      best_metric="val_auroc",  # chosen by the task's validation; higher is better
  ))
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=64, bootstrap=1000, threshold="youden", split="test",
      examples=8,              # example images with labels and predictions in the report
      gradcam=dict(findings=("Mass", "Nodule", "Cardiomegaly", "Pneumothorax"), images=64,
                   overlays=4, layer=""),  # layer "" = the model's default (last feature map)
      after_train=True,        # --mode=train ends by evaluating the best checkpoint and writing the report
  ))
  return c


def _check_known(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                 prefix: str) -> None:
  for key in config.keys():
    path = f"{prefix}{key}"
    if key not in reference:
      if prefix.split(".")[0] in OPEN_SECTIONS:
        continue
      close = difflib.get_close_matches(key, list(reference.keys()), n=1)
      hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
      raise ValueError(f"unknown config field '{path}'.{hint} Known fields here: "
                       f"{sorted(reference.keys())}")
    value, ref = config[key], reference[key]
    if isinstance(ref, ml_collections.ConfigDict) and isinstance(value, ml_collections.ConfigDict):
      _check_known(value, ref, path + ".")


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns defaults updated with `config`; raises on fields the defaults do not know."""
  base = defaults()
  _check_known(config, base, "")
  merged = base
  with merged.unlocked():
    merged.update(_plain(config))
  return merged


def _plain(config):
  """ConfigDict -> nested dict of ConfigDicts, so update() merges sections instead of replacing them."""
  return {k: ml_collections.ConfigDict(v) if isinstance(v, ml_collections.ConfigDict) else v
          for k, v in config.items()}
