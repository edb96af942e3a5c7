"""TBX11K as it comes: imgs/{health,sick,tb}/*.png, lists/*.txt and COCO boxes in annotations/json.

TBX11K (Liu et al., CVPR 2020; TPAMI 2023) holds 11,200 512x512 chest films: 'health' (healthy),
'sick' (sick but not tuberculosis: another disease), 'tb' (active and/or latent tuberculosis), and
an unlabelled test/ folder; all_*.txt lists add extra/ films of four older TB sets (DA, DB,
Montgomery, Shenzhen). A list file names one image per line, relative to imgs/ ('tb/tb0005.png');
annotations/json/<list>.json holds the TB boxes of the images of that list (COCO: images,
annotations with bbox [x, y, width, height] in pixels, categories ActiveTuberculosis,
ObsoletePulmonaryTuberculosis (latent TB), PulmonaryTuberculosis (type uncertain)).

config.data fields (source='tbx11k'):
  root: the TBX11K folder (holding imgs/, lists/, annotations/).
  list: a list of lists/ by name ('TBX11K_train', 'TBX11K_val', 'TBX11K_trainval', 'all_train',
    'all_val', 'all_trainval', 'all_test', ...) or the path of a list file; default: every PNG in
    imgs/health, imgs/sick and imgs/tb (the labelled train and val films).
  annotations: the COCO JSON of the boxes; default annotations/json/<list>.json
    (TBX11K_trainval.json without a list) where it exists, else no boxes (logged).
  findings: canonical finding names (mdx.data.cxr.findings.CANONICAL); default ('Tuberculosis',
    'No Finding'), the two TBX11K labels. Any other is a column of nan (unknown).
  channels, on_error: as for NIH (on_error also covers listed images that are missing).

Labels come from the folder: tb/ is Tuberculosis 1; health/ and sick/ are 0; health/ alone is No
Finding 1 (sick/ is a disease other than TB, so No Finding 0, and which disease is unknown). A
film outside those folders has no published label (test/, extra/da, extra/db: nan), except a
Montgomery or Shenzhen file name (MCUCXR_/CHNCXR_NNNN_L.png: the NLM rule) or a film with a TB
box (Tuberculosis 1). A TB box on a health/ or sick/ film is an error. TBX11K publishes no patient
ids: each film is its own patient, except NLM-named films, which get NLM's patient id
('MCUCXR_0001', as mdx.data.cxr.nlm does) so that the same film in both sources is one patient.
source.extra['boxes'][i] is float32 [K, 4] (x, y, width, height) and
source.extra['box_categories'][i] their K category names; extra['folder'] the top folder.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import logging

from mdx.data.cxr import findings as findings_lib
from mdx.data.cxr import label_space, nlm, records
from mdx.data.image import file_source

FOLDERS = {  # folder under imgs/ -> (Tuberculosis, No Finding)
  "health": (0.0, 1.0),
  "sick": (0.0, 0.0),
  "tb": (1.0, 0.0),
}
DEFAULT_ANNOTATIONS = "TBX11K_trainval"

# TBX11K's image classes (its folders) and box categories (its JSON), as the publisher spells them.
TO_CANONICAL: dict[str, str | None] = {
  "tb": "Tuberculosis",
  "health": findings_lib.NO_FINDING,  # 'healthy': no disease at all, not merely no TB
  # 'sick but non-TB': some other disease, which one is not recorded, so no canonical finding
  # says what it is (its films are Tuberculosis 0 and No Finding 0).
  "sick": None,
  "ActiveTuberculosis": "Tuberculosis",
  # Latent TB in TBX11K's words: healed, inactive TB lesions; TBX11K files them under tb/, and
  # the canonical Tuberculosis is any radiographic TB, active or healed (as the NLM sets label it).
  "ObsoletePulmonaryTuberculosis": "Tuberculosis",
  "PulmonaryTuberculosis": "Tuberculosis",  # TB whose type (active or latent) is uncertain
}
BOX_CATEGORIES = ("ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis")
DEFAULT_FINDINGS = ("Tuberculosis", findings_lib.NO_FINDING)

FACTS = {
  "modality": "frontal chest radiographs, about 3000x3000 reduced to 512x512 PNG (TBX11K)",
  "label_source": (
    "image classes from the hospitals' clinical diagnosis (TB biologically confirmed); TB areas "
    "boxed by a radiologist and checked by a second (Liu et al., CVPR 2020)"
  ),
  "label_values": (
    "tb/: Tuberculosis 1; health/: Tuberculosis 0 and No Finding 1; sick/ (another disease): "
    "Tuberculosis 0 and No Finding 0; test/ and extra DA/DB films unlabelled (unknown); boxes "
    "mark active, latent or uncertain TB areas"
  ),
}


def output_names(data_config) -> tuple[str, ...]:
  """The canonical findings config.data asks for (default: Tuberculosis and No Finding), told
  without reading a file; a name outside the label space is a ValueError listing it."""
  return label_space.requested_findings(data_config, DEFAULT_FINDINGS)


# ------------------------------------------------------------------------------- lists and boxes


def list_path(root: str, name: str) -> str:
  """lists/<name>.txt under root, or `name` itself when it is a file path."""
  if name.endswith(".txt") or os.sep in name or "/" in name:
    path = name
  else:
    path = os.path.join(root, "lists", name + ".txt")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"TBX11K list {path} does not exist (config.data.list: a name of lists/, such as "
      "'TBX11K_train', or a list file)"
    )
  return path


def read_list(path: str) -> list[str]:
  """The image paths (relative to imgs/) of a list file, one per line (first field)."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  out, seen = [], {}
  for n, line in enumerate(lines, start=1):
    fields = line.split()
    if not fields:
      continue
    rel = fields[0].replace("\\", "/")
    if rel.startswith("/") or ".." in rel.split("/"):
      raise ValueError(
        f"{path} line {n}: {rel!r} is not a path inside imgs/ (a list names images as "
        "'tb/tb0005.png'); fix the line"
      )
    if rel in seen:
      raise ValueError(f"{path} line {n}: {rel} is listed twice (line {seen[rel]}); remove one")
    seen[rel] = n
    out.append(rel)
  return out


def read_boxes(path: str) -> dict[str, list[tuple[str, list[float]]]]:
  """image path (relative to imgs/) -> [(category name, [x, y, width, height]), ...] of a COCO
  JSON; a malformed entry is a ValueError naming the file, the entry and the field."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a JSON file ({e}); download it again") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: a COCO file is a JSON object with images, annotations, categories")
  for key in ("images", "annotations", "categories"):
    if not isinstance(data.get(key), list):
      raise ValueError(f"{path}: no {key!r} list; a COCO file has images, annotations, categories")

  def field(entry, key: str, where: str):
    if not isinstance(entry, dict) or key not in entry:
      raise ValueError(f"{path}: {where} has no {key!r}; fix the entry")
    return entry[key]

  categories = {}
  for k, c in enumerate(data["categories"]):
    name = field(c, "name", f"categories[{k}]")
    if name not in BOX_CATEGORIES:
      raise ValueError(
        f"{path}: categories[{k}] is {name!r}, not a TBX11K box category {list(BOX_CATEGORIES)}"
      )
    categories[field(c, "id", f"categories[{k}]")] = name
  images, first = {}, {}
  for k, im in enumerate(data["images"]):
    image_id = field(im, "id", f"images[{k}]")
    if image_id in first:  # the boxes of one image would land on the other
      raise ValueError(
        f"{path}: images[{k}] has id {image_id!r}, as images[{first[image_id]}] has; a COCO "
        "image id names one image: fix the entry"
      )
    first[image_id] = k
    images[image_id] = str(field(im, "file_name", f"images[{k}]"))
  out: dict[str, list[tuple[str, list[float]]]] = {name: [] for name in images.values()}
  for k, a in enumerate(data["annotations"]):
    where = f"annotations[{k}]"
    image = field(a, "image_id", where)
    category = field(a, "category_id", where)
    box = field(a, "bbox", where)
    if image not in images:
      raise ValueError(f"{path}: {where} has image_id {image!r}, which no entry of images has")
    if category not in categories:
      raise ValueError(f"{path}: {where} has category_id {category!r}, not in categories")
    ok = isinstance(box, list) and len(box) == 4
    ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)
    if not ok or box[2] < 0 or box[3] < 0:
      raise ValueError(
        f"{path}: {where} bbox {box!r} is not [x, y, width, height] (4 numbers, width and "
        "height not negative)"
      )
    out[images[image]].append((categories[category], [float(v) for v in box]))
  return out


def _annotations_path(data_config, root: str, listed: str | None) -> str | None:
  given = file_source.config_get(data_config, "annotations")
  if given:
    if not os.path.exists(given):
      raise FileNotFoundError(f"TBX11K annotations {given} do not exist (config.data.annotations)")
    return given
  stem = os.path.basename(listed)[:-4] if listed else DEFAULT_ANNOTATIONS
  path = os.path.join(root, "annotations", "json", stem + ".json")
  return path if os.path.exists(path) else None


def _label(rel: str, has_box: bool) -> tuple[float, float]:
  """(Tuberculosis, No Finding) of an image path relative to imgs/."""
  top = rel.split("/", 1)[0]
  if top in FOLDERS:
    return FOLDERS[top]
  nlm_name = nlm.parse_name(rel.rsplit("/", 1)[-1])
  if nlm_name:
    tb = nlm_name[2]
    return tb, 1.0 - tb
  if has_box:  # a boxed TB area on a film of no labelled folder
    return 1.0, 0.0
  return float("nan"), float("nan")


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  root = file_source.require(data_config, "root", "tbx11k")
  images_dir = os.path.join(root, "imgs")
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(
      f"no imgs/ folder in {root} (config.data.root: the TBX11K folder holding imgs/, lists/, "
      "annotations/)"
    )
  findings = output_names(data_config)
  name = file_source.config_get(data_config, "list")
  if name:
    listed = list_path(root, str(name))
    rels = read_list(listed)
    records.require_rows(
      listed, rels, "a TBX11K list (one image path such as tb/tb0005.png a line)"
    )
    what = f"TBX11K list {listed}"
  else:
    listed, rels = None, []
    for folder in FOLDERS:
      sub = os.path.join(images_dir, folder)
      if not os.path.isdir(sub):
        raise FileNotFoundError(f"TBX11K folder {sub} does not exist; is {root} TBX11K?")
      rels += [
        f"{folder}/{f}" for f in sorted(os.listdir(sub)) if f.endswith(".png") and f[0] != "."
      ]
    what = f"TBX11K images in {images_dir}"

  json_path = _annotations_path(data_config, root, listed)
  boxes: dict[str, list[tuple[str, list[float]]]] = {}
  if json_path:
    boxes = read_boxes(json_path)
  else:
    logging.info("TBX11K: no annotations/json file for %s; no boxes", listed or "the folders")
  for rel, items in boxes.items():
    top = rel.split("/", 1)[0]
    if items and top in FOLDERS and top != "tb":
      raise ValueError(
        f"{json_path}: image {rel} lies in {top}/ (not tuberculosis) but has "
        f"{len(items)} TB box(es); the folders and the annotations disagree: fix or remove one"
      )

  paths = [os.path.join(images_dir, *rel.split("/")) for rel in rels]
  on_error = file_source.config_get(data_config, "on_error", "raise")
  keep = file_source.keep_existing(paths, what, on_error)
  idx = np.flatnonzero(keep)
  rels = [rels[i] for i in idx]

  pairs = np.array([_label(rel, bool(boxes.get(rel))) for rel in rels], np.float32).reshape(-1, 2)
  unlabelled = [rel for rel, (tb, _) in zip(rels, pairs) if np.isnan(tb)]
  if unlabelled:
    logging.info(
      "TBX11K: %d of %d images lie outside health/, sick/ and tb/ with no published label "
      "(unknown, nan), e.g. %s",
      len(unlabelled),
      len(rels),
      unlabelled[:3],
    )
  columns = {f: pairs[:, c] for c, f in enumerate(DEFAULT_FINDINGS)}
  labels = label_space.label_matrix("TBX11K", len(rels), findings, columns)

  ids = [rel[:-4] if rel.endswith(".png") else rel for rel in rels]
  nlm_names = [nlm.parse_name(rel.rsplit("/", 1)[-1]) for rel in rels]
  patients = [named[1] if named else image_id for named, image_id in zip(nlm_names, ids)]
  box_arrays = [
    np.array([b for _, b in boxes.get(rel, [])], np.float32).reshape(-1, 4) for rel in rels
  ]
  return file_source.FileSource(
    [paths[i] for i in idx],
    labels,
    patients,
    ids,
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name="tbx11k",
    skipped=int((~keep).sum()),
    extra=records.extra(
      len(rels),
      folder=np.asarray([rel.split("/", 1)[0] for rel in rels], dtype=str),
      boxes=records.objects(box_arrays),
      box_categories=records.objects([tuple(c for c, _ in boxes.get(rel, [])) for rel in rels]),
    ),
  )
