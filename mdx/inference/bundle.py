"""A trained model as a self-contained folder: everything inference needs, nothing of the data.

DIR/bundle.json      the spec (below), plain JSON a person can read
DIR/variables/       Orbax PyTree checkpoint of {'params', 'batch_stats'} (inference variables)
DIR/model_card.md    what the model is for, the data, results with CIs, calibration, limits
DIR/bootstrap.npz    (optional) the internal test set's bootstrap AUROC samples per finding, so an
                     external evaluation can put a CI on internal - external AUROC
DIR/export/          (optional) model.onnx, model.stablehlo: the network exported for deployment
                     (mdx.inference.export.add_to_bundle, `python -m mdx export_model`)

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
  ensemble     (optional) {'members': k, 'combine': 'mean of probabilities', 'members_from':
               [each member's folder, step and data fingerprint]}: variables/ then holds the k
               members' variables stacked on a leading axis (write_ensemble; a cross-validation's
               folds, mdx.train.crossval), and predict averages their probabilities
  exports      (optional) {'onnx': {'file': ONNX_FILE, 'dtype', ...}, 'stablehlo': {'file':
               STABLEHLO_FILE, 'platforms', 'jax_version', ...}}: what export/ holds (written by
               mdx.inference.export.add_to_bundle, which records the files in `files` too)
  files        {relative path: sha256} of every other file of the bundle (written by write)

What differs between tasks is a BundleKind, looked up by spec['task'] (kind()): the fields a spec
must have, its builder, the model input the weights are checked against, the files predict reads and
its predictor, and the model card's sections. Each kind lives beside its predictor
(mdx.inference.classifier.KIND, mdx.inference.segmenter.KIND) and the training task that writes
such bundles points at it, so this module, predict on files and the model card never test a task's
name: a new task registers its kind in KINDS.

Integrity (issue 24). `files` in bundle.json records the sha256 of every file the bundle holds
(variables/ file by file, model_card.md, bootstrap.npz); load checks them, then every spec field
its kind reads (BundleKind.check_spec: types, lengths, against the weights), before anything is
predicted or written, so a bundle whose weights were swapped or whose spec was edited by hand is a
one-line refusal, not predictions under another model's thresholds. The exports in export/ are
recorded and checked the same way; load(..., variables=False) checks every digest but restores no
weights (predict served by the carried StableHLO needs none). write goes through
mdx.outputs.OutputFolder: the files are staged in DIR and moved into place when complete, an older
bundle's own files are replaced, a user's other files in DIR (an approval note) stay, and a file mdx
did not write where the bundle goes is refused unless overwrite. New weights make the exports of the
old ones stale: write drops the spec's `exports` and the export/ files mdx wrote (a user's file
there is refused unless overwrite, as in variables/).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import jax
import numpy as np
from absl import logging

from mdx import jsonio, outputs
from mdx.data import standardize as standardize_lib

if TYPE_CHECKING:  # imported where weights are written or read: a bundle served by its export
  import orbax.checkpoint as ocp  # (mdx.inference.engines) never needs Orbax (~0.25 s to import)

# mdx-bundle/2 added `files`, the digests load checks. A bundle of mdx-bundle/1 has none, so
# nothing could tell its weights from another model's of the same architecture: load refuses it
# with "export it again" rather than trusting it unchecked (a run exports again from its
# checkpoints in seconds, from_weights imports again; predicting under another model's thresholds
# and card is what issue 24 found). No bundle of the older format ships with mdx or its tests.
FORMAT = "mdx-bundle/2"
OLDER_FORMATS = ("mdx-bundle/1",)
SPEC = "bundle.json"
VARIABLES = "variables"
CARD = "model_card.md"
BOOTSTRAP = "bootstrap.npz"
FILES = "files"  # spec[FILES]: {relative path: sha256}
EXPORTS = "exports"  # spec[EXPORTS]: {format: {'file': ONNX_FILE | STABLEHLO_FILE, ...}}
EXPORT = "export"
ONNX_FILE = f"{EXPORT}/model.onnx"
STABLEHLO_FILE = f"{EXPORT}/model.stablehlo"
EXPORT_FILES = {"onnx": ONNX_FILE, "stablehlo": STABLEHLO_FILE}  # format -> its file
# What write puts into DIR (claimed before any work: claim). bootstrap.npz is optional, so it is a
# completion file too: the OutputFolder removes an older bundle's copy before moving the new files
# in, and a bundle without one never keeps its predecessor's. bundle.json is moved last.
COMPLETES = (SPEC, BOOTSTRAP)
BUNDLE_FILES = (SPEC, CARD, BOOTSTRAP)
# export/ is claimed whole: a rewrite removes the exports mdx wrote for the old weights
BUNDLE_FOLDERS = (VARIABLES, EXPORT)
# What an older mdx (before OutputFolder) left beside a bundle when killed while writing it.
OLD_TEMPORARY = ".bundle-"
OLD_MOVED_ASIDE = ".bundle-old-"
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
  # (spec, where, variables or None) -> None, or a one-line ValueError (SpecFields.fail) naming the
  # first field predict or the card would misread: types, lengths, and with variables the sizes
  # the weights fix (outputs, input channels). Called by check_spec when a bundle is written and
  # loaded, before anything is predicted.
  check_spec: Callable[..., None] | None = None

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
  # {'params', 'batch_stats'} as numpy arrays; None when loaded with variables=False
  variables: dict[str, Any] | None

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

  @property
  def members(self) -> int:
    """How many models the bundle holds: an ensemble's k, else 1."""
    return int((self.spec.get("ensemble") or {}).get("members", 1))

  def member_variables(self) -> list[dict[str, Any]]:
    """Each member's variables: an ensemble's unstacked (the leading axis), else the one set."""
    if self.variables is None:
      raise ValueError(
        f"bundle {self.path} was loaded without its weights (load(..., variables=False)); "
        "load it with variables=True to run the Flax model"
      )
    if self.members == 1:
      return [self.variables]
    return [member(self.variables, i) for i in range(self.members)]

  def bootstrap(self) -> dict[str, np.ndarray]:
    """{'<split>/<finding>/auroc': samples [B]} when the bundle kept them, else {}."""
    path = os.path.join(self.path, BOOTSTRAP)
    if not os.path.exists(path):
      return {}
    with np.load(path) as z:
      return {k: z[k] for k in z.files}


def member(variables: Mapping[str, Any], i: int) -> dict[str, Any]:
  """Member i of an ensemble's stacked variables (every leaf's leading axis)."""
  return jax.tree.map(lambda a: np.asarray(a)[i], dict(variables))


def write_ensemble(
  directory: str,
  member_dirs: Sequence[str],
  *,
  postprocess: Mapping[str, Any] | None = None,
  results: dict[str, Any] | None = None,
  overwrite: bool = False,
) -> str:
  """One bundle of several bundles of the same model and inputs (a cross-validation's folds):
  their variables stacked on a leading axis, the first one's spec with 'ensemble' added, and
  `results` and the output's `postprocess` replaced (decided for the ensemble, e.g. out of fold).
  Members whose model, input or output differ are a ValueError naming the first difference."""
  if len(member_dirs) < 2:
    raise ValueError(f"an ensemble needs at least two bundles, got {len(member_dirs)}")
  members = [load(d) for d in member_dirs]
  first = members[0]
  if first.kind.task != "segmentation":
    raise ValueError(
      f"bundle {first.path}: ensembles are written for segmenters; a {first.task} bundle cannot "
      "be one"
    )
  for other in members[1:]:
    for section in ("task", "model", "input"):
      if other.spec[section] != first.spec[section]:
        raise ValueError(
          f"bundles {first.path} and {other.path} differ in their {section!r} section; an "
          "ensemble's members must be the same model reading the same input"
        )
    same = ("class_names", "label_mode", "activation", "label_values")
    if any(other.spec["output"][k] != first.spec["output"][k] for k in same):
      raise ValueError(
        f"bundles {first.path} and {other.path} name their outputs differently; an ensemble's "
        "members must predict the same classes"
      )
  stacked = jax.tree.map(
    lambda *xs: np.stack([np.asarray(x) for x in xs]), *[m.variables for m in members]
  )
  spec = {k: v for k, v in first.spec.items() if k not in ("format", FILES)}
  spec["output"] = {
    **first.spec["output"],
    "postprocess": dict(postprocess) if postprocess else None,
  }
  spec["results"] = dict(results or {})
  provenance = {k: v for k, v in first.spec.get("provenance", {}).items() if k == "data"}
  spec["provenance"] = provenance
  spec["ensemble"] = {
    "members": len(members),
    "combine": "mean of probabilities",
    "members_from": [
      {
        "bundle": m.path,
        "step": m.spec.get("provenance", {}).get("step"),
        "data": (m.spec.get("provenance", {}).get("data") or {}).get("fingerprint"),
        "results": m.spec.get("results"),
      }
      for m in members
    ],
  }
  return write(directory, spec, stacked, overwrite=overwrite)


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
  *,
  overwrite: bool = False,
) -> str:
  """Writes a bundle into `directory` through an OutputFolder (claim): staged inside it and moved
  into place when complete, an older bundle's own files replaced, a user's other files left alone.
  Returns the absolute path. A file mdx did not write where the bundle goes is an OutputError
  unless overwrite; the spec is checked first (check_spec, against `variables`).

  card: the model card's Markdown; None renders it from the final spec (provenance included)."""
  directory = os.path.abspath(os.path.expanduser(directory))
  # NaN -> null, numpy -> Python; this format whatever a spec read from a bundle said, and the
  # digests recomputed below from what is written; exports of a spec read from a bundle are of
  # its old weights: dropped, and their files with them (BUNDLE_FOLDERS)
  spec = jsonio.jsonable(
    {"format": FORMAT, **{k: v for k, v in spec.items() if k not in ("format", FILES, EXPORTS)}}
  )
  spec.setdefault("provenance", {})
  spec["provenance"] = {
    **code_version(),
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    **spec["provenance"],
  }
  tree = jax.tree.map(np.asarray, {k: v for k, v in variables.items() if v})
  check_spec(spec, directory, tree)
  if card is None:
    card = render_card(spec)
  folder = claim(directory, overwrite)
  import orbax.checkpoint as ocp

  with folder:
    _checkpointer().save(folder.path(VARIABLES), args=ocp.args.PyTreeSave(tree))
    outputs.write_text(folder.path(CARD), card)
    if bootstrap:
      np.savez_compressed(folder.path(BOOTSTRAP), **bootstrap)
    spec[FILES] = {
      rel: sha
      for rel, sha in outputs.tree_digests(folder.staging).items()
      if rel in _RECORDED_BESIDE or rel.startswith(VARIABLES + "/")
    }
    outputs.write_json(folder.path(SPEC), spec)
    folder.commit()
  return directory


_RECORDED_BESIDE = (CARD, BOOTSTRAP)  # the files besides variables/ that `files` records


def claim(directory: str, overwrite: bool = False) -> outputs.OutputFolder:
  """The OutputFolder a bundle is written through, claimed: an OutputError naming a file mdx did
  not write (or one changed since, e.g. an edited model_card.md) where write would put the bundle,
  unless overwrite. Export calls it before any work, write again when writing. A bundle an older
  mdx wrote (before manifests) counts as mdx's (_adopt_older_bundle); what an older mdx killed
  while writing left beside `directory` is cleaned up or reported (_older_leftovers)."""
  folder = outputs.OutputFolder(directory, "export", overwrite=overwrite, completes=COMPLETES)
  _older_leftovers(folder.folder)
  _adopt_older_bundle(folder.folder)
  folder.claim(files=BUNDLE_FILES, folders=BUNDLE_FOLDERS)
  return folder


def _older_leftovers(directory: str) -> list[str]:
  """An older mdx wrote a bundle into a sibling temporary folder (.bundle-*) and renamed it into
  place, moving the bundle it replaced aside (.bundle-old-*): a kill left them next to the bundle.
  A temporary folder holding only bundle files never was final and is removed; a moved-aside
  bundle may be the only copy of a bundle, so it is reported, never removed. Returns the
  warnings."""
  parent = os.path.dirname(directory)
  said = []
  try:
    names = sorted(os.listdir(parent))
  except OSError:
    return said
  for name in names:
    path = os.path.join(parent, name)
    if not name.startswith(OLD_TEMPORARY) or not os.path.isdir(path) or os.path.islink(path):
      continue
    if name.startswith(OLD_MOVED_ASIDE):
      said.append(
        f"{path} holds a bundle an older mdx moved aside while replacing it and was killed "
        f"before removing it: if a bundle in {parent} is missing, move {path}/b back in its "
        "place; otherwise delete it"
      )
      continue
    if not set(os.listdir(path)) <= {SPEC, CARD, BOOTSTRAP, VARIABLES}:
      said.append(
        f"{path} looks like an older mdx's unfinished bundle but holds other files: "
        "mdx leaves it; delete it if it is not yours"
      )
      continue
    shutil.rmtree(path, ignore_errors=True)
    said.append(
      f"{path} was an unfinished bundle of an older mdx killed while writing it (never final); "
      "it is removed"
    )
  for line in said:
    logging.warning("%s", line)
  return said


def _adopt_older_bundle(directory: str) -> dict[str, str]:
  """A bundle written before manifests existed (bundle.json of an older format, no manifest) is
  mdx's: its bundle.json, variables/ and bootstrap.npz are recorded as such, so a new bundle
  replaces them; its model_card.md too when it is still the card mdx rendered from that spec (a
  card a user edited stays theirs, and is refused). Returns {rel: sha256} of what was recorded."""
  spec_path = os.path.join(directory, SPEC)
  if os.path.lexists(os.path.join(directory, outputs.MANIFEST)) or not os.path.isfile(spec_path):
    return {}
  try:
    with open(spec_path, encoding="utf-8") as f:
      spec = json.load(f)
  except (OSError, ValueError):
    return {}
  if not isinstance(spec, dict) or spec.get("format") not in OLDER_FORMATS:
    return {}
  ours = {SPEC: outputs.digest(spec_path)}
  variables = os.path.join(directory, VARIABLES)
  if os.path.isdir(variables) and not os.path.islink(variables):
    ours.update({f"{VARIABLES}/{rel}": sha for rel, sha in outputs.tree_digests(variables).items()})
  if os.path.isfile(os.path.join(directory, BOOTSTRAP)):
    ours[BOOTSTRAP] = outputs.digest(os.path.join(directory, BOOTSTRAP))
  card = os.path.join(directory, CARD)
  try:
    with open(card, encoding="utf-8") as f:
      if f.read() == render_card(spec):
        ours[CARD] = outputs.digest(card)
  except Exception:  # noqa: BLE001 - an unreadable card or a spec the renderer cannot read
    pass  # stays the user's
  outputs.adopt(directory, ours, "export (an older mdx)")
  logging.info(
    "%s is a bundle of an older mdx (%s): a new bundle replaces it", directory, spec["format"]
  )
  return ours


def _checkpointer() -> ocp.Checkpointer:
  """An Orbax checkpointer of this process alone: a bundle is written by one process (the others
  of a multi-process run do not take part) and read by each on its own, so no cross-process
  barrier may wait for the others."""
  import orbax.checkpoint as ocp

  me = jax.process_index()
  options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  return ocp.Checkpointer(
    ocp.PyTreeCheckpointHandler(multiprocessing_options=options), multiprocessing_options=options
  )


def check_spec(
  spec: dict[str, Any], where: str, variables: Mapping[str, Any] | None = None
) -> None:
  """ValueError naming the first missing or wrong part of a bundle spec: its format, task and
  required fields, then every field its kind reads (BundleKind.check_spec), and with `variables`
  the sizes the weights fix. The digests (FILES) are load's (check_files)."""
  if not isinstance(spec, dict):
    raise ValueError(f"bundle {where}: {SPEC} holds a {type(spec).__name__}, not an object")
  if spec.get("format") in OLDER_FORMATS:
    raise ValueError(
      f"bundle {where}: {SPEC} has format {spec['format']!r}, written by an older mdx without "
      "the digests of its files that this mdx checks; export it again with this mdx "
      "(--mode=export on its run, or from_weights for imported weights)"
    )
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
  modes = standardize_lib.MODES + standardize_lib.SPEC_MODES
  if mode not in modes:
    raise ValueError(
      f"bundle {where}: {SPEC} 'input' standardize mode {mode!r} is unknown; choose one of {modes}"
    )
  if mode in standardize_lib.SPEC_MODES:  # a plan's spec carries its statistics: check them
    try:
      standardize_lib.check(standardize)
    except ValueError as e:
      raise ValueError(f"bundle {where}: {SPEC} 'input' standardize: {e}") from None
  members = (spec.get("ensemble") or {}).get("members", 1)
  if not is_int(members) or members < 1:
    raise ValueError(
      f"bundle {where}: {SPEC} 'ensemble' members is {shown(members)}; expected k >= 2"
    )
  if variables is not None and members > 1:  # the fields are checked against the first member
    leading = {np.shape(a)[0] if np.ndim(a) else None for a in jax.tree.leaves(dict(variables))}
    if leading != {members}:
      raise ValueError(
        f"bundle {where}: {SPEC} says {members} ensemble members but the weights are stacked "
        f"{sorted(map(str, leading))}; the bundle is damaged (export it again)"
      )
    variables = member(variables, 0)
  check = kind(task).check_spec
  if check is not None:
    check(spec, where, variables)


def is_int(value: Any) -> bool:
  """A JSON whole number (bool is not one, 224.0 neither)."""
  return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_number(value: Any) -> bool:
  """A finite JSON number (not bool, NaN or infinity)."""
  return (
    isinstance(value, int | float | np.integer | np.floating)
    and not isinstance(value, bool | np.bool_)
    and math.isfinite(float(value))
  )


def shown(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


class SpecFields:
  """What a kind's check_spec reads a spec with: each check returns the value it accepts, or
  raises the one line `bundle WHERE: bundle.json 'section' 'field' <what is wrong> (export it
  again)` (fail)."""

  def __init__(self, spec: Mapping[str, Any], where: str):
    self.spec, self.where = spec, where

  def fail(self, section: str, field: str, problem: str) -> NoReturn:
    raise ValueError(
      f"bundle {self.where}: {SPEC} '{section}' '{field}' {problem}; the bundle is damaged or "
      "was edited (export it again)"
    )

  def get(self, section: str, field: str, default: Any = None) -> Any:
    part = self.spec.get(section)
    return part.get(field, default) if isinstance(part, Mapping) else default

  def positive_int(self, section: str, field: str) -> int:
    value = self.get(section, field)
    if not is_int(value) or value <= 0:
      self.fail(section, field, f"is {shown(value)}; expected a positive whole number")
    return int(value)

  def number(self, section: str, field: str, low: float, high: float) -> float:
    """A finite number in [low, high)."""
    value = self.get(section, field)
    if not is_number(value) or not low <= float(value) < high:
      self.fail(section, field, f"is {shown(value)}; expected a number in [{low}, {high})")
    return float(value)

  def choice(self, section: str, field: str, allowed: Sequence[Any]) -> Any:
    value = self.get(section, field)
    if value not in allowed:
      self.fail(section, field, f"is {shown(value)}; expected one of {tuple(allowed)}")
    return value

  def matches_weights(
    self, section: str, field: str, value: int, fixed: int | None, says: str, weights: str
  ) -> None:
    """`value` (what section.field says) equals `fixed`, the size the weights fix (None: not
    known), or fail with '<says % value> but the weights in variables/ <weights % fixed>'."""
    if fixed is not None and fixed != value:
      self.fail(section, field, f"{says % value} but the weights in {VARIABLES}/ {weights % fixed}")

  def names(self, section: str, field: str) -> list[str]:
    """A list of unique non-empty strings."""
    value = self.get(section, field)
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
      self.fail(section, field, f"is {shown(value)}; expected a list of non-empty names")
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
      self.fail(section, field, f"names {repeated} more than once; each name must be unique")
    return list(value)

  def ints(self, section: str, field: str, count: int, low: int, high: int) -> list[int]:
    """A list of `count` whole numbers in [low, high]."""
    value = self.get(section, field)
    if not isinstance(value, list) or not all(is_int(v) and low <= v <= high for v in value):
      self.fail(section, field, f"is {shown(value)}; expected whole numbers in {low}..{high}")
    if len(value) != count:
      self.fail(section, field, f"has {len(value)} values; expected {count}")
    return [int(v) for v in value]


def weight_shape(variables: Mapping[str, Any] | None, *path: str) -> tuple[int, ...] | None:
  """The shape of variables['params'][path...], or None where the weights hold no such array (a
  kind's check_spec reads a layer's size where it can)."""
  node: Any = (variables or {}).get("params")
  for key in path:
    if not isinstance(node, Mapping) or key not in node:
      return None
    node = node[key]
  return tuple(np.shape(node)) if hasattr(node, "shape") else None


def _held(rel: str) -> bool:
  """A path bundle.json's FILES may name: variables/..., the card, the bootstrap samples, the
  exports."""
  parts = rel.split("/")
  inside = all(p not in ("", ".", "..") for p in parts) and not rel.startswith("/")
  beside = rel in _RECORDED_BESIDE or rel in EXPORT_FILES.values()
  return beside or (inside and len(parts) > 1 and parts[0] == VARIABLES)


def check_files(spec: Mapping[str, Any], directory: str, replacing: Sequence[str] = ()) -> None:
  """The bundle's files are those bundle.json records (FILES), byte for byte: a ValueError naming
  the first one changed, missing or extra (in variables/, or a bootstrap.npz or an export not
  recorded), or an export whose record (EXPORTS) names no recorded file. A user's own files beside
  them (an approval note) are not the bundle's and are not read. `replacing`: files the caller is
  about to write anew (add_to_bundle's export), not compared, so an export that a killed
  add_to_bundle left half-moved can be written again."""
  recorded = spec.get(FILES)
  if not isinstance(recorded, dict) or not all(
    isinstance(k, str) and _held(k) and isinstance(v, str) for k, v in recorded.items()
  ):
    raise ValueError(
      f"bundle {directory}: {SPEC} '{FILES}' is not the {{file: sha256}} of its files that "
      "export writes; the bundle is damaged or was edited (export it again)"
    )
  _check_exports(spec, directory, replacing)
  found = {
    f"{VARIABLES}/{rel}": sha
    for rel, sha in outputs.tree_digests(os.path.join(directory, VARIABLES)).items()
  }
  for rel in (*_RECORDED_BESIDE, *EXPORT_FILES.values()):
    path = os.path.join(directory, *rel.split("/"))
    if os.path.isfile(path):
      found[rel] = outputs.digest(path)
  recorded = {k: v for k, v in recorded.items() if k not in replacing}
  found = {k: v for k, v in found.items() if k not in replacing}
  wrong = []
  for rel in sorted(set(recorded) | set(found)):
    if rel not in found:
      wrong.append((rel, f"is missing (recorded in {SPEC})"))
    elif rel not in recorded:
      if rel == CARD:
        continue  # a card is not read when predicting; one not recorded is a user's
      wrong.append((rel, f"is not one of the files {SPEC} records"))
    elif found[rel] != recorded[rel]:
      wrong.append((rel, f"differs from the sha256 {SPEC} records"))
  if wrong:
    rel, problem = wrong[0]
    more = f" (and {len(wrong) - 1} more files)" if len(wrong) > 1 else ""
    raise ValueError(
      f"bundle {directory}: {rel} {problem}{more}: the bundle was changed after export, so its "
      "spec, thresholds and card may not be these weights' (export it again)"
    )


def _check_exports(spec: Mapping[str, Any], directory: str, replacing: Sequence[str]) -> None:
  """spec[EXPORTS] is {format: {'file': that format's file, ...}}, each file recorded in FILES,
  and every recorded export file has its record: a ValueError naming the first that is not."""
  exports = spec.get(EXPORTS, {})
  recorded = spec[FILES]
  fail = lambda problem: ValueError(
    f"bundle {directory}: {SPEC} '{EXPORTS}' {problem}; the bundle is damaged or was edited "
    "(export the model again: python -m mdx export_model --bundle=...)"
  )
  if not isinstance(exports, dict):
    raise fail(f"is {shown(exports)}, not {{format: {{'file': ...}}}}")
  for fmt, record in exports.items():
    if fmt not in EXPORT_FILES:
      raise fail(f"names format {fmt!r}; mdx writes {tuple(EXPORT_FILES)}")
    if not isinstance(record, dict) or record.get("file") != EXPORT_FILES[fmt]:
      raise fail(f"{fmt!r} is {shown(record)}; expected {{'file': {EXPORT_FILES[fmt]!r}, ...}}")
    if record["file"] not in recorded and record["file"] not in replacing:
      raise fail(f"{fmt!r} names {record['file']}, which '{FILES}' does not record")
  for fmt, rel in EXPORT_FILES.items():
    if rel in recorded and fmt not in exports and rel not in replacing:
      raise fail(f"has no {fmt!r} record for the recorded {rel}")


def load(directory: str, *, variables: bool = True, replacing: Sequence[str] = ()) -> Bundle:
  """Reads and checks a bundle: its spec, the digests of its files (check_files), then the spec's
  fields against the weights, all before anything is predicted. A missing, damaged or changed
  part is a one-line error naming it.

  variables=False: the spec and every file's digest are checked but no weights are restored and
  the model is not built (Bundle.variables is None): for predict served by the bundle's carried
  StableHLO (mdx.inference.export.serving), which holds the weights it was exported with.
  replacing: files the caller is about to write anew, not checked (check_files)."""
  directory = os.path.abspath(os.path.expanduser(directory))
  spec, variables_path = _checked_files(directory, replacing)
  if not variables:
    return Bundle(directory, spec, None)
  variables = _restore_variables(variables_path, directory)
  check_spec(spec, directory, variables)  # the sizes the weights fix
  bundle = Bundle(directory, spec, variables)
  _check_variables(bundle)
  return bundle


def checked_variables(directory: str) -> str:
  """The variables/ folder of the bundle `directory` once its spec is read and every file's
  digest checked (check_files): for a caller that reads the weights alone (fine-tuning from a
  bundle), so swapped or damaged weights are refused there too."""
  return _checked_files(os.path.abspath(os.path.expanduser(directory)))[1]


def _checked_files(directory: str, replacing: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
  """(spec, variables folder) of the bundle `directory`, its spec's fields (check_spec) and its
  files' digests (check_files) checked; a one-line error naming the first problem."""
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
  check_files(spec, directory, replacing)
  return spec, variables_path


def _restore_variables(path: str, where: str) -> dict[str, Any]:
  import orbax.checkpoint as ocp

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
  lead = (bundle.members,) if bundle.members > 1 else ()  # an ensemble's stacked members
  want = {k: lead + tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(expected)).items()}
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
