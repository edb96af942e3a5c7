"""The model card of a bundle: one Markdown page to read before using the model.

The card is written from a bundle spec (mdx.inference.bundle) alone, so the card says
exactly what the bundle holds: intended use and the input it expects, the data, validation and
test results with their confidence intervals, the operating thresholds, the calibration maps, the
known limits and the provenance. Every number comes from the spec. A number the spec does not have
prints 'not measured'; one it holds as None (a metric with no definition on that set, e.g.
sensitivity without positives) prints 'undefined'. Neither is ever shown as 0. A missing fact (a
commit, a fingerprint) prints 'not recorded'.

The known limits are derived from the numbers (few test positives, wide CIs, a small calibration
set, synthetic data, a weighted loss, no thresholds) so that a reader sees this model's particular
weaknesses and not only boilerplate. Which sections a card has is its bundle kind's choice
(BundleKind.card, looked up by the spec's task in mdx.inference.bundle.render_card, which joins
them: this module renders sections and knows no kinds): classification_card renders a classifier
from a training run (results and data provenance) or from imported weights (no results, no data),
and segmentation_card a 3D segmenter. What the data was (its modality, whether mdx generated it)
is a fact of its source (mdx.data.sources.SourceSpec), read by the name the spec records.

Spec fields read (besides the bundle's model, input and output sections):
  results      {'settings': {'bootstrap_resamples', 'resampling_unit', 'ci_level', 'seed'},
                'validation': SPLIT, 'test': SPLIT}; a classifier's SPLIT is {'n_images',
                'n_patients', 'macro_auroc', 'per_finding': {finding: {'n', 'n_positive',
                'prevalence', 'auroc', 'sensitivity', 'specificity', 'ppv', 'npv', 'brier', 'ece',
                'ece_calibrated'}}} with metrics as {'value', 'ci': [lo, hi]}; a segmenter's is
                {'n_cases', 'mean_dice', 'per_class': {name: {'dice', 'sensitivity',
                'specificity'}}} (numbers or {'value', 'ci'}).
  thresholds   {'policy', 'description', 'chosen_on', 'scale', 'values': {finding: t or None}}
  calibration  {'method', 'fitted_on', 'maps': {finding: platt | isotonic | identity spec}}
  provenance   {'config', 'mdx_version', 'git_commit', 'git_dirty', 'created', 'step', 'workdir',
                'data': {'source', 'fingerprint', 'n_records', 'n_patients', 'splits', 'split_by',
                'train_prevalence', 'card'}} or {'imported_from': {'file', 'sha256', 'format',
                'model'}}; 'card' is the training data's dataset card (mdx.data.card.describe),
                shown under Data by dataset_card_section.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mdx.data import card as card_lib
from mdx.data import sources

# Limits the card flags (see _classification_limits / _segmentation_limits).
MIN_POSITIVES = 10  # fewer test positives than this: the finding's metrics are unreliable
MAX_CI_WIDTH = 0.2  # a CI wider than this says little
MIN_CALIBRATION_IMAGES = 100  # calibration / thresholds fitted on fewer images may not transfer
MIN_CASES = 20  # a segmenter tested on fewer scans than this
SPLITS = ("validation", "test")
NOT_MEASURED = "not measured"  # a number the spec lacks
NOT_RECORDED = "not recorded"  # a fact (a name, a version) the spec lacks
UNDEFINED = "undefined"

_CLASSIFICATION_METRICS = (
  ("auroc", "AUROC"),
  ("sensitivity", "Sensitivity"),
  ("specificity", "Specificity"),
  ("ppv", "PPV"),
  ("npv", "NPV"),
)
_CALIBRATION_METRICS = (
  ("brier", "Brier"),
  ("ece", "ECE raw"),
  ("ece_calibrated", "ECE calibrated"),
)
_SEGMENTATION_METRICS = (
  ("dice", "Dice"),
  ("sensitivity", "Sensitivity"),
  ("specificity", "Specificity"),
  ("hd95", "HD95 (mm)"),
  ("nsd", "NSD"),
)


# ------------------------------------------------------------------------------------ formatting
def _finite(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any, fmt: str = ".3f") -> str:
  """A number as text; None (or nan) is 'undefined'."""
  return format(v, fmt) if _finite(v) else UNDEFINED


def _count(d: Mapping | None, key: str) -> str:
  """An integer field: 'not measured' when absent, 'undefined' when None."""
  if not isinstance(d, Mapping) or key not in d:
    return NOT_MEASURED
  v = d[key]
  return f"{int(v):,}" if _finite(v) else UNDEFINED


def _metric(d: Mapping | None, key: str, fmt: str = ".3f") -> str:
  """A metric field ({'value', 'ci'} or a bare number) as 'v [lo, hi]'."""
  if not isinstance(d, Mapping) or key not in d:
    return NOT_MEASURED
  entry = d[key]
  if isinstance(entry, Mapping):
    value, ci = entry.get("value"), entry.get("ci")
  else:
    value, ci = entry, None
  if not _finite(value):
    return UNDEFINED
  text = format(value, fmt)
  if isinstance(entry, Mapping):
    if isinstance(ci, Sequence) and len(ci) == 2 and all(_finite(c) for c in ci):
      text += f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"
    else:
      text += " [CI undefined]"
  return text


def _ci_width(entry: Any) -> float | None:
  if isinstance(entry, Mapping):
    ci = entry.get("ci")
    if isinstance(ci, Sequence) and len(ci) == 2 and all(_finite(c) for c in ci):
      return float(ci[1]) - float(ci[0])
  return None


def _value(entry: Any) -> Any:
  return entry.get("value") if isinstance(entry, Mapping) else entry


def _cell(text: Any) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  out = [
    "| " + " | ".join(_cell(h) for h in header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
  ]
  out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return out + [""]


def _text(v: Any) -> str:
  return NOT_RECORDED if v is None or v == "" else str(v)


def _code(v: Any) -> str:
  return NOT_RECORDED if v is None or v == "" else f"`{v}`"


def _names(names: Sequence[str], limit: int = 20) -> str:
  names = list(names)
  shown = ", ".join(names[:limit])
  return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --------------------------------------------------------------------------------- spec reading
def _section(spec: Mapping, key: str) -> dict:
  v = spec.get(key)
  return dict(v) if isinstance(v, Mapping) else {}


def _config(spec: Mapping) -> dict:
  return _section(_section(spec, "provenance"), "config")


def _data(spec: Mapping) -> dict:
  return _section(_section(spec, "provenance"), "data")


def _imported(spec: Mapping) -> dict:
  return _section(_section(spec, "provenance"), "imported_from")


def _source(spec: Mapping) -> str | None:
  return _data(spec).get("source") or _section(_config(spec), "data").get("source")


def _splits(spec: Mapping) -> dict[str, dict]:
  results = _section(spec, "results")
  return {s: dict(results[s]) for s in SPLITS if isinstance(results.get(s), Mapping)}


def _ci_level(spec: Mapping) -> str:
  level = _section(_section(spec, "results"), "settings").get("ci_level")
  return f"{100 * level:g}% CI" if _finite(level) else "CI"


def _findings(spec: Mapping) -> list[str]:
  return [str(f) for f in _section(spec, "output").get("findings", [])]


def _source_facts(spec: Mapping) -> sources.SourceSpec | None:
  """The registered source the spec's data came from (None: not recorded, or not registered)."""
  return sources.SOURCES.get(_source(spec) or "")


def _mixed(spec: Mapping) -> list[Mapping]:
  """The datasets of a model trained across several (provenance.data.sources), else []."""
  entries = _data(spec).get("sources")
  return [e for e in entries if isinstance(e, Mapping)] if isinstance(entries, list) else []


def _synthetic(spec: Mapping) -> bool:
  """Trained on images mdx generates: the source, or any dataset of a mixture, is synthetic."""
  names = [e.get("source") for e in _mixed(spec)] or [_source(spec)]
  return any(getattr(sources.SOURCES.get(n or ""), "synthetic", False) for n in names)


def _modality(spec: Mapping) -> str:
  source, facts = _source(spec), _source_facts(spec)
  mixed = _mixed(spec)
  if mixed:  # each dataset's own facts, not the mixture's generic sentence
    return "; ".join(
      f"{e.get('name') or e.get('source')}: {e.get('modality') or 'modality not recorded'}"
      for e in mixed
    )
  if facts is not None and facts.modality:
    return facts.modality
  if source:
    return f"images of data source {source!r} (modality not recorded)"
  if _imported(spec):
    from mdx.data.cxr.findings import NIH_FINDINGS

    if set(_findings(spec)) & set(NIH_FINDINGS):
      return (
        "not recorded (imported weights); judging by the findings, chest radiographs like "
        "those the weights were trained on"
      )
    return "not recorded (imported weights): images like those the weights were trained on"
  return NOT_RECORDED


# ---------------------------------------------------------------------------------------- card
def classification_card(spec: Mapping[str, Any]) -> list[list[str]]:
  """A classifier's card sections (mdx.inference.classifier.KIND)."""
  return [
    _title_classification(spec),
    _intended_use_classification(spec),
    _data_section(spec),
    _results_classification(spec),
    _thresholds(spec),
    _calibration(spec),
    _limits(spec, _classification_limits(spec)),
    _provenance(spec),
  ]


def segmentation_card(spec: Mapping[str, Any]) -> list[list[str]]:
  """A 3D segmenter's card sections (mdx.inference.segmenter.KIND)."""
  return [
    _title_segmentation(spec),
    _intended_use_segmentation(spec),
    _data_section(spec),
    _results_segmentation(spec),
    _limits(spec, _segmentation_limits(spec)),
    _provenance(spec),
  ]


def _title_segmentation(spec: Mapping) -> list[str]:
  name = _section(spec, "model").get("name", "model")
  classes = [str(c) for c in _section(spec, "output").get("class_names", [])]
  mode = _section(spec, "output").get("label_mode")
  kind = "overlapping regions" if mode == "regions" else "classes"
  return [
    f"# Model card: {name}, 3D segmentation",
    "",
    f"A `{name}` that segments {len(classes)} {kind} in volumes: {_names(classes)}.",
    "",
  ]


def _title_classification(spec: Mapping) -> list[str]:
  name = _section(spec, "model").get("name", "model")
  findings = _findings(spec)
  kind = "binary" if len(findings) == 1 else "multi-label"
  origin = " (imported weights)" if _imported(spec) else ""
  return [
    f"# Model card: {name}, {kind} image classification{origin}",
    "",
    f"A `{name}` with one sigmoid output per finding, {len(findings)} findings: "
    f"{_names(findings, 40)}.",
    "",
  ]


def _research_use() -> list[str]:
  return [
    "- **Research use only.** This is not a medical device: it is not cleared or approved for "
    "diagnosis, screening or any decision about a patient.",
  ]


def _standardize_text(s: Mapping) -> str:
  mode = s.get("mode")
  if mode in (None, "none"):
    return "none (the [0, 1] values go in unchanged)"
  if mode == "dataset":
    mean, std = s.get("mean"), s.get("std")
    text = f"'dataset': (x - mean) / (std + 1e-6) with mean {mean}, std {std}"
    stds = std if isinstance(std, Sequence) else [std]
    if stds and all(_finite(v) and v + 1e-6 > 0 for v in stds):
      scale = ", ".join(format(1 / (v + 1e-6), ".6g") for v in stds)
      text += f" = (x - mean) * {scale if len(stds) == 1 else f'[{scale}]'}"
    return text
  return f"'{mode}' (mdx.data.standardize)"


def _intended_use_classification(spec: Mapping) -> list[str]:
  inp = _section(spec, "input")
  size, channels = inp.get("image_size"), inp.get("channels")
  formats = ", ".join(str(f).upper() for f in inp.get("formats", [])) or NOT_RECORDED
  ch = {1: "1 (grayscale)", 3: "3 (RGB; a grayscale image is repeated)"}.get(channels, channels)
  cal = _section(spec, "calibration")
  method = cal.get("method")
  thresholds = _section(spec, "thresholds")
  has_thresholds = any(v is not None for v in _section(thresholds, "values").values())
  lines = ["## Intended use", ""] + _research_use()
  lines += [
    f"- Input: {_modality(spec)}.",
    f"  - Image size {_text(size)} x {_text(size)} pixels; channels: {_text(ch)}; files: "
    f"{formats}.",
    f"  - Resizing: {_text(inp.get('resize'))}.",
    f"  - Values: {_text(inp.get('value_range'))}.",
  ]
  if inp.get("dicom"):
    lines.append(f"  - DICOM: {inp['dicom']}.")
  lines.append(f"  - Standardisation: {_standardize_text(_section(inp, 'standardize'))}.")
  lines += [
    "- Outputs, per finding:",
    "  - **raw score**: the model's sigmoid output in [0, 1]. It ranks cases; it is not a "
    "probability unless the calibration below says so.",
  ]
  if method in (None, "none"):
    lines.append(
      "  - **calibrated probability**: no calibration was fitted, so it equals the raw score "
      "and is not a calibrated probability."
    )
  else:
    lines.append(
      f"  - **calibrated probability**: the raw score through the {method} map fitted on "
      f"{_text(cal.get('fitted_on'))} (Calibration below): read this one as a probability."
    )
  if has_thresholds:
    lines.append(
      "  - **call**: positive when the raw score is at or above the finding's threshold "
      "(Operating thresholds below); no call where a finding has no threshold."
    )
  else:
    lines.append("  - **call**: none; no operating thresholds were chosen.")
  return lines + [""]


def _intended_use_segmentation(spec: Mapping) -> list[str]:
  inp, out = _section(spec, "input"), _section(spec, "output")
  formats = ", ".join(str(f).upper() for f in inp.get("formats", [])) or NOT_RECORDED
  patch = inp.get("patch_size")
  patch = " x ".join(str(p) for p in patch) if isinstance(patch, Sequence) else NOT_RECORDED
  classes = [str(c) for c in out.get("class_names", [])]
  values = list(out.get("label_values", []))
  mode = out.get("label_mode")
  lines = ["## Intended use", ""] + _research_use()
  lines += [
    f"- Input: {_modality(spec)}; channels per voxel: {_text(inp.get('channels'))}; files: "
    f"{formats}.",
    f"  - Standardisation: {_standardize_text(_section(inp, 'standardize'))}.",
  ]
  spacing = inp.get("spacing")
  if isinstance(spacing, Sequence):
    lines.append(
      f"  - Each scan is resampled to {' x '.join(f'{v:g}' for v in spacing)} mm voxels (the "
      "plan's spacing) and the probabilities back to the scan's own grid."
    )
  lines.append(
    f"  - Whole scans are read in sliding windows of {patch} voxels with overlap "
    f"{_text(inp.get('overlap'))}."
  )
  mirror = inp.get("mirror_axes")
  if mirror:
    lines.append(
      f"  - Test-time mirroring: every window is also read mirrored along axes "
      f"{', '.join(str(a) for a in mirror)} and the {2 ** len(mirror)} predictions averaged."
    )
  ensemble = _section(spec, "ensemble")
  if ensemble.get("members"):
    lines.append(
      f"  - An ensemble of {ensemble['members']} models (cross-validation folds): their "
      "probabilities are averaged."
    )
  decision = out.get("postprocess")
  if isinstance(decision, Mapping) and decision.get("largest_component"):
    lines.append(
      f"  - Post-processing: only the largest connected component is kept for "
      f"{_names([str(c) for c in decision['largest_component']])} (it did not lower the "
      "validation Dice)."
    )
  if mode == "regions":
    lines.append(
      f"- Outputs: one sigmoid probability map per region ({out.get('activation')}); regions "
      "may overlap (nested), and the label map writes the innermost region's value."
    )
  else:
    lines.append(
      f"- Outputs: a {out.get('activation', 'softmax')} probability per class and voxel; the "
      "label map writes the most probable class."
    )
  if classes:
    pairs = [f"{c} = {v}" for c, v in zip(classes, values)] if values else classes
    lines.append(f"  - Label values: {', '.join(pairs)}.")
  return lines + [""]


def _data_section(spec: Mapping) -> list[str]:
  lines = ["## Data", ""]
  imported = _imported(spec)
  data = _data(spec)
  if imported and not data:
    return lines + [
      f"No training data is recorded: the weights were imported from "
      f"{_code(imported.get('file'))} ({_text(imported.get('format'))}, sha256 "
      f"{_code(imported.get('sha256'))}). What they were trained on, and how that data was "
      "split, is whatever their authors did; mdx cannot check it.",
      "",
    ]
  if not data:
    return lines + ["No data provenance is recorded in this bundle.", ""]
  config = _config(spec)
  split_cfg = _section(_section(config, "data"), "split")
  splits = _section(data, "splits")
  by = data.get("split_by") or split_cfg.get("by")
  lines += [
    f"- Source: {_code(data.get('source'))}: {_modality(spec)}.",
    f"- Records: {_count(data, 'n_records')}; patients: {_count(data, 'n_patients')}.",
    f"- Splits: train {_count(splits, 'train')}, validation {_count(splits, 'validation')}, "
    f"test {_count(splits, 'test')}; split by {_text(by)}"
    + (
      " (no patient is in two splits)."
      if by == "patient"
      else " (not by patient: images of one patient can be in two splits)."
    ),
  ]
  shares = [f"{k} {split_cfg[k]}" for k in ("test", "val") if _finite(split_cfg.get(k))]
  if shares:
    lines.append(
      f"  - Shares asked for: {', '.join(shares)} of patients; the test split was drawn first."
    )
  lines.append(f"- Data fingerprint: {_code(data.get('fingerprint'))}.")
  prevalence = _section(data, "train_prevalence")
  if prevalence:
    lines += ["", "Training prevalence (share of training images positive):", ""]
    lines += _table(["Finding", "Prevalence"], [(f, _num(p)) for f, p in prevalence.items()])
  else:
    lines.append("")
  return lines + dataset_card_section(_section(data, "card"))


def dataset_card_section(card: Mapping[str, Any]) -> list[str]:
  """The training data's dataset card (mdx.data.card.describe) as a sub-section of Data: every
  record of the source before the split (its split counts too, when the card has them); [] when
  there is no card."""
  if not card:
    return []
  return [
    "The dataset card of the training data (every record of the source, before the split):",
    "",
    *card_lib.markdown(card, level=3).splitlines(),
    "",
  ]


def _bootstrap_line(spec: Mapping) -> str | None:
  s = _section(_section(spec, "results"), "settings")
  if not s:
    return None
  return (
    f"Intervals are {_ci_level(spec)}s from {_text(s.get('bootstrap_resamples'))} bootstrap "
    f"resamples by {_text(s.get('resampling_unit'))} (seed {_text(s.get('seed'))})."
  )


def _results_classification(spec: Mapping) -> list[str]:
  lines = ["## Results", ""]
  splits = _splits(spec)
  if not splits:
    return lines + [
      "Not measured: this bundle holds no validation or test results. Measure them with "
      "`python -m mdx evaluate --bundle=DIR` on labelled data before relying on the outputs.",
      "",
    ]
  if note := _bootstrap_line(spec):
    lines += [note, ""]
  chosen_on = _section(spec, "thresholds").get("chosen_on")
  level = _ci_level(spec)
  for name, split in splits.items():
    lines += [
      f"### {name.capitalize()}",
      "",
      f"{_count(split, 'n_images')} images of {_count(split, 'n_patients')} patients; "
      f"macro AUROC {_metric(split, 'macro_auroc')}.",
      "",
    ]
    if name == chosen_on:
      lines += [
        f"The thresholds were chosen on this {name} set, so its sensitivity and specificity "
        "are optimistic; the test split measures them honestly.",
        "",
      ]
    per = _section(split, "per_finding")
    if not per:
      lines += ["No per-finding results.", ""]
      continue
    lines += _table(
      ["Finding", "n", "Positives", "Prevalence"]
      + [f"{title} [{level}]" for _, title in _CLASSIFICATION_METRICS],
      [
        [f, _count(m, "n"), _count(m, "n_positive"), _metric(m, "prevalence")]
        + [_metric(m, key) for key, _ in _CLASSIFICATION_METRICS]
        for f, m in per.items()
      ],
    )
    lines += [f"Calibration on the {name} set (lower is better; ECE with 10 bins):", ""]
    lines += _table(
      ["Finding"] + [f"{title} [{level}]" for _, title in _CALIBRATION_METRICS],
      [[f] + [_metric(m, key) for key, _ in _CALIBRATION_METRICS] for f, m in per.items()],
    )
  return lines


def _results_segmentation(spec: Mapping) -> list[str]:
  lines = ["## Results", ""]
  splits = _splits(spec)
  if not splits:
    return lines + ["Not measured: this bundle holds no validation or test results.", ""]
  if note := _bootstrap_line(spec):
    lines += [note, ""]
  for name, split in splits.items():
    lines += [
      f"### {name.capitalize()}",
      "",
      f"{_count(split, 'n_cases')} scans; mean Dice {_metric(split, 'mean_dice')}.",
      "",
    ]
    per = _section(split, "per_class")
    if per:
      lines += _table(
        ["Class"] + [title for _, title in _SEGMENTATION_METRICS],
        [[c] + [_metric(m, key) for key, _ in _SEGMENTATION_METRICS] for c, m in per.items()],
      )
    if _finite(split.get("nsd_tolerance_mm")):
      lines += [f"NSD: normalised surface Dice at {split['nsd_tolerance_mm']:g} mm.", ""]
  return lines


def _thresholds(spec: Mapping) -> list[str]:
  t = _section(spec, "thresholds")
  values = _section(t, "values")
  lines = ["## Operating thresholds", ""]
  if not any(v is not None for v in values.values()):
    return lines + [
      f"None. The bundle says: {_text(t.get('description'))}. Choose thresholds on labelled "
      "data from the setting of use.",
      "",
    ]
  lines += [
    f"- Policy: {_code(t.get('policy'))} ({_text(t.get('description'))}).",
    f"- Chosen on: {_text(t.get('chosen_on'))}.",
    f"- Scale: the {_text(t.get('scale'))} score; a case is positive when its score is at or "
    "above the threshold.",
    "",
  ]
  return lines + _table(
    ["Finding", "Threshold"],
    [(f, "none (no call)" if v is None else _num(v, ".4g")) for f, v in values.items()],
  )


def _map_text(m: Any) -> str:
  if not isinstance(m, Mapping):
    return NOT_RECORDED
  kind = m.get("kind")
  if kind == "platt":
    return f"Platt: sigmoid(a * logit(p) + b), a = {_num(m.get('a'), '.4g')}, b = " + _num(
      m.get("b"), ".4g"
    )
  if kind == "isotonic":
    x = [v for v in m.get("x", []) if _finite(v)]
    span = f" over raw scores {_num(min(x), '.4g')} to {_num(max(x), '.4g')}" if x else ""
    return f"isotonic: {len(m.get('x', []))} knots{span}"
  if kind == "identity":
    return f"identity (not calibrated: {_text(m.get('reason'))})"
  return f"unknown kind {kind!r}"


def _calibration(spec: Mapping) -> list[str]:
  cal = _section(spec, "calibration")
  maps = _section(cal, "maps")
  method = cal.get("method")
  lines = ["## Calibration", ""]
  if method in (None, "none") and all(
    isinstance(m, Mapping) and m.get("kind") == "identity" for m in maps.values()
  ):
    reasons = sorted({str(m.get("reason")) for m in maps.values() if m.get("reason")})
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return lines + [
      f"None{why}: the calibrated probability equals the raw score.",
      "",
    ]
  lines += [
    f"- Method: {_text(method)}, fitted on {_text(cal.get('fitted_on'))}; applied to the raw "
    "score.",
    "",
  ]
  return lines + _table(["Finding", "Map"], [(f, _map_text(m)) for f, m in maps.items()])


# -------------------------------------------------------------------------------------- limits
def _limits(spec: Mapping, items: list[str]) -> list[str]:
  return ["## Known limits", ""] + [f"- {item}" for item in items] + [""]


def _common_limits(spec: Mapping) -> list[str]:
  items = []
  source = _source(spec)
  if _synthetic(spec):
    items.append(
      f"**Synthetic data.** It was trained and tested on `{source}`, images mdx generates: its "
      "numbers say nothing about patients, and it must not be applied to real scans."
    )
  if _imported(spec) and not _splits(spec):
    items.append(
      "**Not validated in mdx.** Imported weights with no measured results: measure them on "
      "labelled data from the setting of use with `python -m mdx evaluate --bundle=DIR` first."
    )
  elif _splits(spec):
    where = f" (`{source}`)" if source else ""
    items.append(
      f"**Internal validation only.** Validation and test images come from the same source"
      f"{where} as the training images; external validation has not been done. Run "
      "`python -m mdx evaluate --bundle=DIR` on data from another site or scanner."
    )
  by = _data(spec).get("split_by")
  if by and by != "patient":
    items.append(
      f"**Split by {by}, not by patient.** Images of one patient can be in training and test: "
      "the test numbers can be optimistic."
    )
  return items


def _classification_limits(spec: Mapping) -> list[str]:
  items = _common_limits(spec)
  splits = _splits(spec)
  level = _ci_level(spec)
  for name in SPLITS:
    per = _section(splits.get(name, {}), "per_finding")
    few = [
      f"{f} ({int(m['n_positive'])})"
      for f, m in per.items()
      if _finite(m.get("n_positive")) and m["n_positive"] < MIN_POSITIVES
    ]
    if few and name == "test":
      items.append(
        f"**Few test positives (< {MIN_POSITIVES}): unreliable.** {', '.join(few)}: their "
        "AUROC, sensitivity and PPV rest on a handful of cases."
      )
    elif few:
      items.append(
        f"**Few validation positives (< {MIN_POSITIVES}).** {', '.join(few)}: their "
        "thresholds and calibration maps were fitted on a handful of cases."
      )
    undefined = [f for f, m in per.items() if "auroc" in m and not _finite(_value(m["auroc"]))]
    if undefined:
      items.append(
        f"**AUROC undefined on the {name} set** (no positives or no negatives): "
        f"{', '.join(undefined)}."
      )
    wide = []
    for f, m in per.items():
      keys = [
        title
        for key, title in _CLASSIFICATION_METRICS
        if (_ci_width(m.get(key)) or 0) > MAX_CI_WIDTH
      ]
      if keys:
        wide.append(f"{f} ({', '.join(keys)})")
    if (_ci_width(splits.get(name, {}).get("macro_auroc")) or 0) > MAX_CI_WIDTH:
      wide.insert(0, "macro AUROC")
    if wide:
      items.append(
        f"**Wide {level}s (width > {MAX_CI_WIDTH}) on the {name} set:** {'; '.join(wide)}. "
        "These numbers are imprecise."
      )
  config = _config(spec)
  cal = _section(spec, "calibration")
  calibrated = cal.get("method") not in (None, "none")
  weighted = _section(config, "loss").get("name") == "weighted_bce"
  resampled = bool(_section(config, "data").get("resample"))
  if weighted or resampled:
    why = " and ".join(
      w for w, on in (("a weighted loss", weighted), ("resampled training data", resampled)) if on
    )
    fix = (
      "read the calibrated probabilities (and the ECE calibrated column) instead"
      if calibrated
      else "this bundle has no calibration, so treat raw scores as rankings only"
    )
    items.append(
      f"**Raw scores are inflated.** It was trained with {why}: raw scores of rare findings "
      f"overstate their probability; {fix}."
    )
  thresholds = _section(spec, "thresholds")
  no_thresholds = not any(v is not None for v in _section(thresholds, "values").values())
  if _imported(spec):
    items.append(
      "**No thresholds and no calibration** for imported weights: predict writes raw scores "
      "only, without calls, and the raw scores are not calibrated for any population. The "
      "preprocessing recorded here (size, channels, standardisation) must match what the "
      "weights were trained with; mdx cannot check that."
    )
  else:
    if no_thresholds:
      items.append("**No operating thresholds**: predict makes no positive/negative calls.")
    if not calibrated:
      items.append(
        "**Not calibrated**: raw scores are not probabilities for the population of use."
      )
  if calibrated or not no_thresholds:
    fitted = cal.get("fitted_on") or thresholds.get("chosen_on")
    n = splits.get(fitted or "", {}).get("n_images")
    if n is None and fitted:
      n = _section(_data(spec), "splits").get(fitted)
    if _finite(n) and n < MIN_CALIBRATION_IMAGES:
      items.append(
        f"**Small {fitted} set ({int(n)} images < {MIN_CALIBRATION_IMAGES})** for the "
        "calibration maps and thresholds: they may not transfer to new data."
      )
    identity = [
      f"{f} ({m.get('reason') or 'no reason recorded'})"
      for f, m in _section(cal, "maps").items()
      if calibrated and isinstance(m, Mapping) and m.get("kind") == "identity"
    ]
    if identity:
      items.append(f"**Not calibrated for some findings:** {'; '.join(identity)}.")
  if _section(spec, "provenance").get("git_dirty"):
    items.append(
      "**Uncommitted code.** The code had uncommitted changes when the bundle was made: the "
      "commit below does not reproduce it exactly."
    )
  return items


def _segmentation_limits(spec: Mapping) -> list[str]:
  items = _common_limits(spec)
  splits = _splits(spec)
  level = _ci_level(spec)
  for name, split in splits.items():
    n = split.get("n_cases")
    if _finite(n) and n < MIN_CASES:
      items.append(f"**Few {name} scans ({int(n)} < {MIN_CASES}):** its Dice scores are imprecise.")
    per = _section(split, "per_class")
    undefined = [c for c, m in per.items() if "dice" in m and not _finite(_value(m["dice"]))]
    if undefined:
      items.append(
        f"**Dice undefined on the {name} set** (the class is absent from every scan): "
        f"{', '.join(undefined)}."
      )
    low = [
      f"{c} ({_num(_value(m['dice']))})"
      for c, m in per.items()
      if _finite(_value(m.get("dice"))) and _value(m["dice"]) < 0.5
    ]
    if low:
      items.append(f"**Low Dice (< 0.5) on the {name} set:** {', '.join(low)}.")
    wide = [c for c, m in per.items() if (_ci_width(m.get("dice")) or 0) > MAX_CI_WIDTH]
    if wide:
      items.append(
        f"**Wide {level}s of Dice (width > {MAX_CI_WIDTH}) on the {name} set:** {', '.join(wide)}."
      )
  if _section(spec, "provenance").get("git_dirty"):
    items.append(
      "**Uncommitted code.** The code had uncommitted changes when the bundle was made: the "
      "commit below does not reproduce it exactly."
    )
  return items


# ---------------------------------------------------------------------------------- provenance
def _provenance(spec: Mapping) -> list[str]:
  p = _section(spec, "provenance")
  commit = _text(p.get("git_commit"))
  if p.get("git_dirty"):
    commit += " (with uncommitted changes)"
  elif p.get("git_dirty") is False:
    commit += " (clean)"
  lines = [
    "## Provenance",
    "",
    f"- mdx version: {_text(p.get('mdx_version'))}; git commit: {commit}.",
    f"- Created: {_text(p.get('created'))}.",
  ]
  if "step" in p or "workdir" in p:
    lines.append(f"- Training step: {_text(p.get('step'))}; run folder: {_code(p.get('workdir'))}.")
  imported = _imported(spec)
  if imported:
    lines.append(
      f"- Imported from {_code(imported.get('file'))} (format {_text(imported.get('format'))}, "
      f"model {_text(imported.get('model'))}), sha256 {_code(imported.get('sha256'))}."
    )
  lines.append("")
  config = p.get("config")
  if config:
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    lines += [
      "<details><summary>Resolved config</summary>",
      "",
      "```json",
      text,
      "```",
      "",
      "</details>",
      "",
    ]
  return lines
