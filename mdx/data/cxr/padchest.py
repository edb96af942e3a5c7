"""PadChest as BIMCV distributes it: one CSV row per image, its report's terms in 'Labels'.

The table, PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (or .csv.gz), has one row per
16-bit PNG: ImageID, ImageDir (the zip the image came in), StudyID, PatientID, PatientBirth (year),
PatientSex_DICOM, StudyDate_DICOM (YYYYMMDD), Projection (PA, L, AP, AP_horizontal, COSTAL, ...),
MethodLabel (Physician: read by a physician; RNN_model: by the publisher's network trained on
those) and Labels, a Python-style list of terms from the publisher's hierarchical taxonomy, e.g.
"['pleural effusion', 'cardiomegaly']" ('normal': nothing abnormal reported; 'exclude': the
publisher says not to use the image).

Labels: a canonical finding is 1 when any term of the image maps onto it (TO_CANONICAL, exact
terms after stripping stray spaces, plus ALSO for terms the taxonomy files under two findings) and
0 otherwise; 'No Finding' is 1 for a 'normal' image (whose other terms, if any, say nothing
abnormal: NOT_FINDINGS) and 0 otherwise. Canonical findings no PadChest term has (Lung Opacity,
Lung Lesion, Enlarged Cardiomediastinum, Pleural Other) are unknown (nan) when asked for.

Every ImageID is listed once, and a table without rows is refused.

Rows left out, each counted in source.excluded and source.skipped and logged, never silently:
'exclude' rows; rows without labels (an empty cell or '[]': the report was not labelled, so
nothing is known); images torchxrayvision lists as missing from the distribution or unreadable
(KNOWN_BAD); and, with on_error='skip', images whose file is missing. Rows of other projections
than config.data.views are left out too (counted in source.excluded['views'] only, as NIH's views).

extra per record: 'study_id', 'view' (Projection), 'sex' (PatientSex_DICOM: 'M', 'F' or ''), 'age'
(years: the study's year minus the birth year, so within a year; nan where either is missing) and
'label_method' (MethodLabel).

config.data fields (source='padchest'):
  root: the dataset folder (a path): images at root/images/<ImageDir>/<ImageID>,
    root/<ImageDir>/<ImageID>, root/images/<ImageID> or root/<ImageID> (the zips unpacked into
    numbered folders, or flat as in the resized copies).
  metadata: the CSV (a path; default root/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv,
    or its .gz).
  views: the Projection values to keep (default DEFAULT_VIEWS: the frontal films PA, AP and
    AP_horizontal, the supine AP; lateral L, rib views COSTAL and the publisher's EXCLUDE and UNK
    are left out).
  findings: canonical finding names (CANONICAL), default every one PadChest labels
    (DEFAULT_FINDINGS).
  unknown_terms: 'error' (default) or 'ignore', for a term of 'Labels' that is not in
    TO_CANONICAL (a misspelling, or a table newer than the mapping): 'error' is a ValueError naming
    the file, row, image and term; 'ignore' counts it for no finding, counts the terms in
    source.unknown_terms and logs them.
  channels, on_error: as for NIH.
"""

from __future__ import annotations

import ast
import os
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from absl import logging

from mdx.data.cxr import findings as findings_lib
from mdx.data.cxr import label_space, records
from mdx.data.image import file_source

METADATA = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
DEFAULT_VIEWS = ("PA", "AP", "AP_horizontal")
REQUIRED = ("ImageID", "StudyID", "PatientID", "Projection", "Labels")
UNKNOWN_TERMS = ("error", "ignore")

# Every term of PadChest's 'Labels' (the 193 terms of the 01.02.19 table, spelled as there, and
# 'hemothorax' of the publisher's taxonomy) -> the canonical finding with the same definition, or
# None. A term counts for the finding of the taxonomy term it falls under (BIMCV's taxonomy tree,
# github.com/auriml/Rx-thorax-automatic-captioning, manual_review/trees_code.txt: 'laminar
# atelectasis' is a child of 'atelectasis'), except where the comment says why not.
TO_CANONICAL: dict[str, str | None] = {
  # --- the report as a whole
  "normal": "No Finding",  # nothing abnormal reported: the set-relative rule is in parse_terms
  "exclude": None,  # the publisher's mark for images not to use: the row is left out
  "suboptimal study": None,  # image quality, not a finding
  "unchanged": None,  # no change since a previous study: names no finding by itself
  # --- Atelectasis: the term and its children in the taxonomy
  "atelectasis": "Atelectasis",
  "total atelectasis": "Atelectasis",
  "lobar atelectasis": "Atelectasis",
  "segmental atelectasis": "Atelectasis",
  "laminar atelectasis": "Atelectasis",  # plate-like (discoid) atelectasis
  "round atelectasis": "Atelectasis",
  "atelectasis basal": "Atelectasis",
  "volume loss": None,  # a sibling, not a child: loss of volume has other causes (surgery, ...)
  "hypoexpansion": None,  # poor inspiration, not collapse of lung
  "hypoexpansion basal": None,  # as 'hypoexpansion'
  # --- Cardiomegaly
  "cardiomegaly": "Cardiomegaly",
  # --- Effusion: PadChest 'pleural effusion' = NIH Effusion (pleural fluid), with its children
  "pleural effusion": "Effusion",
  "loculated pleural effusion": "Effusion",
  "loculated fissural effusion": "Effusion",  # fluid loculated in a fissure is pleural fluid
  "empyema": "Effusion",  # infected pleural fluid: a child of 'pleural effusion'
  "hemothorax": "Effusion",  # blood in the pleural space: a child of 'pleural effusion'
  "hydropneumothorax": "Pneumothorax",  # child of both 'pneumothorax' and 'pleural effusion': ALSO
  "pericardial effusion": None,  # fluid around the heart; NIH's Effusion is pleural
  "costophrenic angle blunting": None,  # a sign (fluid, or pleural scarring), not effusion itself
  # --- Infiltration: PadChest 'infiltrates' (radiologic infiltrate of lung) and its children
  "infiltrates": "Infiltration",
  "interstitial pattern": "Infiltration",
  "ground glass pattern": "Infiltration",
  "reticular interstitial pattern": "Infiltration",
  "reticulonodular interstitial pattern": "Infiltration",
  "miliary opacities": "Infiltration",
  "alveolar pattern": "Infiltration",
  "increased density": None,  # a sibling of 'infiltrates': any denser area, not an infiltrate
  # --- Consolidation (a child of 'alveolar pattern' < 'infiltrates': Infiltration too, ALSO)
  "consolidation": "Consolidation",
  "air bronchogram": "Consolidation",  # a child of 'consolidation' (and of 'alveolar pattern')
  # --- Mass: PadChest 'mass' (mass of a thoracic structure) and every kind the taxonomy lists;
  # NIH's Mass was mined from reports naming a mass wherever it lies
  "mass": "Mass",
  "pulmonary mass": "Mass",
  "mediastinal mass": "Mass",
  "pleural mass": "Mass",
  "breast mass": "Mass",
  "soft tissue mass": "Mass",
  # --- Nodule
  "nodule": "Nodule",
  "multiple nodules": "Nodule",
  "pseudonodule": None,  # something that looks like a nodule and is not (a mimic)
  "nipple shadow": None,  # a pseudonodule
  "end on vessel": None,  # a pseudonodule
  "granuloma": None,  # a healed (often calcified) granuloma, filed apart from 'nodule'
  "calcified granuloma": None,  # as 'granuloma'
  # --- Pneumonia (a differential diagnosis in the taxonomy, as NIH's is a report diagnosis)
  "pneumonia": "Pneumonia",
  "atypical pneumonia": "Pneumonia",
  # --- Pneumothorax
  "pneumothorax": "Pneumothorax",
  # --- Edema: PadChest 'pulmonary edema' (a differential diagnosis)
  "pulmonary edema": "Edema",
  "kerley lines": None,  # a sign of interstitial fluid, not a diagnosis of edema
  "vascular redistribution": None,  # a sign of venous congestion, not edema
  "central vascular redistribution": None,  # as 'vascular redistribution'
  "hilar congestion": None,  # venous congestion, not edema
  "heart insufficiency": None,  # heart failure, a clinical diagnosis; not edema itself
  # --- Emphysema: pulmonary emphysema
  "emphysema": "Emphysema",
  "subcutaneous emphysema": None,  # air in the soft tissues, not pulmonary emphysema
  "COPD signs": None,  # a clinical syndrome (emphysema and/or chronic bronchitis)
  "bullas": None,  # bullae occur with and without emphysema
  "hyperinflated lung": None,  # a sign (COPD, asthma), not emphysema itself
  "flattened diaphragm": None,  # a sign of hyperinflation
  "air trapping": None,  # a sign of small-airway disease
  # --- Fibrosis: PadChest 'pulmonary fibrosis' and its children
  "pulmonary fibrosis": "Fibrosis",
  "post radiotherapy changes": "Fibrosis",  # post-radiotherapy pulmonary fibrosis (its UMLS code)
  "asbestosis signs": "Fibrosis",  # asbestosis is pulmonary fibrosis from asbestos
  "fibrotic band": None,  # a single linear scar, not fibrosis of the lung
  "chronic changes": None,  # unspecified chronic lung changes
  # --- Pleural_Thickening: the term and its children
  "pleural thickening": "Pleural_Thickening",
  "apical pleural thickening": "Pleural_Thickening",
  "calcified pleural thickening": "Pleural_Thickening",
  "pleural plaques": None,  # a sibling of 'pleural thickening' in the taxonomy, filed apart
  "calcified pleural plaques": None,  # as 'pleural plaques'
  "fissure thickening": None,  # a fissure, not the pleura of the chest wall
  "minor fissure thickening": None,  # as 'fissure thickening'
  "major fissure thickening": None,  # as 'fissure thickening'
  # --- Hernia: NIH's Hernia is the hiatal hernia
  "hiatal hernia": "Hernia",
  "diaphragmatic eventration": None,  # a thin raised diaphragm, not a hernia
  "Chilaiditi sign": None,  # bowel between liver and diaphragm, not a hernia
  # --- Fracture: the term and its children (healed rib fractures with callus included)
  "fracture": "Fracture",
  "clavicle fracture": "Fracture",
  "humeral fracture": "Fracture",
  "vertebral fracture": "Fracture",
  "rib fracture": "Fracture",
  "callus rib fracture": "Fracture",
  "vertebral compression": None,  # the taxonomy files it under degenerative changes, not fracture
  "vertebral anterior compression": None,  # as 'vertebral compression'
  # --- Support Devices: tubes, lines, catheters, pacemakers, valves and orthopaedic hardware (the
  # devices the CheXpert labeler names: tube, line, catheter, pacer, valve, hardware, plate, screw,
  # arthroplasty, stent-like devices)
  "tracheostomy tube": "Support Devices",
  "endotracheal tube": "Support Devices",
  "NSG tube": "Support Devices",  # nasogastric tube
  "chest drain tube": "Support Devices",
  "ventriculoperitoneal drain tube": "Support Devices",
  "gastrostomy tube": "Support Devices",
  "nephrostomy tube": "Support Devices",
  "double J stent": "Support Devices",  # a ureteral stent
  "catheter": "Support Devices",
  "central venous catheter": "Support Devices",
  "central venous catheter via jugular vein": "Support Devices",
  "central venous catheter via subclavian vein": "Support Devices",
  "central venous catheter via umbilical vein": "Support Devices",
  "reservoir central venous catheter": "Support Devices",  # a port
  "electrical device": "Support Devices",
  "dual chamber device": "Support Devices",
  "single chamber device": "Support Devices",
  "pacemaker": "Support Devices",
  "dai": "Support Devices",  # implantable cardioverter-defibrillator (Spanish DAI)
  "artificial heart valve": "Support Devices",
  "artificial mitral heart valve": "Support Devices",
  "artificial aortic heart valve": "Support Devices",
  "osteosynthesis material": "Support Devices",  # plates and screws: hardware
  "humeral prosthesis": "Support Devices",  # a shoulder arthroplasty
  "endoprosthesis": "Support Devices",  # a vascular stent graft
  "aortic endoprosthesis": "Support Devices",  # a vascular stent graft
  "prosthesis": None,  # unspecified: its children include breast implants, not devices
  "mammary prosthesis": None,  # a breast implant, not a support device
  "metal": None,  # any metal density (shot pellets, clips), not necessarily a device
  "sternotomy": None,  # a past operation (wires), not a device in place for support
  "suture material": None,  # surgical clips and sutures
  "bone cement": None,  # vertebroplasty cement
  "surgery": None,  # signs of past surgery
  "surgery breast": None,
  "surgery heart": None,
  "surgery humeral": None,
  "surgery lung": None,
  "surgery neck": None,
  "mastectomy": None,
  "abnormal foreign body": None,  # not a medical device
  "external foreign body": None,  # outside the patient
  # --- Tuberculosis
  "tuberculosis": "Tuberculosis",
  "tuberculosis sequelae": None,  # healed tuberculosis (scars), not the disease
  # --- no canonical finding: mediastinum, heart, vessels
  "mediastinal enlargement": None,  # CheXpert's Enlarged Cardiomediastinum includes the heart
  "superior mediastinal enlargement": None,  # as 'mediastinal enlargement'
  "goiter": None,
  "aortic elongation": None,
  "descendent aortic elongation": None,
  "ascendent aortic elongation": None,
  "aortic button enlargement": None,
  "supra aortic elongation": None,
  "aortic aneurysm": None,
  "aortic atheromatosis": None,
  "right sided aortic arch": None,
  "dextrocardia": None,
  "heart valve calcified": None,
  "mediastinal shift": None,
  "tracheal shift": None,
  "azygoesophageal recess shift": None,
  "pneumomediastinum": None,
  "mediastinic lipomatosis": None,
  "lipomatosis": None,
  "esophagic dilatation": None,
  "hilar enlargement": None,
  "vascular hilar enlargement": None,
  "pulmonary artery enlargement": None,
  "adenopathy": None,
  "calcified adenopathy": None,
  "calcified mediastinal adenopathy": None,
  "pulmonary hypertension": None,
  "pulmonary artery hypertension": None,
  "pulmonary venous hypertension": None,
  # --- no canonical finding: lungs and pleura
  "abscess": None,
  "cyst": None,
  "cavitation": None,
  "bronchiectasis": None,
  "bronchovascular markings": None,
  "air fluid level": None,
  "azygos lobe": None,
  "lung vascular paucity": None,
  "calcified densities": None,
  "calcified fibroadenoma": None,
  "lung metastasis": None,  # a diagnosis; its nodules or masses carry their own terms
  "lymphangitis carcinomatosa": None,
  "lepidic adenocarcinoma": None,
  "respiratory distress": None,
  "hemidiaphragm elevation": None,
  "pneumoperitoneo": None,  # free air under the diaphragm (Spanish neumoperitoneo)
  # --- no canonical finding: bones, soft tissue, body habitus
  "thoracic cage deformation": None,
  "scoliosis": None,
  "kyphosis": None,
  "pectum excavatum": None,
  "pectum carinatum": None,
  "cervical rib": None,
  "vertebral degenerative changes": None,
  "lytic bone lesion": None,
  "sclerotic bone lesion": None,
  "blastic bone lesion": None,
  "bone metastasis": None,
  "costochondral junction hypertrophy": None,
  "sternoclavicular junction hypertrophy": None,
  "axial hyperostosis": None,
  "osteopenia": None,
  "osteoporosis": None,
  "non axial articular degenerative changes": None,
  "subacromial space narrowing": None,
  "gynecomastia": None,
  "obesity": None,
}

# Terms the taxonomy files under two mapped findings: the findings besides TO_CANONICAL's.
ALSO: dict[str, tuple[str, ...]] = {
  "hydropneumothorax": ("Effusion",),  # air and pleural fluid: a child of 'pleural effusion' too
  "consolidation": ("Infiltration",),  # consolidation < alveolar pattern < infiltrates
  "air bronchogram": ("Infiltration",),  # air bronchogram < alveolar pattern < infiltrates
}

# Terms that say nothing abnormal: a 'normal' image may also carry them.
NOT_FINDINGS = frozenset({"normal", "suboptimal study", "unchanged"})

LABELLED = frozenset(
  {c for c in TO_CANONICAL.values() if c} | {c for cs in ALSO.values() for c in cs}
)
DEFAULT_FINDINGS: tuple[str, ...] = tuple(c for c in findings_lib.CANONICAL if c in LABELLED)

# Images to leave out, as torchxrayvision documents them (torchxrayvision/datasets.py, PC_Dataset:
# "Remove missing files", with the error each unreadable one gave).
_MISSING = "missing from the distribution (torchxrayvision)"
_BROKEN = "broken PNG file (chunk b'\\x00\\x00\\x00\\x00') (torchxrayvision)"
_TRUNCATED = "OSError: image file is truncated (torchxrayvision)"
KNOWN_BAD: dict[str, str] = {
  "216840111366964012819207061112010307142602253_04-014-084.png": _MISSING,
  "216840111366964012989926673512011074122523403_00-163-058.png": _MISSING,
  "216840111366964012959786098432011033083840143_00-176-115.png": _MISSING,
  "216840111366964012558082906712009327122220177_00-102-064.png": _MISSING,
  "216840111366964012339356563862009072111404053_00-043-192.png": _MISSING,
  "216840111366964013076187734852011291090445391_00-196-188.png": _MISSING,
  "216840111366964012373310883942009117084022290_00-064-025.png": _MISSING,
  "216840111366964012283393834152009033102258826_00-059-087.png": _MISSING,
  "216840111366964012373310883942009170084120009_00-097-074.png": _MISSING,
  "216840111366964012819207061112010315104455352_04-024-184.png": _MISSING,
  "216840111366964012819207061112010306085429121_04-020-102.png": _MISSING,
  "216840111366964012989926673512011083134050913_00-168-009.png": _BROKEN,
  "216840111366964012373310883942009152114636712_00-102-045.png": _TRUNCATED,
  "216840111366964012819207061112010281134410801_00-129-131.png": _TRUNCATED,
  "216840111366964012487858717522009280135853083_00-075-001.png": _TRUNCATED,
  "216840111366964012989926673512011151082430686_00-157-045.png": _BROKEN,
  "216840111366964013686042548532013208193054515_02-026-007.png": _TRUNCATED,
  "216840111366964013590140476722013058110301622_02-056-111.png": _TRUNCATED,
  "216840111366964013590140476722013043111952381_02-065-198.png": _TRUNCATED,
  "216840111366964013829543166512013353113303615_02-092-190.png": _TRUNCATED,
  "216840111366964013962490064942014134093945580_01-178-104.png": _TRUNCATED,
}

FACTS = {
  "modality": (
    "chest radiographs, 16-bit PNG (PadChest: Hospital San Juan, Alicante, Spain, 2009-2017; "
    "frontal PA, AP and supine AP films by default, lateral and rib views on request)"
  ),
  "label_source": (
    "terms of a hierarchical, UMLS-mapped taxonomy extracted from the Spanish radiology report: "
    "27% of the reports labelled by physicians (MethodLabel 'Physician'), the rest by a "
    "recurrent neural network trained on those (MethodLabel 'RNN_model')"
  ),
  "label_values": (
    "a list of terms per image: a finding is 1 when one of its terms is listed, else 0; "
    "'normal' means nothing abnormal was reported (No Finding 1); 'exclude' images are left out"
  ),
}

_DIR = re.compile(r"\d+(\.0*)?")


def output_names(data_config) -> tuple[str, ...]:
  """The canonical findings a source of config.data labels (data.findings, default
  DEFAULT_FINDINGS), told without reading a file; a name outside CANONICAL is an error."""
  return label_space.requested_findings(data_config, DEFAULT_FINDINGS)


def parse_terms(cell: str, where: str) -> list[str]:
  """The terms of a 'Labels' cell ("['pleural effusion', 'cardiomegaly ']" -> stripped terms;
  empty strings dropped); [] for an empty cell or list. Anything but a list of strings is a
  ValueError naming `where`."""
  text = (cell or "").strip()
  if not text:
    return []
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError):
    value = None
  if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
    raise ValueError(
      f"{where}: column 'Labels' is {cell[:80]!r}, not a list of terms such as "
      "\"['pleural effusion', 'cardiomegaly']\"; fix the row or remove it"
    )
  return [t.strip() for t in value if t.strip()]


def label_row(terms: Sequence[str], findings: Sequence[str]) -> tuple[np.ndarray, list[str]]:
  """float32 [len(findings)] for one image's terms (1 / 0, nan for findings PadChest does not
  label) and the terms not in TO_CANONICAL."""
  positive, unknown = set(), []
  for term in terms:
    if term not in TO_CANONICAL:
      unknown.append(term)
    elif term != "normal" and TO_CANONICAL[term]:
      positive.add(TO_CANONICAL[term])
    positive.update(ALSO.get(term, ()))
  normal = "normal" in terms and not (set(terms) - NOT_FINDINGS)
  return label_space.term_labels(findings, LABELLED, positive, normal), unknown


def _age(row: dict[str, str], where: str) -> float:
  birth = (row.get("PatientBirth") or "").strip()
  date = (row.get("StudyDate_DICOM") or "").strip()
  if not birth or not date or birth.lower() == "nan":
    return np.nan
  try:
    year = float(birth)
  except ValueError:
    year = np.nan
  if not np.isfinite(year):
    raise ValueError(
      f"{where}: column 'PatientBirth' is {birth!r}, not a year; fix the row or empty the cell"
    )
  if not (len(date) == 8 and date.isdigit()):
    raise ValueError(
      f"{where}: column 'StudyDate_DICOM' is {date!r}, not a date YYYYMMDD; fix the row or "
      "empty the cell"
    )
  return float(int(date[:4]) - year)


def index_images(root: str) -> dict[str, str]:
  """File name -> path of the files in root/images/<n>/, root/<n>/ (numbered folders, one per zip
  of the distribution), root/images/ and root/."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"PadChest folder {root} does not exist (config.data.root)")
  images = os.path.join(root, "images")
  folders = []
  for base in (images, root):
    if os.path.isdir(base):
      with os.scandir(base) as it:
        folders += sorted(e.path for e in it if e.is_dir() and e.name.isdigit())
  return records.index_files([*folders, images, root])


def _expected_path(root: str, row: dict[str, str]) -> str:
  """Where an image the index did not find should be: root/images/<ImageDir>/<ImageID>."""
  folder = (row.get("ImageDir") or "").strip()
  if _DIR.fullmatch(folder):
    folder = folder.split(".")[0]
  return os.path.join(root, "images", folder, row["ImageID"])


def metadata_path(data_config, root: str) -> str:
  given = file_source.config_get(data_config, "metadata")
  if given:
    return os.fspath(given)
  plain = os.path.join(root, METADATA)
  return plain + ".gz" if not os.path.exists(plain) and os.path.exists(plain + ".gz") else plain


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  root = os.fspath(file_source.require(data_config, "root", "padchest"))
  findings = output_names(data_config)
  path = metadata_path(data_config, root)
  on_unknown = file_source.config_get(data_config, "unknown_terms", "error")
  if on_unknown not in UNKNOWN_TERMS:
    raise ValueError(
      f"config.data.unknown_terms={on_unknown!r}; choose one of {list(UNKNOWN_TERMS)}"
    )
  _, rows = file_source.read_csv(path, REQUIRED)
  records.require_rows(path, rows, "PadChest's label table")
  label_space.log_unlabelled("PadChest", findings, LABELLED)
  views = file_source.config_get(data_config, "views", DEFAULT_VIEWS)
  views = {views} if isinstance(views, str) else set(views)
  excluded = Counter({"views": 0, "exclude": 0, "unlabelled": 0, "known_bad": 0})
  unknown_terms: Counter[str] = Counter()
  normal_with_findings = 0
  kept, labels, bad_seen = [], [], []
  first_row: dict[str, int] = {}
  for r, row in enumerate(rows):
    where = f"{path} row {r + 2} (ImageID {row['ImageID']})"
    image_id = row["ImageID"].strip()
    if not image_id:
      raise ValueError(f"{where}: column 'ImageID' is empty; fill it in or remove the row")
    if image_id in first_row:
      raise ValueError(
        f"{where}: the image is listed twice (row {first_row[image_id]}); PadChest has one row "
        "per image: remove the duplicate row"
      )
    first_row[image_id] = r + 2
    if row["Projection"].strip() not in views:
      excluded["views"] += 1
      continue
    terms = parse_terms(row["Labels"], where)
    age = _age(row, where)  # checked for every row in the views, before anything is left out
    if "exclude" in terms:
      excluded["exclude"] += 1
      continue
    if not terms:
      excluded["unlabelled"] += 1
      continue
    if row["ImageID"].strip() in KNOWN_BAD:
      excluded["known_bad"] += 1
      bad_seen.append(row["ImageID"].strip())
      continue
    vector, unknown = label_row(terms, findings)
    if unknown and on_unknown == "error":
      raise ValueError(
        f"{where}: column 'Labels' has the term {unknown[0]!r}, which is not in "
        "padchest.TO_CANONICAL; correct the term, or set config.data.unknown_terms='ignore' to "
        "count it for no finding"
      )
    unknown_terms.update(set(unknown))
    normal_with_findings += "normal" in terms and bool(set(terms) - NOT_FINDINGS)
    kept.append((row, age))
    labels.append(vector)
  if excluded["views"]:
    logging.info(
      "PadChest metadata %s: kept projections %s, left out %d images of others",
      path,
      sorted(views),
      excluded["views"],
    )
  if excluded["exclude"] or excluded["unlabelled"] or excluded["known_bad"]:
    logging.warning(
      "PadChest metadata %s: left out %d images marked 'exclude', %d without labels (empty or "
      "'[]' Labels) and %d known to be missing or unreadable (%s)",
      path,
      excluded["exclude"],
      excluded["unlabelled"],
      excluded["known_bad"],
      "; ".join(f"{i}: {KNOWN_BAD[i]}" for i in bad_seen[:3]) or "none",
    )
  if unknown_terms:
    logging.warning(
      "PadChest metadata %s: %d terms are not in padchest.TO_CANONICAL and count for no finding "
      "(term: images): %s",
      path,
      len(unknown_terms),
      dict(unknown_terms.most_common(10)),
    )
  if normal_with_findings:
    logging.info(
      "PadChest metadata %s: %d images say 'normal' beside abnormal terms: No Finding 0, the "
      "terms counted",
      path,
      normal_with_findings,
    )

  index = index_images(root)
  paths = [index.get(row["ImageID"].strip(), _expected_path(root, row)) for row, _ in kept]
  on_error = file_source.config_get(data_config, "on_error", "raise")
  keep = file_source.keep_existing(paths, f"PadChest metadata {path}", on_error)
  excluded["missing_file"] = int((~keep).sum())
  idx = np.flatnonzero(keep)
  rec = [kept[i] for i in idx]

  def column(name: str) -> np.ndarray:
    return np.asarray([(row.get(name) or "").strip() for row, _ in rec], dtype=str)

  extra = records.extra(
    len(rec),
    study_id=column("StudyID"),
    view=column("Projection"),
    sex=[records.sex_of(s) for s in column("PatientSex_DICOM")],
    age=[age for _, age in rec],
    label_method=column("MethodLabel"),
  )
  source = file_source.FileSource(
    [paths[i] for i in idx],
    np.asarray(labels, np.float32).reshape(len(kept), len(findings))[idx],
    [row["PatientID"].strip() for row, _ in rec],
    [row["ImageID"].strip() for row, _ in rec],
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="padchest",
    skipped=sum(v for k, v in excluded.items() if k != "views"),
    extra=extra,
  )
  source.excluded = dict(excluded)
  source.unknown_terms = dict(unknown_terms)
  return source
