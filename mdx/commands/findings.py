"""The canonical finding list and every chest X-ray dataset's mapping onto it.

  python -m mdx findings [--source=NAME] [--json]

prints the canonical findings (mdx.data.cxr.findings.CANONICAL, the order of label vectors) and,
per dataset (or the one --source names), each of its label names -> the canonical finding it
counts for, or '-' with the reason the dataset's module gives (the comment beside the entry of its
TO_CANONICAL table). These tables are what the sources label with and what external validation
matches findings by. --json prints the same as JSON for programs.
"""

from __future__ import annotations

import json

from absl import flags

from mdx import jsonio
from mdx.data.cxr import findings as findings_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string(
    "source", None, f"one dataset: {', '.join(findings_lib.DATASETS)} (default: every one)"
  )
  flags.DEFINE_bool("json", False, "print JSON instead of the plain-text table")


def format_text(report: dict) -> str:
  """The report of findings.describe as aligned plain text: the canonical list, then per dataset
  one line a label name: 'name  ->  canonical' ('A + B' where it counts for two) or
  'name  ->  -  reason'."""
  lines = [f"canonical findings ({len(report['canonical'])}, the order of label vectors):"]
  lines += [f"  {i + 1:>2}  {name}" for i, name in enumerate(report["canonical"])]
  for dataset, rows in report["datasets"].items():
    mapped = sum(1 for r in rows if r["canonical"])
    lines += ["", f"{dataset}: {len(rows)} label names, {mapped} mapped onto a canonical finding"]
    name_width = max(len(r["name"]) for r in rows)
    targets = [" + ".join([r["canonical"], *r["also"]]) if r["canonical"] else "-" for r in rows]
    target_width = max(map(len, targets))
    for r, target in zip(rows, targets):
      line = f"  {r['name']:<{name_width}}  ->  {target:<{target_width}}"
      if r["reason"]:
        line += f"  {r['reason']}"
      lines.append(line.rstrip())
  if report["without_table"]:
    names = ", ".join(report["without_table"])
    lines += ["", f"no TO_CANONICAL table yet (not mapped): {names}"]
  return "\n".join(lines)


def main(argv) -> int:
  del argv
  report = findings_lib.describe(FLAGS.source)
  if FLAGS.json:
    print(json.dumps(jsonio.jsonable(report), indent=1, ensure_ascii=False))
  else:
    print(format_text(report))
  return 0
