"""A dataset card: what a built 2D source holds, counted from its labels and metadata alone.

Why: before training on a dataset (or reading a model trained on one) a researcher needs its
size in images, patients and studies, its views, how many films are positive, negative and
unknown for each finding, who the patients are (sex, age) and what was left out and why. Every
number here is counted from the source's in-memory arrays (labels(), patient_ids(), extra), so a
card needs no image decoded; build_from_tables builds a source from its label table without
needing the image files at all.

describe(source, ...) -> card, a JSON-ready dict:
  source, facts {modality, synthetic, label_source, label_values}, images, patients, studies
  (None: not recorded), views {view: images} (None: not recorded), findings {finding:
  {positive, negative, unknown, prevalence}} (prevalence among the known labels), sex {value:
  images}, age {n, unknown, median, q1, q3, min, max} (years; None: not recorded), excluded
  {reason: images} (the source's own count, source.excluded, and the caller's), skipped,
  unknown_terms, files {checked, listed, present}, splits {name: {images, patients, positive
  {finding: n}}}, reader_agreement {finding: kappa} (where the source module computes it).
markdown(card) and text(card) render it for a report and for the terminal.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mdx import jsonio
from mdx.data import sources
from mdx.data.image import file_source

UNKNOWN = "unknown"  # the key of values a record does not have ('' sex or view)


# ------------------------------------------------------------------------------------ the facts
def source_module(name: str):
  """The module of a registered source built by its module's make_source (sources._from_module),
  or None (phantoms, volume sources: built by functions of sources.py)."""
  import importlib

  spec = sources.SOURCES.get(name)
  if spec is None:
    return None
  module = inspect.getclosurevars(spec.build).nonlocals.get("module")
  return importlib.import_module(module) if isinstance(module, str) else None


def source_facts(name: str) -> dict[str, Any]:
  """What the source declares of itself: SourceSpec.modality and synthetic, and its module's FACTS
  (label_source, label_values, ...) where it has them."""
  spec = sources.SOURCES.get(name)
  facts: dict[str, Any] = {}
  if spec is not None:
    facts = {"modality": spec.modality, "synthetic": spec.synthetic}
  module = source_module(name)
  facts.update({k: v for k, v in getattr(module, "FACTS", {}).items() if k not in facts})
  return facts


# ------------------------------------------------------------------------------------- counting
def _strings(values) -> np.ndarray:
  return np.asarray(["" if v is None else str(v).strip() for v in np.asarray(values, object)])


def _counts(values) -> dict[str, int]:
  """{value: records} with '' as UNKNOWN, most frequent first (ties by name)."""
  counted = Counter(v or UNKNOWN for v in _strings(values))
  return {k: int(n) for k, n in sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))}


def age_summary(ages) -> dict[str, Any]:
  """{n, unknown, median, q1, q3, min, max} of ages in years (nan = unknown; quartiles by numpy's
  linear interpolation); the statistics are None when no age is known."""
  ages = np.asarray(ages, np.float64)
  known = ages[np.isfinite(ages)]
  out: dict[str, Any] = {"n": int(known.size), "unknown": int(ages.size - known.size)}
  if not known.size:
    return {**out, **dict.fromkeys(("median", "q1", "q3", "min", "max"))}
  q1, median, q3 = np.percentile(known, [25, 50, 75])
  return {
    **out,
    "median": float(median),
    "q1": float(q1),
    "q3": float(q3),
    "min": float(known.min()),
    "max": float(known.max()),
  }


def finding_counts(labels: np.ndarray, findings: Sequence[str]) -> dict[str, dict[str, Any]]:
  """{finding: {positive, negative, unknown, prevalence}} of labels [N, F] (1, 0, nan)."""
  labels = np.asarray(labels, np.float32).reshape(-1, len(findings))
  out = {}
  for j, f in enumerate(findings):
    column = labels[:, j]
    pos, neg = int((column == 1).sum()), int((column == 0).sum())
    out[f] = {
      "positive": pos,
      "negative": neg,
      "unknown": int(np.isnan(column).sum()),
      "prevalence": pos / (pos + neg) if pos + neg else None,
    }
  return out


def check_exclusions(result) -> dict[str, int]:
  """{status: records} of the records mdx.data.check found unusable (a CheckResult; None: {})."""
  if result is None:
    return {}
  from mdx.data import check

  counted = Counter(result.status[i] for i in result.bad)
  return {f"{s} (mdx.data.check)": int(counted[s]) for s in check.BAD if counted[s]}


def describe(
  source,
  name: str | None = None,
  excluded: Mapping[str, int] | None = None,
  splits: Mapping[str, Sequence[int]] | None = None,
  files: Mapping[str, Any] | None = None,
  reader_agreement: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
  """The card of a built 2D source (see the module docstring). name: the registered source name
  (its facts; default source.name); excluded: {reason: images} left out after the source was
  built (check_exclusions of the record check), added to the source's own source.excluded;
  splits: {name: record indices} (mdx.data.splits); files: what build_from_tables saw of the
  image files; reader_agreement: {finding: kappa}."""
  name = str(name or getattr(source, "name", "") or "source")
  findings = tuple(source.findings)
  labels = np.asarray(source.labels(), np.float32)
  patients = np.asarray(source.patient_ids()).astype(str)
  extra = getattr(source, "extra", None) or {}
  card: dict[str, Any] = {
    "source": name,
    "facts": source_facts(name),
    "images": int(len(patients)),
    "patients": int(len(np.unique(patients))),
    "studies": None,
    "views": None,
    "findings": finding_counts(labels, findings),
    "sex": None,
    "age": None,
  }
  if "study_id" in extra:
    studies = _strings(extra["study_id"])
    if (studies != "").any():
      # a study id is unique within its patient (PadChest's and MIMIC's are global; the pair is
      # safe either way); records without one count as studies of their own
      pairs = {(p, s) if s else (p, f"#{i}") for i, (p, s) in enumerate(zip(patients, studies))}
      card["studies"] = len(pairs)
  if "view" in extra and (_strings(extra["view"]) != "").any():
    card["views"] = _counts(extra["view"])
  if "sex" in extra and (_strings(extra["sex"]) != "").any():
    card["sex"] = _counts(extra["sex"])
  if "age" in extra and np.isfinite(np.asarray(extra["age"], np.float64)).any():
    card["age"] = age_summary(extra["age"])
  left_out = {k: int(v) for k, v in (getattr(source, "excluded", None) or {}).items()}
  for reason, n in (excluded or {}).items():
    left_out[reason] = left_out.get(reason, 0) + int(n)
  card["excluded"] = {k: v for k, v in left_out.items() if v}
  card["skipped"] = int(getattr(source, "skipped", 0) or 0)
  unknown_terms = getattr(source, "unknown_terms", None)
  if unknown_terms:
    card["unknown_terms"] = dict(Counter(unknown_terms).most_common())
  if files is not None:
    card["files"] = dict(files)
  if splits:
    card["splits"] = {
      split: {
        "images": int(len(idx)),
        "patients": int(len(np.unique(patients[np.asarray(idx, np.int64)]))),
        "positive": {
          f: int((labels[np.asarray(idx, np.int64), j] == 1).sum()) for j, f in enumerate(findings)
        },
      }
      for split, idx in splits.items()
    }
  if reader_agreement:
    card["reader_agreement"] = dict(reader_agreement)
  return jsonio.jsonable(card)


# --------------------------------------------------------------------- building from the tables
# What a source reads from its image files themselves, so that it cannot be built from its label
# table alone: {source: (config.data field, the values of it that need the files (None: any), why
# and what to do instead)}. Every other source checks its files only through
# file_source.keep_existing, which on_error='unchecked' turns off.
NEEDS_FILES: dict[str, tuple[str | None, tuple[Any, ...] | None, str]] = {
  "folders": (None, None, "its labels are the names of its image folders"),
  "nlm": (None, None, "its labels are in the image file names (MCUCXR_0001_0.png: 0 normal)"),
  "siim": (
    "patient_id",
    ("header", None),
    "its patients, studies, views, sex and age are in the DICOM headers "
    "(config.data.patient_id='header'); --config.data.patient_id=image_id counts each image as "
    "its own patient from the table alone",
  ),
  "rsna": (
    "read_headers",
    (True,),
    "config.data.read_headers reads sex, age and view from the DICOM headers; give the headers "
    "table instead (config.data.headers) or leave read_headers unset",
  ),
}


def needs_files(data_config) -> str | None:
  """Why config.data's source cannot be described from its label table alone (NEEDS_FILES), or
  None when it can."""
  name = file_source.config_get(data_config, "source")
  if name not in NEEDS_FILES:
    return None
  field, values, why = NEEDS_FILES[name]
  if field is None or file_source.config_get(data_config, field) in values:
    return why
  return None


def build_from_tables(data_config, seed: int = 0):
  """(source, files) of config.data built from its tables alone, with the rows, filters and labels
  training would have: config.data.on_error is 'unchecked' on a copy of the config
  (file_source.keep_existing keeps every row, its file present or not), and an unset
  config.data.images (the image folder) an empty temporary folder, so a source that lists its
  folder finds nothing and takes every row's path; a mixture's entries each so. files =
  {'checked': False, 'listed': rows kept, 'present': how many of their image files exist}.

  A source that reads its image files themselves (NEEDS_FILES: folders, NLM, SIIM's default
  patient_id='header', RSNA's read_headers) is a ValueError saying why and what to do instead."""
  name = file_source.config_get(data_config, "source")
  spec = sources.spec(name, sources.IMAGE)
  with tempfile.TemporaryDirectory(prefix="mdx-card-") as empty:
    if name == "mixture":
      from mdx.data import mixture

      parts = [_unchecked(e, empty) for e in mixture.entries(data_config)]
      data_config = _with_field(data_config, "sources", parts)
    else:
      data_config = _unchecked(data_config, empty)
    source = spec.build(data_config, seed)
    paths = [p for part in getattr(source, "parts", [source]) for p in part.paths()]
    present = sum(os.path.exists(p) for p in paths)
  return source, {"checked": False, "listed": len(paths), "present": int(present)}


def _unchecked(data_config, empty_folder: str):
  """A copy of one source's config.data with on_error='unchecked' and, when unset, images the
  empty folder; a ValueError when the source reads its image files themselves (needs_files)."""
  name = file_source.config_get(data_config, "source")
  why = needs_files(data_config)
  if why:
    raise ValueError(
      f"source {name!r} cannot be described from its table alone: {why} (or describe it with "
      "its images: the card command's --config=EXPERIMENT without --tables_only)"
    )
  data_config = _with_field(data_config, "on_error", "unchecked")
  spec = sources.spec(name, sources.IMAGE)
  if "images" in spec.fields and not file_source.config_get(data_config, "images"):
    data_config = _with_field(data_config, "images", empty_folder)
  return data_config


def _with_field(data_config, field: str, value):
  """A copy of config.data (ConfigDict or dict) with field set."""
  if isinstance(data_config, Mapping):
    return {**data_config, field: value}
  copy = data_config.copy_and_resolve_references()
  with copy.unlocked():
    copy[field] = value
  return copy


# ------------------------------------------------------------------------------------ rendering
def _n(v: Any) -> str:
  return "not recorded" if v is None else f"{int(v):,}"


def _years(v: Any) -> str:
  return "-" if v is None else f"{v:.1f}".removesuffix(".0")


def _share(v: Any) -> str:
  return "-" if v is None else f"{v:.3f}"


def _counts_text(counts: Mapping[str, int] | None) -> str:
  if not counts:
    return "not recorded"
  return ", ".join(f"{k} {int(n):,}" for k, n in counts.items())


def _age_text(age: Mapping[str, Any] | None) -> str:
  if not age:
    return "not recorded"
  if not age.get("n"):
    return f"unknown for all {age.get('unknown', 0):,} images"
  return (
    f"median {_years(age['median'])} years (quartiles {_years(age['q1'])}-{_years(age['q3'])}, "
    f"range {_years(age['min'])}-{_years(age['max'])}) over {age['n']:,} images; unknown for "
    f"{age['unknown']:,}"
  )


def summary_lines(card: Mapping[str, Any]) -> list[str]:
  """The card's counts as sentences (without the per-finding table): shared by markdown, text
  and the reports that include a card (mdx.evaluate)."""
  facts = card.get("facts") or {}
  lines = [
    f"Images {_n(card.get('images'))}; patients {_n(card.get('patients'))}; studies "
    f"{_n(card.get('studies'))}.",
    f"Views: {_counts_text(card.get('views'))}.",
    f"Sex: {_counts_text(card.get('sex'))}.",
    f"Age: {_age_text(card.get('age'))}.",
  ]
  said = (("modality", "Images"), ("label_source", "Labels"), ("label_values", "Values"))
  for key, title in said:
    if facts.get(key):
      lines.append(f"{title}: {facts[key]}.".replace("..", "."))
  if facts.get("synthetic"):
    lines.append("Synthetic: generated by mdx, not images of patients.")
  excluded = card.get("excluded") or {}
  lines.append(
    "Left out: " + (_counts_text(excluded) if excluded else "nothing") + f" (skipped in all: "
    f"{int(card.get('skipped') or 0):,})."
  )
  if card.get("unknown_terms"):
    terms = list(card["unknown_terms"].items())
    shown = ", ".join(f"'{t}' {n:,}" for t, n in terms[:10])
    more = f" and {len(terms) - 10} more" if len(terms) > 10 else ""
    lines.append(f"Label terms outside the mapping (images): {shown}{more}.")
  files = card.get("files")
  if files and not files.get("checked", True):
    lines.append(
      f"Image files not required: {files['present']:,} of the {files['listed']:,} the table "
      "names are present."
    )
  for split, s in (card.get("splits") or {}).items():
    lines.append(f"Split {split}: {s['images']:,} images of {s['patients']:,} patients.")
  return lines


def finding_rows(card: Mapping[str, Any]) -> list[list[str]]:
  """[finding, positive, negative, unknown, prevalence(, kappa)] rows of the card's findings."""
  kappa = card.get("reader_agreement")
  rows = []
  for f, c in (card.get("findings") or {}).items():
    row = [f, f"{c['positive']:,}", f"{c['negative']:,}", f"{c['unknown']:,}"]
    row.append(_share(c.get("prevalence")))
    if kappa is not None:
      row.append(_share(kappa.get(f)))
    rows.append(row)
  return rows


def finding_header(card: Mapping[str, Any]) -> list[str]:
  header = ["Finding", "Positive", "Negative", "Unknown", "Prevalence"]
  return header + (["Readers' kappa"] if card.get("reader_agreement") is not None else [])


def split_rows(card: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
  """(header, rows) of positives per finding in each split; ([], []) without splits."""
  splits = card.get("splits") or {}
  if not splits:
    return [], []
  header = ["Finding"] + [f"{name} positive" for name in splits]
  rows = [
    [f] + [f"{s['positive'].get(f, 0):,}" for s in splits.values()]
    for f in card.get("findings") or {}
  ]
  return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731
  out = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
  return out + ["| " + " | ".join(map(cell, r)) + " |" for r in rows] + [""]


def markdown(card: Mapping[str, Any], level: int = 1) -> str:
  """The card as Markdown, its title a heading of `level`."""
  lines = [f"{'#' * level} Dataset card: {card.get('source')}", ""]
  lines += [f"- {line}" for line in summary_lines(card)] + [""]
  lines += _md_table(finding_header(card), finding_rows(card))
  header, rows = split_rows(card)
  if rows:
    lines += _md_table(header, rows)
  return "\n".join(lines)


def text(card: Mapping[str, Any]) -> str:
  """The card as plain text for a terminal (aligned columns)."""
  lines = [f"Dataset card: {card.get('source')}"] + [f"  {s}" for s in summary_lines(card)]
  for header, rows in ((finding_header(card), finding_rows(card)), split_rows(card)):
    if not rows:
      continue
    table = [header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines.append("")
    for r in table:
      cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
      lines.append("  " + "  ".join(cells).rstrip())
  return "\n".join(lines) + "\n"


def reader_agreement(data_config) -> dict[str, float | None] | None:
  """{finding: kappa between the readers} where the source's module computes it from its table
  (VinDr's reader_agreement); None where it cannot (no such function, or a consensus table)."""
  from absl import logging

  compute = getattr(source_module(data_config.source), "reader_agreement", None)
  if compute is None:
    return None
  try:
    return compute(data_config)
  except ValueError as e:  # one consensus row per image: there are no readers to compare
    logging.info("no reader agreement in the card: %s", e)
    return None
