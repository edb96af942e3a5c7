"""OpenI, the Indiana University chest X-ray collection, as the NLM distributes it.

NLMCXR_reports.tgz unpacks to ecgen-radiology/<n>.xml, one XML per radiology report (one study):
<uId id="CXR1"/>, the report text in <AbstractText Label="FINDINGS|IMPRESSION|...">, the MeSH
indexing of the report in <MeSH><major>..</major><minor>..</minor></MeSH> and its images as
<parentImage id="CXR1_1_IM-0001-3001">; NLMCXR_png.tgz unpacks to <parentImage id>.png
(Demner-Fushman et al., JAMIA 2016; the layout torchxrayvision's Openi_Dataset reads). 3,955
reports; 104 of them have no image, 95 say 'No Indexing'.

Labels come from the <major> MeSH terms, a heading and '/'-separated qualifiers
('Opacity/lung/base/left/mild', 'Pulmonary Atelectasis/base/left'). A term is looked up in
TO_CANONICAL as 'heading/first qualifier' where the table has that key (the few headings whose
sites differ in kind: 'Thickening/pleura', 'Cardiac Shadow/enlarged', 'Density/lung'), else by its
heading alone (exact spelling). A canonical finding is 1 when any term of the report maps onto it
(TO_CANONICAL, plus ALSO for terms that are two findings) and 0 otherwise; No Finding is 1 for a
report whose only term is 'normal'. Findings no term maps onto (Lung Lesion, Enlarged
Cardiomediastinum, Pleural Other) are unknown (nan). A report's labels apply to each of its
images. <minor> terms and the report text are not read (torchxrayvision reads the <automatic>
terms instead, which a program extracted from the text; <major> terms were coded by people).

Left out, counted in source.excluded (and source.skipped) and logged, never silently: reports
without images ('no_images'; they give no record), reports indexed 'No Indexing' or without any
<major> term ('not_indexed': nothing is known of them), and with on_error='skip' images whose PNG
is missing ('missing_file'); with config.data.view_table, images of other views ('views', counted
only in source.excluded, as NIH's views).

config.data fields (source='openi'):
  root: the folder holding ecgen-radiology/ and the PNGs (root/NLMCXR_png/, root/png/ or root/).
  reports: the folder of the report XMLs (default root/ecgen-radiology).
  images: the folder of the PNGs (default: each PNG is looked up in root/NLMCXR_png, root/png
    and root, in that order; a name found in two is taken from the first).
  findings: canonical finding names (CANONICAL); default every one OpenI labels (DEFAULT_FINDINGS).
  unknown_terms: 'error' (default) or 'ignore', as for PadChest: a <major> heading that is not in
    TO_CANONICAL (a misspelling, or a collection newer than the table: the table has every
    heading of the 2013 distribution) is a ValueError naming the file and term, or with 'ignore'
    counts for no finding, is counted in source.unknown_terms and logged.
  view_table: optional CSV of each image's view: columns 'imageid' and 'View Position' (DICOM
    ViewPosition: PA, AP, LL, LATERAL, ...), as torchxrayvision's nlmcxr_dicom_metadata.csv.gz,
    read from the DICOMs of NLMCXR_dcm.tgz. Without it the view is unknown ('').
  views: the 'View Position' values to keep (only with view_table; '' keeps the images the
    table does not list or leaves blank; default: every image).
  channels: 1 (default) or 3. on_error: 'raise' (default), 'skip' or 'unchecked', for PNGs
    that are missing (mdx.data.check for unreadable ones).

Records: one per image. OpenI publishes no patient id (its DICOMs' were replaced by the report
number), so each report is its own patient: patient id = study id = the report's uId ('CXR1'); the
same person's reports are not linked. extra: 'study_id', 'view' (from view_table, else ''), 'sex'
'' and 'age' nan (not in the XMLs), 'report' (the XML's file name).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence

import numpy as np
from absl import logging

from mdx.data.cxr import findings as findings_lib
from mdx.data.cxr import label_space, records
from mdx.data.image import file_source

REPORTS = "ecgen-radiology"
IMAGE_FOLDERS = ("NLMCXR_png", "png")  # then root itself
UNKNOWN_TERMS = ("error", "ignore")
NOT_INDEXED = "No Indexing"  # the indexers' mark for a report they did not index
VIEW_COLUMNS = ("imageid", "View Position")

# Every <major> heading of the distributed collection (NLMCXR_reports.tgz, 122 spellings), and the
# heading/qualifier keys the lookup tries first -> the canonical finding with the same definition,
# or None. Headings are MeSH descriptors (or the indexers' own words: 'Opacity', 'Airspace
# Disease'); the reason for each non-obvious line is beside it.
TO_CANONICAL: dict[str, str | None] = {
  # --- the report as a whole
  "normal": findings_lib.NO_FINDING,  # the indexers found nothing abnormal (never with others)
  NOT_INDEXED: None,  # not indexed: the report is left out (nothing known)
  "Technical Quality of Image Unsatisfactory": None,  # image quality, not a finding
  # --- NIH's 14
  "Pulmonary Atelectasis": "Atelectasis",  # the MeSH descriptor for atelectasis of the lung
  "Volume Loss": None,  # loss of volume has other causes (surgery, fibrosis), not collapse
  "Cardiomegaly": "Cardiomegaly",
  "Cardiac Shadow/enlarged": "Cardiomegaly",  # an enlarged cardiac silhouette (as CheXpert)
  "Cardiac Shadow": None,  # the heart's outline, otherwise borderline, obscured, irregular
  "Heart": None,  # the heart as a site (right, left, obscured), not its size
  "Pleural Effusion": "Effusion",
  "Hemothorax": "Effusion",  # blood in the pleural space is pleural fluid, as in PadChest
  "Pericardial Effusion": None,  # fluid around the heart; NIH's Effusion is pleural
  "Costophrenic Angle": None,  # blunted angles: a sign (fluid or pleural scarring), not effusion
  "Infiltrate": "Infiltration",  # torchxrayvision maps 'infiltrate' to Infiltration too
  "Mass": "Mass",
  "Nodule": "Nodule",
  "Granuloma": None,  # a healed granuloma, told apart from a nodule (as in PadChest)
  "Calcified Granuloma": None,  # as 'Granuloma'
  "Granulomatous Disease": None,  # healed granulomatous infection (calcified granulomas, nodes)
  "Nipple Shadow": None,  # a pseudonodule
  "Pneumonia": "Pneumonia",
  "Pneumothorax": "Pneumothorax",
  "Hydropneumothorax": "Pneumothorax",  # air and fluid in the pleural space: Effusion too (ALSO)
  "Hemopneumothorax": "Pneumothorax",  # air and blood in the pleural space: Effusion too (ALSO)
  "Consolidation": "Consolidation",
  "Pulmonary Edema": "Edema",
  "Pulmonary Congestion": None,  # venous congestion, a sign, not edema (as PadChest's)
  "Heart Failure": None,  # a clinical diagnosis, not edema itself
  "Emphysema": "Emphysema",  # qualified mild/severe/chronic/bilateral: pulmonary emphysema
  "Pulmonary Emphysema": "Emphysema",
  "Bullous Emphysema": "Emphysema",  # a form of pulmonary emphysema (MeSH: under it)
  "Subcutaneous Emphysema": None,  # air in the soft tissues, not pulmonary emphysema
  "Subcutaneous  Emphysema": None,  # as spelled (two spaces) in one report
  "Mediastinal Emphysema": None,  # pneumomediastinum, not pulmonary emphysema
  "Pulmonary Disease, Chronic Obstructive": None,  # COPD, a clinical syndrome, not emphysema
  "Lung, Hyperlucent": None,  # a sign (hyperinflation, emphysema, technique), not emphysema
  "Blister": None,  # bullae occur with and without emphysema
  "Pulmonary Fibrosis": "Fibrosis",
  "Fibrosis": "Fibrosis",  # one report, 'Fibrosis/diffuse': of the lung in a chest report
  "Cystic Fibrosis": None,  # a genetic disease (bronchiectasis, mucus), not pulmonary fibrosis
  "Cicatrix": None,  # a scar, a focal lesion, not fibrosis of the lung
  "Lung Diseases, Interstitial": None,  # a group of diseases, fibrosis among them
  "Thickening/pleura": "Pleural_Thickening",
  "Thickening": None,  # other sites: bronchovascular, bronchi, heart ventricles, lung
  "Hernia, Hiatal": "Hernia",  # NIH's Hernia is the hiatal hernia
  "Hernia, Diaphragmatic": "Hernia",  # a hernia through the diaphragm, as NIH's
  "Diaphragmatic Eventration": None,  # a thin raised diaphragm, not a hernia
  "Colonic Interposition": None,  # bowel between liver and diaphragm (Chilaiditi), not a hernia
  # --- CheXpert's
  "Opacity": "Lung Opacity",  # 472 of 536 say /lung, most others retrocardiac, costophrenic
  "Density/lung": "Lung Opacity",  # a density of the lung is an opacity
  "Density": None,  # other sites: thorax, ribs, soft tissue
  "Airspace Disease": "Lung Opacity",  # the CheXpert labeler counts airspace disease as opacity
  "Lucency": None,  # a lucent area (lung, ribs, bone), not an opacity
  "Fractures, Bone": "Fracture",  # any bone (ribs, clavicle, vertebrae, humerus), as CheXpert
  "Catheters, Indwelling": "Support Devices",
  "Tube, Inserted": "Support Devices",
  "Implanted Medical Device": "Support Devices",  # pacemakers, defibrillators, valves, ports
  "Medical Device": "Support Devices",  # a device in place, unnamed
  "Stents": "Support Devices",  # vascular stents, as PadChest's stent-like devices
  "Surgical Instruments": None,  # surgical clips and sternotomy wires: signs of past surgery
  "Sutures": None,  # as 'Surgical Instruments'
  "Breast Implants": None,  # not a support device
  "Spinal Fusion": None,  # a past operation (graft, hardware), not a device for support
  "Foreign Bodies": None,  # not a medical device
  "Contrast Media": None,  # contrast material, not a device
  "Tuberculosis": "Tuberculosis",
  # --- no canonical finding: sites named alone, lungs and pleura
  "Lung": None,  # a site; its qualifiers say hypoinflation, hyperdistention, hilum, ...
  "Markings": None,  # lung or bronchovascular markings, not a finding by themselves
  "Calcinosis": None,  # calcification of lung, aorta, nodes, vessels
  "Pleura": None,
  "Sulcus": None,
  "Cavitation": None,
  "Cysts": None,
  "Bronchiectasis": None,
  "Bronchitis": None,
  "Bronchiolitis": None,
  "Sarcoidosis": None,
  "Pneumonectomy": None,  # a past operation
  "Lymph Nodes": None,
  "Lymph nodes": None,  # as spelled in one report
  # --- no canonical finding: heart, mediastinum, vessels
  "Mediastinum": None,  # prominent mediastinum: CheXpert's Enlarged Cardiomediastinum has the heart
  "Aorta": None,
  "Aorta, Thoracic": None,
  "Aortic Aneurysm": None,
  "Atherosclerosis": None,
  "Pulmonary Artery": None,
  "Hypertension, Pulmonary": None,
  "Heart Atria": None,
  "Heart Ventricles": None,
  "Epicardial Fat": None,
  "Blood Vessels": None,
  "Trachea": None,
  "Trachea, Carina": None,
  "Shift": None,  # mediastinal or tracheal shift
  "Hypovolemia": None,
  # --- no canonical finding: bones, soft tissue, abdomen
  "Thoracic Vertebrae": None,
  "Thoracic vertebrae": None,  # as spelled in one report
  "Lumbar Vertebrae": None,
  "Cervical Vertebrae": None,
  "Spine": None,
  "Ribs": None,
  "Shoulder": None,
  "Humerus": None,
  "Bone and Bones": None,
  "Thorax": None,
  "Diaphragm": None,
  "Abdomen": None,
  "Deformity": None,
  "Scoliosis": None,
  "Kyphosis": None,
  "Funnel Chest": None,
  "Pectus Carinatum": None,
  "Osteophyte": None,
  "Spondylosis": None,
  "Arthritis": None,
  "Hyperostosis, Diffuse Idiopathic Skeletal": None,
  "Bone Diseases, Metabolic": None,
  "Osteoporosis": None,
  "Sclerosis": None,
  "Expansile Bone Lesions": None,
  "Dislocations": None,
  "Mastectomy": None,
  "Adipose Tissue": None,
  "Pneumoperitoneum": None,  # free air under the diaphragm
  "Cholelithiasis": None,
}

# Terms that are two mapped findings: the findings besides TO_CANONICAL's.
ALSO: dict[str, tuple[str, ...]] = {
  "Hydropneumothorax": ("Effusion",),  # pleural fluid as well as air
  "Hemopneumothorax": ("Effusion",),  # pleural blood as well as air
}

LABELLED = frozenset(
  {c for c in TO_CANONICAL.values() if c} | {c for cs in ALSO.values() for c in cs}
)
DEFAULT_FINDINGS: tuple[str, ...] = tuple(c for c in findings_lib.CANONICAL if c in LABELLED)

FACTS = {
  "modality": (
    "chest radiographs (frontal and lateral) from the hospital systems of the Indiana Network "
    "for Patient Care, one radiology report per study (NLM's OpenI), PNG"
  ),
  "label_source": (
    "MeSH terms (major) coded by people from each radiology report's text; "
    "a report's labels apply to each of its images; no patient id is published, so each report "
    "(study) is its own patient"
  ),
  "label_values": (
    "1 where a major MeSH term of the report maps onto the finding, 0 otherwise; No Finding 1 "
    "for reports indexed 'normal'; findings no term maps onto are unknown"
  ),
}


def output_names(data_config) -> tuple[str, ...]:
  """The canonical findings config.data asks for (default DEFAULT_FINDINGS), told without reading
  a file; a name outside the label space is a ValueError listing them."""
  return label_space.requested_findings(data_config, DEFAULT_FINDINGS)


def table_key(term: str) -> str:
  """The TO_CANONICAL key of a <major> term: 'heading/first qualifier' where the table has it
  ('Thickening/pleura/left' -> 'Thickening/pleura'), else the heading ('Opacity/lung/base' ->
  'Opacity')."""
  parts = [p.strip() for p in term.split("/")]
  if len(parts) > 1 and f"{parts[0]}/{parts[1]}" in TO_CANONICAL:
    return f"{parts[0]}/{parts[1]}"
  return parts[0]


def parse_report(path: str) -> tuple[str, list[str], list[str]]:
  """(report id: uId, image ids: parentImage ids, <major> MeSH terms) of one report XML; a file
  that is not well-formed XML or has no uId is a ValueError naming it."""
  try:
    root = ET.parse(path).getroot()
  except ET.ParseError as e:
    raise ValueError(
      f"{path}: not well-formed XML ({e}); unpack NLMCXR_reports.tgz again or remove the file"
    ) from None
  uid = root.find("uId")
  report_id = (uid.get("id") or "").strip() if uid is not None else ""
  if not report_id:
    raise ValueError(f'{path}: no <uId id="..."/>; not an OpenI report XML, remove it')
  images = [(node.get("id") or "").strip() for node in root.iter("parentImage")]
  if not all(images):
    raise ValueError(f"{path}: a <parentImage> without an id; fix or remove the report")
  terms = [node.text.strip() for node in root.findall("./MeSH/major") if (node.text or "").strip()]
  return report_id, images, terms


def label_row(terms: Sequence[str], findings: Sequence[str]) -> tuple[np.ndarray, list[str]]:
  """float32 [len(findings)] for one report's <major> terms (1 / 0, nan for findings OpenI does
  not label) and the terms whose key is not in TO_CANONICAL."""
  positive, unknown = set(), []
  keys = [table_key(t) for t in terms]
  for term, key in zip(terms, keys):
    if key not in TO_CANONICAL:
      unknown.append(term)
      continue
    if TO_CANONICAL[key] and TO_CANONICAL[key] != findings_lib.NO_FINDING:
      positive.add(TO_CANONICAL[key])
    positive.update(ALSO.get(key, ()))
  normal = bool(keys) and all(k == "normal" for k in keys)
  return label_space.term_labels(findings, LABELLED, positive, normal), unknown


def image_folders(data_config, root: str) -> list[str]:
  """The folders searched for <image id>.png: config.data.images, else root/NLMCXR_png,
  root/png and root."""
  given = file_source.config_get(data_config, "images")
  if given:
    if not os.path.isdir(given):
      raise FileNotFoundError(f"OpenI image folder {given} does not exist (config.data.images)")
    return [os.fspath(given)]
  return [*(os.path.join(root, f) for f in IMAGE_FOLDERS), root]


def read_views(path: str) -> dict[str, str]:
  """{image id: View Position} of config.data.view_table; an image listed twice is an error."""
  _, rows = file_source.read_csv(path, VIEW_COLUMNS)
  records.require_rows(path, rows, "one row per image: imageid, View Position")
  views: dict[str, str] = {}
  for r, row in enumerate(rows):
    image_id = row["imageid"].strip()
    if image_id in views:
      raise ValueError(
        f"{path} row {r + 2}: image {image_id} is listed twice; keep one row per image"
      )
    views[image_id] = row["View Position"].strip()
  return views


def _table_id(image_id: str) -> str:
  """torchxrayvision's view table names CXR1_1_IM-0001-3001 as CXR1_IM-0001-3001 (the DICOM's
  name, without the report's image number)."""
  head, _, rest = image_id.partition("_IM-")
  return f"{head.split('_')[0]}_IM-{rest}" if rest else image_id


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  root = os.fspath(file_source.require(data_config, "root", "openi"))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"OpenI folder {root} does not exist (config.data.root)")
  findings = output_names(data_config)
  on_unknown = file_source.config_get(data_config, "unknown_terms", "error")
  if on_unknown not in UNKNOWN_TERMS:
    raise ValueError(
      f"config.data.unknown_terms={on_unknown!r}; choose one of {list(UNKNOWN_TERMS)}"
    )
  on_error = file_source.config_get(data_config, "on_error", "raise")
  if on_error not in file_source.ON_MISSING:
    raise ValueError(f"config.data.on_error={on_error!r}; choose one of {file_source.ON_MISSING}")
  view_table = file_source.config_get(data_config, "view_table")
  views = file_source.config_get(data_config, "views")
  if views is not None and not view_table:
    raise ValueError(
      "config.data.views needs config.data.view_table (the OpenI XMLs name no view); give the "
      "table (imageid, View Position) or drop views"
    )
  views = {views} if isinstance(views, str) else (None if views is None else set(views))
  view_of = read_views(os.fspath(view_table)) if view_table else {}

  folder = os.fspath(file_source.config_get(data_config, "reports", os.path.join(root, REPORTS)))
  if not os.path.isdir(folder):
    raise FileNotFoundError(
      f"OpenI report folder {folder} does not exist; unpack NLMCXR_reports.tgz into "
      "config.data.root or set config.data.reports"
    )
  names = sorted(n for n in os.listdir(folder) if n.endswith(".xml") and not n.startswith("."))
  records.require_rows(folder, names, "the report XMLs of NLMCXR_reports.tgz")
  label_space.log_unlabelled("OpenI", findings, LABELLED)

  excluded = Counter({"no_images": 0, "not_indexed": 0, "views": 0})
  unknown_terms: Counter[str] = Counter()
  kept: list[tuple[str, str, str, np.ndarray]] = []  # (report file, report id, image id, labels)
  report_of: dict[str, str] = {}
  image_of: dict[str, str] = {}
  for name in names:
    path = os.path.join(folder, name)
    report_id, images, terms = parse_report(path)
    if report_id in report_of:
      raise ValueError(
        f"{path}: report {report_id} is also {report_of[report_id]}; remove the duplicate file"
      )
    report_of[report_id] = path
    for image_id in images:
      if image_id in image_of:
        raise ValueError(
          f"{path}: image {image_id} is also in {image_of[image_id]}; an image belongs to one "
          "report: remove the duplicate"
        )
      image_of[image_id] = path
    if not images:
      excluded["no_images"] += 1
      continue
    if not terms or NOT_INDEXED in terms:
      excluded["not_indexed"] += 1
      continue
    vector, unknown = label_row(terms, findings)
    if unknown and on_unknown == "error":
      raise ValueError(
        f"{path}: the MeSH term {unknown[0]!r} has a heading not in openi.TO_CANONICAL; correct "
        "the term, or set config.data.unknown_terms='ignore' to count it for no finding"
      )
    unknown_terms.update({table_key(t) for t in unknown})
    for image_id in images:
      if views is not None and view_of.get(_table_id(image_id), "") not in views:
        excluded["views"] += 1
        continue
      kept.append((name, report_id, image_id, vector))
  if excluded["no_images"] or excluded["not_indexed"]:
    logging.warning(
      "OpenI reports %s: left out %d reports without images and %d not indexed ('%s' or no "
      "major MeSH term)",
      folder,
      excluded["no_images"],
      excluded["not_indexed"],
      NOT_INDEXED,
    )
  if excluded["views"]:
    logging.info(
      "OpenI: kept views %s (%s), left out %d images of others",
      sorted(views),
      view_table,
      excluded["views"],
    )
  if unknown_terms:
    logging.warning(
      "OpenI reports %s: %d MeSH headings are not in openi.TO_CANONICAL and count for no "
      "finding (heading: reports): %s",
      folder,
      len(unknown_terms),
      dict(unknown_terms.most_common(10)),
    )
  if not kept:
    raise ValueError(
      f"{folder}: no image is left ({dict(excluded)} left out); check the folder, and "
      "config.data.views against the view table's 'View Position' values"
    )

  folders = image_folders(data_config, root)
  index = records.index_files(folders)
  paths = [index.get(i + ".png", os.path.join(folders[-1], i + ".png")) for _, _, i, _ in kept]
  keep = file_source.keep_existing(paths, f"OpenI images for {folder}", on_error)
  excluded["missing_file"] = int((~keep).sum())
  rec = [kept[i] for i in np.flatnonzero(keep)]

  source = file_source.FileSource(
    [paths[i] for i in np.flatnonzero(keep)],
    np.asarray([v for *_, v in rec], np.float32).reshape(len(rec), len(findings)),
    [r for _, r, _, _ in rec],
    [i for _, _, i, _ in rec],
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="openi",
    skipped=sum(v for k, v in excluded.items() if k != "views"),
    extra=records.extra(
      len(rec),
      study_id=[r for _, r, _, _ in rec],
      view=[view_of.get(_table_id(i), "") for _, _, i, _ in rec],
      report=np.asarray([n for n, _, _, _ in rec], dtype=str),
    ),
  )
  source.excluded = dict(excluded)
  source.unknown_terms = dict(unknown_terms)
  return source
