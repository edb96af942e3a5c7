"""The one label space of the chest X-ray datasets: the canonical findings (CANONICAL, the order of
label vectors), every dataset's mapping onto it (the TO_CANONICAL tables of the source modules,
gathered by tables()), and how the names of two label sets are matched when a model trained on one
is evaluated on another (match_findings: by name, by the canonical finding the tables give both,
or by a user's finding_map; DISTINCT look-alikes never)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import io
import tokenize
from collections.abc import Mapping, Sequence

# The 14 NIH ChestX-ray14 findings, in the order of the official paper (Wang et al., 2017).
NIH_FINDINGS: tuple[str, ...] = (
  "Atelectasis",
  "Cardiomegaly",
  "Effusion",
  "Infiltration",
  "Mass",
  "Nodule",
  "Pneumonia",
  "Pneumothorax",
  "Consolidation",
  "Edema",
  "Emphysema",
  "Fibrosis",
  "Pleural_Thickening",
  "Hernia",
)

NO_FINDING = "No Finding"

# The one label space of the chest X-ray sources (issue 25): NIH's 14 in NIH spelling, then the
# CheXpert observations NIH lacks, Tuberculosis (NLM, TBX11K) and No Finding. Each source maps its
# own names onto these in its TO_CANONICAL table; a finding it does not label is unknown (nan).
CANONICAL: tuple[str, ...] = (
  *NIH_FINDINGS,
  "Lung Opacity",
  "Lung Lesion",
  "Fracture",
  "Enlarged Cardiomediastinum",
  "Support Devices",
  "Pleural Other",
  "Tuberculosis",
  NO_FINDING,
)

# ------------------------------------------------------------------------ every dataset's mapping
# Each chest X-ray source module holds TO_CANONICAL, its label names (columns, classes, report
# terms, exactly as the dataset spells them) -> the canonical finding with the same definition, or
# None, the reason in the comment beside the entry. Together they are the one mapping of the label
# space (`python -m mdx findings` prints it); the modules are imported when it is asked for, since
# they import this module.
DATASETS: dict[str, str] = {
  "nih": "mdx.data.cxr.nih",
  "chexpert": "mdx.data.cxr.chexpert",
  "nih_expert": "mdx.data.cxr.nih_expert",
  "mimic": "mdx.data.cxr.mimic",
  "padchest": "mdx.data.cxr.padchest",
  "vindr": "mdx.data.cxr.vindr",
  "rsna": "mdx.data.cxr.rsna",
  "siim": "mdx.data.cxr.siim",
  "nlm": "mdx.data.cxr.nlm",
  "tbx11k": "mdx.data.cxr.tbx11k",
  "openi": "mdx.data.cxr.openi",
}


def _module(dataset: str):
  if dataset not in DATASETS:
    raise ValueError(f"no chest X-ray dataset {dataset!r}; the datasets are {list(DATASETS)}")
  return importlib.import_module(DATASETS[dataset])


def table(dataset: str) -> dict[str, str | None] | None:
  """{label name: canonical finding or None} of one dataset (its module's TO_CANONICAL), None for
  a module that has none yet."""
  mapping = getattr(_module(dataset), "TO_CANONICAL", None)
  return None if mapping is None else dict(mapping)


def tables() -> dict[str, dict[str, str | None]]:
  """dataset -> {its label name: canonical finding or None}, for every dataset with a table."""
  out = {d: table(d) for d in DATASETS}
  return {d: t for d, t in out.items() if t is not None}


def reasons(dataset: str) -> dict[str, str]:
  """{label name mapped to None: why}, from the comment beside (or right above) the entry of the
  dataset's TO_CANONICAL in its source; names without a comment are left out."""
  module = _module(dataset)
  try:
    source = inspect.getsource(module)
  except (OSError, TypeError):  # no source shipped (a frozen install): no reasons to show
    return {}
  lines = source.splitlines()
  comments = {
    tok.start[0]: tok.string.lstrip("#").strip()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline)
    if tok.type == tokenize.COMMENT
  }
  literal = None
  for node in ast.parse(source).body:
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    if any(isinstance(t, ast.Name) and t.id == "TO_CANONICAL" for t in targets):
      literal = node.value if isinstance(node.value, ast.Dict) else None
  if literal is None:
    return {}
  out = {}
  for key, value in zip(literal.keys, literal.values):
    if not (isinstance(value, ast.Constant) and value.value is None):
      continue
    if isinstance(key, ast.Name):  # a module constant (vindr.NO_FINDING)
      name = getattr(module, key.id)
    elif isinstance(key, ast.Constant):
      name = key.value
    else:  # an expression or a ** spread: no single entry to annotate
      continue
    note = [comments[n] for n in range(key.lineno, value.end_lineno + 1) if n in comments]
    above = key.lineno - 1
    while not note and above in comments and lines[above - 1].lstrip().startswith("#"):
      if comments[above].startswith("---"):  # a section heading, not this entry's reason
        break
      above -= 1
    if not note:
      note = [comments[n] for n in range(above + 1, key.lineno)]
    if note:
      out[name] = " ".join(note)
  return out


# ------------------------------------------------------------------------------ matching label sets
# A model trained on one label set and evaluated on another (external validation) must compare the
# same finding under each name. Names match when they are equal up to case, spaces, underscores
# and hyphens ('Pleural_Thickening' = 'pleural thickening'), or when both mean the same canonical
# finding (canonical_of: by the datasets' tables, e.g. CheXpert's 'Pleural Effusion' and VinDr's
# 'Pleural effusion' are NIH's 'Effusion'). A user's finding_map (model finding -> dataset
# finding) wins over both.
#
# NIH ChestX-ray14 (14 labels) against CheXpert / MIMIC-CXR (14 observations), by the tables:
#   same name, same radiological finding: Atelectasis, Cardiomegaly, Consolidation, Edema,
#     Pneumonia, Pneumothorax. Both sets were mined from reports by different labelers (NIH: NLP
#     rules; CheXpert: its rule-based labeler with an 'uncertain' class), so label noise differs,
#     but the definition is the same.
#   different names, same finding: NIH 'Effusion' is CheXpert's 'Pleural Effusion'.
#   related but NOT the same (DISTINCT: never matched by themselves, the reason is reported):
#     see DISTINCT below. NIH's Infiltration, Mass, Nodule, Emphysema, Fibrosis and Hernia and
#     CheXpert's Lung Opacity, Lung Lesion, Pleural Other, Fracture, Support Devices and Enlarged
#     Cardiomediastinum have no counterpart in the other set.

# Pairs that look alike but differ in definition: matching them would evaluate the model against a
# different target. The reason is shown when the model's finding is not evaluable.
DISTINCT: dict[frozenset[str], str] = {
  frozenset({"Cardiomegaly", "Enlarged Cardiomediastinum"}): (
    "an enlarged cardiomediastinal silhouette includes mediastinal widening (lymph nodes, "
    "aorta, masses); cardiomegaly is the heart alone (CheXpert makes it a sub-finding)"
  ),
  frozenset({"Pleural_Thickening", "Pleural Other"}): (
    "CheXpert's 'Pleural Other' pools pleural thickening with plaques, calcification and "
    "fibrosis of the pleura"
  ),
  frozenset({"Mass", "Lung Lesion"}): "'Lung Lesion' is mass or nodule (a union of two findings)",
  frozenset({"Nodule", "Lung Lesion"}): "'Lung Lesion' is mass or nodule (a union of two findings)",
  frozenset({"Infiltration", "Lung Opacity"}): (
    "'Lung Opacity' is any parenchymal opacity (consolidation, edema, atelectasis, "
    "infiltration, ...), a wider finding"
  ),
  frozenset({"Consolidation", "Lung Opacity"}): (
    "'Lung Opacity' is any parenchymal opacity, of which consolidation is one kind"
  ),
  frozenset({"Pneumonia", "Consolidation"}): (
    "pneumonia is a clinical diagnosis; consolidation is an image finding with other causes"
  ),
}

# Names whose meaning depends on the rest of the label set, so equal names are not the same
# finding: NIH 'No Finding' means none of NIH's 14, CheXpert's none of its 13 pathologies
# (support devices allowed). They match only through a finding_map.
SET_RELATIVE: frozenset[str] = frozenset({"No Finding"})


def normalize(name: str) -> str:
  """The matching key of a finding name: lower case without spaces, underscores and hyphens."""
  return "".join(ch for ch in str(name).lower() if ch not in " \t_-")


# Column names a table maps that name no finding by themselves (RSNA's 'Target' is Pneumonia in
# RSNA's table only): another dataset's 'Target' could mean anything, so they never match by name.
NOT_FINDING_NAMES = frozenset({"target", "label", "class", "classname"})


@functools.cache
def _aliases() -> dict[str, str]:
  """{normalized name: canonical finding} of the names the tables give as a dataset's one name for
  a canonical finding, where no table maps the name elsewhere or to None. A name that is one of
  several a table counts under one finding (PadChest's 'laminar atelectasis' and 'empyema' under
  Atelectasis and Effusion) is a kind of it, not another name for it, and asserts nothing here."""
  votes: dict[str, set[str | None]] = {}
  for mapping in tables().values():
    names_of: dict[str | None, list[str]] = {}
    for name, canonical in mapping.items():
      names_of.setdefault(canonical, []).append(name)
    for canonical, names in names_of.items():
      if canonical is None or len(names) == 1:
        for name in names:
          votes.setdefault(normalize(name), set()).add(canonical)
  return {
    key: next(iter(vote))
    for key, vote in votes.items()
    if len(vote) == 1 and None not in vote and key not in NOT_FINDING_NAMES
  }


def canonical_of(name: str) -> str | None:
  """The canonical finding `name` means: itself for a canonical name (up to case, spaces,
  underscores, hyphens), else the one the datasets' tables agree it is ('Pleural Effusion' ->
  'Effusion'); None when no table says, or tables disagree."""
  key = normalize(name)
  for canonical in CANONICAL:
    if normalize(canonical) == key:
      return canonical
  return _aliases().get(key)


def set_relative(name: str) -> bool:
  """Whether `name` means 'none of the other labels' (SET_RELATIVE, or a name the tables map onto
  No Finding: 'normal', 'health'), whose meaning changes with the label set."""
  key = normalize(name)
  return key in {normalize(s) for s in SET_RELATIVE} or canonical_of(name) == NO_FINDING


def distinct_reason(a: str, b: str) -> str | None:
  """Why findings a and b must not be matched (DISTINCT, by name or canonical finding), or None."""
  ka = {normalize(a), normalize(canonical_of(a) or a)}
  kb = {normalize(b), normalize(canonical_of(b) or b)}
  if ka & kb:
    return None
  for pair, reason in DISTINCT.items():
    keys = {normalize(p) for p in pair}
    if ka & keys and kb & keys:
      return reason
  return None


@dataclasses.dataclass(frozen=True)
class FindingMatch:
  """How a model's findings map onto a dataset's label columns.

  matched: model finding -> dataset finding (model order); how: model finding -> 'finding_map' |
  'same name' | 'synonym' (another name of the same canonical finding); not_evaluable: model
  finding -> reason; ignored: dataset findings that no model finding uses."""

  matched: dict[str, str]
  how: dict[str, str]
  not_evaluable: dict[str, str]
  ignored: tuple[str, ...]


def _lookup(name: str, names: Sequence[str], what: str) -> str:
  hits = [n for n in names if n == name] or [n for n in names if normalize(n) == normalize(name)]
  if len(hits) != 1:
    problem = "is not one of" if not hits else "matches several of"
    raise ValueError(f"finding_map: {name!r} {problem} the {what} findings {list(names)}")
  return hits[0]


def match_findings(
  model_findings: Sequence[str],
  dataset_findings: Sequence[str],
  finding_map: Mapping[str, str | None] | None = None,
) -> FindingMatch:
  """Matches a model's findings to a dataset's: finding_map first ({model: dataset}; None or ''
  excludes a model finding), then equal names (up to case, spaces, underscores, hyphens), then
  names of the same canonical finding (canonical_of). A model finding with two candidate columns
  is an error asking for a finding_map."""
  model_findings, dataset_findings = list(model_findings), list(dataset_findings)
  given: dict[str, str | None] = {}
  for key, value in dict(finding_map or {}).items():
    m = _lookup(key, model_findings, "model's")
    given[m] = _lookup(value, dataset_findings, "dataset's") if value else None
  matched, how, not_evaluable = {}, {}, {}
  for f in model_findings:
    if f in given:
      if given[f] is None:
        not_evaluable[f] = "excluded by the finding_map"
      else:
        matched[f], how[f] = given[f], "finding_map"
      continue
    relative = set_relative(f)
    same = [] if relative else [d for d in dataset_findings if normalize(d) == normalize(f)]
    canonical = None if relative else canonical_of(f)
    syn = [d for d in dataset_findings if canonical and canonical_of(d) == canonical]
    candidates, kind = (same, "same name") if same else (syn, "synonym")
    if len(candidates) > 1:
      raise ValueError(
        f"model finding {f!r} matches several dataset findings {candidates}; choose one with "
        f"a finding_map ({f}=...)"
      )
    if candidates:
      matched[f], how[f] = candidates[0], kind
      continue
    reason = "the dataset has no label for it"
    if relative and any(set_relative(d) for d in dataset_findings):
      reason = (
        f"'{f}' means 'none of the other labels', which differ between the label sets; map it "
        "with a finding_map if the definitions agree"
      )
    related = [(d, distinct_reason(f, d)) for d in dataset_findings if distinct_reason(f, d)]
    if related:
      d, why = related[0]
      reason += (
        f" (it has {d!r}, which is not the same finding: {why}; map it with a finding_map "
        "if you accept the difference)"
      )
    not_evaluable[f] = reason
  used = set(matched.values())
  ignored = tuple(d for d in dataset_findings if d not in used)
  return FindingMatch(matched, how, not_evaluable, ignored)


def describe(dataset: str | None = None) -> dict:
  """The label space as data (what `python -m mdx findings` prints): {'canonical': [...],
  'datasets': {dataset: [{'name', 'canonical' (None: no canonical finding), 'also' (further
  findings the name counts for: the module's ALSO), 'reason' (None where the module gives
  none)}, ...] in the table's order}, 'without_table': [datasets whose
  module has no TO_CANONICAL yet]}; one dataset when given (an unknown one or one without a table
  is a ValueError)."""
  names = list(DATASETS) if dataset is None else [dataset]
  out: dict = {"canonical": list(CANONICAL), "datasets": {}, "without_table": []}
  for name in names:
    mapping = table(name)
    if mapping is None:
      if dataset is not None:
        raise ValueError(
          f"{DATASETS[name]} has no TO_CANONICAL table yet: its names are not mapped onto the "
          "canonical findings"
        )
      out["without_table"].append(name)
      continue
    why = reasons(name)
    also = getattr(_module(name), "ALSO", {})  # names that count for a second finding (PadChest)
    out["datasets"][name] = [
      {
        "name": n,
        "canonical": c,
        "also": list(also.get(n, ())),
        "reason": None if c else why.get(n),
      }
      for n, c in mapping.items()
    ]
  return out
