"""`python -m mdx findings`: the canonical list and each dataset's mapping, as aligned text and as
JSON, in this process (mdx.commands.call)."""

import json

from mdx import commands
from mdx.data.cxr import findings as F


def test_text_lists_the_canonical_findings_and_each_mapping_aligned(capsys):
  assert commands.call("findings", []) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[1] == "   1  Atelectasis" and lines[22] == "  22  No Finding"
  for dataset in ("nih", "chexpert", "mimic", "padchest", "vindr", "rsna", "siim", "nlm", "tbx11k"):
    assert any(line.startswith(f"{dataset}: ") for line in lines), dataset
  start = lines.index("vindr: 29 label names, 13 mapped onto a canonical finding")
  block = lines[start + 1 : start + 30]
  assert len({line.index("->") for line in block}) == 1  # one column for the arrows
  assert "  Pleural effusion    ->  Effusion" in block
  nodule = next(line for line in block if line.startswith("  Nodule/Mass"))
  assert nodule.split("->")[1].split()[0] == "-" and "3 cm" in nodule
  assert "  hydropneumothorax" in out and "->  Pneumothorax + Effusion" in out


def test_one_source_as_json(capsys):
  assert commands.call("findings", ["--source=rsna", "--json"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["canonical"] == list(F.CANONICAL) and list(report["datasets"]) == ["rsna"]
  assert report["datasets"]["rsna"] == [
    {"name": "Target", "canonical": "Pneumonia", "also": [], "reason": None},
    {"name": "Lung Opacity", "canonical": "Lung Opacity", "also": [], "reason": None},
    {"name": "Normal", "canonical": "No Finding", "also": [], "reason": None},
    {
      "name": "No Lung Opacity / Not Normal",
      "canonical": None,
      "also": [],
      "reason": "a negation class: abnormal, kind not recorded",
    },
  ]


def test_an_unknown_source_is_one_line_and_status_2(capsys):
  assert commands.call("findings", ["--source=no_such_dataset"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: no chest X-ray dataset 'no_such_dataset'") and "\n" not in err
