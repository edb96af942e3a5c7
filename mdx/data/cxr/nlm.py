"""The NLM tuberculosis sets as they come: Montgomery County (USA) and Shenzhen (China).

Montgomery: MontgomerySet/CXR_png/MCUCXR_NNNN_L.png, ClinicalReadings/MCUCXR_NNNN_L.txt ("Patient's
Sex: F", "Patient's Age: 027Y", then the reading) and lung masks ManualMask/leftMask/ and
rightMask/ (same file names). Shenzhen: ChinaSet_AllFiles/CXR_png/CHNCXR_NNNN_L.png and
ClinicalReadings/CHNCXR_NNNN_L.txt (sex and age on the first line, 'male 35yrs', then the
reading); its lung masks were published separately (shcxr-lung-mask: CHNCXR_NNNN_L_mask.png). In
both, L, the last digit of the name, is 0 for a normal film and 1 for one with manifestations of
tuberculosis (Jaeger et al., Quant Imaging Med Surg 2014). All films are frontal PA.

config.data fields (source='nlm'):
  root: the folder holding MontgomerySet/ or ChinaSet_AllFiles/, or that folder itself.
  set: 'montgomery' or 'shenzhen'; default: the one found under root (both found is an error).
  masks: optional folder of extra lung masks named <image>_mask.png or <image>.png (Shenzhen's
    separately published masks); Montgomery's ManualMask/ is found by itself.
  findings: canonical finding names (mdx.data.cxr.findings.CANONICAL); default ('Tuberculosis',
    'No Finding'), the two these sets label. Any other is a column of nan (unknown).
  channels: 1 (default) or 3. on_error: 'raise' (default) or 'skip', for images that cannot be
    decoded (mdx.data.check); the images are listed from CXR_png/, so none is missing. 'unchecked'
    (built from a label table without the images: the dataset card) is refused: NLM has no table.

Records: one per PNG in CXR_png/ (hidden files such as macOS '._' copies are ignored; any other
PNG not named as above is an error, and so is one film number named twice, as _0 and _1).
Patient id: the set's prefix and the image number ('MCUCXR_0104'): one film per patient, except
where a Montgomery reading says 'same pt as MCUCXR_0162_1', and then both films get the patient id
of the lower number. Sex ('M', 'F', 'O' as written; '' unknown) and age in years (nan unknown)
come from the readings; an age written without a unit ('male 42') is left unknown.
mask(source, index) returns the union of a record's lung masks (lung fields, not lesions);
source.extra['mask_files'] lists them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
from absl import logging

from mdx.data.cxr import findings as findings_lib
from mdx.data.cxr import label_space, records
from mdx.data.image import file_source
from mdx.data.image import images as images_lib

SETS = {  # set -> (folder as distributed, file name prefix)
  "montgomery": ("MontgomerySet", "MCUCXR"),
  "shenzhen": ("ChinaSet_AllFiles", "CHNCXR"),
}
IMAGES = "CXR_png"
READINGS = "ClinicalReadings"
MANUAL_MASKS = (os.path.join("ManualMask", "leftMask"), os.path.join("ManualMask", "rightMask"))
NAME = re.compile(r"(MCUCXR|CHNCXR)_(\d{4})_([01])\.png")

# The publisher's two classes, the last digit of each file name (_1 / _0).
TO_CANONICAL: dict[str, str | None] = {
  # 'abnormal, with manifestations of tuberculosis': the readings name pulmonary TB of several
  # forms (PTB, secondary STB, ...) and TB pleuritis, all of which are 'Tuberculosis' here.
  "tuberculosis": "Tuberculosis",
  # 'normal': the readers found the film normal ('normal' in every such reading), not merely
  # free of TB, so it is No Finding.
  "normal": findings_lib.NO_FINDING,
}
DEFAULT_FINDINGS = ("Tuberculosis", findings_lib.NO_FINDING)

FACTS = {
  "modality": (
    "frontal (PA) chest radiographs from TB screening programmes: Montgomery County, USA, and "
    "Shenzhen No. 3 People's Hospital, China (NLM), PNG"
  ),
  "label_source": (
    "the collecting sites' radiology readings of each film (ClinicalReadings); the class is "
    "written in the file name"
  ),
  "label_values": (
    "file name ending _1: manifestations of tuberculosis (Tuberculosis 1, No Finding 0); _0: "
    "normal (Tuberculosis 0, No Finding 1); other findings are not labelled (unknown)"
  ),
}


def output_names(data_config) -> tuple[str, ...]:
  """The canonical findings config.data asks for (default: Tuberculosis and No Finding), told
  without reading a file; a name outside the label space is a ValueError listing it."""
  return label_space.requested_findings(data_config, DEFAULT_FINDINGS)


def parse_name(file_name: str) -> tuple[str, str, float] | None:
  """(set prefix, patient id, Tuberculosis) of an NLM file name: 'MCUCXR_0104_1.png' ->
  ('MCUCXR', 'MCUCXR_0104', 1.0); None for any other name. TBX11K's extra/ films keep these
  names, so both sources read them here."""
  m = NAME.fullmatch(file_name)
  return (m.group(1), f"{m.group(1)}_{m.group(2)}", float(m.group(3))) if m else None


def labels_of(tb: np.ndarray) -> dict[str, np.ndarray]:
  """{canonical finding: values} of films whose Tuberculosis is `tb` (1, 0, nan unknown): an NLM
  film without TB was read as normal (TO_CANONICAL), so No Finding is 1 - tb."""
  tb = np.asarray(tb, np.float32)
  return {"Tuberculosis": tb, findings_lib.NO_FINDING: 1.0 - tb}


# ---------------------------------------------------------------------------------- the readings

_PER_YEAR = {"y": 1.0, "m": 12.0, "w": 365.25 / 7, "d": 365.25}
SAME_PATIENT = re.compile(r"same\s+(?:pt|patient)\s+as\s+(MCUCXR_\d{4})(?:_[01])?", re.IGNORECASE)


def parse_montgomery(text: str) -> tuple[str, float, str]:
  """(sex, age in years, image prefix+number of the same patient or '') of a Montgomery reading:
  "Patient's Sex: F", "Patient's Age: 027Y" (DICOM age: Y, M, W or D), then the reading."""
  sex, age = "", float("nan")
  m = re.search(r"Patient's Sex:\s*([A-Za-z])", text)
  if m:
    sex = m.group(1).upper()
  m = re.search(r"Patient's Age:\s*(\d+)\s*([YMWD])\b", text, re.IGNORECASE)
  if m:
    age = int(m.group(1)) / _PER_YEAR[m.group(2).lower()]
  same = SAME_PATIENT.search(text)
  return sex, age, same.group(1).upper() if same else ""


_SHENZHEN = re.compile(
  r"\s*(female|femal|male)\s*,?\s*(?:(\d+(?:\.\d+)?)\s*(years?|yrs?|y|months?|days?)?)?",
  re.IGNORECASE,
)


def parse_shenzhen(text: str) -> tuple[str, float]:
  """(sex, age in years) from the first line of a Shenzhen reading: 'male 35yrs', 'female
  64days', 'male 16month', 'femal 32yrs', 'female24yrs', 'Female, 28yrs'; an age without a unit
  ('male 42') is unknown (nan)."""
  first = next((line for line in text.splitlines() if line.strip()), "")
  m = _SHENZHEN.match(first)
  if not m:
    return "", float("nan")
  sex = "F" if m.group(1).lower().startswith("f") else "M"
  if not (m.group(2) and m.group(3)):
    return sex, float("nan")
  return sex, float(m.group(2)) / _PER_YEAR[m.group(3)[0].lower()]


def _read_text(path: str) -> str | None:
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


# ------------------------------------------------------------------------------------ the layout


def find_set(root: str, name: str | None) -> tuple[str, str]:
  """(set name, its folder: the one holding CXR_png/) under config.data.root."""
  if name is not None and name not in SETS:
    raise ValueError(f"config.data.set={name!r}; choose one of {sorted(SETS)}")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"NLM folder {root} does not exist (config.data.root)")
  found = {}
  for set_name, (folder, prefix) in SETS.items():
    if os.path.isdir(os.path.join(root, folder, IMAGES)):
      found[set_name] = os.path.join(root, folder)
    elif os.path.isdir(os.path.join(root, IMAGES)) and any(
      f.startswith(prefix + "_") for f in os.listdir(os.path.join(root, IMAGES))
    ):
      found[set_name] = root
  if name is not None:
    if name not in found:
      folder = SETS[name][0]
      raise FileNotFoundError(
        f"no {folder}/{IMAGES}/ with {SETS[name][1]}_*.png under {root}; point "
        f"config.data.root at {folder}/ or the folder holding it"
      )
    return name, found[name]
  if len(found) > 1:
    raise ValueError(
      f"{root} holds both NLM sets ({sorted(found)}); choose one with config.data.set"
    )
  if not found:
    raise FileNotFoundError(
      f"no MontgomerySet/{IMAGES}/ or ChinaSet_AllFiles/{IMAGES}/ under {root} (config.data.root)"
    )
  return next(iter(found.items()))


def _patient_groups(numbers: Sequence[str], same_as: Sequence[str]) -> list[str]:
  """Patient id of each image: its own prefix+number, or the lowest one of the films its readings
  tie to it ('same pt as ...'), followed through chains."""
  parent: dict[str, str] = {}

  def root_of(x: str) -> str:
    while parent.get(x, x) != x:
      x = parent[x]
    return x

  for a, b in zip(numbers, same_as):
    if b:
      ra, rb = root_of(a), root_of(b)
      if ra != rb:
        low, high = sorted((ra, rb))
        parent[high] = low
  return [root_of(a) for a in numbers]


def make_source(data_config, seed: int = 0) -> file_source.FileSource:
  del seed
  root = file_source.require(data_config, "root", "nlm")
  set_name, folder = find_set(root, file_source.config_get(data_config, "set"))
  findings = output_names(data_config)
  on_error = file_source.config_get(data_config, "on_error", "raise")
  if on_error == "unchecked":
    raise ValueError(
      "NLM: config.data.on_error='unchecked' builds from a label table without the image files, "
      "but NLM has no table: its labels are in the image file names (MCUCXR_0001_0.png: 0 "
      "normal, 1 tuberculosis); describe it with its images (on_error 'raise' or 'skip')"
    )
  if on_error not in ("raise", "skip"):
    raise ValueError(f"config.data.on_error={on_error!r}; choose 'raise' or 'skip'")
  prefix = SETS[set_name][1]
  image_dir = os.path.join(folder, IMAGES)
  names = []
  for name in sorted(os.listdir(image_dir)):
    if name.startswith(".") or not name.lower().endswith(".png"):
      continue
    parsed = parse_name(name)
    if not parsed or parsed[0] != prefix:
      raise ValueError(
        f"{os.path.join(image_dir, name)}: not a {set_name} file name ({prefix}_NNNN_0.png "
        "normal, _1.png tuberculosis); rename or remove it"
      )
    names.append(name)
  if not names:
    raise FileNotFoundError(f"no {prefix}_NNNN_L.png images in {image_dir}")
  stems = [n[:-4] for n in names]
  first: dict[str, str] = {}
  for name, stem in zip(names, stems):
    other = first.setdefault(stem[:-2].upper(), name)
    if other != name:  # one film number twice: as _0 and _1 its label would be both
      raise ValueError(
        f"{os.path.join(image_dir, name)}: film {stem[:-2]} is also {other} in {image_dir}; "
        "each film number is one image: remove the wrong copy"
      )
  tb = np.array([float(s[-1]) for s in stems], np.float32)

  sex, age, same_as = [""] * len(stems), np.full(len(stems), np.nan, np.float32), [""] * len(stems)
  missing, unparsed = [], []
  for i, stem in enumerate(stems):
    text = _read_text(os.path.join(folder, READINGS, stem + ".txt"))
    if text is None:
      missing.append(stem)
      continue
    if set_name == "montgomery":
      sex[i], age[i], same_as[i] = parse_montgomery(text)
    else:
      sex[i], age[i] = parse_shenzhen(text)
    if not sex[i] or np.isnan(age[i]):
      unparsed.append(stem)
  if missing:
    logging.warning(
      "NLM %s: %d of %d images have no %s/*.txt (sex and age unknown), e.g. %s",
      set_name,
      len(missing),
      len(stems),
      READINGS,
      missing[:3],
    )
  if unparsed:
    logging.warning(
      "NLM %s: sex or age not read from %d readings (left unknown), e.g. %s",
      set_name,
      len(unparsed),
      [os.path.join(folder, READINGS, s + ".txt") for s in unparsed[:3]],
    )
  patients = _patient_groups([s[:-2] for s in stems], same_as)

  extra_masks = file_source.config_get(data_config, "masks")
  if extra_masks and not os.path.isdir(extra_masks):
    raise FileNotFoundError(f"NLM mask folder {extra_masks} does not exist (config.data.masks)")
  mask_files = []
  for stem in stems:
    files = [os.path.join(folder, d, stem + ".png") for d in MANUAL_MASKS]
    if extra_masks:
      files += [os.path.join(extra_masks, stem + s + ".png") for s in ("_mask", "")]
    mask_files.append(tuple(f for f in files if os.path.exists(f)))

  labels = label_space.label_matrix("NLM", len(stems), findings, labels_of(tb))
  return file_source.FileSource(
    [os.path.join(image_dir, n) for n in names],
    labels,
    patients,
    stems,
    findings,
    channels=int(file_source.config_get(data_config, "channels", 1)),
    name=f"nlm_{set_name}",
    extra=records.extra(
      len(stems), view="PA", sex=sex, age=age, mask_files=records.objects(mask_files)
    ),
  )


def mask(source, index: int) -> np.ndarray:
  """uint8 [H, W]: the union of the lung masks of record `index` (1 inside a lung), read from the
  files in source.extra['mask_files']; a record without masks is a ValueError."""
  files = tuple(source.extra["mask_files"][int(index)])
  if not files:
    raise ValueError(
      f"{source.name}: record {source.image_ids()[int(index)]} has no lung mask (Montgomery's are "
      "ManualMask/leftMask and rightMask; Shenzhen's are published separately: "
      "config.data.masks)"
    )
  out = None
  for path in files:
    part = (images_lib.read_image(path, 1)[..., 0] > 0).astype(np.uint8)
    if out is not None and part.shape != out.shape:
      raise ValueError(f"lung mask {path} is {part.shape}, the other mask {out.shape}")
    out = part if out is None else out | part
  return out
