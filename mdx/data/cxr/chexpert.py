"""CheXpert as it comes: train.csv / valid.csv with 1, 0, -1 (uncertain) and blank labels.

config.data fields (source='chexpert'):
  metadata: train.csv or valid.csv (columns 'Path', 'Frontal/Lateral', then the observations).
  images: the folder the 'Path' column is relative to (the parent of CheXpert-v1.0[-small]/), or
    the dataset folder itself.
  findings: observation columns to predict, by CheXpert's names or the canonical ones (mdx.data.cxr
    .findings: 'Effusion' reads 'Pleural Effusion'), outputs named as given (default: the 5 of the
    CheXpert competition).
  uncertain: policy for -1: 'ones', 'zeros' or 'ignore' (nan, masked out of the loss), or a dict
    {finding: policy} (e.g. U-Ones for Atelectasis and Edema, U-Zeros for the rest).
  blank: policy for empty cells (not mentioned in the report): 'zeros' (default) or 'ignore'.
  frontal_only: keep only frontal views (default False).
  channels, on_error: as for NIH.
The patient id is taken from the path (.../patient00001/study1/view1_frontal.jpg -> patient00001).

extra per record (mdx.data.cxr.records.extra): 'study_id' from the path ('patient00001/study1'),
'view' ('AP/PA' as the table writes it: AP, PA, LL, RL; a lateral row with it blank or frontal is
'Lateral', a frontal row with it blank 'Frontal'), 'sex' ('Sex': Male / Female -> 'M' / 'F',
Unknown -> ''), 'age' ('Age' in years, nan when blank; the dataset writes 90 for 90 and over).
'' and nan where the table lacks the column.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from mdx.data.cxr import nih, records
from mdx.data.image import file_source

OBSERVATIONS = (
  "No Finding",
  "Enlarged Cardiomediastinum",
  "Cardiomegaly",
  "Lung Opacity",
  "Lung Lesion",
  "Edema",
  "Consolidation",
  "Pneumonia",
  "Atelectasis",
  "Pneumothorax",
  "Pleural Effusion",
  "Pleural Other",
  "Fracture",
  "Support Devices",
)
# CheXpert's observations -> canonical. The labeler's observation definitions are the canonical
# findings of the same name (NIH's where NIH has them: Atelectasis, Cardiomegaly, Consolidation,
# Edema, Pneumonia, Pneumothorax are the same radiological findings, mined by another labeler).
TO_CANONICAL: dict[str, str | None] = {
  "Atelectasis": "Atelectasis",
  "Cardiomegaly": "Cardiomegaly",
  "Consolidation": "Consolidation",
  "Edema": "Edema",
  "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
  "Fracture": "Fracture",
  "Lung Lesion": "Lung Lesion",
  "Lung Opacity": "Lung Opacity",
  # None of its 13 other observations is present (support devices allowed); 1.0 or blank, never
  # 0 or -1. Relative to the label set, as every 'No Finding' (findings.SET_RELATIVE).
  "No Finding": "No Finding",
  # Pleural fluid: NIH's 'Effusion' means the same (NIH's reports mean pleural fluid; pericardial
  # effusion is labelled by neither).
  "Pleural Effusion": "Effusion",
  "Pleural Other": "Pleural Other",
  "Pneumonia": "Pneumonia",
  "Pneumothorax": "Pneumothorax",
  "Support Devices": "Support Devices",
}
COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
PATIENT_RE = re.compile(r"(patient\d+)")
STUDY_RE = re.compile(r"(patient\d+)[/\\](study\d+)")
LATERAL_VIEWS = ("LL", "RL")  # left / right lateral: the AP/PA codes a lateral film can carry
POLICIES = {"ones": 1.0, "zeros": 0.0, "ignore": np.nan}


def _policy_value(policy: str, what: str) -> float:
  if policy not in POLICIES:
    raise ValueError(f"config.data.{what}={policy!r}; choose one of {sorted(POLICIES)}")
  return POLICIES[policy]


def parse_labels(
  rows: Sequence[dict[str, str]],
  findings: Sequence[str],
  uncertain: str | Mapping[str, str] = "ignore",
  blank: str = "zeros",
  where: str = "metadata",
) -> np.ndarray:
  """CheXpert cells -> float32 [N, len(findings)] with the chosen uncertain / blank policies."""
  if isinstance(uncertain, str):
    uncertain = {f: uncertain for f in findings}
  unknown = set(uncertain) - set(findings)
  if unknown:
    raise ValueError(
      f"config.data.uncertain names {sorted(unknown)}, which are not in findings {list(findings)}"
    )
  u_value = [_policy_value(uncertain.get(f, "ignore"), "uncertain") for f in findings]
  b_value = _policy_value(blank, "blank")
  out = np.empty((len(rows), len(findings)), np.float32)
  for r, row in enumerate(rows):
    for c, f in enumerate(findings):
      cell = (row.get(f) or "").strip()
      if cell == "":
        out[r, c] = b_value
        continue
      try:
        v = float(cell)
      except ValueError:
        v = None
      if v == 1.0:
        out[r, c] = 1.0
      elif v == 0.0:
        out[r, c] = 0.0
      elif v == -1.0:
        out[r, c] = u_value[c]
      else:
        raise ValueError(
          f"{where}: row {r + 2} ({row.get('Path')}) column {f!r} has {cell!r}; "
          "CheXpert labels are 1, 0, -1 (uncertain) or blank"
        )
  return out


def patient_of(path: str, where: str) -> str:
  m = PATIENT_RE.search(path)
  if not m:
    raise ValueError(f"{where}: cannot find the patient id (patientNNNNN) in path {path!r}")
  return m.group(1)


def study_of(path: str) -> str:
  """'patient00001/study1' from a CheXpert path ('' when the path has no study folder)."""
  m = STUDY_RE.search(path)
  return f"{m.group(1)}/{m.group(2)}" if m else ""


def view_of(row: dict[str, str]) -> str:
  """The 'AP/PA' cell; for a lateral row one of LATERAL_VIEWS or else 'Lateral', for a frontal
  row with it blank 'Frontal' ('' when the table has neither column)."""
  ap_pa = (row.get("AP/PA") or "").strip()
  frontal_lateral = (row.get("Frontal/Lateral") or "").strip()
  if frontal_lateral == "Lateral":
    return ap_pa if ap_pa in LATERAL_VIEWS else "Lateral"
  return ap_pa or frontal_lateral


def extra_of(rows: Sequence[dict[str, str]], where: str) -> dict[str, np.ndarray]:
  """FileSource.extra of CheXpert rows: study, view, sex and age per row."""
  return records.extra(
    len(rows),
    study_id=[study_of(r["Path"]) for r in rows],
    view=[view_of(r) for r in rows],
    sex=[records.sex_of(r.get("Sex")) for r in rows],
    # the same cell forms as NIH's ages (plain years), read by the same code
    age=[nih.age_of(r.get("Age"), f"{where}: {r['Path']} column 'Age'") for r in rows],
  )


def _resolve(root: str, rel: str) -> str:
  """root/rel, or root/rel without its first folder when root is the dataset folder itself."""
  full = os.path.join(root, rel)
  if os.path.exists(full):
    return full
  parts = rel.replace("\\", "/").split("/", 1)
  if len(parts) == 2:
    alt = os.path.join(root, parts[1])
    if os.path.exists(alt):
      return alt
  return full


# canonical name -> the CheXpert column of the same finding, where the names differ
COLUMN_OF: dict[str, str] = {c: name for name, c in TO_CANONICAL.items() if c and c != name}


def output_names(data_config) -> tuple[str, ...]:
  """The findings a source of config.data labels (data.findings, default the five competition
  findings), told without reading the metadata (mdx.config counts them for model.num_classes)."""
  return tuple(file_source.config_get(data_config, "findings", COMPETITION))


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  metadata = file_source.require(data_config, "metadata", "chexpert")
  findings = output_names(data_config)
  # a canonical name reads its CheXpert column ('Effusion' -> 'Pleural Effusion'), so a config
  # written in the one label space (mdx.data.cxr.findings) reads CheXpert too
  columns = tuple(COLUMN_OF.get(f, f) for f in findings)
  _, rows = file_source.read_csv(metadata, ("Path", *columns))
  if file_source.config_get(data_config, "frontal_only", False):
    if rows and "Frontal/Lateral" not in rows[0]:
      raise ValueError(f"{metadata}: frontal_only needs the 'Frontal/Lateral' column")
    rows = [r for r in rows if r["Frontal/Lateral"] == "Frontal"]
  uncertain = file_source.config_get(data_config, "uncertain", "ignore")
  if not isinstance(uncertain, str):
    uncertain = {COLUMN_OF.get(f, f): policy for f, policy in dict(uncertain).items()}
  labels = parse_labels(
    rows, columns, uncertain, file_source.config_get(data_config, "blank", "zeros"), where=metadata
  )
  patients = [patient_of(r["Path"], metadata) for r in rows]
  extra = extra_of(rows, metadata)
  root = file_source.require(data_config, "images", "chexpert")
  paths = [_resolve(root, r["Path"]) for r in rows]
  keep = file_source.keep_existing(
    paths, f"CheXpert metadata {metadata}", file_source.config_get(data_config, "on_error", "raise")
  )
  idx = np.flatnonzero(keep)
  # The image id is the path below the patient folder's parent: unique across studies and views.
  ids = [rows[i]["Path"].split("/", 1)[-1] for i in idx]
  return file_source.FileSource(
    [paths[i] for i in idx],
    labels[idx],
    [patients[i] for i in idx],
    ids,
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="chexpert",
    skipped=int((~keep).sum()),
    extra={k: v[idx] for k, v in extra.items()},
  )
