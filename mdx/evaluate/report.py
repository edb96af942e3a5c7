"""The evaluation report: metrics.json, report.md and report.html with PNG figures, in one folder.

The report is built once as a list of blocks (heading, text, table, figure) and rendered to both
Markdown and HTML, so the two always say the same thing. Figures are copied into the folder and
linked relatively: the folder can be moved or zipped as it is.

Blocks are tuples: ('h1' | 'h2' | 'h3', text), ('p', text), ('table', header [str], rows
[[str]]), ('figure', caption, path relative to the report folder[, css class]). evaluate_and_report
evaluates and writes in one call; write_report writes an evaluation made elsewhere (e.g. an
external validation, mdx.inference.external) with its own blocks placed before the summary.

Every report mdx writes (this one, a run's reports in mdx.evaluate.run_report, external
validation's) goes through an mdx.outputs.OutputFolder: its files are written into a hidden
staging folder and moved into place when the whole report is written, report.html and metrics.json
last, so a killed evaluation leaves the old complete report or nothing that looks complete; and a
file in the folder that mdx did not write is never replaced (one line naming it, unless overwrite).
layout(kind) says which files and folders each kind of report writes: a command claims them with it
before any work (Layout.claim), and the writers stage exactly those, so the two cannot drift.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from mdx import jsonio, outputs
from mdx.evaluate import classification as CL
from mdx.evaluate import plots
from mdx.evaluate import predictions as P

_NAMES = {
  "auroc": "AUROC",
  "average_precision": "Average precision",
  "brier": "Brier score",
  "ece": "ECE (10 bins)",
  "accuracy": "Accuracy",
  "prevalence": "Prevalence",
  "sensitivity": "Sensitivity",
  "specificity": "Specificity",
  "ppv": "PPV",
  "npv": "NPV",
  "f1": "F1",
  "ppv_at_prevalence": "PPV at stated prevalence",
  "npv_at_prevalence": "NPV at stated prevalence",
  "brier_platt": "Brier after Platt",
  "ece_platt": "ECE after Platt",
  "brier_isotonic": "Brier after isotonic",
  "ece_isotonic": "ECE after isotonic",
}
_OVERVIEW = (
  "auroc",
  "average_precision",
  "sensitivity",
  "specificity",
  "ppv",
  "npv",
  "f1",
  "brier",
)


def _fmt(entry) -> str:
  return plots._fmt(entry)  # one formatter for the figures and the tables


def _p(p) -> str:
  return "undefined" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _blocks(
  result: Mapping,
  title: str,
  figures: Sequence[tuple[str, str]],
  gradcam: Sequence[tuple[str, str]],
  extra: Sequence[tuple[str, str]],
  preface: Sequence[tuple] = (),
) -> list[tuple]:
  s = result["settings"]
  ci = f"{round(100 * s['ci_level'])}%"
  blocks: list[tuple] = [("h1", title)]
  blocks.append(
    (
      "p",
      (
        f"{result['n_images']} images of {result['n_patients']} patients, "
        f"{len(result['findings'])} findings. Every value is followed by its {ci} "
        f"confidence interval from {s['bootstrap_resamples']} bootstrap resamples of the "
        f"{s['resampling_unit']} (seed {s['seed']}, percentile method). Thresholds: "
        f"{s['threshold_policy_description']}, chosen on {s['thresholds_chosen_on']}, then held "
        "fixed. 'undefined' means the metric does not exist on these cases (e.g. sensitivity "
        "without positives), not zero."
      ),
    )
  )
  if s.get("calibration_metrics_on"):
    blocks.append(
      (
        "p",
        f"Brier score and ECE are measured on {s['calibration_metrics_on']}; AUROC, average "
        "precision and the metrics at the thresholds on the scores the thresholds apply to.",
      )
    )
  if s.get("prevalence") is not None:
    blocks.append(
      (
        "p",
        f"PPV and NPV are also given at the stated prevalence {s['prevalence']} "
        "(Bayes' rule from sensitivity and specificity).",
      )
    )
  blocks.extend(preface)
  blocks.append(("h2", "Summary"))
  rows = [
    [
      _NAMES[m],
      _fmt(result["macro"].get(m)),
      _fmt(result["micro"].get(m)) if m in result["micro"] else "-",
    ]
    for m in result["macro"]
  ]
  blocks.append(
    ("table", ["Metric", "Macro average (over findings)", "Micro (all labels pooled)"], rows)
  )
  rows = []
  for f in result["findings"]:
    pf = result["per_finding"][f]
    rows.append(
      [
        f,
        str(pf["n"]),
        str(pf["n_positive"]),
        "-" if pf["threshold"] is None else f"{pf['threshold']:.3g}",
      ]
      + [_fmt(pf["metrics"].get(m)) for m in _OVERVIEW]
    )
  blocks.append(
    ("table", ["Finding", "N", "Positives", "Threshold"] + [_NAMES[m] for m in _OVERVIEW], rows)
  )
  if result.get("comparison"):
    cmp = result["comparison"]
    blocks.append(("h2", f"Comparison with {cmp['name_b']}"))
    blocks.append(
      (
        "p",
        f"AUROC of this model ({cmp['name_a']}) minus AUROC of {cmp['name_b']} on the "
        "same cases: DeLong's test (assumes independent cases) and a paired bootstrap "
        f"of the {s['resampling_unit']}.",
      )
    )
    rows = []
    for f, e in cmp["findings"].items():
      pb = e.get("paired_bootstrap", {"ci": [None, None], "p_value": None})
      rows.append(
        [
          f,
          _fmt({"value": e["auroc_a"], "ci": [None, None]}),
          _fmt({"value": e["auroc_b"], "ci": [None, None]}),
          _fmt({"value": e["diff"], "ci": e["delong"]["ci"]}),
          _p(e["delong"]["p_value"]),
          _fmt({"value": e["diff"], "ci": pb["ci"]}),
          _p(pb["p_value"]),
        ]
      )
    blocks.append(
      (
        "table",
        [
          "Finding",
          f"AUROC {cmp['name_a']}",
          f"AUROC {cmp['name_b']}",
          "Difference [DeLong CI]",
          "DeLong p",
          "Difference [bootstrap CI]",
          "Bootstrap p",
        ],
        rows,
      )
    )
  blocks.append(("h2", "Curves and calibration"))
  for caption, rel in figures:
    blocks.append(("figure", caption, rel))
  if gradcam:
    blocks.append(("h2", "Grad-CAM"))
    blocks.append(
      (
        "p",
        "Where the model looked: gradient-weighted class activation maps over the "
        "image (red = more evidence for the finding).",
      )
    )
    for caption, rel in gradcam:
      blocks.append(("figure", caption, rel, "small"))
  if extra:
    blocks.append(("h2", "Training"))
    for caption, rel in extra:
      blocks.append(("figure", caption, rel))
  blocks.append(("h2", "Per finding"))
  for f in result["findings"]:
    pf = result["per_finding"][f]
    blocks.append(("h3", f))
    cm = pf["confusion"]
    thr = (
      "no threshold (undefined)" if pf["threshold"] is None else f"threshold {pf['threshold']:.4g}"
    )
    conf = f"; at it TP {cm['tp']}, FP {cm['fp']}, TN {cm['tn']}, FN {cm['fn']}" if cm else ""
    blocks.append(
      (
        "p",
        f"{pf['n']} cases with a known label ({pf['n_positive']} positive, "
        f"{pf['n_unknown']} unknown left out); {thr}{conf}.",
      )
    )
    blocks.append(
      (
        "table",
        ["Metric", f"Value [{ci} CI]"],
        [[_NAMES.get(k, k), _fmt(v)] for k, v in pf["metrics"].items()],
      )
    )
  return blocks


def _md_cell(text: str) -> str:
  return str(text).replace("|", "\\|")


def _render_md(blocks: list[tuple]) -> str:
  out = []
  for b in blocks:
    kind = b[0]
    if kind in ("h1", "h2", "h3"):
      out.append("#" * int(kind[1]) + " " + b[1])
    elif kind == "p":
      out.append(b[1])
    elif kind == "table":
      out.append("| " + " | ".join(_md_cell(h) for h in b[1]) + " |")
      out.append("|" + "---|" * len(b[1]))
      out.extend("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b[2])
    elif kind == "figure":
      out.append(f"![{b[1]}]({b[2]})\n\n*{b[1]}*")
    out.append("")
  return "\n".join(out)


_CSS = (
  "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
  "color:#222}\n"
  "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
  "th,td{border:1px solid #ccc;padding:3px 8px}\n"
  "th{background:#f2f2f2}td{white-space:nowrap}figure{margin:1em 0}img{max-width:100%}\n"
  "figcaption{font-style:italic;color:#555}h3{margin-top:1.5em}\n"
  "figure.small{display:inline-block;width:31%;vertical-align:top;margin:0.5em}"
)


def _render_html(blocks: list[tuple], title: str) -> str:
  e = html.escape
  out = [
    f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
    f"<style>{_CSS}</style></head><body>"
  ]
  for b in blocks:
    kind = b[0]
    if kind in ("h1", "h2", "h3"):
      out.append(f"<{kind}>{e(b[1])}</{kind}>")
    elif kind == "p":
      out.append(f"<p>{e(b[1])}</p>")
    elif kind == "table":
      out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>")
      out.extend("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
      out.append("</table>")
    elif kind == "figure":
      css = f" class='{b[3]}'" if len(b) > 3 else ""
      out.append(
        f"<figure{css}><img src='{e(b[2])}' alt='{e(b[1])}'><figcaption>{e(b[1])}"
        "</figcaption></figure>"
      )
  out.append("</body></html>")
  return "\n".join(out)


# ------------------------------------------------------------------------------ what is written
@dataclasses.dataclass(frozen=True)
class Layout:
  """What a report writes into its folder, relative to it: `files`, `folders` whose every file is
  the report's, and `completes`, the files that say the report is whole (moved in last)."""

  files: tuple[str, ...]
  folders: tuple[str, ...]
  completes: tuple[str, ...]

  def claim(self, out_dir: str, command: str, *, overwrite: bool = False) -> outputs.OutputFolder:
    """The report's OutputFolder, claimed: an OutputError naming the first file of out_dir the
    report would replace that mdx did not write (nothing when overwrite). Call before any work."""
    folder = outputs.OutputFolder(out_dir, command, overwrite=overwrite, completes=self.completes)
    folder.claim(files=self.files, folders=self.folders)
    return folder


_FIGURES = ("figures",)  # the curves drawn here
_COPIED = ("gradcam", "extra")  # figures drawn elsewhere, copied in
_REPORT = ("metrics.json", "report.md", "report.html")
_TABLES = ("labels.csv", "probs.csv", "calibrated.csv")  # with ids (re-runnable with the CLI)


def layout(
  kind: str = "evaluation", *, split: str | None = None, ids: bool = True, copied: bool = True
) -> Layout:
  """The files a report of `kind` writes: 'evaluation' (evaluate_and_report, write_report: python
  -m mdx evaluate, external validation; ids: with labels.csv, probs.csv, calibrated.csv; copied:
  with Grad-CAM or other figures copied in), 'classification' (a run's report of `split`:
  mdx.evaluate.run_report.classification_run_report) or 'segmentation' (segmentation_run_report).
  """
  completes = ("report.html", "metrics.json")
  if kind == "evaluation":
    files = _REPORT + (_TABLES if ids else ())
    return Layout(files, _FIGURES + (_COPIED if copied else ()), completes)
  if kind == "classification":
    if not split:
      raise ValueError("a classification run's report layout needs its split (e.g. 'test')")
    files = _REPORT + _TABLES + (f"{split}_predictions.csv", "gradcam.json")
    return Layout(files, _FIGURES + _COPIED, completes)
  if kind == "segmentation":
    files = ("metrics.json", "report.md", "curves.png")
    return Layout(files, ("overlays",), ("report.md", "metrics.json"))
  raise ValueError(
    f"report layout {kind!r}: choose 'evaluation', 'classification' or 'segmentation'"
  )


@contextlib.contextmanager
def staged(
  out: str | outputs.OutputFolder, writes: Layout, command: str, *, overwrite: bool = False
) -> Iterator[outputs.OutputFolder]:
  """The entered OutputFolder a report writes into (folder.path(rel)). `out` a folder: it is
  claimed for `writes` (Layout.claim) and committed when the block ends without an error (else
  its staged files are removed: nothing of it is final). `out` an entered OutputFolder (a caller
  writing files of its own beside the report): yielded as it is, its owner commits it."""
  if isinstance(out, outputs.OutputFolder):
    yield out
    return
  folder = writes.claim(out, command, overwrite=overwrite)
  with folder:
    yield folder
    folder.commit()


def _copy_figures(
  figs: Sequence[tuple[str, str]], folder: outputs.OutputFolder, sub: str
) -> list[tuple[str, str]]:
  copied = []
  for i, (caption, src) in enumerate(figs):
    if not os.path.exists(src):
      raise FileNotFoundError(f"figure {caption!r}: {src} does not exist")
    rel = f"{sub}/{i:02d}_{os.path.basename(src)}"
    dst = folder.path(rel)
    if os.path.abspath(src) != os.path.abspath(dst):
      shutil.copyfile(src, dst)
    copied.append((caption, rel))
  return copied


def json_text(obj) -> str:
  """JSON with nan written as null (plain json would write the invalid token NaN): mdx.jsonio."""
  return json.dumps(jsonio.jsonable(obj), indent=1, allow_nan=False) + "\n"


def write_json(path: str, obj) -> str:
  """obj as JSON (json_text) into path, atomically (mdx.outputs.atomic_path)."""
  return outputs.write_text(path, json_text(obj))


def _write_text(path: str, text: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def evaluate_and_report(
  out_dir: str | outputs.OutputFolder,
  *,
  labels,
  probs,
  findings: Sequence[str],
  patient_ids=None,
  ids=None,
  val_labels=None,
  val_probs=None,
  threshold_policy: str | float = "youden",
  bootstrap: int = 1000,
  seed: int = 0,
  extra_figures: Sequence[tuple[str, str]] = (),
  gradcam_figures: Sequence[tuple[str, str]] = (),
  title: str = "mdx evaluation",
  prevalence: float | Mapping[str, float] | None = None,
  compare_probs=None,
  compare_names: tuple[str, str] = ("A", "B"),
  notes: Sequence[str] = (),
  keep_bootstrap: Sequence[str] = (),
  preface: Sequence[tuple] = (),
  overwrite: bool = False,
) -> dict:
  """Evaluates predictions and writes metrics.json, report.md, report.html and PNGs into out_dir.

  labels [N, C] float with nan = unknown; probs [N, C] in [0, 1]; patient_ids [N] for
  patient-level bootstrap; ids [N] to also write labels.csv / probs.csv (re-runnable with the CLI);
  val_* choose thresholds and fit recalibration; extra_figures / gradcam_figures: (caption, png)
  pairs copied in; compare_probs [N, C]: a second model's probabilities on the same cases, compared
  by AUROC (DeLong and paired bootstrap), named compare_names; notes: paragraphs shown after the
  introduction (e.g. what the scores are); preface: blocks before the results (write_report).
  Returns the metrics dict (as in metrics.json), plus
  'bootstrap_samples' of the metrics named in keep_bootstrap (see evaluate_classification; not
  written to metrics.json). out_dir: a folder (claimed, staged and committed there, a file mdx did
  not write refused unless overwrite: see write_report) or an entered OutputFolder its caller
  commits.
  """
  labels = np.asarray(labels, np.float64)
  probs = np.asarray(probs, np.float64)
  findings = list(findings)
  result = CL.evaluate_classification(
    labels,
    probs,
    findings,
    patient_ids=patient_ids,
    val_labels=val_labels,
    val_probs=val_probs,
    threshold_policy=threshold_policy,
    bootstrap=bootstrap,
    seed=seed,
    prevalence=prevalence,
    keep_bootstrap=keep_bootstrap,
  )
  samples = result.pop("bootstrap_samples", None)
  if compare_probs is not None:
    result["comparison"] = {
      "name_a": compare_names[0],
      "name_b": compare_names[1],
      "findings": CL.compare_models(
        labels,
        probs,
        compare_probs,
        findings,
        patient_ids=patient_ids,
        bootstrap=bootstrap,
        seed=seed,
      ),
    }
  recal = (
    CL.recalibrate(val_labels, val_probs, probs)
    if val_labels is not None and val_probs is not None
    else []
  )
  written = write_report(
    out_dir,
    result,
    labels=labels,
    probs=probs,
    findings=findings,
    patient_ids=patient_ids,
    ids=ids,
    recalibrated=recal,
    extra_figures=extra_figures,
    gradcam_figures=gradcam_figures,
    title=title,
    notes=notes,
    preface=preface,
    overwrite=overwrite,
  )
  if samples is not None:
    written["bootstrap_samples"] = samples
  return written


def write_report(
  out_dir: str | outputs.OutputFolder,
  result: Mapping,
  *,
  labels,
  probs,
  findings: Sequence[str],
  calibrated_probs=None,
  patient_ids=None,
  ids=None,
  recalibrated: Sequence[Mapping[str, np.ndarray]] = (),
  extra_figures: Sequence[tuple[str, str]] = (),
  gradcam_figures: Sequence[tuple[str, str]] = (),
  title: str = "mdx evaluation",
  notes: Sequence[str] = (),
  preface: Sequence[tuple] = (),
  overwrite: bool = False,
  command: str = "evaluate",
) -> dict:
  """Writes an evaluation (evaluate_classification's dict, JSON-ready plus any extra sections) as
  metrics.json, report.md, report.html and PNGs into out_dir; returns what metrics.json says.

  labels [N, C], probs [N, C] the scores the ROC / PR curves and thresholds use; calibrated_probs
  [N, C] (optional) the probabilities of the reliability diagram (else probs); recalibrated: per
  finding {'platt': p', 'isotonic': p'} drawn beside them; ids [N] also writes labels.csv /
  probs.csv (and calibrated.csv); notes: paragraphs shown after the introduction; preface: blocks
  (see the module docstring) placed after the introduction, their figures already in the report.

  out_dir: a folder: the report's files (layout('evaluation', ...)) are claimed there (an
  OutputError naming a file mdx did not write, unless overwrite), staged, and committed once every
  file is written; or an entered OutputFolder (mdx.outputs) that its caller claimed and commits,
  e.g. with files of its own. command names the writer in the folder's manifest and messages.
  """
  writes = layout("evaluation", ids=ids is not None, copied=bool(gradcam_figures or extra_figures))
  with staged(out_dir, writes, command, overwrite=overwrite) as folder:
    return _write_report(
      folder,
      result,
      labels=labels,
      probs=probs,
      findings=findings,
      calibrated_probs=calibrated_probs,
      patient_ids=patient_ids,
      ids=ids,
      recalibrated=recalibrated,
      extra_figures=extra_figures,
      gradcam_figures=gradcam_figures,
      title=title,
      notes=notes,
      preface=preface,
    )


def _write_report(
  folder: outputs.OutputFolder,
  result: Mapping,
  *,
  labels,
  probs,
  findings,
  calibrated_probs,
  patient_ids,
  ids,
  recalibrated,
  extra_figures,
  gradcam_figures,
  title,
  notes,
  preface,
) -> dict:
  labels = np.asarray(labels, np.float64)
  probs = np.asarray(probs, np.float64)
  findings = list(findings)
  result = {"title": title, **result}
  recal = list(recalibrated)
  cal = probs if calibrated_probs is None else np.asarray(calibrated_probs, np.float64)
  figures = [
    (
      "ROC curves (dot: the chosen operating point)",
      "figures/roc.png",
      lambda path: plots.roc_png(path, labels, probs, findings, result),
    ),
    (
      "Precision-recall curves (dashed: prevalence)",
      "figures/pr.png",
      lambda path: plots.pr_png(path, labels, probs, findings, result),
    ),
    (
      "Reliability diagrams"
      + (" of the calibrated probabilities" if calibrated_probs is not None else "")
      + (" before and after recalibration fitted on validation" if recal else ""),
      "figures/reliability.png",
      lambda path: plots.reliability_png(path, labels, cal, findings, result, recal),
    ),
    (
      "Confusion matrices at the chosen thresholds",
      "figures/confusion.png",
      lambda path: plots.confusion_png(path, findings, result),
    ),
  ]
  for _, rel, draw in figures:
    draw(folder.path(rel))
  figures = [(caption, rel) for caption, rel, _ in figures]
  gradcam = _copy_figures(gradcam_figures, folder, "gradcam")
  extra = _copy_figures(extra_figures, folder, "extra")
  result["figures"] = {"curves": figures, "gradcam": gradcam, "extra": extra}
  if ids is not None:
    ids = [str(i) for i in ids]
    pids = None if patient_ids is None else [str(p) for p in patient_ids]
    P.write_csv(folder.path("labels.csv"), ids, labels, findings, patient_ids=pids)
    P.write_csv(folder.path("probs.csv"), ids, probs, findings)
    if calibrated_probs is not None:
      P.write_csv(folder.path("calibrated.csv"), ids, cal, findings)
  metrics = json_text(result)
  _write_text(folder.path("metrics.json"), metrics)
  blocks = _blocks(result, title, figures, gradcam, extra, preface)
  blocks[2:2] = [("p", note) for note in notes]  # after the title and the introduction
  _write_text(folder.path("report.md"), _render_md(blocks))
  _write_text(folder.path("report.html"), _render_html(blocks, title))
  return json.loads(metrics)  # exactly what metrics.json says
