"""The experiment config: defaults per task, every field declared, every typo and impossible value
an error before anything is built.

A config has the sections data, model, loss, train and eval. Their fields come from the parts that
read them, so each part declares what it reads:
  common()                      fields every task has (seed, train.*, eval.batch_size, ...);
  the task (TASKS, below)       its own defaults and checks, e.g. data.image_size and eval.gradcam
                                for classification, data.patch_size and loss.ce_weight for
                                segmentation: the config's piece of the task's slice (its training
                                is mdx.train's, its bundle kind mdx.inference's);
  the source (mdx.data.sources) the config.data fields it reads (data.metadata, data.root, ...);
  the model (mdx.models.registry) its module's fields (model.growth_rate, model.base_width, ...);
  mdx.data.splits / resample    the fields of data.split and data.resample.
An experiment file starts from defaults(task) and changes what it needs; `resolve` lays it over the
defaults and rejects any field nobody reads (with the closest known name), makes every path absolute
(path_fields), then checks values.

Layering: config reads the declarations of data, models and evaluate (lazily: importing it loads
no jax), and mdx.train, which resolves configs, sits above it; so config never imports train.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
from collections.abc import Callable

import ml_collections

TASK_DEFAULT = "classification"


def common() -> ml_collections.ConfigDict:
  """The fields every task reads (the training loop's, the data pipeline's, the evaluator's)."""
  c = ml_collections.ConfigDict()
  c.task = TASK_DEFAULT  # classification | segmentation (mdx.train.tasks)
  c.seed = 0
  c.data = ml_collections.ConfigDict(
    dict(
      source="phantoms",  # mdx.data.sources.SOURCES
      split=dict(by="patient", test=0.15, val=0.15),  # by patient (mdx.data.splits)
      standardize="per_image",  # mdx.data.standardize.MODES
      workers=0,  # grain worker processes (0: in the main process)
      prefetch=2,  # batches buffered per worker
    )
  )
  c.model = ml_collections.ConfigDict(
    # num_classes None: the source's number of findings (or a volume source's classes/regions),
    # filled in by resolve when config.data tells them, else by the task once it has read the data
    # (resolve_num_classes); a number is checked against the source.
    dict(name="densenet121", num_classes=None, dtype="float32")
  )
  c.loss = ml_collections.ConfigDict(dict(name="weighted_bce"))
  c.train = ml_collections.ConfigDict(
    dict(
      batch_size=32,  # global batch, over all devices of all hosts
      steps=600,
      optimizer="adam",  # adam | adamw | sgd (Nesterov, train.momentum)
      lr=1e-3,
      momentum=0.9,  # sgd's
      schedule="cosine",  # constant | cosine | warmup_cosine | poly
      poly_exponent=0.9,  # poly: lr * (1 - step / steps) ** poly_exponent (nnU-Net's)
      warmup_steps=0,
      weight_decay=0.0,
      grad_clip=0.0,  # global-norm clip; 0 disables
      # > 0: validate, report and bundle an exponential moving average of the weights (e.g.
      # 0.999: over the last ~1,000 steps), kept in the optimizer state (mdx.train.optim);
      # fine-tuning from such a run (model.init_from) reads the average
      ema_decay=0.0,
      log_every=10,
      checkpoint_every=100,
      keep_last=2,  # checkpoints kept besides the best one
      # auto | on | off: write checkpoints while training goes on (auto: on; resume stays exact.
      # benchmarks/checkpoint.py measures what it buys)
      async_checkpoints="auto",
      best_metric="val_auroc",  # a key of the task's validation metrics; higher is better
    )
  )
  c.eval = ml_collections.ConfigDict(
    dict(
      batch_size=64,
      split="test",  # the split the final report evaluates
      examples=8,  # example images (or scans) in the report
      after_train=True,  # --mode=train ends by evaluating the best checkpoint and reporting
    )
  )
  return c


def load_experiment(path: str, needs: tuple[str, ...] = ("get_config",)):
  """The module of an experiment (or ablation) file, checked to define `needs`."""
  path = os.fspath(path)
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  if spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f"experiment file {path} does not exist (or is not a Python file)")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  missing = [name for name in needs if not hasattr(module, name)]
  if missing:
    raise ValueError(f"{path} has no {', '.join(f'{m}()' for m in missing)}")
  return module


def defaults(task: str = TASK_DEFAULT) -> ml_collections.ConfigDict:
  """Every declared field of `task` with its default (the task's own defaults over common())."""
  c = common()
  c.task = task
  c.update(_sections(task_config(task).defaults()))
  return c


# ------------------------------------------------------------------------------ closed sections
def _known_fields(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> dict:
  """Section -> the field names it may hold, for the chosen task, source and model."""
  from mdx.data import resample, sources, splits
  from mdx.models import registry

  known = {"": set(base.keys())}
  for section in ("data", "model", "loss", "train", "eval"):
    known[section] = set(base[section].keys())
  declared = task_config(base.task)
  source = config.data.source if "data" in config and "source" in config.data else base.data.source
  known["data"] |= set(sources.spec(source, declared.source_kind).fields)
  known["data.split"] = set(splits.SPLIT_FIELDS)
  known["data.resample"] = set(resample.RESAMPLE_FIELDS)
  model = config.model.name if "model" in config and "name" in config.model else base.model.name
  if model not in registry.MODELS:
    raise ValueError(
      f"config.model.name={model!r} is unknown; choose one of {sorted(registry.MODELS)}"
    )
  known["model"] |= set(registry.config_fields(model))
  for key, value in base.items():  # nested sections of the defaults, e.g. eval.gradcam
    if isinstance(value, ml_collections.ConfigDict):
      for sub, subvalue in value.items():
        if isinstance(subvalue, ml_collections.ConfigDict) and f"{key}.{sub}" not in known:
          known[f"{key}.{sub}"] = set(subvalue.keys())
  return known


def _check_known(config, known: dict, prefix: str = "") -> None:
  allowed = known.get(prefix.rstrip("."))
  for key in config.keys():
    path = f"{prefix}{key}"
    if allowed is not None and key not in allowed:
      close = difflib.get_close_matches(key, sorted(allowed), n=1)
      hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
      raise ValueError(f"unknown config field '{path}'.{hint} Known fields here: {sorted(allowed)}")
    if isinstance(config[key], ml_collections.ConfigDict) and path in known:
      _check_known(config[key], known, path + ".")


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """defaults(config.task) updated with `config`; raises on a field nothing reads or an impossible
  value, naming the field."""
  task = config.get("task", TASK_DEFAULT) if hasattr(config, "get") else TASK_DEFAULT
  base = defaults(task)
  data = config.get("data") if hasattr(config, "get") else None
  if data is not None and "sources" in data and data.get("source") != "mixture":
    raise ValueError(
      "config.data.sources (training across datasets) is read when config.data.source="
      f"'mixture'; config.data.source is {data.get('source', base.data.source)!r}: set it to "
      "'mixture'"
    )
  _check_known(config, _known_fields(config, base))
  merged = base
  with merged.unlocked():
    merged.update(_sections(config, values=True))
  if merged.data.source == "mixture":
    check_mixture(merged, task_config(task).source_kind)
  absolute_paths(merged)
  check_values(merged)
  from mdx.data import sources

  names = sources.output_names(merged.data)
  if names is not None:  # else the task counts them when it has built the source
    resolve_num_classes(merged, names)
  task_config(task).check(merged)
  return merged


def resolve_num_classes(config: ml_collections.ConfigDict, names) -> int:
  """config.model.num_classes against the names of the source's outputs (its findings, or a
  volume source's classes or regions): None takes their number, in place (so config.json and
  bundles state it); a number that differs is a ValueError naming both. Returns the number."""
  from mdx.data import sources

  names = tuple(names)
  wanted = config.model.num_classes
  if wanted is None:
    config.model.num_classes = len(names)
  elif wanted != len(names):
    source = config.data.source
    what = "findings" if sources.spec(source).kind == sources.IMAGE else "outputs"
    raise ValueError(
      f"config.model.num_classes={wanted} but source '{source}' has {len(names)} {what} "
      f"{list(names)}; leave model.num_classes unset to take the source's"
    )
  return config.model.num_classes


def as_tuples(value):
  """Lists (a config file's, or JSON's) as the tuples experiment files use, recursively: one form
  of a config whether it was written in Python or read back from config.json."""
  if isinstance(value, dict):
    return {k: as_tuples(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(as_tuples(v) for v in value)
  return value


def check_mixture(config: ml_collections.ConfigDict, kind: str) -> None:
  """Every entry of config.data.sources checked as a config.data of its own: its source one of
  `kind`, every field one its source (or the mixture: name, weight, split) reads, its split's
  fields known; the list rewritten as plain dicts, so the paths below change the config alone."""
  from mdx.data import mixture, sources, splits

  listed = mixture.entries(config.data)
  for i, entry in enumerate(listed):
    where = f"config.data.sources[{i}]"
    try:
      spec = sources.spec(entry["source"], kind)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    allowed = set(spec.fields) | set(mixture.ENTRY_FIELDS)
    for key in entry:
      if key not in allowed:
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
          f"unknown field '{key}' in {where} (source {entry['source']!r}).{hint} Known fields "
          f"here: {sorted(allowed)}"
        )
    split = entry.get("split")
    if split:
      split = dict(split.to_dict() if hasattr(split, "to_dict") else split)
      unknown = sorted(set(split) - set(splits.SPLIT_FIELDS))
      if unknown:
        raise ValueError(
          f"unknown field '{unknown[0]}' in {where}.split; known: {sorted(splits.SPLIT_FIELDS)}"
        )
      splits.check_split_by(split.get("by", "patient"))
      entry["split"] = split
  channels = {int(e.get("channels") or 1) for e in listed}
  if len(channels) > 1:  # one batch holds films of every dataset
    raise ValueError(
      f"config.data.sources read {sorted(channels)} channels: films of every dataset share a "
      "batch, so give every entry the same 'channels'"
    )
  # the form config.json reads back (run.load_run_config): a tuple, which a field created as a
  # list would turn back into one, so the field is made anew
  with config.data.unlocked():
    del config.data["sources"]
    config.data.sources = as_tuples(listed)


def _sections(config, values: bool = False) -> dict:
  """ConfigDict -> dict of ConfigDicts, so update() merges sections instead of replacing them.
  values: the sections' values, not their field references (a user's config merged into the
  defaults: a planned field's typed placeholder cannot be updated from another reference)."""
  return {
    k: ml_collections.ConfigDict(v.to_dict() if values else v)
    if isinstance(v, ml_collections.ConfigDict)
    else v
    for k, v in config.items()
  }


# ------------------------------------------------------------------------------ paths
# Path fields every task may have; the data source declares its own (mdx.data.sources paths=).
PATH_FIELDS = ("model.init_from", "data.split.lists_dir")


def path_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The dotted fields of `config` that name a file or folder."""
  from mdx.data import sources

  source = sources.spec(config.data.source)
  return PATH_FIELDS + tuple(f"data.{field}" for field in source.paths)


def absolute_paths(config: ml_collections.ConfigDict) -> None:
  """Every path field with ~ expanded and made absolute (from the current directory), in place:
  resolved once where the config is read, a path means the same file for the whole run, in its
  config.json, in its bundle and for a later eval started elsewhere. Empty strings and None stay."""
  from mdx.data import sources

  for field in path_fields(config):
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict):
      continue
    value = node.get(leaf)
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
      with node.ignore_type():  # a pathlib.Path becomes its absolute str
        node[leaf] = os.path.abspath(os.path.expanduser(os.fspath(value)))
  if config.data.get("source") == "mixture":  # each entry's own paths (check_mixture made dicts)
    for entry in config.data.get("sources") or ():
      if not isinstance(entry, dict) or entry.get("source") not in sources.SOURCES:
        continue
      for field in sources.SOURCES[entry["source"]].paths:
        value = entry.get(field)
        if isinstance(value, (str, os.PathLike)) and os.fspath(value):
          entry[field] = os.path.abspath(os.path.expanduser(os.fspath(value)))


# ------------------------------------------------------------------------------ values
def _require(ok: bool, field: str, value, rule: str) -> None:
  if not ok:
    raise ValueError(f"config.{field}={value!r}: {rule}")


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_values(c: ml_collections.ConfigDict) -> None:
  """Values no run can use: one error naming the field and what it must be, before anything runs."""
  t, e, d = c.train, c.eval, c.data
  # a segmentation run's batch sizes may be left to its plan (mdx.data.volume.plan)
  planned = {"train.batch_size", "eval.batch_size"} if c.task == "segmentation" else set()
  for field, value in (
    ("train.batch_size", t.batch_size),
    ("eval.batch_size", e.batch_size),
    ("train.steps", t.steps),
    ("train.log_every", t.log_every),
    ("train.checkpoint_every", t.checkpoint_every),
    ("train.keep_last", t.keep_last),
    ("data.prefetch", d.prefetch),
  ):
    if value is None and field in planned:
      continue
    _require(
      isinstance(value, int) and not isinstance(value, bool) and value >= 1,
      field,
      value,
      "must be a whole number >= 1",
    )
  n = c.model.num_classes
  _require(
    n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 1),
    "model.num_classes",
    n,
    "must be a whole number >= 1, or None (the source's number of findings or classes)",
  )
  for field, value in (
    ("train.warmup_steps", t.warmup_steps),
    ("data.workers", d.workers),
    ("eval.examples", e.examples),
  ):
    _require(isinstance(value, int) and value >= 0, field, value, "must be a whole number >= 0")
  _require(
    t.async_checkpoints in ("auto", "on", "off"),
    "train.async_checkpoints",
    t.async_checkpoints,
    "must be 'auto', 'on' or 'off'",
  )
  _require(_number(t.lr) and t.lr > 0, "train.lr", t.lr, "must be a number > 0 (e.g. 1e-3)")
  for field, value in (("train.weight_decay", t.weight_decay), ("train.grad_clip", t.grad_clip)):
    _require(_number(value) and value >= 0, field, value, "must be a number >= 0 (0 turns it off)")
  _require(
    _number(t.ema_decay) and 0 <= t.ema_decay < 1,
    "train.ema_decay",
    t.ema_decay,
    "must be a number in [0, 1) (0 turns it off; e.g. 0.999)",
  )
  _require(
    t.warmup_steps <= t.steps,
    "train.warmup_steps",
    t.warmup_steps,
    f"must not exceed train.steps={t.steps}",
  )
  for key in ("test", "val"):
    if key in d.split:
      share = d.split[key]
      _require(
        _number(share) and 0 <= share < 1,
        f"data.split.{key}",
        share,
        "must be a share of patients in [0, 1)",
      )
  if d.split.by in ("patient", "image"):
    total = d.split.get("test", 0) + d.split.get("val", 0)
    _require(
      total < 1, "data.split", d.split.to_dict(), "test + val must leave patients for training"
    )
  from mdx.data import splits

  splits.check_split_by(d.split.by)  # 'image' only inside the leakage ablation's switch
  splits.split_key(e.split)


# ------------------------------------------------------------------------------------- the tasks
@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """A task's part of the config: the piece of its vertical slice at this level, as its bundle kind
  is the piece in mdx.inference (bundle.KINDS) and its training the piece in mdx.train
  (tasks.TASKS). Here, not on the train task: resolving a config needs it, and mdx.train (run,
  sweep) resolves configs, so config must not import train."""

  source_kind: str  # the sources it reads: mdx.data.sources.IMAGE ('image') or VOLUME ('volume')
  defaults: Callable[[], ml_collections.ConfigDict]  # its own sections and fields over common()
  check: Callable[[ml_collections.ConfigDict], None]  # ValueError naming a value it cannot use


CLASSIFICATION_LOSSES = ("weighted_bce", "bce", "focal")  # mdx.train.classification's losses
SEGMENTATION_LOSSES = ("dice", "dice_ce")


def _classification_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      data=dict(
        image_size=128,
        augment=None,  # preset name in mdx.data.augment, or None
        resample=ml_collections.ConfigDict(),
      ),  # empty: no resampling (mdx.data.resample)
      model=dict(
        init_from="",  # Orbax checkpoint of pretrained weights (backbone restored)
        freeze="none",
      ),  # none | head | from:<block name>  (see mdx.train.finetune)
      # weighted_bce | bce | focal (mdx.losses.focal_loss: focal_gamma, focal_alpha)
      loss=dict(name="weighted_bce", focal_gamma=2.0, focal_alpha=0.25),
      train=dict(best_metric="val_auroc"),
      eval=dict(
        bootstrap=1000,
        threshold="youden",
        calibration="platt",  # platt | isotonic | none: fitted on validation, kept in the bundle
        gradcam=dict(
          findings=("Mass", "Nodule", "Cardiomegaly", "Pneumothorax"),
          images=64,
          overlays=4,
          layer="",
        ),  # "" = the model's default layer
      ),
    )
  )


def _check_classification(config) -> None:
  from mdx.data import augment
  from mdx.data import standardize as standardize_lib
  from mdx.evaluate import calibration, thresholds
  from mdx.models import common, registry

  data, ev = config.data, config.eval
  model = registry.create_from_config(config.model)
  smallest = model.min_input_size()  # registry.min_input_size, on the model built once here
  try:  # a stage the model lacks fails here, not when the model is first built
    common.frozen_stages(model.stages, config.model.freeze)
  except ValueError as e:
    raise ValueError(f"config.model.freeze: {e}") from None
  if not isinstance(data.image_size, int) or data.image_size < smallest:
    raise ValueError(
      f"config.data.image_size={data.image_size!r} is below the {smallest} px that "
      f"model {config.model.name!r} needs; raise it (films are resized to it)"
    )
  if config.loss.name not in CLASSIFICATION_LOSSES:
    raise ValueError(
      f"config.loss.name={config.loss.name!r} is unknown; choose one of {CLASSIFICATION_LOSSES}"
    )
  gamma, alpha = config.loss.focal_gamma, config.loss.focal_alpha
  if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not gamma >= 0:
    raise ValueError(f"config.loss.focal_gamma={gamma!r} must be a number >= 0 (2 is usual)")
  if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
    raise ValueError(
      f"config.loss.focal_alpha={alpha!r} must be in [0, 1] (0.25 is usual; 0.5 weighs "
      "positives and negatives alike)"
    )
  if not isinstance(ev.bootstrap, int) or ev.bootstrap < 0:
    raise ValueError(f"config.eval.bootstrap={ev.bootstrap!r} must be a whole number >= 0")
  for key in ("images", "overlays"):
    if not isinstance(ev.gradcam[key], int) or ev.gradcam[key] < 0:
      raise ValueError(f"config.eval.gradcam.{key}={ev.gradcam[key]!r} must be a whole number >= 0")
  thresholds.parse_policy(ev.threshold)
  if ev.calibration not in calibration.CALIBRATION_METHODS:
    raise ValueError(
      f"config.eval.calibration={ev.calibration!r} is unknown; choose one of "
      f"{calibration.CALIBRATION_METHODS}"
    )
  _check_preset_flips(data, augment.make(data.augment))
  if data.standardize != "dataset":
    standardize_lib.transforms(data.standardize)


def _check_preset_flips(data, transforms: list) -> None:
  """Refuses an augmentation preset that flips a film along an axis its source forbids (a chest
  film mirrored left-right shows dextrocardia), unless the preset measures that mistake on purpose
  (mdx.data.augment.MEASURES_A_MISTAKE). Axes of [H, W]: 0 up-down, 1 left-right."""
  from mdx.data import augment, sources

  if data.source == "mixture":  # every dataset's films must keep their labels
    for entry in data.get("sources") or ():
      _check_preset_flips(ml_collections.ConfigDict(dict(entry, augment=data.augment)), transforms)
    return
  source = sources.SOURCES.get(data.source)
  if source is None or source.flip_axes is None or data.augment in augment.MEASURES_A_MISTAKE:
    return
  names = {0: "up-down", 1: "left-right"}
  flips = {0: "flip_ud", 1: "flip_lr"}
  wrong = [
    a
    for a, f in flips.items()
    if a not in source.flip_axes and any(getattr(t, f, False) for t in transforms)
  ]
  if wrong:
    allowed = [names[a] for a in source.flip_axes] or ["none"]
    raise ValueError(
      f"config.data.augment={data.augment!r} flips {names[wrong[0]]}, which source "
      f"{data.source!r} forbids (its labels would no longer be true; flips allowed: "
      f"{', '.join(allowed)}); choose a preset without that flip (for chest films 'chest_xray') "
      "or None"
    )


def _planned(kind):
  """A field the plan fills when it is left None, typed so that a flag can still set it
  (--config.train.batch_size=4: ml_collections parses a flag by its field's type; None has
  none)."""
  return ml_collections.config_dict.placeholder(kind)


def planned_fields(task: str) -> tuple[str, ...]:
  """The dotted fields of `task` a run fills from its data when they are left None (the
  segmentation plan's): a resumed or evaluated run takes them from its config.json."""

  def walk(node, prefix):
    for key, ref in node._fields.items():
      if isinstance(ref, ml_collections.ConfigDict):
        yield from walk(ref, f"{prefix}{key}.")
      elif isinstance(ref, ml_collections.FieldReference) and ref.get() is None:
        yield f"{prefix}{key}"

  return tuple(walk(task_config(task).defaults(), ""))


def _segmentation_defaults() -> ml_collections.ConfigDict:
  # None: planned from the dataset's fingerprint (mdx.data.volume.plan, nnU-Net's rules) and
  # written into config.json and WORKDIR/plan.json; a value set here, in an experiment or by flag
  # overrides the plan's.
  return ml_collections.ConfigDict(
    dict(
      data=dict(
        source="brain_phantoms",
        standardize=_planned(object),  # None: the plan's by modality; or a standardize mode
        modality=_planned(str),  # None: the source's ('CT' or 'MRI'); the plan normalises by it
        spacing=_planned(object),  # mm (D, H, W); None: the plan's; 'native': no resampling
        patch_size=_planned(tuple),  # training sub-volumes and sliding windows
        plan=dict(memory_gb=_planned(float)),  # None: the backend's (mdx.data.volume.plan)
        augment="nnunet",  # nnU-Net's augmentations, or None ('none' by flag): the fields below
        max_background=0.95,  # most a sampled patch may be background
        foreground_rate=0.33,  # share of patches centred on foreground (nnU-Net's)
        flip_axes=_planned(tuple),  # mirrors in training and test: None the source's; () none
        rotate_degrees=0.0,  # with augment=None
        rotate_p=0.3,
        intensity_scale=0.0,
        intensity_shift=0.0,
      ),
      # num_classes: the source's classes or regions; None: the plan's network (strides per
      # level, or depth for 2x pooling on every axis; the first level's width and the cap).
      # Instance normalisation as nnU-Net: a batch of two patches gives BatchNorm running
      # statistics that do not describe whole scans (validation Dice stayed 0 for 200 steps).
      model=dict(
        name="unet3d",
        depth=_planned(int),
        strides=_planned(tuple),
        base_width=_planned(int),
        max_width=_planned(int),
        norm="instance",
        deep_supervision=True,
      ),
      loss=dict(
        name="dice_ce", epsilon=1e-5, squared=False, include_background=False, ce_weight=1.0
      ),  # ce_weight counts for 'dice_ce' only
      # nnU-Net's poly schedule, with Adam: nnU-Net's SGD (Nesterov momentum 0.99, lr 1e-2,
      # weight decay 3e-5, clip 12: optimizer='sgd', momentum=0.99, lr=1e-2, weight_decay=3e-5,
      # grad_clip=12) is made for 250,000 steps; in the 3,000 a CPU affords on MSD hippocampus it
      # had validation Dice 0 at step 250 and ended at 0.8875 against Adam's 0.8924 (README,
      # "3D segmentation").
      train=dict(
        best_metric="val_dice",
        batch_size=_planned(int),
        optimizer="adam",
        lr=3e-3,
        schedule="poly",
      ),
      eval=dict(
        batch_size=_planned(int),  # windows per batch; None: the plan's training batch
        overlap=0.5,  # sliding-window overlap in [0, 1)
        mirror=True,  # test-time mirroring along the mirror axes (data.flip_axes)
        postprocess=True,  # keep the largest component of a class when validation says it helps
        nsd_tolerance_mm=1.0,  # normalised surface Dice tolerance
      ),
    )
  )


SEGMENTATION_AUGMENTS = ("nnunet", None)  # a flag spells None 'none' (a str field's value)


def segmentation_augment(data) -> str | None:
  """data.augment of a segmentation config, with a flag's 'none' read as None."""
  a = data.augment
  return None if isinstance(a, str) and a.lower() == "none" else a


def _check_segmentation(config) -> None:
  from mdx.data import sources
  from mdx.data import standardize as standardize_lib
  from mdx.models import registry

  data, model = config.data, config.model
  if data.patch_size is not None:
    patch = tuple(data.patch_size)
    planned = all(model.get(k) is None for k in ("depth", "strides"))  # the plan fits them
    multiples = (1, 1, 1) if planned else registry.input_multiples(model)
    if len(patch) != 3 or any(
      not isinstance(s, int) or s < m or s % m for s, m in zip(patch, multiples)
    ):
      raise ValueError(
        f"config.data.patch_size={patch} must be three whole sides, multiples of {multiples} "
        f"(model {model.name!r}: depth {model.get('depth')}, strides {model.get('strides')})"
      )
  spacing = data.spacing
  if spacing is not None and spacing != "native":
    if len(tuple(spacing)) != 3 or not all(_number(v) and v > 0 for v in spacing):
      raise ValueError(
        f"config.data.spacing={spacing!r} must be three positive millimetres (D, H, W), "
        "'native' (no resampling) or None (the plan's)"
      )
  if segmentation_augment(data) not in SEGMENTATION_AUGMENTS:
    raise ValueError(
      f"config.data.augment={data.augment!r}; segmentation uses one of {SEGMENTATION_AUGMENTS}"
      " ('none' by flag)"
    )
  if segmentation_augment(data) and (
    data.rotate_degrees or data.intensity_scale or data.intensity_shift
  ):
    raise ValueError(
      "config.data.rotate_degrees/intensity_scale/intensity_shift are read with "
      "config.data.augment=None; with augment='nnunet' its own rotation and intensity "
      "augmentations run: set augment=None to choose them one by one"
    )
  if config.loss.name not in SEGMENTATION_LOSSES:
    raise ValueError(
      f"config.loss.name={config.loss.name!r}; segmentation uses one of {SEGMENTATION_LOSSES}"
    )
  if not 0 <= config.eval.overlap < 1:
    raise ValueError(f"config.eval.overlap={config.eval.overlap} must be in [0, 1)")
  _require(
    _number(config.eval.nsd_tolerance_mm) and config.eval.nsd_tolerance_mm >= 0,
    "eval.nsd_tolerance_mm",
    config.eval.nsd_tolerance_mm,
    "must be a distance in mm >= 0",
  )
  for key in ("max_background", "foreground_rate", "rotate_p"):
    if not 0 <= data[key] <= 1:
      raise ValueError(f"config.data.{key}={data[key]} must be in [0, 1]")
  source = sources.SOURCES.get(data.source)
  if data.flip_axes is not None and source is not None and source.flip_axes is not None:
    flips = tuple(data.flip_axes)
    wrong = sorted(set(flips) - set(source.flip_axes))
    if wrong:
      raise ValueError(
        f"config.data.flip_axes={flips} flips along axis {wrong[0]}, which source "
        f"{data.source!r} allows no flip along (a flipped scan is no patient's or changes its "
        f"labels); use axes among {tuple(source.flip_axes)} or ()"
      )
  if data.standardize is not None:
    standardize_lib.transforms(data.standardize)


# config.task -> its part of the config; a new task adds one line here, one in mdx.train.tasks.TASKS
# and one in mdx.inference.bundle.KINDS.
TASKS = {
  "classification": TaskConfig("image", _classification_defaults, _check_classification),
  "segmentation": TaskConfig("volume", _segmentation_defaults, _check_segmentation),
}


def task_config(name: str) -> TaskConfig:
  """config.task's part of the config; an unknown task is a ValueError naming the tasks."""
  if name not in TASKS:
    raise ValueError(f"config.task={name!r} is unknown; choose one of {sorted(TASKS)}")
  return TASKS[name]
