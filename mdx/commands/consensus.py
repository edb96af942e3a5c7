"""Reference standard from a reading study: majority vote of several readers, and their agreement.

  python -m mdx consensus --out=DIR [--tie=unknown|positive|negative|reader:<k>] [--id_column=NAME]
      READER.csv READER.csv [READER.csv ...]

A reference standard from one reader carries that reader's errors into every label; the majority of
several readers is better, and kappa says how far the readers agree beyond chance, i.e. how much
the labels can be trusted. This command applies mdx.data.consensus.reference_standard to the files
a study produces.

The readers' CSV files are arguments, not a flag, so a shell glob gives them (study/reader_*.csv),
in the order that numbers the readers from 0. Each has an image-id column (--id_column; default:
each file's first column) and one column per finding holding 1, 0 or blank (no read).

--tie says what an equal split gives: 'unknown' (blank, e.g. send the image to adjudication),
'positive', 'negative', or 'reader:<k>' (reader k's read, e.g. the most senior reader; k is the
0-based position among the files or a reader's name, its file name).

Output: DIR/labels.csv (1, 0 or blank per image and finding), DIR/agreement.json (per finding:
counts, Cohen's kappa of every pair, Fleiss' kappa; see mdx.data.consensus) and a summary table on
stdout. A mistake in the input prints one line `error: ...` and exits 2 (mdx.cli).
"""

from __future__ import annotations

from absl import app, flags

from mdx.data import consensus

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("out", None, "folder for labels.csv and agreement.json")
  flags.DEFINE_string("tie", "unknown", "positive | negative | unknown | reader:<k>")
  flags.DEFINE_string("id_column", None, "image id column (default: each file's first)")
  flags.mark_flags_as_required(["out"])


def format_summary(report: dict) -> str:
  width = max(7, *(len(f) for f in report["findings"]))
  head = f"{'finding':<{width}}  {'images':>6}  {'positive':>8}  {'ties':>5}  {'unknown':>7}"
  lines = [head + "  fleiss kappa (images)"]
  for name, s in report["findings"].items():
    fleiss = "-" if s["fleiss_kappa"] is None else f"{s['fleiss_kappa']:.3f}"
    lines.append(
      f"{name:<{width}}  {s['images']:>6}  {s['positives']:>8}  {s['ties']:>5}  "
      f"{s['unknown']:>7}  {fleiss:>6} ({s['fleiss_images']})"
    )
  return "\n".join(lines)


def main(argv) -> int:
  paths = argv[1:]
  if len(paths) < 2:
    raise app.UsageError(
      f"give two or more readers' CSV files after the flags (got {len(paths)}), e.g. "
      "python -m mdx consensus --out=reference reader1.csv reader2.csv reader3.csv"
    )
  report = consensus.reference_standard(paths, FLAGS.out, FLAGS.tie, FLAGS.id_column)
  print(
    f"consensus of {len(report['readers'])} readers over {report['images']} images "
    f"(tie rule {report['tie']}) -> {FLAGS.out}/labels.csv, {FLAGS.out}/agreement.json"
  )
  print(format_summary(report))
  return 0
