"""Built-in chest X-ray phantoms: a deterministic, procedurally drawn stand-in for ChestX-ray14.

Why: the default experiment must run anywhere (no download, 2 CPU cores) on data with the
properties that matter for honest medical ML: a multi-label target with NIH-like prevalences
(most images normal), several studies per patient, and a per-patient marker (a necklace)
that a model can memorise -- the reason splits must be by patient.

Images are drawn as a density map (soft tissue, lungs with vessel markings, heart, mediastinum,
trachea, spine, ribs, clavicles, diaphragm domes with costophrenic angles, gastric bubble) and
mapped to brightness like a radiograph (dense = bright). The view is PA as displayed in the
clinic: the patient's left (heart apex, gastric bubble, lower hemidiaphragm) is on the image's
right. Each NIH finding has its own visual signature, drawn only where `lesion_masks` says.
Geometry is in relative coordinates (x, y in [0, 1], y down), so any image_size works.

Determinism: labels and patients are decided in __init__ from the seed; every random draw of
a rendering comes from its own stream np.random.default_rng([seed, kind, ...]) keyed by the
patient, the study and the finding, so a record is the same bit for bit in any process and
any order, and adding or removing one finding leaves the rest of the picture unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from mdx.data.cxr.findings import NIH_FINDINGS

# Per-image prevalences close to NIH ChestX-ray14 (Wang et al., 2017, Data_Entry_2017).
DEFAULT_PREVALENCE: dict[str, float] = {
  "Atelectasis": 0.10,
  "Cardiomegaly": 0.025,
  "Effusion": 0.12,
  "Infiltration": 0.18,
  "Mass": 0.05,
  "Nodule": 0.06,
  "Pneumonia": 0.013,
  "Pneumothorax": 0.05,
  "Consolidation": 0.04,
  "Edema": 0.02,
  "Emphysema": 0.02,
  "Fibrosis": 0.015,
  "Pleural_Thickening": 0.03,
  "Hernia": 0.002,
}

# Findings that belong to the patient (present in all or none of a patient's studies, drawn the
# same way each time); the others come and go from study to study.
CHRONIC_FINDINGS: frozenset[str] = frozenset(
  {"Cardiomegaly", "Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening"}
)

# P(number of studies = 1, 2, ...) before truncation to studies_per_patient.
_STUDY_COUNT_WEIGHTS = np.array([0.35, 0.25, 0.18, 0.12, 0.10, 0.05, 0.03, 0.02])

# Necklace: this many bead slots, each bead one of 3 sizes -> 3**13 (1.6 M) distinct patterns.
_BEADS = 13
_BEAD_RADII = (0.011, 0.016, 0.022)

# Stream keys for np.random.default_rng([seed, key, ...]).
_LABELS, _ANATOMY, _ACQUISITION, _FINDING, _NECKLACE, _NOISE = range(6)


class Rendering(NamedTuple):
  """One drawn study: the image, where each finding was drawn, and where the necklace is."""

  image: np.ndarray  # uint8 [S, S, 1]
  masks: dict[str, np.ndarray]  # finding -> bool [S, S]
  necklace: np.ndarray  # bool [S, S]


@dataclasses.dataclass
class _Lung:
  """One hemithorax. side -1: the patient's right (image left); +1: the patient's left."""

  side: int
  cx: float
  cy: float
  a: float  # half-width of the lung superellipse
  b: float  # half-height
  dome_x: float  # peak of the hemidiaphragm dome
  dome_top: float
  dome_curv: float
  hilum_x: float
  hilum_y: float

  def f(self, x, y):
    """Implicit shape: < 1 inside; rounded apex, square base (sharp costophrenic angles)."""
    dx = np.abs(x - self.cx) / self.a
    dy = (y - self.cy) / self.b
    dy2 = dy * dy
    return dx * dx * np.sqrt(dx) + np.where(dy < 0, dy2, dy2 * dy2 * dy2)

  def dome(self, x):
    """Height of the diaphragm under x (y down): a dome that falls off steeply laterally."""
    q = (x - self.dome_x) / self.a
    lateral = np.clip(q * self.side, 0.0, None)
    return self.dome_top + self.dome_curv * q * q + 0.05 * lateral * lateral * lateral

  def apex(self) -> float:
    return self.cy - self.b

  def cp_angle(self) -> tuple[float, float]:
    """Approximate position of the costophrenic angle (lateral lung base)."""
    x = self.cx + self.side * self.a * np.linspace(0.5, 1.0, 26)
    y = self.dome(x) - 0.004
    inside = np.flatnonzero(self.f(x, y) < 1)
    k = inside[-1] if len(inside) else 0
    return float(x[k]), float(y[k])


@dataclasses.dataclass
class _Anatomy:
  lungs: list[_Lung]
  heart: tuple[float, float, float, float, float]  # cx, cy, half-axes a, b, tilt (rad)
  tissue: float
  air: float
  rib_spacing: float
  rib_y0: float
  rib_curv: float
  torso_a: float
  mark_phase: tuple[float, ...]
  bubble: bool

  def copy(self) -> _Anatomy:
    return dataclasses.replace(self, lungs=[dataclasses.replace(lung) for lung in self.lungs])

  def lung(self, side: int) -> _Lung:
    return self.lungs[0 if side < 0 else 1]

  def inside_lung(self, x: float, y: float, side: int, margin: float = 0.03) -> bool:
    lung = self.lung(side)
    if lung.f(x, y) > 1 - 4 * margin or y > lung.dome(x) - margin:
      return False
    hx, hy, ha, hb, t = self.heart
    u = (np.cos(t) * (x - hx) + np.sin(t) * (y - hy)) / (ha + margin)
    w = (-np.sin(t) * (x - hx) + np.cos(t) * (y - hy)) / (hb + margin)
    return bool(u * u + w * w > 1) and abs(x - 0.5) > 0.07 + margin


class _Canvas:
  """Anatomy coordinates of every pixel after the acquisition's shift/rotation/zoom."""

  def __init__(self, size: int, shift=(0.0, 0.0), rot: float = 0.0, zoom: float = 1.0):
    self.size = size
    self.shift, self.rot, self.zoom = shift, rot, zoom
    u = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    c, s = np.cos(rot) / zoom, np.sin(rot) / zoom
    ux, uy = u[None, :] - shift[0], u[:, None] - shift[1]
    self.X = (0.5 + c * ux + s * uy).astype(np.float32)
    self.Y = (0.5 - s * ux + c * uy).astype(np.float32)
    self.px = size * zoom  # pixels per anatomy unit

  def window(self, x: float, y: float, r: float) -> tuple[slice, slice]:
    """Pixel box covering the anatomy-space disc (x, y, r) plus a 2-pixel margin."""
    c, s = np.cos(self.rot) * self.zoom, np.sin(self.rot) * self.zoom
    dx, dy = x - 0.5, y - 0.5
    px = (0.5 + c * dx - s * dy + self.shift[0]) * self.size
    py = (0.5 + s * dx + c * dy + self.shift[1]) * self.size
    rp = r * self.px + 2
    x0, x1 = max(int(px - rp), 0), min(int(np.ceil(px + rp)), self.size)
    y0, y1 = max(int(py - rp), 0), min(int(np.ceil(py + rp)), self.size)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


class _Effects:
  """What findings do to the picture, accumulated per pixel before compositing."""

  def __init__(self, size: int):
    self.size = size
    self.fill = np.zeros((size, size), np.float32)  # share of lung air replaced by fluid/tissue
    self.add = np.zeros((size, size), np.float32)  # extra density
    self.extra_air = np.zeros((size, size), np.float32)  # more air (pneumothorax, bullae)
    self.mark_mul = np.ones((size, size), np.float32)  # scales the vessel markings
    self.masks: dict[str, np.ndarray] = {}

  def mask(self, name: str, sl: tuple[slice, slice], region: np.ndarray) -> None:
    m = self.masks.setdefault(name, np.zeros((self.size, self.size), bool))
    m[sl] |= region


def _bump(d2):
  """Compactly supported smooth bump of a squared normalised distance (0 outside d2 >= 1)."""
  t = np.clip(1.0 - d2, 0.0, 1.0)
  return t * t


def _between_domes(X, Y, new: _Lung, old: _Lung, px: float) -> np.ndarray:
  """Pixels of new's half of the chest between its old and new diaphragm (+-1 pixel)."""
  a, b = new.dome(X), old.dome(X)
  return (
    (Y > np.minimum(a, b) - 1 / px)
    & (Y < np.maximum(a, b) + 1 / px)
    & ((X - 0.5) * new.side >= -1 / px)
  )


def _ipow(x, n: int):
  """x ** n for a small integer n by multiplication (numpy's float pow is slow).

  Values below 0.01 are raised to 0.01 first: their powers would be float32 denormals, which
  make every later operation many times slower.
  """
  x = np.clip(x, 0.01, None)
  out = x
  for _ in range(n - 1):
    out = out * x
  return out


def _cover(sd_px):
  """Coverage of a pixel by a shape, given the signed distance to its edge in pixels."""
  return np.clip(sd_px + 0.5, 0.0, 1.0)


class ChestXrayPhantoms:
  """Random-access source of synthetic frontal chest radiographs with NIH-like labels.

  Records: {'image': uint8 [S, S, 1], 'labels': float32 [len(findings)] of 0/1,
  'patient_id': str, 'image_id': str}. `render(i, findings=...)` draws any finding set on study
  i (e.g. with and without one finding) and returns the per-finding masks.
  """

  def __init__(
    self,
    num_patients: int = 1000,
    image_size: int = 128,
    seed: int = 0,
    findings: tuple[str, ...] = NIH_FINDINGS,
    prevalence: Mapping[str, float] | None = None,
    studies_per_patient: tuple[int, int] = (1, 5),
    necklace: bool = True,
  ):
    if int(num_patients) < 1:
      raise ValueError(f"num_patients={num_patients} must be >= 1")
    if int(image_size) < 32:
      raise ValueError(f"image_size={image_size} is too small: the phantoms need >= 32 pixels")
    if int(seed) < 0:
      raise ValueError(f"seed={seed} must be a non-negative integer")
    findings = tuple(findings)
    unknown = [f for f in findings if f not in NIH_FINDINGS]
    if not findings or unknown or len(set(findings)) != len(findings):
      raise ValueError(
        f"findings={findings!r}: need a non-empty list of distinct names from "
        f"{NIH_FINDINGS} (unknown: {unknown})"
      )
    prev = {f: DEFAULT_PREVALENCE[f] for f in findings}
    for name, p in dict(prevalence or {}).items():
      if name not in findings:
        raise ValueError(f"prevalence has unknown finding {name!r}; use names from {findings}")
      if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"prevalence[{name!r}]={p} must be in [0, 1]")
      prev[name] = float(p)
    lo, hi = (int(v) for v in studies_per_patient)
    if not 1 <= lo <= hi:
      raise ValueError(
        f"studies_per_patient={studies_per_patient} must be (min, max) with 1 <= min <= max"
      )

    self.num_patients, self.image_size, self.seed = int(num_patients), int(image_size), int(seed)
    self.findings = findings
    self.prevalence = prev
    self.draw_necklace = bool(necklace)

    rng = np.random.default_rng([self.seed, _LABELS])
    k = np.arange(lo, hi + 1)
    w = _STUDY_COUNT_WEIGHTS[np.minimum(k, len(_STUDY_COUNT_WEIGHTS)) - 1]
    counts = rng.choice(k, size=self.num_patients, p=w / w.sum())
    self._patient = np.repeat(np.arange(self.num_patients), counts)
    starts = np.cumsum(counts) - counts
    self._study = np.arange(len(self._patient)) - np.repeat(starts, counts)
    per_patient = rng.random((self.num_patients, len(findings)))
    per_study = rng.random((len(self._patient), len(findings)))
    p = np.array([prev[f] for f in findings])
    chronic = np.array([f in CHRONIC_FINDINGS for f in findings])
    draws = np.where(chronic, per_patient[self._patient], per_study)
    self._labels = (draws < p).astype(np.float32)

  # ---- the record interface -------------------------------------------------------------
  def __len__(self) -> int:
    return len(self._patient)

  def __getitem__(self, index: int) -> dict[str, Any]:
    i = self._check_index(index)
    return {
      "image": self.render(i).image,
      "labels": self._labels[i].copy(),
      "patient_id": self._patient_id(self._patient[i]),
      "image_id": self._image_id(i),
    }

  def labels(self) -> np.ndarray:
    return self._labels.copy()

  def patient_ids(self) -> np.ndarray:
    return np.array([self._patient_id(p) for p in self._patient])

  def image_ids(self) -> np.ndarray:
    return np.array([self._image_id(i) for i in range(len(self))])

  def lesion_masks(self, index: int) -> dict[str, np.ndarray]:
    """finding -> bool [S, S]: where each finding of study `index` was drawn."""
    return self.render(index).masks

  def necklace_mask(self, index: int) -> np.ndarray:
    """bool [S, S]: where study `index`'s necklace (the per-patient shortcut) was drawn."""
    return self.render(index).necklace

  def study(self, index: int) -> tuple[int, int]:
    """(patient number, study number within the patient) of record `index`."""
    i = self._check_index(index)
    return int(self._patient[i]), int(self._study[i])

  def necklace_pattern(self, patient: int) -> np.ndarray:
    """Bead sizes (0, 1, 2) of a patient's necklace: distinct for up to 3**13 patients."""
    code = (int(patient) * 2654435761 + self.seed * 97 + 12345) % 3**_BEADS
    return np.array([(code // 3**k) % 3 for k in range(_BEADS)], np.int64)

  # ---- rendering ---------------------------------------------------------------------------
  def render(
    self, index: int, findings: Iterable[str] | None = None, *, acquisition: bool = True
  ) -> Rendering:
    """Draws study `index` with its own findings, or with the given finding set instead.

    acquisition=False draws the patient's canonical view (no shift, exposure change or noise).
    """
    i = self._check_index(index)
    if findings is None:
      present = [f for f, y in zip(self.findings, self._labels[i]) if y > 0]
    else:
      present = list(findings)
      bad = [f for f in present if f not in NIH_FINDINGS]
      if bad:
        raise ValueError(f"cannot draw unknown findings {bad}; choose from {NIH_FINDINGS}")
    patient, study = int(self._patient[i]), int(self._study[i])
    S = self.image_size
    arng = np.random.default_rng([self.seed, _ACQUISITION, patient, study])
    shift = tuple(arng.uniform(-0.03, 0.03, 2))
    rot, zoom = arng.uniform(-0.05, 0.05), arng.uniform(0.96, 1.04)
    gain, offset, gamma = (
      arng.uniform(0.9, 1.1),
      arng.uniform(-0.04, 0.04),
      arng.uniform(0.85, 1.15),
    )
    sigma = arng.uniform(0.008, 0.025)
    noise_at = arng.integers(0, S, 2)
    if acquisition:
      canvas = _Canvas(S, shift, rot, zoom)
    else:
      canvas = _Canvas(S)
      gain, offset, gamma, sigma = 1.0, 0.0, 1.0, 0.0

    base = self._anatomy(patient)
    anat = base.copy()
    frngs = {f: self._finding_rng(f, patient, study) for f in NIH_FINDINGS if f in present}
    # Findings that change the anatomy itself come first.
    if "Cardiomegaly" in frngs:
      r = frngs["Cardiomegaly"]
      hx, hy, ha, hb, t = anat.heart
      grow = r.uniform(1.30, 1.45)
      anat.heart = (
        hx + 0.18 * (grow - 1) * ha,
        hy - 0.02,
        ha * grow,
        hb * (1 + 0.4 * (grow - 1)),
        t,
      )
    if "Emphysema" in frngs:
      r = frngs["Emphysema"]
      for lung in anat.lungs:
        drop = r.uniform(0.05, 0.08)
        nb = lung.b + drop / 2
        lung.cy += nb - lung.b  # apex stays where it was
        lung.b = nb
        lung.dome_top += drop
        lung.dome_curv *= 0.3
    atel_side = 0
    if "Atelectasis" in frngs:
      r = frngs["Atelectasis"]
      atel_side = int(r.choice([-1, 1]))
      if r.random() < 0.7:
        anat.lung(atel_side).dome_top -= r.uniform(0.03, 0.05)  # volume loss

    fields = self._draw_anatomy(canvas, anat, base)
    fx = _Effects(S)
    for f in NIH_FINDINGS:
      if f in frngs:
        getattr(self, "_draw_" + f.lower())(frngs[f], canvas, anat, base, fields, fx, atel_side)

    # Composite.
    fill = np.clip(fx.fill, None, 1.0)
    lung_eff = fields["lung"]
    A = (
      fields["static"]
      + lung_eff
      * (
        0.12 * fields["marks"] * fx.mark_mul * (1 - fill)
        - anat.air * (1 - fill) * (1 + fx.extra_air)
      )
      + fx.add
    )
    neck = np.zeros((S, S), bool)
    if self.draw_necklace:
      neck = self._draw_necklace(canvas, patient, A)
    img = 1.0 - np.exp(-2.3 * np.clip(A, 0.0, None))
    img = np.clip(gain * img + offset, 0.0, 1.0) ** gamma
    if sigma:
      oy, ox = noise_at
      img = img + sigma * self._noise()[oy : oy + S, ox : ox + S]
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None]
    masks = {f: fx.masks.get(f, np.zeros((S, S), bool)) for f in present}
    return Rendering(img, masks, neck)

  # ---- internals ---------------------------------------------------------------------------
  def _noise(self) -> np.ndarray:
    """A fixed [2S, 2S] field of quantum noise; each study reads its own window (cheap)."""
    if getattr(self, "_noise_bank", None) is None:
      S = self.image_size
      rng = np.random.default_rng([self.seed, _NOISE])
      self._noise_bank = rng.standard_normal((2 * S, 2 * S), dtype=np.float32)
    return self._noise_bank

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state.pop("_noise_bank", None)  # rebuilt on demand; keeps pickles for workers small
    return state

  def _check_index(self, index) -> int:
    i = int(index)
    if not -len(self) <= i < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} phantom studies")
    return i % len(self)

  def _patient_id(self, p) -> str:
    return f"phantom{int(p):06d}"

  def _image_id(self, i: int) -> str:
    return f"phantom{int(self._patient[i]):06d}_{int(self._study[i]):03d}"

  def _finding_rng(self, finding: str, patient: int, study: int) -> np.random.Generator:
    key = [self.seed, _FINDING, NIH_FINDINGS.index(finding), patient]
    return np.random.default_rng(key if finding in CHRONIC_FINDINGS else key + [study])

  def _anatomy(self, patient: int) -> _Anatomy:
    r = np.random.default_rng([self.seed, _ANATOMY, patient])
    g = r.uniform(0.94, 1.05)
    top = r.uniform(0.68, 0.73)
    apex = r.uniform(0.11, 0.15)
    lungs = []
    for side, cx, a, dt, hy in ((-1, 0.300, 0.170, 0.0, 0.45), (1, 0.695, 0.165, 0.025, 0.43)):
      la = a * g * r.uniform(0.96, 1.04)
      lcx = 0.5 + side * abs(0.5 - cx) * g + r.normal(0, 0.006)
      dome_top = top + dt + r.uniform(-0.01, 0.015)
      lapex = apex + r.uniform(-0.01, 0.01)
      lb = (dome_top + 0.13 - lapex) / 2
      lungs.append(
        _Lung(
          side,
          lcx,
          lapex + lb,
          la,
          lb,
          lcx - side * 0.02,
          dome_top,
          r.uniform(0.045, 0.07),
          0.5 + side * r.uniform(0.085, 0.105),
          hy + r.normal(0, 0.01),
        )
      )
    ha = 0.165 * r.uniform(0.93, 1.07)
    hb = 0.12 * r.uniform(0.93, 1.07)
    heart = (0.575 + r.normal(0, 0.008), lungs[1].dome_top - 0.06, ha, hb, r.uniform(0.3, 0.45))
    return _Anatomy(
      lungs=lungs,
      heart=heart,
      tissue=r.uniform(0.40, 0.46),
      air=r.uniform(0.28, 0.33),
      rib_spacing=r.uniform(0.068, 0.080),
      rib_y0=r.uniform(0, 1),
      rib_curv=r.uniform(1.3, 1.8),
      torso_a=r.uniform(0.47, 0.50),
      mark_phase=tuple(float(v) for v in r.uniform(0, 2 * np.pi, 6)),
      bubble=bool(r.random() < 0.7),
    )

  def _draw_anatomy(self, cv: _Canvas, an: _Anatomy, base: _Anatomy) -> dict[str, np.ndarray]:
    """Density of the chest (static), the visible lung (0..1) and the lung markings.

    `an` is the patient's anatomy as changed by findings; ribs and the gastric bubble follow
    `base` (the unchanged anatomy) so a finding alters only the region its mask reports.
    """
    X, Y, px = cv.X, cv.Y, cv.px
    ax = np.abs(X - 0.5)
    # Body outline: torso superellipse plus neck.
    dy = np.clip((Y - 0.76) / 0.68, -1, 1)
    ady = np.abs(dy)
    tor_half = an.torso_a * np.sqrt(np.sqrt(np.clip(1 - ady * ady * ady, 0, 1)))
    body = _cover((np.clip(tor_half, 0.1, None) - ax) * px)
    static = an.tissue * body
    # Heart (tilted ellipse) and mediastinum, aortic knob, trachea, spine.
    hx, hy, ha, hb, t = an.heart
    dx, dyh = X - hx, Y - hy
    ct, st = math.cos(t), math.sin(t)
    u = (ct * dx + st * dyh) / ha
    w = (-st * dx + ct * dyh) / hb
    heart = _cover((1 - (u * u + w * w)) * 0.5 * min(ha, hb) * px)
    med_w = 0.042 + 0.035 * np.clip((Y - 0.18) / 0.3, 0, 1)
    med = _cover((med_w - np.abs(X - 0.505)) * px) * np.clip((Y - 0.06) / 0.08, 0, 1)
    knob = _cover((0.03 - np.hypot(X - 0.555, Y - 0.30)) * px)
    med = np.maximum(med, knob)
    trachea = _cover((0.016 - np.abs(X - 0.5 + 0.004 * (Y - 0.2) / 0.2)) * px) * _cover(
      (0.36 - Y) * px
    )
    spine = _cover((0.036 - ax) * px) * (0.8 + 0.2 * np.cos(2 * np.pi * Y / 0.047))
    static += 0.38 * np.maximum(heart, med) - 0.12 * trachea + 0.06 * spine
    # Abdomen below the domes: thick soft tissue.
    dome = np.where(X < 0.5, an.lungs[0].dome(X), an.lungs[1].dome(X))
    static += 0.30 * body * _cover((Y - dome) * px)
    # Lungs: coverage, thicker (darker) centrally; hidden behind heart and mediastinum.
    lung = np.zeros_like(X)
    per_side = []
    for L in an.lungs:
      f = L.f(X, Y)
      cov = _cover((1 - f) * L.a * px / 2.5) * _cover((L.dome(X) - Y) * px)
      per_side.append(cov)
      lung += cov * (0.65 + 0.35 * np.clip((1 - f) * 2.5, 0, 1))
    lung *= (1 - 0.8 * heart) * (1 - 0.85 * med)
    # Ribs: posterior (clear) and anterior (faint) arcs inside the thoracic cage.
    lung_bottom = max(L.dome_top for L in base.lungs) + 0.09
    cage = (
      _cover((an.torso_a - 0.035 - ax) * px)
      * _cover((lung_bottom - Y) * px)
      * _cover((ax - 0.04) * px)
    )
    post = (Y - (-0.2 * ax + an.rib_curv * ax * ax) - 0.11) / an.rib_spacing + an.rib_y0
    ribs = np.clip((np.cos(2 * np.pi * post) - 0.25) * 2.5, 0, 1)
    ant = (Y - 0.6 * (0.42 - ax) - 0.05) / (an.rib_spacing * 1.15) + an.rib_y0
    ribs = ribs + 0.45 * np.clip((np.cos(2 * np.pi * ant) - 0.3) * 2.5, 0, 1)
    apex = min(L.apex() for L in an.lungs) - 0.02
    static += 0.06 * ribs * cage * _cover((Y - apex) * px)
    # Clavicles.
    q = ax - 0.05
    clav_y = 0.175 - 0.28 * q + 0.42 * q * q
    clav = _cover((0.016 - np.abs(Y - clav_y)) * px) * _cover(q * px) * _cover((0.30 - q) * px)
    static += 0.16 * clav
    # Gastric bubble under the left hemidiaphragm (image right).
    if an.bubble:
      Ll = base.lungs[1]
      bx, by = Ll.dome_x + 0.02, Ll.dome_top + 0.045
      bubble = _bump(((X - bx) / 0.055) ** 2 + ((Y - by) / 0.032) ** 2)
      static -= 0.22 * bubble * _cover((Y - Ll.dome(X) - 0.008) * px)
    # Vessel markings fanning out from the hila, fading to the periphery.
    left = X > 0.5
    f32 = np.float32
    hxm = np.where(left, f32(an.lungs[1].hilum_x), f32(an.lungs[0].hilum_x))
    hym = np.where(left, f32(an.lungs[1].hilum_y), f32(an.lungs[0].hilum_y))
    ddx, ddy = X - hxm, Y - hym
    r = np.sqrt(ddx * ddx + ddy * ddy)
    th = np.arctan2(ddy, ddx)
    ph = an.mark_phase
    th = th + 0.22 * np.sin(r * 31 + ph[0]) + 0.08 * np.sin(r * 73 + ph[1])
    m1 = _ipow(0.5 + 0.5 * np.cos(23 * th + ph[2]), 6)
    m2 = _ipow(0.5 + 0.5 * np.cos(41 * th + 4 * np.sin(r * 23 + ph[3]) + ph[4]), 8)
    fade = np.clip(1 - r / 0.34, 0, 1)
    marks = (m1 + 0.6 * m2) * fade * fade + 0.9 * _bump((r / 0.065) ** 2)
    return {
      "static": static,
      "lung": lung,
      "marks": marks,
      "lung_r": per_side[0],
      "lung_l": per_side[1],
      "heart": heart,
    }

  def _draw_necklace(self, cv: _Canvas, patient: int, A: np.ndarray) -> np.ndarray:
    """Adds a patient's bead necklace (metal: very dense) to A; returns its mask."""
    r = np.random.default_rng([self.seed, _NECKLACE, patient])
    y0, depth, half = r.uniform(0.04, 0.07), r.uniform(0.09, 0.13), r.uniform(0.10, 0.125)
    code = self.necklace_pattern(patient)
    t = np.linspace(-0.9, 0.9, _BEADS, dtype=np.float32)
    bx, by = 0.5 + half * t, y0 + depth * (1 - t * t)
    radii = np.array(_BEAD_RADII, np.float32)[code]
    sl = cv.window(0.5, y0 + depth / 2, half + 0.1)
    X, Y = cv.X[sl], cv.Y[sl]
    d = np.sqrt((X[None] - bx[:, None, None]) ** 2 + (Y[None] - by[:, None, None]) ** 2)
    beads = _cover((radii[:, None, None] - d) * cv.px).max(axis=0)
    tt = np.clip((X - 0.5) / half, -1, 1)
    chain = _cover((0.0035 - np.abs(Y - (y0 + depth * (1 - tt * tt)))) * cv.px)
    chain *= _cover((half * 0.95 - np.abs(X - 0.5)) * cv.px)
    ink = np.maximum(beads, 0.5 * chain)
    A[sl] += 0.9 * ink
    out = np.zeros(A.shape, bool)
    out[sl] = ink > 0.25
    return out

  @staticmethod
  def _lung_point(r, an: _Anatomy, side: int, v=(0.15, 0.85), q=(-0.6, 0.8), margin=0.03):
    """A random point inside a lung: v from apex (0) to base (1), q from medial (-1) to lateral
    (1)."""
    L = an.lung(side)
    for _ in range(64):
      vv, qq = r.uniform(*v), r.uniform(*q)
      x = L.cx + side * qq * L.a
      y = L.apex() + vv * (L.dome_top + 0.06 - L.apex())
      if an.inside_lung(x, y, side, margin):
        return x, y
    return L.cx + side * 0.3 * L.a, L.cy

  # ---- finding signatures (each draws into fx and records its mask) -------------------------
  def _lung_side(self, fields, side):
    return fields["lung_r"] if side < 0 else fields["lung_l"]

  def _draw_mass(self, r, cv, an, base, fields, fx, atel_side):
    """Large dense lobulated blob with a sharp edge."""
    side = int(r.choice([-1, 1]))
    R = r.uniform(0.06, 0.085)
    x, y = self._lung_point(r, an, side, v=(0.2, 0.75), margin=R * 0.6)
    k = r.uniform(0, 2 * np.pi, 3).tolist()
    sl = cv.window(x, y, R * 1.35)
    dx, dy = cv.X[sl] - x, cv.Y[sl] - y
    th = np.arctan2(dy, dx)
    rad = R * (
      1 + 0.12 * np.sin(2 * th + k[0]) + 0.08 * np.sin(3 * th + k[1]) + 0.05 * np.sin(5 * th + k[2])
    )
    blob = _cover((rad - np.sqrt(dx * dx + dy * dy)) * cv.px)
    fx.fill[sl] += blob
    fx.add[sl] += 0.14 * blob
    fx.mask("Mass", sl, blob > 0.5)

  def _draw_nodule(self, r, cv, an, base, fields, fx, atel_side):
    """One to three small, very dense, well-defined dots."""
    for _ in range(int(r.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))):
      side = int(r.choice([-1, 1]))
      R = r.uniform(0.018, 0.026)
      x, y = self._lung_point(r, an, side, v=(0.12, 0.85), q=(-0.5, 0.9), margin=0.02)
      sl = cv.window(x, y, R)
      dot = _cover((R - np.hypot(cv.X[sl] - x, cv.Y[sl] - y)) * cv.px)
      fx.fill[sl] += dot
      fx.add[sl] += 0.22 * dot
      fx.mask("Nodule", sl, dot > 0.5)

  def _draw_cardiomegaly(self, r, cv, an, base, fields, fx, atel_side):
    """The heart itself was enlarged in the anatomy (cardiothoracic ratio > 0.5): mark it."""
    fx.mask("Cardiomegaly", np.s_[:, :], fields["heart"] > 0.02)

  def _draw_effusion(self, r, cv, an, base, fields, fx, atel_side):
    """Fluid in the lung base, highest laterally (meniscus): blunts the costophrenic angle."""
    sides = [-1, 1] if r.random() < 0.25 else [int(r.choice([-1, 1]))]
    for side in sides:
      L = an.lung(side)
      h = r.uniform(0.07, 0.17)
      cpx, cpy = L.cp_angle()
      sl = cv.window(L.cx, cpy - h / 2, max(L.a * 1.2, h))
      X, Y = cv.X[sl], cv.Y[sl]
      lat = np.clip((X - L.cx) * side / L.a * 0.5 + 0.5, 0, 1)
      top = L.dome_top + 0.03 - h * (0.3 + 0.7 * lat * lat)
      fluid = np.clip((Y - top) * cv.px / 3.0, 0, 1) * (self._lung_side(fields, side)[sl] > 0)
      fx.fill[sl] += fluid
      fx.add[sl] += 0.04 * fluid
      fx.mask("Effusion", sl, fluid * self._lung_side(fields, side)[sl] > 0.03)

  def _draw_infiltration(self, r, cv, an, base, fields, fx, atel_side):
    """Patchy, hazy, ill-defined opacity made of several soft puffs."""
    side = int(r.choice([-1, 1]))
    x, y = self._lung_point(r, an, side, v=(0.25, 0.85), margin=0.06)
    sl = cv.window(x, y, 0.16)
    X, Y = cv.X[sl], cv.Y[sl]
    patch = np.zeros(X.shape, np.float32)
    for _ in range(int(r.integers(6, 11))):
      px_, py_ = x + r.normal(0, 0.045), y + r.normal(0, 0.045)
      rad = r.uniform(0.025, 0.05)
      patch += r.uniform(0.6, 1.0) * _bump(((X - px_) ** 2 + (Y - py_) ** 2) / rad**2)
    patch = np.clip(patch, None, 1.0) * self._lung_side(fields, side)[sl]
    fx.fill[sl] += 0.85 * patch
    fx.mask("Infiltration", sl, patch > 0.1)

  def _draw_consolidation(self, r, cv, an, base, fields, fx, atel_side):
    """Dense homogeneous lobar opacity with a sharp fissure border and air bronchograms."""
    side = int(r.choice([-1, 1]))
    L = an.lung(side)
    x, y = self._lung_point(r, an, side, v=(0.3, 0.8), q=(-0.3, 0.5), margin=0.06)
    ang = r.uniform(-0.5, 0.5) + (np.pi / 2 if r.random() < 0.6 else -np.pi / 2)  # fissure normal
    nx, ny = math.cos(ang), math.sin(ang)
    R = r.uniform(0.11, 0.15)
    cx, cy = x + nx * R * 0.5, y + ny * R * 0.5
    sl = cv.window(cx, cy, R)
    X, Y = cv.X[sl], cv.Y[sl]
    fissure = _cover(((X - x) * nx + (Y - y) * ny) * cv.px)
    lobe = np.clip((1 - ((X - cx) ** 2 + (Y - cy) ** 2) / R**2) * 4, 0, 1)
    region = fissure * lobe * self._lung_side(fields, side)[sl]
    th = np.arctan2(Y - L.hilum_y, X - L.hilum_x)
    bronch = _ipow(0.5 + 0.5 * np.cos(r.integers(14, 20) * th + r.uniform(0, 6.3)), 12)
    fx.fill[sl] += region * (1 - 0.55 * bronch)
    fx.add[sl] += 0.03 * region
    fx.mask("Consolidation", sl, region > 0.05)

  def _draw_pneumonia(self, r, cv, an, base, fields, fx, atel_side):
    """Focal, fuzzy-edged rounded opacity, denser centrally, with faint air bronchograms."""
    side = int(r.choice([-1, 1]))
    L = an.lung(side)
    R = r.uniform(0.065, 0.095)
    x, y = self._lung_point(r, an, side, v=(0.4, 0.9), margin=0.04)
    sl = cv.window(x, y, R * 1.3)
    X, Y = cv.X[sl], cv.Y[sl]
    d2 = (X - x) ** 2 / (R * 1.3) ** 2 + (Y - y) ** 2 / R**2
    core = np.clip(_bump(d2) * 1.6, None, 1.0)
    mot = 0.8 + 0.2 * np.sin(X * 140 + r.uniform(0, 6.3)) * np.sin(Y * 130 + r.uniform(0, 6.3))
    th = np.arctan2(Y - L.hilum_y, X - L.hilum_x)
    bronch = _ipow(0.5 + 0.5 * np.cos(17 * th + r.uniform(0, 6.3)), 14)
    val = core * mot * (1 - 0.35 * bronch) * self._lung_side(fields, side)[sl]
    fx.fill[sl] += val
    fx.mask("Pneumonia", sl, val > 0.03)

  def _draw_pneumothorax(self, r, cv, an, base, fields, fx, atel_side):
    """Apicolateral rim of free air (no markings, darker) outside a visible pleural line."""
    side = int(r.choice([-1, 1]))
    L = an.lung(side)
    k = r.uniform(0.70, 0.85)
    ox, oy = L.cx - L.side * 0.9 * L.a, L.dome_top  # the lung collapses medially and down
    sl = cv.window(L.cx, L.cy, max(L.a, L.b) * 1.05)
    X, Y = cv.X[sl], cv.Y[sl]
    fc = L.f(ox + (X - ox) / k, oy + (Y - oy) / k)
    sd_px = (1 - fc) * k * L.a * cv.px / 2.5  # distance to the collapsed lung's edge, pixels
    lung = self._lung_side(fields, side)[sl]
    gap = np.clip(0.5 - sd_px, 0, 1) * lung
    line = np.clip(1 - np.abs(sd_px + 0.3) / 0.9, 0, 1) * lung
    fx.extra_air[sl] += 0.4 * gap
    fx.mark_mul[sl] *= 1 - gap
    fx.add[sl] += 0.09 * line
    fx.mask("Pneumothorax", sl, (gap > 0.05) | (line > 0.05))

  def _draw_atelectasis(self, r, cv, an, base, fields, fx, atel_side):
    """Plate-like linear opacity in a lower zone, with volume loss (raised hemidiaphragm)."""
    side = atel_side
    L = an.lung(side)
    x, y = self._lung_point(r, an, side, v=(0.55, 0.85), q=(-0.4, 0.5), margin=0.05)
    half_len, half_th = r.uniform(0.07, 0.11), r.uniform(0.010, 0.016)
    t = r.uniform(-0.35, 0.35)
    sl = cv.window(x, y, half_len)
    X, Y = cv.X[sl], cv.Y[sl]
    ct, st = math.cos(t), math.sin(t)
    u = (ct * (X - x) + st * (Y - y)) / half_len
    w = (-st * (X - x) + ct * (Y - y)) / half_th
    plate = (
      _cover((1 - (u * u + w * w)) * 0.5 * half_th * cv.px) * self._lung_side(fields, side)[sl]
    )
    fx.fill[sl] += plate
    fx.add[sl] += 0.03 * plate
    fx.mask("Atelectasis", sl, plate > 0.05)
    B = base.lung(side)
    if L.dome_top != B.dome_top:  # where the lung used to be before the volume loss
      fx.mask("Atelectasis", np.s_[:, :], _between_domes(cv.X, cv.Y, L, B, cv.px))

  def _draw_edema(self, r, cv, an, base, fields, fx, atel_side):
    """Bilateral perihilar (bat-wing) haze and Kerley B lines at the lateral bases."""
    for L in an.lungs:
      side = L.side
      hx, hy = L.hilum_x + side * 0.035, L.hilum_y + 0.02
      ra, rb = r.uniform(0.13, 0.16), r.uniform(0.15, 0.19)
      sl = cv.window(hx, hy, max(ra, rb))
      X, Y = cv.X[sl], cv.Y[sl]
      haze = _bump(((X - hx) / ra) ** 2 + ((Y - hy) / rb) ** 2) * self._lung_side(fields, side)[sl]
      haze *= 0.75 + 0.25 * fields["marks"][sl].clip(0, 1)
      fx.fill[sl] += 0.55 * haze
      fx.mask("Edema", sl, haze > 0.03)
      cpx, cpy = L.cp_angle()
      zx = L.cx + side * L.a * 0.8
      sl = cv.window(zx, cpy - 0.08, 0.1)
      X, Y = cv.X[sl], cv.Y[sl]
      zone = _cover((0.05 - np.abs(X - zx - side * 0.01)) * cv.px) * _cover(
        (Y - cpy + 0.17) * cv.px
      )
      period = r.uniform(0.018, 0.024)
      lines = np.clip((np.cos(2 * np.pi * (Y - r.uniform(0, 1)) / period) - 0.55) * 3, 0, 1)
      kerley = lines * zone * self._lung_side(fields, side)[sl]
      fx.fill[sl] += 0.6 * kerley
      fx.mask("Edema", sl, kerley > 0.05)

  def _draw_emphysema(self, r, cv, an, base, fields, fx, atel_side):
    """Hyperlucent, enlarged lungs with sparse markings, flat diaphragm and apical bullae."""
    lung = (fields["lung_r"] + fields["lung_l"]).clip(0, 1)
    fx.extra_air += 0.3 * lung
    fx.mark_mul *= 1 - 0.55 * lung
    full = np.s_[:, :]
    fx.mask("Emphysema", full, lung > 0.05)
    for L, B in zip(an.lungs, base.lungs):  # the strip the old diaphragm occupied
      fx.mask("Emphysema", full, _between_domes(cv.X, cv.Y, L, B, cv.px))
    for _ in range(int(r.integers(0, 3))):
      side = int(r.choice([-1, 1]))
      R = r.uniform(0.035, 0.055)
      x, y = self._lung_point(r, an, side, v=(0.08, 0.4), margin=R)
      sl = cv.window(x, y, R)
      d = np.hypot(cv.X[sl] - x, cv.Y[sl] - y)
      bulla = _cover((R - d) * cv.px)
      wall = np.clip(1 - np.abs((d - R) * cv.px), 0, 1)
      fx.extra_air[sl] += 0.25 * bulla
      fx.mark_mul[sl] *= 1 - bulla
      fx.add[sl] += 0.05 * wall * fields["lung"][sl]

  def _draw_fibrosis(self, r, cv, an, base, fields, fx, atel_side):
    """Reticular (net-like) lines in the peripheral lower zones, bilateral."""
    ang = r.uniform(0, np.pi, 3).tolist()
    ph = r.uniform(0, 2 * np.pi, 3).tolist()
    period = r.uniform(0.032, 0.04)
    for L in an.lungs:
      sl = cv.window(L.cx, L.cy + L.b * 0.4, max(L.a, L.b * 0.7) * 1.1)
      X, Y = cv.X[sl], cv.Y[sl]
      f = L.f(X, Y)
      zone = np.clip((f - 0.25) * 3, 0, 1) * np.clip((Y - L.cy + 0.05) / 0.12, 0, 1)
      zone *= self._lung_side(fields, L.side)[sl]
      net = np.zeros(X.shape, np.float32)
      for a_, p_ in zip(ang, ph):
        s = (X * math.cos(a_) + Y * math.sin(a_)) / period + 0.15 * np.sin(X * 47 + Y * 31 + p_)
        net = np.maximum(net, np.clip((np.cos(2 * np.pi * s + p_) - 0.6) * 4, 0, 1))
      val = net * zone
      fx.fill[sl] += 0.75 * val
      fx.add[sl] += 0.02 * val
      fx.mask("Fibrosis", sl, zone > 0.03)

  def _draw_pleural_thickening(self, r, cv, an, base, fields, fx, atel_side):
    """A thick, slightly lobulated band of soft tissue along the lateral chest wall or apex."""
    side = int(r.choice([-1, 1]))
    L = an.lung(side)
    thick = r.uniform(0.022, 0.035)
    if r.random() < 0.35:  # apical cap
      y0, y1 = L.apex() - 0.02, L.apex() + 0.10
    else:
      y0 = r.uniform(L.apex() + 0.10, L.cy + 0.05)
      y1 = y0 + r.uniform(0.15, 0.25)
    y1 = min(y1, L.cp_angle()[1] - 0.08)
    sl = cv.window(L.cx, (y0 + y1) / 2, max(L.a, (y1 - y0) / 2 + 0.02) * 1.1)
    X, Y = cv.X[sl], cv.Y[sl]
    depth = (1 - L.f(X, Y)) * L.a / 2.5  # approximate distance inside the lung edge
    wob = thick * (1 + 0.25 * np.sin(Y * 60 + r.uniform(0, 6.3)))
    lateral = (X - L.cx) * side > (-0.3 if y0 > L.apex() else -0.6) * L.a
    band = (
      _cover((wob - depth) * cv.px)
      * _cover((Y - y0) * cv.px)
      * _cover((y1 - Y) * cv.px)
      * lateral
      * self._lung_side(fields, side)[sl]
    )
    fx.fill[sl] += band
    fx.add[sl] += 0.06 * band
    fx.mask("Pleural_Thickening", sl, band > 0.05)

  def _draw_hernia(self, r, cv, an, base, fields, fx, atel_side):
    """Hiatal hernia: a rounded retrocardiac mass above the diaphragm with an air-fluid level."""
    R = r.uniform(0.045, 0.065)
    x = 0.5 + r.uniform(0.0, 0.04)
    y = min(L.dome_top for L in an.lungs) - R * 0.6
    sl = cv.window(x, y, R)
    X, Y = cv.X[sl], cv.Y[sl]
    d = np.hypot(X - x, Y - y)
    sac = _cover((R - d) * cv.px)
    level = y - R * r.uniform(0.0, 0.35)
    gas = _cover((R - 0.008 - d) * cv.px) * _cover((level - Y) * cv.px)
    fx.add[sl] += 0.25 * sac - 0.8 * gas
    fx.mask("Hernia", sl, sac > 0.5)
