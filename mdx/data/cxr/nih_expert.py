"""The adjudicated expert labels of NIH images (Majkowska et al., Radiology 2019) as a test source.

Four radiologist panels relabelled 4,376 NIH ChestX-ray14 images for Fracture, Pneumothorax,
Airspace opacity and Nodule or mass (YES/NO after adjudication): a better reference standard than
the NLP-mined NIH labels, so a model trained on NIH is best tested on these.

config.data fields (source='nih_expert'):
  metadata: google2019_nih-chest-xray-labels.csv.gz.
  images: the NIH image folder (as for source='nih').
  set: 'test', 'val' or None (both) - the 'Set Id' column.
  findings: subset of the four (default all).
  channels, on_error: as for NIH (most users hold only part of the NIH images: use 'skip').
extra per record: 'study_id', 'view', 'sex', 'age' from the table's NIH columns (nih.extra_of).
"""

from __future__ import annotations

import os

import numpy as np

from mdx.data.cxr import nih
from mdx.data.image import file_source

FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
# Onto mdx.data.cxr.findings.CANONICAL (findings.tables() gathers every dataset's table).
TO_CANONICAL: dict[str, str | None] = {
  "Fracture": "Fracture",
  "Pneumothorax": "Pneumothorax",
  # airspace (alveolar) opacity only; CheXpert's Lung Opacity also takes interstitial opacities
  "Airspace opacity": None,
  # NIH's Nodule and Mass together; CheXpert's Lung Lesion is wider (cavities, cysts)
  "Nodule or mass": None,
}
VALUES = {"YES": 1.0, "NO": 0.0, "": np.nan}


def output_names(data_config) -> tuple[str, ...]:
  """The findings a source of config.data labels (data.findings, default every expert-labelled
  one), told without reading the labels (mdx.config counts them for model.num_classes)."""
  return tuple(file_source.config_get(data_config, "findings", FINDINGS))


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  metadata = file_source.require(data_config, "metadata", "nih_expert")
  findings = output_names(data_config)
  bad = [f for f in findings if f not in FINDINGS]
  if bad:
    raise ValueError(f"config.data.findings {bad} are not expert-labelled; choose from {FINDINGS}")
  _, rows = file_source.read_csv(metadata, (nih.IMAGE, nih.PATIENT, *findings))
  which = file_source.config_get(data_config, "set")
  if which is not None:
    rows = [r for r in rows if r.get("Set Id") == which]
    if not rows:
      raise ValueError(f"{metadata}: no rows with 'Set Id' == {which!r} (use 'test' or 'val')")
  labels = np.empty((len(rows), len(findings)), np.float32)
  for r, row in enumerate(rows):
    for c, f in enumerate(findings):
      cell = (row[f] or "").strip().upper()
      if cell not in VALUES:
        raise ValueError(
          f"{metadata}: row {r + 2} ({row[nih.IMAGE]}) column {f!r} has {row[f]!r}; "
          "expected YES or NO"
        )
      labels[r, c] = VALUES[cell]
  extra = nih.extra_of(rows, metadata)
  folder = file_source.require(data_config, "images", "nih_expert")
  index = nih.index_images(folder)
  names = [r[nih.IMAGE] for r in rows]
  paths = [index.get(n, os.path.join(folder, n)) for n in names]
  keep = file_source.keep_existing(
    paths, f"expert labels {metadata}", file_source.config_get(data_config, "on_error", "raise")
  )
  idx = np.flatnonzero(keep)
  return file_source.FileSource(
    [paths[i] for i in idx],
    labels[idx],
    [rows[i][nih.PATIENT] for i in idx],
    [names[i] for i in idx],
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="nih_expert",
    skipped=int((~keep).sum()),
    extra={k: v[idx] for k, v in extra.items()},
  )
