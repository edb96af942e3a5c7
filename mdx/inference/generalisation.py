"""The generalisation matrix: every classification bundle on every dataset, operating points fixed.

Why: a generalisation paper's table trains on each dataset and tests on every other. Here each
bundle is one trained model (its training data named by its provenance) and each dataset an
experiment file whose config.data names the source; every pair is an external validation
(mdx.inference.external) without its per-pair report: the bundle's preprocessing, thresholds and
calibration as shipped, every record of the dataset (no split), the records of every dataset
checked before any bundle predicts (mdx.data.prepare, under each config.data.on_error).

  rows       bundles, labelled by their folder name and what they were trained on
  columns    datasets, labelled by the names given (default: the experiment file's stem)
  cells      per bundle finding matched to a dataset label (names and mdx.data.cxr.findings'
             synonyms): external AUROC with a patient-bootstrap 95% CI, the bundle's internal
             (test, else validation) AUROC from bundle.json, and external - internal with the CI
             of external.auroc_difference; macro: the mean over the findings evaluable in the
             cell (so two cells' macros compare only where their findings agree: each names them)
  not evaluable   a finding the dataset does not label, or labels without both classes: said,
             with the reason, and never written as a number

A bundle's raw scores on a dataset are predicted once (external.predict_source) and serve every
finding. Writes out_dir/matrix.csv (one row per bundle x dataset x finding, 'macro' included,
numbers in their own columns), matrix.md (rows = bundles, columns = datasets: a macro table and one
per finding) and figures/macro_auroc.png (a heat map of macro AUROC, annotated), claimed before any
bundle loads (a file there that mdx did not write is one line naming it, unless overwrite), staged
and moved into place when all are written, matrix.md last (mdx.outputs).

With several processes (python -m mdx local N python -m mdx generalisation ...) each predicts its
share of every dataset's records and process 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from mdx import outputs
from mdx.data import prepare, sources
from mdx.data.cxr import findings as findings_lib
from mdx.evaluate import bootstrap as B
from mdx.evaluate import plots, report
from mdx.inference import bundle as bundle_lib
from mdx.inference import external
from mdx.inference.classifier import KIND, ImageClassifier

TITLE = "Generalisation matrix"
TABLE, REPORT, FIGURE = "matrix.csv", "matrix.md", "figures/macro_auroc.png"
MACRO = "macro"
CSV_COLUMNS = (
  "bundle",
  "trained_on",
  "dataset",
  "dataset_source",
  "same_source",
  "finding",
  "dataset_label",
  "evaluable",
  "reason",
  "n",
  "n_positive",
  "external_auroc",
  "external_ci_low",
  "external_ci_high",
  "internal_split",
  "internal_auroc",
  "internal_ci_low",
  "internal_ci_high",
  "difference",
  "difference_ci_low",
  "difference_ci_high",
  "difference_method",
)
_UNDEFINED = {"value": None, "ci": [None, None]}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A column: its name and the resolved experiment config whose config.data names the data (only
  config.data and config.seed are read: preprocessing comes from each bundle)."""

  name: str
  config: Any


def claim(out_dir: str, overwrite: bool = False) -> outputs.OutputFolder:
  """The matrix's OutputFolder, claimed: an OutputError naming a file of out_dir that mdx did not
  write where the matrix goes (nothing when overwrite). Before any work."""
  folder = outputs.OutputFolder(out_dir, "generalisation", overwrite=overwrite, completes=(REPORT,))
  folder.claim(files=(TABLE, REPORT, FIGURE))
  return folder


def trained_on(spec: Mapping) -> str:
  """What the bundle was trained on, from its provenance: the source name(s), imported weights'
  file, or 'not recorded'."""
  provenance = spec.get("provenance") or {}
  data = provenance.get("data") or {}
  several = data.get("sources")
  if isinstance(several, Sequence) and not isinstance(several, str) and several:
    return " + ".join(str(s.get("source") if isinstance(s, Mapping) else s) for s in several)
  source = data.get("source") or ((provenance.get("config") or {}).get("data") or {}).get("source")
  if source:
    return str(source)
  imported = provenance.get("imported_from") or {}
  if imported:
    return f"imported weights ({os.path.basename(str(imported.get('file') or '?'))})"
  return "not recorded"


# ------------------------------------------------------------------------------ one pair
def _mean_samples(samples: Sequence[np.ndarray | None]) -> np.ndarray | None:
  """Per resample, the mean of the findings defined in it (as the macro of evaluate_classification
  averages); None unless every finding has samples of one length (drawn together)."""
  if not samples or any(s is None for s in samples) or len({len(s) for s in samples}) != 1:
    return None
  stack = np.stack([np.asarray(s, np.float64) for s in samples])
  ok = np.isfinite(stack)
  count = ok.sum(0)
  return np.where(count > 0, np.where(ok, stack, 0).sum(0) / np.maximum(count, 1), np.nan)


def _ci(samples: np.ndarray | None, level: float) -> list[float | None]:
  if samples is None:
    return [None, None]
  lo, hi = B.percentile_ci(samples, level)
  return [lo, hi] if np.isfinite(lo) else [None, None]


def macro_comparison(
  pair: external.PairEvaluation, bundle_findings: Sequence[str], results: Mapping
):
  """Macro AUROC over the findings whose external AUROC is defined, internal and external, with
  the CI of their difference (external.auroc_difference: from the per-resample means when both
  sides kept their samples, else from the two CIs)."""
  over = [f for f in pair.names if pair.comparison[f]["external"]["value"] is not None]
  out = {"over": over, "internal": dict(_UNDEFINED), "external": dict(_UNDEFINED)}
  if not over:
    out["difference"] = external.auroc_difference(out["internal"], out["external"], None, None)
    return out
  ext_level = pair.result["settings"]["ci_level"]
  # evaluate_classification's macro is this mean: a finding without both classes is nan in every
  # resample, so it drops out of each resample's mean as it does here
  out["external"] = dict(pair.result["macro"]["auroc"])
  ext_samples = _mean_samples([pair.external_samples.get(f"{f}/auroc") for f in over])
  internal = [pair.comparison[f]["internal"]["value"] for f in over]
  int_samples = None
  if None not in internal:
    key = f"{pair.internal_split}/{{}}/auroc"
    int_samples = _mean_samples([pair.internal_samples.get(key.format(f)) for f in over])
    ci = _ci(int_samples, pair.internal_level)
    recorded = (results.get(pair.internal_split) or {}).get("macro_auroc")
    if ci == [None, None] and set(over) == set(bundle_findings) and recorded:
      ci = external.entry(recorded)["ci"]  # the bundle's own macro is over the same findings
    out["internal"] = {"value": float(np.mean(internal)), "ci": ci}
  out["difference"] = external.auroc_difference(
    out["internal"],
    out["external"],
    int_samples,
    ext_samples,
    internal_level=pair.internal_level,
    external_level=ext_level,
    level=0.95,
  )
  return out


def _undefined_reason(pf: Mapping) -> str | None:
  if pf["n"] == 0:
    return "labelled by the dataset, but unknown on every record"
  if pf["n_positive"] == 0:
    return f"no positives among its {pf['n']} known labels: AUROC undefined"
  if pf["n_positive"] == pf["n"]:
    return f"no negatives among its {pf['n']} known labels: AUROC undefined"
  return None


def _cell(
  bundle, match, pair: external.PairEvaluation | None, dataset_source: str, same: bool
) -> dict:
  """One bundle x dataset cell: per bundle finding its numbers or why it is not evaluable."""
  findings: dict[str, dict] = {}
  for f in bundle.spec["output"]["findings"]:
    if f not in match.matched:
      findings[f] = {"evaluable": False, "reason": match.not_evaluable[f]}
      continue
    pf = pair.result["per_finding"][f]
    c = pair.comparison[f]
    entry = {
      "dataset_label": match.matched[f],
      "matched_by": match.how[f],
      "n": pf["n"],
      "n_positive": pf["n_positive"],
      "internal": c["internal"],
      "external": c["external"],
      "difference": c["difference"],
    }
    why = _undefined_reason(pf) if c["external"]["value"] is None else None
    findings[f] = {"evaluable": why is None, **({"reason": why} if why else {}), **entry}
  macro = (
    macro_comparison(pair, bundle.spec["output"]["findings"], bundle.spec.get("results") or {})
    if pair is not None
    else {"over": [], "internal": dict(_UNDEFINED), "external": dict(_UNDEFINED)}
  )
  return {
    "dataset_source": dataset_source,
    "same_source": same,
    "internal_split": pair.internal_split if pair else None,
    "n_images": pair.result["n_images"] if pair else None,
    "n_patients": pair.result["n_patients"] if pair else None,
    "findings": findings,
    "macro": macro,
  }


# ------------------------------------------------------------------------------ the matrix
def _load(path) -> bundle_lib.Bundle:
  bundle = path if isinstance(path, bundle_lib.Bundle) else bundle_lib.load(os.fspath(path))
  if bundle.task != KIND.task:
    raise ValueError(
      f"bundle {bundle.path} is a {bundle.task} model; the generalisation matrix reads classifiers"
    )
  return bundle


def _row_names(bundles: Sequence[bundle_lib.Bundle]) -> list[str]:
  """Each bundle's folder name, or its whole path where two folders share a name."""
  short = [os.path.basename(os.path.normpath(b.path)) for b in bundles]
  return [s if short.count(s) == 1 else b.path for s, b in zip(short, bundles)]


def expand_bundles(paths: Sequence[str]) -> list[str]:
  """The bundle folders `paths` name, in order: a bundle (bundle.json) as it is, a run's workdir
  as its bundle/, and a folder of runs (a sweep's, one model per dataset or per variant) as the
  bundle of every run in it that has one, by run name. A path that is none of these is a
  FileNotFoundError naming it."""
  out = []
  for given in paths:
    path = os.path.abspath(os.path.expanduser(given))
    if os.path.isfile(os.path.join(path, bundle_lib.SPEC)):
      out.append(path)
    elif os.path.isfile(os.path.join(path, "bundle", bundle_lib.SPEC)):
      out.append(os.path.join(path, "bundle"))
    else:
      runs = sorted(
        os.path.join(path, name, "bundle")
        for name in (os.listdir(path) if os.path.isdir(path) else ())
        if os.path.isfile(os.path.join(path, name, "bundle", bundle_lib.SPEC))
      )
      if not runs:
        raise FileNotFoundError(
          f"--bundles: {given} is no bundle ({bundle_lib.SPEC}), run (bundle/) or folder of runs "
          "with bundles (a sweep's); train or export one first"
        )
      out.extend(runs)
  return out


def generalisation_matrix(
  bundles: Sequence[str | bundle_lib.Bundle],
  datasets: Sequence[Dataset],
  out_dir: str,
  *,
  bootstrap: int = 1000,
  seed: int = 0,
  batch_size: int | None = None,
  progress: bool = True,
  overwrite: bool = False,
) -> dict:
  """Evaluates every bundle on every dataset (see the module docstring) and writes the matrix into
  out_dir; returns {'bundles', 'datasets', 'cells': {bundle: {dataset: cell}}, 'settings'}.

  bundles: bundle folders (or loaded Bundles); datasets: named resolved configs; bootstrap:
  patient-level resamples per pair (0: no CIs); batch_size: images per forward pass on each
  process (default 8 per device); overwrite: replace files in out_dir that mdx did not write.
  Before any prediction: the output is claimed, every bundle loaded and checked, every dataset's
  records checked (a corrupt file is one error naming it, or skipped under on_error='skip').
  """
  folder = claim(out_dir, overwrite)  # on every process: none waits for a process 0 that refused
  datasets = list(datasets)
  if not bundles or not datasets:
    raise ValueError("the generalisation matrix needs at least one bundle and one dataset")
  seen = [d.name for d in datasets]
  twice = sorted({n for n in seen if seen.count(n) > 1})
  if twice:
    raise ValueError(f"dataset names {twice} are given twice; name each dataset once (--names)")
  loaded = [_load(b) for b in bundles]
  rows = _row_names(loaded)
  prepared = {}
  for d in datasets:
    logging.info("checking the records of dataset %s (%s)", d.name, d.config.data.source)
    # every record, no split; the check's lists go to the check cache's folder (named in the
    # log): out_dir holds only what the matrix claimed
    prepared[d.name] = prepare.prepare_dataset(
      d.config.data, d.config.seed, sources.IMAGE, None, split=False
    ).source
  matches = {
    (r, d.name): findings_lib.match_findings(
      b.spec["output"]["findings"], prepared[d.name].findings
    )
    for r, b in zip(rows, loaded)
    for d in datasets
  }
  if not any(m.matched for m in matches.values()):
    raise ValueError(
      "no finding of any bundle matches a label of any dataset (by name or the synonym table of "
      "mdx.data.cxr.findings); check --bundles and --datasets"
    )
  cells: dict[str, dict[str, dict]] = {}
  for row, bundle in zip(rows, loaded):
    classifier = ImageClassifier(bundle, batch_size)
    trained = trained_on(bundle.spec)
    cells[row] = {}
    for d in datasets:
      source, match = prepared[d.name], matches[(row, d.name)]
      pair = None
      if match.matched:
        logging.info("%s on %s: %d images, findings %s", row, d.name, len(source), match.matched)
        raw_all = external.predict_source(classifier, source, progress=progress)  # once per pair
        pair = external.evaluate_pair(
          bundle, classifier, source, match, raw_all, bootstrap=bootstrap, seed=seed
        )
      same = str(d.config.data.source) in [s.strip() for s in trained.split("+")]
      cells[row][d.name] = _cell(bundle, match, pair, str(d.config.data.source), same)
  matrix = {
    "kind": "generalisation_matrix",
    "bundles": [
      {
        "name": row,
        "path": b.path,
        "model": b.spec["model"]["name"],
        "trained_on": trained_on(b.spec),
        "findings": list(b.spec["output"]["findings"]),
        "thresholds": (b.spec["thresholds"].get("description") or "none"),
        "calibration": b.spec["calibration"].get("method"),
      }
      for row, b in zip(rows, loaded)
    ],
    "datasets": [
      {
        "name": d.name,
        "source": str(d.config.data.source),
        "n_images": len(prepared[d.name]),
        "n_patients": len(set(prepared[d.name].patient_ids())),
        "skipped": int(getattr(prepared[d.name], "skipped", 0) or 0),
        "labels": list(prepared[d.name].findings),
      }
      for d in datasets
    ],
    "cells": cells,
    "settings": {"bootstrap_resamples": int(bootstrap), "seed": int(seed), "ci_level": 0.95},
  }
  if jax.process_index() != 0:  # one writer
    return matrix
  with folder:
    write_table(folder.path(TABLE), matrix)
    _heatmap(folder.path(FIGURE), matrix)
    outputs.write_text(folder.path(REPORT), render_markdown(matrix))
    folder.commit()
  return matrix


# ------------------------------------------------------------------------------ writing
def _number(x) -> Any:
  return "" if x is None else float(x)


def table_rows(matrix: Mapping) -> list[list]:
  """matrix.csv's rows (CSV_COLUMNS), bundle by bundle, dataset by dataset, the macro first."""
  out = []
  for b in matrix["bundles"]:
    for d in matrix["datasets"]:
      cell = matrix["cells"][b["name"]][d["name"]]
      head = [b["name"], b["trained_on"], d["name"], d["source"], cell["same_source"]]
      macro = cell["macro"]
      entries = [(MACRO, {"evaluable": bool(macro["over"]), **macro})]
      entries += list(cell["findings"].items())
      for f, e in entries:
        if f == MACRO:
          label = ";".join(e["over"])
          reason = "" if e["over"] else "no finding of the bundle is evaluable on this dataset"
        else:
          label, reason = e.get("dataset_label", ""), e.get("reason", "")
        ext, inn = e.get("external") or _UNDEFINED, e.get("internal") or _UNDEFINED
        diff = e.get("difference") or {"value": None, "ci": [None, None], "method": None}
        number = e["evaluable"] or f == MACRO
        out.append(
          head
          + [f, label, e["evaluable"], reason, e.get("n", ""), e.get("n_positive", "")]
          + [_number(ext["value"] if number else None)]
          + [_number(v if number else None) for v in ext["ci"]]
          + [cell["internal_split"] or ""]
          + [_number(inn["value"]), *(_number(v) for v in inn["ci"])]
          + [_number(diff["value"] if number else None)]
          + [_number(v if number else None) for v in diff["ci"]]
          + [(diff.get("method") or "") if number else ""]
        )
  return out


def write_table(path: str, matrix: Mapping) -> str:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = outputs.csv_writer(f, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(table_rows(matrix))
  return path


def _signed(x) -> str:
  return f"{x:+.3f}"


def cell_text(entry: Mapping, split: str | None) -> str:
  """'0.812 [0.774, 0.855]; internal (test) 0.850 [...]; difference -0.038 [-0.090, 0.010]'."""
  text = report._fmt(entry["external"])
  inn, diff = entry.get("internal") or _UNDEFINED, entry.get("difference") or {}
  if inn.get("value") is not None:
    text += f"; internal ({split}) {report._fmt(inn)}"
  if diff.get("value") is not None:
    lo, hi = diff.get("ci") or [None, None]
    ci = "" if lo is None else f" [{_signed(lo)}, {_signed(hi)}]"
    text += f"; difference {_signed(diff['value'])}{ci}"
  return text


def _over(over: Sequence[str], findings: Sequence[str]) -> str:
  """Which of the bundle's findings a macro averages, shortest first: 'all 14 findings', '13 of 14
  findings (not Pneumonia)', or those averaged when most are left out ('1 of 14 findings:
  Pneumonia')."""
  left = [f for f in findings if f not in over]
  if not left:
    return f"all {len(findings)} findings"
  if len(left) <= len(over):
    return f"{len(over)} of {len(findings)} findings (not {', '.join(left)})"
  return f"{len(over)} of {len(findings)} findings: {', '.join(over)}"


def _same(cell: Mapping) -> str:
  return (
    " (same source as training: its records may include the training set)"
    if cell["same_source"]
    else ""
  )


def render_markdown(matrix: Mapping) -> str:
  bundles, datasets = matrix["bundles"], matrix["datasets"]
  columns = [d["name"] for d in datasets]
  header = ["Bundle (trained on)", *columns]
  blocks: list[tuple] = [("h1", TITLE)]
  blocks.append(
    (
      "p",
      "Every bundle on every dataset: each bundle's preprocessing, thresholds and calibration "
      "are used as shipped, never refitted; every record of each dataset is evaluated (no "
      "split), its records checked first. A cell gives the external AUROC with its 95% CI "
      f"({matrix['settings']['bootstrap_resamples']} bootstrap resamples by patient), the "
      "bundle's internal AUROC from its bundle.json results, and external - internal with a 95% "
      "CI (independent bootstrap where the bundle kept its internal samples, else a normal "
      "approximation from the two CIs; matrix.csv names the method per cell). 'Not evaluable': "
      "the dataset does not label the finding, or its labels lack positives or negatives; such "
      "cells are never numbers.",
    )
  )
  blocks.append(("h2", "Datasets"))
  blocks.append(
    (
      "table",
      ["Dataset", "Source", "Images", "Patients", "Skipped files", "Labels"],
      [
        [
          d["name"],
          d["source"],
          d["n_images"],
          d["n_patients"],
          d["skipped"],
          ", ".join(d["labels"]),
        ]
        for d in datasets
      ],
    )
  )
  blocks.append(("h2", "Bundles"))
  blocks.append(
    (
      "table",
      ["Bundle", "Trained on", "Model", "Findings", "Thresholds", "Calibration", "Path"],
      [
        [
          b["name"],
          b["trained_on"],
          b["model"],
          ", ".join(b["findings"]),
          b["thresholds"],
          b["calibration"] or "none",
          b["path"],
        ]
        for b in bundles
      ],
    )
  )
  blocks.append(("h2", "Macro AUROC"))
  blocks.append(
    (
      "p",
      "The mean AUROC over the bundle's findings evaluable on the dataset, named in each cell: "
      "two cells compare only where they average the same findings. A dataset of the source the "
      "bundle was trained on is marked: its records may include the training set.",
    )
  )
  rows = []
  for b in bundles:
    row = [f"{b['name']} ({b['trained_on']})"]
    for d in datasets:
      cell = matrix["cells"][b["name"]][d["name"]]
      m = cell["macro"]
      if not m["over"]:
        row.append("not evaluable: no finding of the bundle is evaluable here")
      else:
        text = cell_text(m, cell["internal_split"])
        row.append(f"{text} ({_over(m['over'], b['findings'])}){_same(cell)}")
    rows.append(row)
  blocks.append(("table", header, rows))
  blocks.append(("figure", "Macro AUROC, external (95% CI)", FIGURE))
  order = list(dict.fromkeys(f for b in bundles for f in b["findings"]))
  for f in order:
    blocks.append(("h2", f))
    rows = []
    for b in bundles:
      if f not in b["findings"]:
        continue
      row = [f"{b['name']} ({b['trained_on']})"]
      for d in datasets:
        cell = matrix["cells"][b["name"]][d["name"]]
        e = cell["findings"][f]
        if not e["evaluable"]:
          row.append(f"not evaluable: {e['reason']}")
          continue
        label = "" if e["dataset_label"] == f else f" (as '{e['dataset_label']}')"
        row.append(
          f"{cell_text(e, cell['internal_split'])}; {e['n_positive']}/{e['n']} positive"
          f"{label}{_same(cell)}"
        )
      rows.append(row)
    blocks.append(("table", header, rows))
  return report._render_md(blocks)


def _heatmap(path: str, matrix: Mapping) -> str:
  bundles, datasets = matrix["bundles"], matrix["datasets"]
  values = np.full((len(bundles), len(datasets)), np.nan)
  notes = [["" for _ in datasets] for _ in bundles]
  for i, b in enumerate(bundles):
    for j, d in enumerate(datasets):
      cell = matrix["cells"][b["name"]][d["name"]]
      m = cell["macro"]
      if m["external"]["value"] is None:
        continue
      values[i, j] = m["external"]["value"]
      lo, hi = m["external"]["ci"]
      lines = [f"{values[i, j]:.3f}"]
      if lo is not None:
        lines.append(f"[{lo:.3f}, {hi:.3f}]")
      if (m.get("difference") or {}).get("value") is not None:
        lines.append(f"vs internal {_signed(m['difference']['value'])}")
      lines.append(f"{len(m['over'])} of {len(b['findings'])} findings")
      if cell["same_source"]:
        lines.append("same source")
      notes[i][j] = "\n".join(lines)
  return plots.heatmap_png(
    path,
    values,
    [f"{b['name']}\n({b['trained_on']})" for b in bundles],
    [d["name"] for d in datasets],
    notes,
    title="Macro AUROC of each bundle (rows) on each dataset (columns), 95% CI",
    label="macro AUROC",
  )
