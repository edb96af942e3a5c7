"""External validation: a bundle's classifier, exactly as shipped, on a dataset it never saw.

Why: a model's internal test AUROC says little about another hospital's films (other scanners, a
different population, labels mined by another labeler). External validation runs the bundle as it
would be deployed -- its preprocessing, and its thresholds and calibration chosen on the internal
validation set, never refitted here -- on EVERY record of a dataset (no split), and puts the two
datasets side by side. The records are checked first, as training checks its own
(mdx.data.prepare): a corrupt file stops the evaluation before any prediction with one error naming
it, or with config.data.on_error='skip' is left out, listed in out_dir/skipped_records.csv and
counted in the report.

  findings     the bundle's findings matched to the dataset's label columns by name, by the
               datasets' mappings onto the canonical findings (findings.canonical_of;
               `python -m mdx findings` prints them), or by a user's finding_map; the rest are
               listed as not evaluable (bundle) or ignored (dataset), with the reason
  scores       raw sigmoid scores [N, F], predicted in chunks (images are never all in memory):
               AUROC, average precision, and sensitivity, specificity, PPV, NPV at the bundle's
               raw thresholds
  calibrated   the bundle's calibration maps applied to the raw scores: Brier score and ECE
  comparison   external - internal AUROC per finding with a CI: by independent bootstrap (the
               difference of independently resampled AUROCs, percentile interval) when the bundle
               kept its internal bootstrap samples, else by a normal approximation from the two CIs

Writes out_dir/metrics.json, report.md, report.html, figures/ and labels.csv, probs.csv (raw
scores), calibrated.csv (mdx.evaluate.report.layout('evaluation', ids=True)): claimed before the
bundle predicts anything (a file there that mdx did not write is one line naming it, unless
overwrite), staged, and moved into place when the whole report is written (mdx.outputs).

Several processes (python -m mdx local N python -m mdx evaluate --bundle=...) split the records:
each predicts a contiguous block on its own devices, the raw scores are gathered in record order,
and every process computes the same metrics from them (so all finish together, none waits long at
exit for another); process 0 alone writes the report.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from scipy import stats

from mdx import runtime
from mdx.data import prepare, sources
from mdx.data.cxr import findings as findings_lib
from mdx.data.image.file_source import config_get
from mdx.evaluate import bootstrap as B
from mdx.evaluate import classification as CL
from mdx.evaluate import plots, report
from mdx.inference import bundle as bundle_lib
from mdx.inference import predict as predict_lib
from mdx.inference.classifier import KIND, ImageClassifier

TITLE = "External validation"
# config.data fields that say where an external dataset lives (shown in the report).
_LOCATION_FIELDS = ("root", "metadata", "images", "prepared_dir", "num_patients")
# Independent-bootstrap differences use every (internal, external) pair up to this many pairs.
_MAX_PAIRS = 4_000_000


def parse_finding_map(text: str | None) -> dict[str, str | None]:
  """'Effusion=Pleural Effusion,Mass=' -> {'Effusion': 'Pleural Effusion', 'Mass': None} (an empty
  right side leaves the bundle finding out)."""
  out: dict[str, str | None] = {}
  for part in (text or "").split(","):
    if not part.strip():
      continue
    key, sep, value = part.partition("=")
    if not sep or not key.strip():
      raise ValueError(
        f"--finding_map entry {part.strip()!r} is not BUNDLE_FINDING=DATASET_FINDING "
        "(e.g. --finding_map='Effusion=Pleural Effusion,Mass=')"
      )
    out[key.strip()] = value.strip() or None
  return out


def predict_source(
  classifier: ImageClassifier, source, *, progress: bool = True, workers: int | None = None
) -> np.ndarray:
  """Raw scores [N, F] of every record of a 2D source, streamed in chunks of the batch size.

  With several processes each predicts its share of the records (runtime.process_share) on its
  own devices, so the classifier's mesh must be local (its default), and every process returns
  all N rows, gathered in record order. A record that cannot be read stops every process with a
  ValueError (the one that read it names the record).
  """
  if any(d.process_index != jax.process_index() for d in classifier.mesh.devices.flat):
    raise ValueError(
      "predict_source splits the records by process: build the ImageClassifier on this "
      "process's devices (mesh=None, runtime.local_mesh()), not a mesh of every process"
    )
  n, size = len(source), classifier.batch_size
  share = runtime.process_share(n)
  raw = np.zeros((len(share), len(classifier.findings)), np.float32)
  workers = workers or min(8, os.cpu_count() or 1)
  chunks = [share[s : s + size] for s in range(0, len(share), size)]
  load = lambda i: classifier.preprocess(source[int(i)]["image"])
  where = f" (process {jax.process_index()}'s share of {n})" if jax.process_count() > 1 else ""
  done, start, last, failure = 0, time.perf_counter(), 0.0, None
  for chunk, results in predict_lib.read_ahead(load, chunks, workers):
    for i, (_, error) in zip(chunk, results):
      if error is not None:  # an external set is evaluated whole: a bad record stops it, named
        failure = error
        if isinstance(error, (OSError, ValueError)):
          failure = ValueError(f"external dataset record {i} ({source.image_ids()[i]}): {error}")
        break
    if failure is not None:
      break
    x = np.stack([value for value, _ in results])
    raw[done : done + len(x)] = classifier.predict(x)
    done += len(x)
    now = time.perf_counter() - start
    if progress and (now - last > 10 or done == len(share)):
      rate = done / max(now, 1e-9)
      logging.info(
        "external: %d/%d images%s  %.1f img/s  ETA %ds",
        done,
        len(share),
        where,
        rate,
        (len(share) - done) / max(rate, 1e-9),
      )
      last = now
  # Every process learns of a failure, instead of the others waiting for its rows forever.
  failed = runtime.gather_rows(np.array([failure is not None], np.int32))
  if failure is not None:
    raise failure
  if failed.any():
    raise ValueError(
      f"external dataset: process {int(np.argmax(failed))} stopped at a record it could not "
      "read (its error names the record)"
    )
  return runtime.gather_rows(raw)


def entry(x) -> dict:
  """A {'value', 'ci'} entry from a bundle's results (None or missing -> undefined)."""
  if isinstance(x, Mapping):
    ci = list(x.get("ci") or [None, None])
    return {"value": x.get("value"), "ci": ci}
  return {"value": x, "ci": [None, None]}


def internal_split(results: Mapping) -> tuple[str | None, Mapping]:
  """The bundle's internal reference: its test split, else validation (k-fold runs)."""
  for name in ("test", "validation"):
    if isinstance(results.get(name), Mapping):
      return name, results[name]
  return None, {}


def auroc_difference(
  internal: Mapping,
  external: Mapping,
  internal_samples: np.ndarray | None,
  external_samples: np.ndarray | None,
  *,
  internal_level: float = 0.95,
  external_level: float = 0.95,
  level: float = 0.95,
) -> dict:
  """external - internal AUROC with a `level` CI, for two independent sets of cases.

  With both bootstrap samples: the percentile interval of the differences of independently
  resampled AUROCs (every pair of samples, or index-wise pairs beyond _MAX_PAIRS). Else, with both
  CIs: a normal approximation, each standard error read off its CI as width / (2 z).
  """
  iv, ev = internal.get("value"), external.get("value")
  out = {"value": None, "ci": [None, None], "method": None}
  if iv is None or ev is None:
    out["method"] = "undefined: AUROC missing " + (
      "internally" if iv is None else "on the external dataset"
    )
    return out
  out["value"] = float(ev) - float(iv)
  if internal_samples is not None and external_samples is not None and len(internal_samples):
    a = np.asarray(internal_samples, np.float64)
    b = np.asarray(external_samples, np.float64)
    if len(a) * len(b) <= _MAX_PAIRS:
      diffs = np.subtract.outer(b, a).ravel()
    else:
      m = min(len(a), len(b))
      diffs = b[:m] - a[:m]
    lo, hi = B.percentile_ci(diffs, level)
    if np.isfinite(lo):
      out.update(
        ci=[lo, hi],
        method=(
          f"independent bootstrap ({len(a)} internal x {len(b)} external resamples, "
          "percentile interval of the differences)"
        ),
      )
      return out
  ici, eci = internal.get("ci") or [None, None], external.get("ci") or [None, None]
  if None in ici or None in eci:
    out["method"] = "no interval: a CI is missing (bootstrap=0 or too few cases)"
    return out

  def se(ci, lvl):
    return (ci[1] - ci[0]) / (2 * stats.norm.ppf(0.5 + lvl / 2))

  z = stats.norm.ppf(0.5 + level / 2)
  half = z * np.hypot(se(ici, internal_level), se(eci, external_level))
  out.update(
    ci=[out["value"] - half, out["value"] + half],
    method="normal approximation from the two CIs (no internal bootstrap samples in the bundle)",
  )
  return out


def _dataset_description(config, source) -> dict:
  data = config.data
  location = {}
  for key in _LOCATION_FIELDS:
    if key in data and config_get(data, key) not in (None, ""):
      location[key] = config_get(data, key)
  if sources.spec(data.source).synthetic:  # generated from the seed: it is where the data is
    location["seed"] = int(config.seed)
  return {
    "source": data.source,
    "location": location,
    "findings": list(source.findings),
    "skipped": int(getattr(source, "skipped", 0) or 0),
  }


def _prevalence(n_pos, n) -> str:
  if n_pos is None or not n:
    return "not reported"
  return f"{n_pos / n:.3f} ({n_pos}/{n})"


def _internal_prevalence(pf: Mapping | None) -> str:
  if not pf:
    return "not reported"
  if pf.get("n_positive") is not None and pf.get("n"):
    return _prevalence(pf["n_positive"], pf["n"])
  p = entry(pf.get("prevalence"))["value"]
  return "not reported" if p is None else f"{p:.3f}"


def _auroc_png(path: str, rows: list[tuple[str, dict, dict]], split: str | None) -> str:
  """Internal and external AUROC with CIs per finding (a forest plot)."""
  plt = plots.plt
  fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(rows) + 1.2))
  for k, (_, internal, external) in enumerate(rows):
    y = len(rows) - 1 - k
    for dy, e, color, label in (
      (0.12, internal, "C0", f"internal ({split})"),
      (-0.12, external, "C1", "external"),
    ):
      if e.get("value") is None:
        continue
      lo, hi = e.get("ci") or [None, None]
      if lo is not None:
        ax.plot([lo, hi], [y + dy, y + dy], color=color, lw=1.5)
      ax.plot([e["value"]], [y + dy], "o", color=color, ms=5, label=label if k == 0 else None)
  ax.axvline(0.5, color="lightgray", lw=1, ls="--")
  ax.set_ylim(-0.6, len(rows) - 0.4)
  ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=8)
  ax.set_xlim(0, 1)
  ax.set_xlabel("AUROC (95% CI)", fontsize=8)
  ax.tick_params(labelsize=8)
  if rows:
    ax.legend(loc="lower left", fontsize=7)
  return plots._save(fig, path)


def _preface(ext: Mapping, result: Mapping, figure: str) -> list[tuple]:
  b, d, m = ext["bundle"], ext["dataset"], ext["matching"]
  split, comparison = ext["internal_split"], ext["comparison"]
  internal = ext["internal"]
  loc = ", ".join(f"{k}={v}" for k, v in d["location"].items()) or "no location fields"
  blocks: list[tuple] = [("h2", TITLE)]
  blocks.append(
    (
      "p",
      f"Model: bundle {b['path']} ({b['model']}, {len(b['findings'])} findings). Its "
      f"preprocessing, thresholds ({b['thresholds_description']}, chosen on "
      f"{b['thresholds_chosen_on'] or 'no set: none chosen'}) and calibration ({b['calibration']}, "
      f"fitted on {b['calibration_fitted_on'] or 'no set'}) are used as shipped, never refitted "
      "on this dataset: these are the numbers of the model deployed as it is.",
    )
  )
  skipped = ""
  if d["skipped"]:
    skipped = f"; {d['skipped']} files skipped by the source's on_error policy"
  blocks.append(
    (
      "p",
      f"External dataset: source '{d['source']}' ({loc}): {result['n_images']} images of "
      f"{result['n_patients']} patients, every record evaluated (no split){skipped}. Its "
      f"labels: {', '.join(d['findings'])}.",
    )
  )
  rows = []
  for f in b["findings"]:
    pf_int = internal.get(f)
    if f in m["matched"]:
      pf = result["per_finding"][f]
      note = m["how"][f]
      if pf["n_positive"] == 0 or pf["n_positive"] == pf["n"]:
        note += "; no positives or no negatives: AUROC undefined"
      rows.append(
        [
          f,
          m["matched"][f],
          note,
          _internal_prevalence(pf_int),
          _prevalence(pf["n_positive"], pf["n"]),
        ]
      )
    else:
      rows.append(
        [f, "-", f"not evaluable: {m['not_evaluable'][f]}", _internal_prevalence(pf_int), "-"]
      )
  blocks.append(("h3", "Findings and prevalence"))
  blocks.append(
    (
      "p",
      "Bundle findings are matched to the dataset's labels by name (ignoring case, spaces, "
      "underscores and hyphens), by the datasets' mappings onto one canonical finding list "
      "(python -m mdx findings prints them), or by the "
      "finding map given. Prevalence: internal from the bundle's results "
      f"({split or 'none recorded'}), external measured on the known labels here.",
    )
  )
  blocks.append(
    (
      "table",
      [
        "Bundle finding",
        "Dataset label",
        "Matched by",
        f"Internal prevalence ({split or '-'})",
        "External prevalence",
      ],
      rows,
    )
  )
  if m["ignored"]:
    blocks.append(
      (
        "p",
        "Dataset labels the bundle does not predict (ignored): " + ", ".join(m["ignored"]) + ".",
      )
    )
  if comparison:
    blocks.append(("h3", "Internal vs external AUROC"))
    blocks.append(
      (
        "p",
        "Difference = external - internal AUROC, with a 95% CI for two independent sets of "
        "cases: by independent bootstrap (internal bootstrap samples kept in the bundle, the "
        "external ones resampled here, percentile interval of their differences) or, where the "
        "bundle has no internal samples, by a normal approximation from the two CIs. The "
        "method is named per finding. A negative difference is the usual price of a new "
        "population, scanner or labeler.",
      )
    )
    rows = [
      [
        f,
        report._fmt(c["internal"]),
        report._fmt(c["external"]),
        report._fmt(c["difference"]),
        c["difference"]["method"] or "-",
      ]
      for f, c in comparison.items()
    ]
    blocks.append(
      (
        "table",
        [
          "Finding",
          f"Internal AUROC ({split or '-'})",
          "External AUROC",
          "Difference [95% CI]",
          "CI method",
        ],
        rows,
      )
    )
    blocks.append(("figure", "AUROC with 95% CIs, internal and external", figure))
    metrics = ("sensitivity", "specificity", "ppv", "npv")
    rows = []
    for f in comparison:
      pf = result["per_finding"][f]
      t = pf["threshold"]
      row = [f, "none" if t is None else f"{t:.4g}"]
      for name in metrics:
        row += [
          report._fmt(entry((internal.get(f) or {}).get(name))),
          report._fmt(pf["metrics"].get(name)),
        ]
      cal_int = (internal.get(f) or {}).get("brier_calibrated")
      row += [report._fmt(entry(cal_int)), report._fmt(pf["metrics"].get("brier"))]
      rows.append(row)
    header = ["Finding", "Threshold (raw score)"]
    for name in metrics:
      header += [f"{report._NAMES[name]} internal", f"{report._NAMES[name]} external"]
    header += ["Brier (calibrated) internal", "Brier (calibrated) external"]
    blocks.append(("h3", "At the bundle's thresholds and calibration"))
    blocks.append(
      (
        "p",
        "The same thresholds on both datasets: a shift in sensitivity and specificity shows "
        "how the score distribution moved; PPV and NPV also move with prevalence.",
      )
    )
    blocks.append(("table", header, rows))
  return blocks


@dataclasses.dataclass
class PairEvaluation:
  """A bundle's fixed operating points on one dataset's matched findings (bundle order)."""

  names: list[str]  # bundle findings evaluated
  labels: np.ndarray  # [N, k] the dataset's labels of them (nan = unknown)
  raw: np.ndarray  # [N, k] raw scores
  calibrated: np.ndarray  # [N, k] the bundle's calibration applied
  result: dict  # CL.evaluate_classification's dict, its bootstrap samples popped
  external_samples: dict  # '<finding>/auroc' -> [B]
  internal_split: str | None
  internal: dict  # the bundle's per-finding results of internal_split
  internal_samples: dict  # '<split>/<finding>/auroc' -> [B] (bundle.bootstrap())
  internal_level: float
  comparison: dict  # finding -> {'dataset_finding', 'internal', 'external', 'difference'}


def evaluate_pair(
  bundle: bundle_lib.Bundle,
  classifier: ImageClassifier,
  source,
  match: findings_lib.FindingMatch,
  raw_all: np.ndarray,
  *,
  bootstrap: int,
  seed: int,
) -> PairEvaluation:
  """The bundle's raw scores [N, F] on every record of `source` -> its metrics at its own
  thresholds and calibration on the matched findings, and internal vs external AUROC.

  Between predicting and writing: evaluate_external's report and every cell of the generalisation
  matrix (mdx.inference.generalisation) are computed here."""
  names = list(match.matched)
  cols = [classifier.findings.index(f) for f in names]
  ds_cols = [list(source.findings).index(match.matched[f]) for f in names]
  labels = np.asarray(source.labels(), np.float64)[:, ds_cols]
  raw = raw_all[:, cols].astype(np.float64)
  calibrated = classifier.calibrate(raw_all)[:, cols]
  spec_t, spec_c = bundle.spec["thresholds"], bundle.spec["calibration"]
  chosen_on, fitted_on = spec_t.get("chosen_on"), spec_c.get("fitted_on")
  result = CL.evaluate_classification(
    labels,
    raw,
    names,
    patient_ids=source.patient_ids(),
    threshold_policy=spec_t.get("policy"),
    bootstrap=bootstrap,
    seed=seed,
    keep_bootstrap=("auroc",),
    thresholds=classifier.thresholds[cols],
    thresholds_chosen_on=(
      f"the internal {chosen_on} (fixed in the bundle, not refitted here)"
      if chosen_on
      else "no set: the bundle has no thresholds, so no positive/negative calls"
    ),
    calibrated_probs=calibrated,
    calibrated_with=(
      f"the probabilities of the bundle's {spec_c.get('method')} calibration (fitted on the "
      f"internal {fitted_on}, not refitted here)"
      if spec_c.get("method") not in (None, "none")
      else "the raw scores (the bundle has no calibration)"
    ),
  )
  external_samples = result.pop("bootstrap_samples")
  results = bundle.spec.get("results") or {}
  split, internal_results = internal_split(results)
  internal = dict(internal_results.get("per_finding") or {})
  internal_samples = bundle.bootstrap()
  level = float((results.get("settings") or {}).get("ci_level") or 0.95)
  comparison = {}
  for f in names:
    ie = entry((internal.get(f) or {}).get("auroc"))
    ee = result["per_finding"][f]["metrics"]["auroc"]
    comparison[f] = {
      "dataset_finding": match.matched[f],
      "internal": ie,
      "external": ee,
      "difference": auroc_difference(
        ie,
        ee,
        internal_samples.get(f"{split}/{f}/auroc"),
        external_samples.get(f"{f}/auroc"),
        internal_level=level,
        external_level=result["settings"]["ci_level"],
        level=0.95,
      ),
    }
  return PairEvaluation(
    names,
    labels,
    raw,
    calibrated,
    result,
    external_samples,
    split,
    internal,
    internal_samples,
    level,
    comparison,
  )


def evaluate_external(
  bundle: bundle_lib.Bundle | str,
  config,
  out_dir: str,
  *,
  finding_map: Mapping[str, str | None] | None = None,
  bootstrap: int = 1000,
  seed: int = 0,
  batch_size: int | None = None,
  progress: bool = True,
  overwrite: bool = False,
) -> dict:
  """Evaluates a classification bundle on every record of config.data's dataset and writes the
  external validation report into out_dir; returns what metrics.json says.

  bundle: a loaded Bundle or its folder; config: a resolved experiment config whose data section
  names the external dataset (only the dataset fields are read: preprocessing comes from the
  bundle); finding_map: {bundle finding: dataset finding or None (leave out)}, over the name and
  synonym matching; bootstrap: patient-level resamples of the external set (0: no CIs);
  batch_size: images per forward pass on each process (default 8 per device). Every record is
  decoded once before any prediction (mdx.data.prepare, under config.data.on_error); the check's
  lists go into out_dir. overwrite: replace files in out_dir that mdx did not write (else they
  are refused before anything is predicted).

  With several processes (see the module docstring) process 0 writes the report and returns what
  metrics.json says; the others write nothing and return the same evaluation unserialised (numpy
  numbers, no 'figures').
  """
  # Before any work, on every process (none waits for a process 0 that refused): a user's file
  # where the report goes is one line naming it.
  writes = report.layout("evaluation", ids=True, copied=False)
  folder = writes.claim(out_dir, "evaluate", overwrite=overwrite)
  if isinstance(bundle, (str, os.PathLike)):
    bundle = bundle_lib.load(os.fspath(bundle))
  if bundle.task != KIND.task:
    raise ValueError(
      f"bundle {bundle.path} is a {bundle.task} model; external validation reads classifiers"
    )
  # Every record, no split, but checked as training checks its data (config.data.on_error): a
  # corrupt file stops the evaluation before any prediction, naming it, or is skipped and listed
  # in out_dir/skipped_records.csv (and counted in the report).
  prepared = prepare.prepare_dataset(config.data, config.seed, sources.IMAGE, out_dir, split=False)
  source = prepared.source
  bundle_findings = list(bundle.spec["output"]["findings"])
  match = findings_lib.match_findings(bundle_findings, source.findings, finding_map)
  if not match.matched:
    raise ValueError(
      f"no finding of the bundle ({', '.join(bundle_findings)}) matches a label "
      f"of the dataset ({', '.join(source.findings)}); pass a finding map "
      "(--finding_map=BUNDLE_FINDING=DATASET_FINDING,...)"
    )
  classifier = ImageClassifier(bundle, batch_size)
  logging.info(
    "external validation of %s on %s: %d images, findings %s",
    bundle.path,
    config.data.source,
    len(source),
    match.matched,
  )
  raw_all = predict_source(classifier, source, progress=progress)
  pair = evaluate_pair(bundle, classifier, source, match, raw_all, bootstrap=bootstrap, seed=seed)
  names, labels, raw, calibrated = pair.names, pair.labels, pair.raw, pair.calibrated
  result, split, comparison = pair.result, pair.internal_split, pair.comparison
  internal, patient_ids = pair.internal, source.patient_ids()
  spec_t, spec_c = bundle.spec["thresholds"], bundle.spec["calibration"]
  chosen_on, fitted_on = spec_t.get("chosen_on"), spec_c.get("fitted_on")
  ext: dict[str, Any] = {
    "bundle": {
      "path": bundle.path,
      "model": bundle.spec["model"]["name"],
      "findings": list(classifier.findings),
      "thresholds_description": spec_t.get("description") or "none",
      "thresholds_chosen_on": chosen_on,
      "threshold_values": spec_t.get("values"),
      "calibration": spec_c.get("method"),
      "calibration_fitted_on": fitted_on,
    },
    "dataset": _dataset_description(config, source),
    "matching": {
      "matched": match.matched,
      "how": match.how,
      "not_evaluable": match.not_evaluable,
      "ignored": list(match.ignored),
    },
    "internal_split": split,
    "internal": internal,
    "comparison": comparison,
  }
  result = {"kind": "external_validation", **result, "external": ext}
  title = (
    f"{TITLE} of {bundle.spec['model']['name']} ({os.path.basename(bundle.path)}) on the "
    f"{config.data.source} dataset"
  )
  if jax.process_index() != 0:  # one writer: the same files from every process would race
    return {"title": title, **result}
  figure = "figures/auroc_internal_external.png"
  with folder:  # staged: moved into out_dir once the whole report is written
    _auroc_png(
      folder.path(figure),
      [(f, c["internal"], c["external"]) for f, c in comparison.items()],
      split,
    )
    written = report.write_report(
      folder,
      result,
      labels=labels,
      probs=raw,
      findings=names,
      calibrated_probs=calibrated,
      patient_ids=patient_ids,
      ids=source.image_ids(),
      title=title,
      preface=_preface(ext, result, figure),
    )
    folder.commit()
  return written
