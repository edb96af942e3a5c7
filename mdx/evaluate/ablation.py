"""The report of an ablation sweep: one table, one figure and a paragraph made from the numbers.

A sweep (mdx.train.sweep) trains each variant of an ablation with several seeds; load_run reads one
run's report (metrics.json, gradcam.json, the evaluated split's labels.csv and probs.csv) and its
split audit, and write_report puts all runs into
  ablation.md    the table (variant x metric: mean +- standard deviation over seeds, and each
                 variant against the baseline by a paired comparison on the same test images),
                 the figure and the paragraph, with the command and the wall time that made them;
  ablation.png   the figure (mdx.evaluate.plots.ablation_png);
  ablation.json  every number, per seed.
The paired comparison: per seed, the macro AUROC of the variant minus the baseline's on the test
images both runs evaluated (matched by image id), by a patient bootstrap in which both see the same
resamples (mdx.evaluate.bootstrap.paired_auroc_difference). Seeds are independent replicates (each
draws its own data and split), so their bootstrap samples are averaged into one difference and CI;
the per-seed differences show how much training noise moves it.

The ablation file's get_report() says what to show (SPEC_FIELDS):
  baseline  the variant the others are compared with (default: the first);
  claim     the lesson in one sentence;
  columns   [(label, key)]: the table's metric columns, keys of load_run's measurements, e.g.
            'macro/auroc', 'Mass/sensitivity', 'Mass/auroc/ci_width', 'audit/train&test/patients',
            'gradcam/all/peak_within_4px_of_necklace' (see measurements);
  figure    keys of columns drawn as panels (default: the first three);
  expect    {variant: (key or 'delta_auroc', 'higher' | 'lower')} (or a list of such pairs): what
            the lesson predicts against the baseline; the paragraph says whether the numbers
            show it.
A report may cover only some of the ablation's variants (the sweep's --only): the spec is checked
against all of them, expectations about variants that did not run are left out and the paragraph
names them, and without the baseline there is no paired comparison (the paragraph says why) - a
partial sweep still gets its table instead of failing after it trained.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence

import numpy as np

from mdx import jsonio, outputs
from mdx.evaluate import bootstrap as B
from mdx.evaluate import plots, report
from mdx.evaluate import predictions as P

# What write_report writes, ablation.md moved in last (mdx.evaluate.report.staged)
LAYOUT = report.Layout(("ablation.md", "ablation.png", "ablation.json"), (), ("ablation.md",))

SPEC_FIELDS = ("baseline", "claim", "columns", "figure", "expect")
DELTA = "delta_auroc"  # the paired macro AUROC difference, as an `expect` key
DELTA_LABEL = "Δ macro AUROC vs baseline [95% CI]"


@dataclasses.dataclass(frozen=True)
class Run:
  """One trained run: its flat measurements and its evaluated split's predictions."""

  measures: dict[str, float | None]
  test: P.Predictions


def measurements(metrics: Mapping, gradcam: Mapping | None = None, audit: Mapping | None = None):
  """A run's numbers under flat keys: '<finding>/<metric>' and 'macro/<metric>', 'micro/<metric>'
  (values of metrics.json) with '.../ci_width' (the 95% CI's width), '<finding>/n_positive' and
  'macro/n_positive' (its mean over findings); 'gradcam/<finding>/<field>' of gradcam.json and
  'gradcam/all/<field>' (over findings, weighted by their images); from the split audit
  'audit/<a>&<b>/patients' and '.../images' (shared by two sets), 'split/<set>/images' and
  'split/<set>/positives' (positive labels over all findings)."""
  out: dict[str, float | None] = {"n_images": metrics["n_images"]}

  def add(prefix: str, table: Mapping) -> None:
    for name, entry in table.items():
      value, (lo, hi) = entry["value"], entry.get("ci") or (None, None)
      out[f"{prefix}/{name}"] = value
      if value is not None and lo is not None and hi is not None:
        out[f"{prefix}/{name}/ci_width"] = hi - lo

  for finding, pf in metrics["per_finding"].items():
    add(finding, pf["metrics"])
    out[f"{finding}/n_positive"] = pf["n_positive"]
  counts = [pf["n_positive"] for pf in metrics["per_finding"].values()]
  out["macro/n_positive"] = float(np.mean(counts)) if counts else None
  add("macro", metrics["macro"])
  add("micro", metrics["micro"])
  totals: dict[str, list[float]] = {}
  for finding, entry in (gradcam or {}).items():
    for field, value in entry.items():
      if isinstance(value, (int, float)) and field != "images":
        out[f"gradcam/{finding}/{field}"] = value
        totals.setdefault(field, []).append((value, entry["images"]))
  for field, pairs in totals.items():
    weight = sum(n for _, n in pairs)
    out[f"gradcam/all/{field}"] = sum(v * n for v, n in pairs) / weight if weight else None
  for name, entry in (audit or {}).get("sets", {}).items():
    out[f"split/{name}/images"] = entry["images"]
    if "positives" in entry:
      out[f"split/{name}/positives"] = sum(entry["positives"].values())
  for pair, entry in (audit or {}).get("pairs", {}).items():
    out[f"audit/{pair}/patients"] = entry["patients"]
    out[f"audit/{pair}/images"] = entry["images"]
  return out


def _json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_run(workdir: str) -> Run:
  """A finished run's report (WORKDIR/report) and split audit (WORKDIR/split_audit.json)."""
  report = os.path.join(workdir, "report")
  metrics = _json(os.path.join(report, "metrics.json"))
  if metrics is None:
    raise FileNotFoundError(f"{report}/metrics.json is missing: run {workdir} has no report yet")
  test = P.read_predictions(
    os.path.join(report, "labels.csv"),
    os.path.join(report, "probs.csv"),
    id_column="id",
    patient_column="patient_id",
  )
  gradcam = _json(os.path.join(report, "gradcam.json"))
  audit = _json(os.path.join(workdir, "split_audit.json"))
  return Run(measurements(metrics, gradcam, audit), test)


def check_spec(
  spec: Mapping | None, variants: Sequence[str], selected: Sequence[str] | None = None
) -> dict:
  """get_report() with its defaults, checked against all the ablation's `variants` (a wrong field
  is a ValueError naming it and the fix), for a report over the `selected` ones (default: all).
  Adds 'paired' (the baseline is selected: each variant is compared with it) and 'unchecked' (the
  variants whose expectations are left out because they, or the baseline, did not run)."""
  variants = list(variants)
  selected = variants if selected is None else list(selected)
  stray = [v for v in selected if v not in variants]
  if stray:
    raise ValueError(f"variants {stray} are not among the ablation's variants {variants}")
  spec = dict(spec or {})
  unknown = sorted(set(spec) - set(SPEC_FIELDS))
  if unknown:
    raise ValueError(f"get_report() has unknown fields {unknown}; known: {list(SPEC_FIELDS)}")
  spec.setdefault("baseline", variants[0])
  if spec["baseline"] not in variants:
    raise ValueError(f"get_report()['baseline']={spec['baseline']!r} is not a variant: {variants}")
  spec["columns"] = [tuple(c) for c in spec.get("columns") or [("test macro AUROC", "macro/auroc")]]
  keys = [k for _, k in spec["columns"]]
  spec["figure"] = list(spec.get("figure") or keys[:3])
  missing = [k for k in spec["figure"] if k not in keys]
  if missing:
    raise ValueError(f"get_report()['figure'] has {missing}, which are not keys of its columns")
  expect = {}
  for variant, pairs in dict(spec.get("expect") or {}).items():
    pairs = [pairs] if isinstance(pairs, tuple) and isinstance(pairs[0], str) else list(pairs)
    for pair in pairs:
      ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and pair[1] in ("higher", "lower")
      if variant not in variants or variant == spec["baseline"] or not ok:
        raise ValueError(
          f"get_report()['expect'][{variant!r}]={pair!r}: give a variant of {variants} other than "
          f"the baseline -> (a column key or {DELTA!r}, 'higher' or 'lower')"
        )
      if pair[0] != DELTA and pair[0] not in keys:
        raise ValueError(f"get_report()['expect'][{variant!r}] names {pair[0]!r}, not a column key")
    expect[variant] = [tuple(p) for p in pairs]
  spec["paired"] = spec["baseline"] in selected
  # Every expectation compares with the baseline: without it none can be checked.
  spec["unchecked"] = [v for v in expect if not spec["paired"] or v not in selected]
  spec["expect"] = {v: p for v, p in expect.items() if v not in spec["unchecked"]}
  spec.setdefault("claim", "")
  return spec


def paired_difference(
  runs: Mapping[int, Run], base: Mapping[int, Run], n_resamples: int = 1000, seed: int = 0
) -> dict:
  """Macro AUROC of `runs` minus `base` on the test images each seed's two runs share (see the
  module docstring): {'diff', 'ci', 'p_value', 'per_seed' {seed: diff}, 'shared_images'
  {seed: n}}; diff None when no seed's runs share images with both classes of a finding."""
  per_seed, shared, samples = {}, {}, []
  for s in sorted(set(runs) & set(base)):
    a, b = runs[s].test, base[s].test
    if a.findings != b.findings:
      raise ValueError(f"seed {s}: findings {a.findings} differ from the baseline's {b.findings}")
    common, ia, ib = np.intersect1d(a.ids, b.ids, return_indices=True)
    shared[s] = int(len(common))
    if not np.array_equal(a.labels[ia], b.labels[ib], equal_nan=True):
      raise ValueError(
        f"seed {s}: the test images shared with the baseline carry other labels; the runs did "
        "not see the same data (a variant may not change the data source)"
      )
    if not len(common):
      continue
    pids = None if a.patient_ids is None else a.patient_ids[ia]
    d, draws = B.paired_auroc_difference(
      a.labels[ia], a.probs[ia], b.probs[ib], pids, n_resamples, seed + s
    )
    if np.isfinite(d):
      per_seed[s] = d
      samples.append(draws)
  if not samples:
    return {
      "diff": None,
      "ci": [None, None],
      "p_value": None,
      "per_seed": {},
      "shared_images": shared,
    }
  lo, hi, p = B.difference_interval(np.mean(samples, axis=0))
  finite = [lo, hi] if np.isfinite(lo) and np.isfinite(hi) else [None, None]
  return {
    "diff": float(np.mean(list(per_seed.values()))),
    "ci": finite,
    "p_value": None if not np.isfinite(p) else p,
    "per_seed": per_seed,
    "shared_images": shared,
  }


def summarize(
  runs: Mapping[str, Mapping[int, Run]], spec: Mapping, n_resamples: int = 1000
) -> dict:
  """{variant: {'seeds', 'columns' {key: {'values' per seed, 'mean', 'sd'}}, 'vs_baseline'}};
  vs_baseline is None for the baseline, and for every variant when the baseline did not run."""
  base = spec["baseline"] if spec["paired"] else None
  out = {}
  for variant, by_seed in runs.items():
    seeds = sorted(by_seed)
    columns = {}
    for _, key in spec["columns"]:
      values = [by_seed[s].measures.get(key) for s in seeds]
      ok = np.array([v for v in values if v is not None and np.isfinite(v)], np.float64)
      columns[key] = {
        "values": values,
        "mean": float(ok.mean()) if len(ok) else None,
        "sd": float(ok.std(ddof=1)) if len(ok) > 1 else None,
      }
    vs = None if base in (None, variant) else paired_difference(by_seed, runs[base], n_resamples)
    out[variant] = {"seeds": seeds, "columns": columns, "vs_baseline": vs}
  return out


def _mean_sd(col: Mapping, n: int) -> str:
  values = [v for v in col["values"] if v is not None]
  if col["mean"] is None:
    return "n/a"
  digits = 1 if all(isinstance(v, int) for v in values) else 3  # counts vs measured values
  text = f"{col['mean']:.{digits}f}"
  if col["sd"] is not None:
    text += f" ± {col['sd']:.{digits}f}"
  return text + (f" ({len(values)}/{n})" if len(values) < n else "")


def _p(p) -> str:
  return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def table(summary: Mapping, spec: Mapping) -> str:
  """The markdown table: variant x (each column's mean ± sd over seeds, the paired comparison when
  the baseline ran)."""
  paired = spec["paired"]
  head = ["variant", "seeds", *[label for label, _ in spec["columns"]]]
  if paired:
    head += [DELTA_LABEL, "p", "shared test images per seed"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for variant, s in summary.items():
    cells = [variant, str(len(s["seeds"]))]
    cells += [_mean_sd(s["columns"][key], len(s["seeds"])) for _, key in spec["columns"]]
    vs = s["vs_baseline"]
    if paired and vs is None:
      cells += ["baseline", "", ""]
    elif paired:
      lo, hi = vs["ci"]
      diff = "n/a" if vs["diff"] is None else f"{vs['diff']:+.3f}"
      if lo is not None:
        diff += f" [{lo:+.3f}, {hi:+.3f}]"
      n = list(vs["shared_images"].values())
      cells += [diff, _p(vs["p_value"]), f"{np.mean(n):.0f}" if n else "n/a"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def verdict(summary: Mapping, spec: Mapping, variant: str, key: str, direction: str) -> str:
  """One sentence: did the expected change (key higher or lower than the baseline's) show up?"""
  base = spec["baseline"]
  sign = 1.0 if direction == "higher" else -1.0
  labels = dict((k, label) for label, k in spec["columns"])
  if key == DELTA:
    vs = summary[variant]["vs_baseline"]
    head = f"Expected '{variant}' to have a {direction} test macro AUROC than '{base}'"
    if vs["diff"] is None:
      return f"{head}: cannot be judged (the runs share no usable test images)."
    lo, hi = vs["ci"]
    if lo is not None and sign * lo > 0 and sign * hi > 0:
      result = "it shows up (the 95% CI excludes no change)"
    elif sign * vs["diff"] > 0:
      result = "it points that way, but the 95% CI includes no change: not shown by these numbers"
    elif vs["diff"] == 0:
      result = "it did not show up: no difference"
    else:
      result = "it did not show up: the difference went the other way"
    return f"{head}: {vs['diff']:+.3f}; {result}."
  a, b = summary[variant]["columns"][key], summary[base]["columns"][key]
  pairs = [
    (x, y)
    for x, y in zip(a["values"], b["values"])
    if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)
  ]
  head = f"Expected {labels[key]} to be {direction} for '{variant}' than for '{base}'"
  if not pairs:
    return f"{head}: cannot be judged (undefined in every seed)."
  agree = sum(sign * (x - y) > 0 for x, y in pairs)
  means = f"{a['mean']:.3f} vs {b['mean']:.3f}"
  if agree == len(pairs):
    result = f"it shows up in every seed ({agree} of {len(pairs)})"
  elif all(x == y for x, y in pairs):
    result = "it did not show up: no difference in any seed"
  elif agree == 0:
    result = "it did not show up: no seed points that way"
    if all(sign * (x - y) < 0 for x, y in pairs):
      result = "it did not show up: it went the other way in every seed"
  else:
    result = f"it did not show up consistently: {agree} of {len(pairs)} seeds point that way"
  return f"{head} ({means}): {result}."


def paragraph(summary: Mapping, spec: Mapping) -> str:
  """What the numbers show, in a few sentences generated from them; what a partial sweep (--only)
  could not show is said, not left out silently."""
  base = spec["baseline"]
  seeds = "/".join(map(str, sorted({len(s["seeds"]) for s in summary.values()})))
  parts = [f"Lesson: {spec['claim']}"] if spec["claim"] else []
  unchecked = ", ".join(f"'{v}'" for v in spec["unchecked"])
  if not spec["paired"]:
    parts.append(
      f"{seeds} seed(s) per variant. No paired comparison"
      + (f" and expectations about {unchecked} not checked" if unchecked else "")
      + f": the baseline '{base}' was not run (--only); add it to --only to compare."
    )
    return " ".join(parts)
  parts.append(
    f"{seeds} seed(s) per variant; each variant against '{base}' on the test images the two "
    "share, by a paired patient bootstrap of the macro AUROC difference (seeds averaged):"
  )
  for variant, s in summary.items():
    vs = s["vs_baseline"]
    if vs is None or vs["diff"] is None:
      continue
    lo, hi = vs["ci"]
    ci = "" if lo is None else f" [{lo:+.3f}, {hi:+.3f}]"
    per_seed = ", ".join(f"{d:+.3f}" for d in vs["per_seed"].values())
    parts.append(f"'{variant}' {vs['diff']:+.3f}{ci} (p {_p(vs['p_value'])}; per seed {per_seed}).")
  for variant, pairs in spec["expect"].items():
    parts += [verdict(summary, spec, variant, key, direction) for key, direction in pairs]
  if unchecked:
    parts.append(f"Expectations about {unchecked} not checked: not run (--only).")
  return " ".join(parts)


def section(
  name: str, summary: Mapping, spec: Mapping, figure: str, command: str, wall: str
) -> str:
  """The markdown of one ablation: command, wall time, table, paragraph and figure."""
  return "\n\n".join(
    [
      f"## {name}",
      f"Command: `{command}`  \nWall time: {wall}",
      table(summary, spec),
      paragraph(summary, spec),
      f"![{name}]({figure})",
    ]
  )


def write_report(
  out_dir: str | outputs.OutputFolder,
  name: str,
  runs: Mapping[str, Mapping[int, Run]],
  spec: Mapping | None,
  *,
  command: str,
  wall: str,
  n_resamples: int = 1000,
  variants: Sequence[str] | None = None,
  overwrite: bool = False,
) -> dict:
  """Writes out_dir/ablation.{md,png,json} (LAYOUT) over `runs` ({variant: {seed: Run}}), which
  may be some of the ablation's `variants` (default: exactly those run); returns {'summary',
  'spec', 'markdown', 'figure' (where ablation.png is once written)}.

  out_dir: a folder: LAYOUT's files are claimed there (an OutputError naming one mdx did not
  write, unless overwrite), staged and committed together, ablation.md last; or an entered
  OutputFolder (the sweep's, with its results files) that its caller claimed and commits.
  """
  spec = check_spec(spec, list(variants or runs), list(runs))
  summary = summarize(runs, spec, n_resamples)
  labels = dict((k, label) for label, k in spec["columns"])
  variants = list(runs)
  with report.staged(out_dir, LAYOUT, "sweep", overwrite=overwrite) as folder:
    plots.ablation_png(
      folder.path("ablation.png"),
      variants,
      [
        (labels[k], {v: summary[v]["columns"][k]["values"] for v in variants})
        for k in spec["figure"]
      ],
      (
        f"Δ macro AUROC vs {spec['baseline']} (95% CI)",
        {
          v: (s["vs_baseline"]["diff"], *s["vs_baseline"]["ci"])
          for v, s in summary.items()
          if s["vs_baseline"] is not None
        },
      )
      if spec["paired"]
      else None,
      title=name,
    )
    markdown = section(name, summary, spec, "ablation.png", command, wall)
    with open(folder.path("ablation.md"), "w", encoding="utf-8") as f:
      f.write(markdown + "\n")
    json_spec = {**spec, "columns": [list(c) for c in spec["columns"]]}
    everything = {"name": name, "command": command, "wall": wall, "spec": json_spec}
    with open(folder.path("ablation.json"), "w", encoding="utf-8") as f:
      # undefined numbers as null (mdx.jsonio); anything else json cannot write as its text
      json.dump(jsonio.jsonable({**everything, "summary": summary}), f, indent=1, default=str)
  figure = os.path.join(folder.folder, "ablation.png")
  return {"summary": summary, "spec": spec, "markdown": markdown, "figure": figure}


def update_results_page(page: str, name: str, written: Mapping) -> str:
  """Puts an ablation's section into the results page (e.g. docs/ablations.md), replacing its
  previous one; the figure is copied beside the page (ablations/<name>.png)."""
  begin, end = f"<!-- ablation:{name} begin -->", f"<!-- ablation:{name} end -->"
  folder = os.path.join(os.path.dirname(os.path.abspath(page)), "ablations")
  with outputs.atomic_path(os.path.join(folder, f"{name}.png")) as tmp:  # whole or not at all
    shutil.copyfile(written["figure"], tmp)
  markdown = written["markdown"].replace("](ablation.png)", f"](ablations/{name}.png)")
  block = f"{begin}\n{markdown}\n{end}"
  text = open(page).read() if os.path.exists(page) else "# Ablations\n"
  if begin in text and end in text:
    text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
  else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
  outputs.write_text(page, text)
  return page
