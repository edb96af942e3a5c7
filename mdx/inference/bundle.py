"""A trained model as a self-contained folder: everything inference needs, nothing of the data.

DIR/bundle.json      the spec (below), plain JSON a person can read
DIR/variables/       Orbax PyTree checkpoint of {'params', 'batch_stats'} (inference variables)
DIR/model_card.md    what the model is for, the data, results with CIs, calibration, limits
DIR/bootstrap.npz    (optional) the internal test set's bootstrap AUROC samples per finding, so an
                     external evaluation can put a CI on internal - external AUROC

bundle.json sections:
  format       FORMAT
  task         the bundle's kind (KINDS): 'classification' | 'segmentation'
  model        the registry spec: {'name', 'num_classes', 'dtype', module fields...}
  input        classification: {'kind': 'image', 'image_size', 'channels', 'standardize':
               {'mode', 'mean', 'std'}, 'resize', 'dicom'}; segmentation: {'kind': 'volume',
               'channels', 'standardize': {'mode'}, 'patch_size', 'overlap', 'batch_size'}
  output       classification: {'findings', 'activation': 'sigmoid'}; segmentation:
               {'class_names', 'label_mode': 'classes' | 'regions', 'activation',
               'label_values' (the value written for each class index)}
  thresholds   classification: {'policy', 'description', 'chosen_on', 'scale': 'raw',
               'values': {finding: t or None}}; a case is called positive when its raw score >= t
  calibration  classification: {'method', 'fitted_on', 'maps': {finding: calibration spec}}
               (mdx.evaluate.calibration.map_from_spec); applied to the raw score
  results      {'validation': ..., 'test': ...} measured numbers with CIs (see
               mdx.evaluate.model_card for what the card reads)
  provenance   {'config', 'mdx_version', 'git_commit', 'created', 'step', 'data': {...}}

What differs between tasks is a BundleKind, looked up by spec['task'] (kind()): the fields a spec
must have, its builder, the model input the weights are checked against, the files predict reads and
its predictor, and the model card's sections. Each kind lives beside its predictor
(mdx.inference.classifier.KIND, mdx.inference.segmenter.KIND) and the training task that writes
such bundles points at it, so this module, predict on files and the model card never test a task's
name: a new task registers its kind in KINDS.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mdx import jsonio
from mdx.data import standardize as standardize_lib

FORMAT = "mdx-bundle/1"
SPEC = "bundle.json"
VARIABLES = "variables"
CARD = "model_card.md"
BOOTSTRAP = "bootstrap.npz"
# spec['task'] -> 'module:attribute' of its BundleKind, imported when first asked for (each kind's
# module imports this one).
KINDS = {
  "classification": "mdx.inference.classifier:KIND",
  "segmentation": "mdx.inference.segmenter:KIND",
}


@dataclasses.dataclass(frozen=True)
class BundleKind:
  """What one task's bundles are: everything that reads a bundle asks the kind (see the module
  docstring)."""

  task: str  # spec['task']
  # The sections every bundle of this kind has, and the fields inside them predict reads.
  required: Mapping[str, tuple[str, ...]]
  # The spec builder: (model spec, keyword fields of the kind) -> a spec for write().
  spec: Callable[..., dict[str, Any]]
  # spec -> the shape of one model input [1, ...]: the weights are checked against the model there.
  input_shape: Callable[[Mapping[str, Any]], tuple[int, ...]]
  # The files predict reads: by (lower-case) suffix, or a file sniff says it reads (DICOM without
  # a suffix); noun names one of them in messages ('image', 'NIfTI scan').
  suffixes: tuple[str, ...]
  noun: str
  # (bundle, batch_size, **options) -> a mdx.inference.predict_files.Predictor over files; it
  # builds the model, so usage errors come first from check_options.
  predictor: Callable[..., Any]
  # spec -> the model card's sections (lists of Markdown lines), in order (mdx.evaluate.model_card).
  card: Callable[[Mapping[str, Any]], list[list[str]]]
  sniff: Callable[[str], bool] | None = None
  # predict's options (beyond batch_size) the predictor takes, e.g. ('gradcam', 'gradcam_layer').
  options: tuple[str, ...] = ()
  # (bundle, **options) -> None, or a ValueError naming an option value the bundle cannot take.
  check_options: Callable[..., None] | None = None

  def accepts(self, path: str) -> bool:
    """A file predict reads with this kind: by suffix, else by its content (sniff)."""
    if os.path.basename(path).lower().endswith(self.suffixes):
      return True
    return self.sniff is not None and self.sniff(path)


def render_card(spec: Mapping[str, Any]) -> str:
  """The bundle spec -> its model card (Markdown): the sections its kind renders (BundleKind.card,
  from mdx.evaluate.model_card), joined; a spec that names no known task is read as a
  classifier's. Here, not in mdx.evaluate: the kinds live in this room, which reads evaluate's
  sections and not the other way round."""
  task = spec.get("task")
  parts = kind(task if task in KINDS else "classification").card(spec)
  return "\n".join(line for part in parts for line in part).rstrip() + "\n"


def kind(task: str) -> BundleKind:
  """The BundleKind of spec['task'] == task; an unknown task is a ValueError listing KINDS."""
  if task not in KINDS:
    raise ValueError(f"bundle task {task!r} is unknown; expected one of {tuple(KINDS)}")
  module, name = KINDS[task].split(":")
  return getattr(importlib.import_module(module), name)


@dataclasses.dataclass
class Bundle:
  path: str
  spec: dict[str, Any]
  variables: dict[str, Any]  # {'params', 'batch_stats'} as numpy arrays

  @property
  def task(self) -> str:
    return self.spec["task"]

  @property
  def kind(self) -> BundleKind:
    return kind(self.task)

  def model(self, bn_axis_name: str | None = None):
    """The Flax module the variables belong to."""
    from mdx.models import registry

    return registry.create_from_config(self.spec["model"], bn_axis_name=bn_axis_name)

  def bootstrap(self) -> dict[str, np.ndarray]:
    """{'<split>/<finding>/auroc': samples [B]} when the bundle kept them, else {}."""
    path = os.path.join(self.path, BOOTSTRAP)
    if not os.path.exists(path):
      return {}
    with np.load(path) as z:
      return {k: z[k] for k in z.files}


def code_version() -> dict[str, Any]:
  """mdx's version and, when mdx runs from a git checkout, its commit and whether it was edited."""
  import mdx

  out: dict[str, Any] = {"mdx_version": mdx.__version__, "git_commit": None, "git_dirty": None}
  root = os.path.dirname(os.path.dirname(os.path.abspath(mdx.__file__)))
  try:
    commit = subprocess.run(
      ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
    )
    if commit.returncode == 0:
      out["git_commit"] = commit.stdout.strip()
      status = subprocess.run(
        ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
      )
      out["git_dirty"] = bool(status.stdout.strip())
  except (OSError, subprocess.SubprocessError):
    pass
  return out


def write(
  directory: str,
  spec: dict[str, Any],
  variables: dict[str, Any],
  card: str | None = None,
  bootstrap: dict[str, np.ndarray] | None = None,
) -> str:
  """Writes a bundle atomically (a sibling temp folder renamed into place; an older bundle at
  `directory` is replaced only once the new one is complete). Returns the absolute path.

  card: the model card's Markdown; None renders it from the final spec (provenance included)."""
  directory = os.path.abspath(directory)
  spec = jsonio.jsonable({"format": FORMAT, **spec})  # NaN -> null, numpy -> Python
  spec.setdefault("provenance", {})
  spec["provenance"] = {
    **code_version(),
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    **spec["provenance"],
  }
  check_spec(spec, directory)
  if os.path.exists(directory) and not os.path.isfile(os.path.join(directory, SPEC)):
    if not os.path.isdir(directory) or os.listdir(directory):
      raise FileExistsError(
        f"{directory} exists and is not a bundle; choose a new folder for the bundle (an older "
        "bundle is replaced, anything else is left alone)"
      )
  if card is None:
    card = render_card(spec)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".bundle-", dir=parent)
  try:
    tree = jax.tree.map(np.asarray, {k: v for k, v in variables.items() if v})
    _checkpointer().save(os.path.join(tmp, VARIABLES), args=ocp.args.PyTreeSave(tree))
    with open(os.path.join(tmp, SPEC), "w") as f:
      json.dump(spec, f, indent=2)
    with open(os.path.join(tmp, CARD), "w") as f:
      f.write(card)
    if bootstrap:
      np.savez_compressed(os.path.join(tmp, BOOTSTRAP), **bootstrap)
    old = None
    if os.path.exists(directory):
      old = tempfile.mkdtemp(prefix=".bundle-old-", dir=parent)
      os.rename(directory, os.path.join(old, "b"))
    os.rename(tmp, directory)
    if old:
      shutil.rmtree(old)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def _checkpointer() -> ocp.Checkpointer:
  """An Orbax checkpointer of this process alone: a bundle is written by one process (the others
  of a multi-process run do not take part) and read by each on its own, so no cross-process
  barrier may wait for the others."""
  me = jax.process_index()
  options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  return ocp.Checkpointer(
    ocp.PyTreeCheckpointHandler(multiprocessing_options=options), multiprocessing_options=options
  )


def check_spec(spec: dict[str, Any], where: str) -> None:
  """ValueError naming the first missing or wrong part of a bundle spec."""
  if not isinstance(spec, dict):
    raise ValueError(f"bundle {where}: {SPEC} holds a {type(spec).__name__}, not an object")
  if spec.get("format") != FORMAT:
    raise ValueError(
      f"bundle {where}: {SPEC} has format {spec.get('format')!r}, expected {FORMAT!r}; "
      "export the bundle again with this mdx"
    )
  task = spec.get("task")
  if task not in KINDS:
    raise ValueError(f"bundle {where}: {SPEC} 'task' is {task!r}; expected one of {tuple(KINDS)}")
  for section, fields in kind(task).required.items():
    if not isinstance(spec.get(section), dict):
      raise ValueError(
        f"bundle {where}: {SPEC} has no '{section}' section; the bundle is incomplete "
        "(export it again)"
      )
    for field in fields:
      if field not in spec[section]:
        raise ValueError(
          f"bundle {where}: {SPEC} '{section}' has no '{field}'; the bundle is incomplete "
          "(export it again)"
        )
  # a wrong standardisation would fail every image one by one: refuse the bundle instead
  standardize = spec["input"].get("standardize")
  mode = standardize.get("mode") if isinstance(standardize, dict) else standardize
  if mode not in standardize_lib.MODES:
    raise ValueError(
      f"bundle {where}: {SPEC} 'input' standardize mode {mode!r} is unknown; choose one of "
      f"{standardize_lib.MODES}"
    )


def load(directory: str) -> Bundle:
  """Reads and checks a bundle; a missing or damaged part is a one-line error naming it."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f"bundle {directory} does not exist or is not a folder; pass the bundle/ folder a "
      "training run wrote (WORKDIR/bundle) or one made with --mode=export"
    )
  spec_path = os.path.join(directory, SPEC)
  if not os.path.isfile(spec_path):
    raise FileNotFoundError(
      f"bundle {directory} has no {SPEC}; the bundle is incomplete (export it again)"
    )
  try:
    with open(spec_path) as f:
      spec = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"bundle {directory}: {SPEC} is not valid JSON ({e}); export it again") from e
  check_spec(spec, directory)
  variables_path = os.path.join(directory, VARIABLES)
  if not os.path.isdir(variables_path):
    raise FileNotFoundError(
      f"bundle {directory} has no {VARIABLES}/ folder (the weights); the bundle is incomplete "
      "(export it again)"
    )
  variables = _restore_variables(variables_path, directory)
  bundle = Bundle(directory, spec, variables)
  _check_variables(bundle)
  return bundle


def _restore_variables(path: str, where: str) -> dict[str, Any]:
  try:
    ckpt = _checkpointer()
    md = ckpt.metadata(path)
    tree = getattr(getattr(md, "item_metadata", md), "tree", md)
    target = jax.tree.map(
      lambda m: np.zeros(m.shape, m.dtype),
      tree,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
    )
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    out = ckpt.restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
  except Exception as e:  # Orbax raises many types for a damaged checkpoint
    raise ValueError(
      f"bundle {where}: the weights in {VARIABLES}/ cannot be read "
      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the bundle is "
      "damaged (export it again)"
    ) from None
  return {"params": out.get("params", {}), "batch_stats": out.get("batch_stats", {})}


def _check_variables(bundle: Bundle) -> None:
  """The weights must be the model's: same tree, same shapes (else predictions are meaningless)."""
  from flax import traverse_util

  model = bundle.model()
  spec = bundle.spec
  shape = bundle.kind.input_shape(spec)
  expected = jax.eval_shape(
    lambda: model.init(jax.random.key(0), np.zeros(shape, np.float32), train=False)
  )
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(expected)).items()}
  have = {
    k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(bundle.variables).items() if k
  }
  missing = sorted("/".join(k) for k in want if k not in have)
  wrong = sorted(
    f"{'/'.join(k)} {have[k]} vs {want[k]}" for k in want if k in have and have[k] != want[k]
  )
  if missing or wrong:
    detail = f"missing {missing[:3]}" if missing else f"shapes {wrong[:3]}"
    raise ValueError(
      f"bundle {bundle.path}: the weights in {VARIABLES}/ do not fit model "
      f"{spec['model']['name']!r} ({detail}); the bundle is damaged or mixed up (export it again)"
    )


def model_spec(model_config) -> dict[str, Any]:
  """config.model -> the bundle's model section (what registry.create_from_config needs)."""
  cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  return {k: v for k, v in cfg.items() if k != "init_from"}  # weights come from the bundle


def classification_spec(model: dict[str, Any], **fields) -> dict[str, Any]:
  """A classifier's bundle spec: mdx.inference.classifier.classification_spec (its kind's)."""
  return kind("classification").spec(model, **fields)


def segmentation_spec(model: dict[str, Any], **fields) -> dict[str, Any]:
  """A 3D segmenter's bundle spec: mdx.inference.segmenter.segmentation_spec (its kind's)."""
  return kind("segmentation").spec(model, **fields)


def fingerprint(*columns) -> str:
  """sha256 of record columns (ids, patient ids, label rows): names the training data without
  holding any of it. The same records in the same order give the same hex digest."""
  h = hashlib.sha256()
  for column in columns:
    for item in column:
      h.update(repr(np.asarray(item).tolist()).encode())
      h.update(b"\x00")
    h.update(b"\x01")
  return h.hexdigest()
