"""Built-in 3D dataset: brain-like four-channel MRI phantoms with BraTS-style tumours.

Each case is a skull-stripped ellipsoidal brain (zero outside, as in BraTS) with grey/white matter
texture, a smooth bias field and noise, and one tumour made of nested sub-regions that look
different in each modality, as in real scans:
  necrotic core (label 1): dark on T1 and T1ce, bright on T2
  oedema (label 2):        bright on FLAIR and T2
  enhancing rim (label 4): bright on T1ce
Channel order is brats.MODALITIES (flair, t1, t1ce, t2). Case i is a pure function of (seed, i).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mdx.data.volume import brats

# Mean intensity of each tissue per modality (flair, t1, t1ce, t2).
_TISSUE = {
  "csf": (0.2, 0.3, 0.3, 1.6),
  "grey": (0.9, 0.8, 0.8, 1.0),
  "white": (0.8, 1.1, 1.1, 0.7),
  "necrotic": (0.6, 0.35, 0.35, 1.5),
  "edema": (1.7, 0.7, 0.7, 1.5),
  "enhancing": (1.1, 0.8, 2.0, 1.1),
}


class BrainPhantoms:
  """Random-access synthetic cases, same records as BraTSSource."""

  def __init__(
    self,
    num_cases: int = 32,
    shape: tuple[int, int, int] = (48, 48, 48),
    seed: int = 0,
    label_mode: str = "regions",
    noise: float = 0.08,
  ):
    if label_mode not in brats.LABEL_MODES:
      raise ValueError(f"config.data.label_mode={label_mode!r}; choose one of {brats.LABEL_MODES}")
    if min(shape) < 16:
      raise ValueError(
        f"config.data.shape={tuple(shape)} is too small for a brain phantom (min 16)"
      )
    self.num_cases = int(num_cases)
    self.shape = tuple(int(s) for s in shape)
    self.seed = int(seed)
    self.label_mode = label_mode
    self.noise = float(noise)
    self.class_names = brats.output_names(label_mode)
    self.label_values = brats.label_values(label_mode)  # BraTS labels: enhancing is 4
    self.num_channels = len(brats.MODALITIES)

  def __len__(self) -> int:
    return self.num_cases

  def case_ids(self) -> np.ndarray:
    return np.asarray([f"phantom_{i:05d}" for i in range(self.num_cases)])

  def patient_ids(self) -> np.ndarray:
    return self.case_ids()

  def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [D, H, W, 4], raw BraTS labels uint8 [D, H, W] in {0, 1, 2, 4})."""
    if not 0 <= index < self.num_cases:
      raise IndexError(f"phantom case {index} out of range [0, {self.num_cases})")
    rng = np.random.default_rng([self.seed, index])
    shape = np.asarray(self.shape, np.float32)
    grid = np.stack(
      np.meshgrid(*[np.arange(s, dtype=np.float32) for s in self.shape], indexing="ij"), -1
    )
    centre = shape / 2 + rng.uniform(-0.05, 0.05, 3) * shape
    radii = shape / 2 * rng.uniform(0.72, 0.88, 3)
    r_brain = np.sqrt((((grid - centre) / radii) ** 2).sum(-1))
    brain = r_brain < 1.0
    # Tissue: grey matter cortex near the surface, white matter inside, CSF ventricles in the
    # middle.
    labels = np.zeros(self.shape, np.uint8)
    image = np.zeros(self.shape + (4,), np.float32)
    image[brain] = _TISSUE["white"]
    image[brain & (r_brain > 0.8)] = _TISSUE["grey"]
    ventricle_r = radii * np.asarray([0.12, 0.25, 0.12]) * rng.uniform(0.8, 1.2)
    image[(((grid - centre) / ventricle_r) ** 2).sum(-1) < 1] = _TISSUE["csf"]
    # Tumour: a lopsided ellipsoid inside the brain; oedema > enhancing rim > necrotic core.
    t_centre = centre + rng.uniform(-0.45, 0.45, 3) * radii
    size = rng.uniform(0.12, 0.22) * shape.min()
    t_radii = size * rng.uniform(0.8, 1.25, 3)
    wobble = 1 + 0.1 * np.sin(grid[..., 0] * rng.uniform(0.2, 0.5)) * np.cos(grid[..., 1] * 0.3)
    r_t = np.sqrt((((grid - t_centre) / t_radii) ** 2).sum(-1)) * wobble
    edema = (r_t < 1.0) & brain
    core = (r_t < rng.uniform(0.5, 0.7)) & brain
    necrotic = (r_t < rng.uniform(0.2, 0.35)) & brain
    labels[edema] = 2
    labels[core] = 4
    labels[necrotic] = 1
    image[labels == 2] = _TISSUE["edema"]
    image[labels == 4] = _TISSUE["enhancing"]
    image[labels == 1] = _TISSUE["necrotic"]
    # Smooth bias field per modality, multiplicative, and Rician-like noise inside the brain.
    coef = rng.uniform(-0.15, 0.15, (4, 3))
    bias = 1 + np.einsum("dhwk,ck->dhwc", (grid - centre) / shape, coef)
    image = image * bias * rng.uniform(0.8, 1.25, 4)
    image = image + self.noise * rng.standard_normal(image.shape).astype(np.float32)
    image = np.abs(image) * brain[..., None] * 300.0
    return image.astype(np.float32), labels

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    image, raw = self.raw(index)
    return {
      "image": image,
      "label": brats.convert_labels(raw, self.label_mode),
      "case_id": f"phantom_{index:05d}",
      "affine": np.eye(4),
      "spacing": np.ones(3, np.float32),
    }
