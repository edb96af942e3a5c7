"""Names of the findings that mdx classifies, in the order used for label vectors, and how the
names of two label sets (NIH ChestX-ray14, CheXpert, a folder dataset) are matched when a model
trained on one is evaluated on another."""

from __future__ import annotations

import dataclasses
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

# ------------------------------------------------------------------------------ matching label sets
# A model trained on one label set and evaluated on another (external validation) must compare the
# same finding under each name. Names match when they are equal up to case, spaces, underscores
# and hyphens ('Pleural_Thickening' = 'pleural thickening'), or when they sit in one SYNONYMS group.
# A user's finding_map (model finding -> dataset finding) wins over both.
#
# NIH ChestX-ray14 (14 labels) against CheXpert / MIMIC-CXR (14 observations):
#   same name, same radiological finding (matched by name): Atelectasis, Cardiomegaly,
#     Consolidation, Edema, Pneumonia, Pneumothorax. Both sets were mined from reports by
#     different labelers (NIH: NLP rules; CheXpert: its rule-based labeler with an 'uncertain'
#     class), so label noise differs, but the definition is the same.
#   different names, same finding (SYNONYMS): NIH 'Effusion' is the pleural effusion that CheXpert
#     calls 'Pleural Effusion' (NIH's reports mean pleural fluid; pericardial effusion is not
#     labelled).
#   related but NOT the same (DISTINCT: never matched by themselves, the reason is reported):
#     see DISTINCT below. NIH's Infiltration, Mass, Nodule, Emphysema, Fibrosis and Hernia and
#     CheXpert's Lung Opacity, Lung Lesion, Pleural Other, Fracture, Support Devices and Enlarged
#     Cardiomediastinum have no counterpart in the other set.
SYNONYMS: tuple[tuple[str, ...], ...] = (("Effusion", "Pleural Effusion"),)

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


def synonyms(name: str) -> frozenset[str]:
  """The normalized names that mean the same finding as `name` (itself included)."""
  key = normalize(name)
  out = {key}
  for group in SYNONYMS:
    keys = {normalize(g) for g in group}
    if key in keys:
      out |= keys
  return frozenset(out)


def distinct_reason(a: str, b: str) -> str | None:
  """Why findings a and b must not be matched (DISTINCT), or None."""
  na, nb = normalize(a), normalize(b)
  for pair, reason in DISTINCT.items():
    keys = {normalize(p) for p in pair}
    if na in keys and nb in keys and na != nb:
      return reason
  return None


@dataclasses.dataclass(frozen=True)
class FindingMatch:
  """How a model's findings map onto a dataset's label columns.

  matched: model finding -> dataset finding (model order); how: model finding -> 'finding_map' |
  'same name' | 'synonym'; not_evaluable: model finding -> reason; ignored: dataset findings
  that no model finding uses."""

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
  SYNONYMS. A model finding with two candidate columns is an error asking for a finding_map."""
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
    relative = normalize(f) in {normalize(s) for s in SET_RELATIVE}
    same = [] if relative else [d for d in dataset_findings if normalize(d) == normalize(f)]
    others = synonyms(f) - {normalize(f)}
    syn = [d for d in dataset_findings if normalize(d) in others]
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
    if relative and any(normalize(d) == normalize(f) for d in dataset_findings):
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
