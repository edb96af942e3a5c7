"""Published classifier weights as a bundle, so they predict and are evaluated like a trained model.

  python -m mdx from_weights --model=densenet121 --source=torch \
      --input=xrv-densenet121-all.pt --output=bundles/xrv_all --findings=xrv --image_size=224 \
      --channels=1 --standardize=xrv

Why: a model someone else trained (a torchxrayvision DenseNet, a Keras application fine-tuned
elsewhere) should go through the same doors as an mdx run's model: `mdx.inference` predicts on
files from its bundle and `python -m mdx evaluate --bundle` validates it on labelled data. The
weights are read by mdx.models.import_weights (Keras .h5, PyTorch state dicts without pickle
code, safetensors), must include the classification head, and get one finding name per output.
Nothing was measured, so the bundle has no thresholds and no calibration (predict writes raw
scores and no calls) and its model card says so; its provenance names the file and its sha256.

The preprocessing must be the one the weights were trained with; mdx cannot check it. mdx reads an
image into [0, 1] (8-bit / 255, 16-bit / 65535, DICOM through its LUTs), resizes it to
image_size x image_size by area averaging of the whole image, then standardises it. Presets of
--standardize for published weights:
  xrv        torchxrayvision: pixels in [-1024, 1024], i.e. x * 2048 - 1024. This is mode
             'dataset' ((x - mean) / (std + 1e-6)) with mean 0.5 and std 1/2048 - 1e-6: in
             float32 std + 1e-6 rounds to exactly 2**-11, so the model sees x * 2048 - 1024 to the
             last bit of float32. (torchxrayvision centre-crops to a square before resizing; mdx
             resizes the whole image: give it square images for the same input.)
  imagenet   torchvision models and Keras applications in 'torch' mode (DenseNet): RGB mean
             (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), each std less 1e-6 for the same
             reason (within one float32 ulp of (x - mean) / std).
Keras 'caffe' mode (keras.applications ResNet50: BGR channel order, mean subtraction on 0-255) is
not expressible: standardisation cannot reorder channels.

--findings=xrv names torchxrayvision's 18 default pathologies in its order (the outputs of its
'densenet121-res224-all' weights); its single-dataset weights also have 18 outputs, but only some
of them trained (torchxrayvision leaves the others unnamed), so name those by hand.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mdx import outputs
from mdx.data import standardize as standardize_lib
from mdx.inference import bundle as bundle_lib

# torchxrayvision's datasets.default_pathologies, in its order (the output order of its models).
TORCHXRAYVISION_FINDINGS: tuple[str, ...] = (
  "Atelectasis",
  "Consolidation",
  "Infiltration",
  "Pneumothorax",
  "Edema",
  "Emphysema",
  "Fibrosis",
  "Effusion",
  "Pneumonia",
  "Pleural_Thickening",
  "Cardiomegaly",
  "Nodule",
  "Mass",
  "Hernia",
  "Lung Lesion",
  "Fracture",
  "Lung Opacity",
  "Enlarged Cardiomediastinum",
)
FINDINGS_PRESETS: dict[str, tuple[str, ...]] = {"xrv": TORCHXRAYVISION_FINDINGS}

_EPS = 1e-6  # what mdx.data.standardize adds to std in mode 'dataset'
# preset -> (mode, mean, std) for mdx.data.standardize; std is the published divisor less _EPS.
STANDARDIZE_PRESETS: dict[str, tuple[str, list[float], list[float]]] = {
  "xrv": ("dataset", [0.5], [1 / 2048 - _EPS]),
  "imagenet": ("dataset", [0.485, 0.456, 0.406], [s - _EPS for s in (0.229, 0.224, 0.225)]),
}
# Modes that apply to a 2D image (per_slice is for scans).
IMAGE_MODES = tuple(m for m in standardize_lib.MODES if m != "per_slice")


def parse_findings(findings: str | Sequence[str]) -> list[str]:
  """A preset name ('xrv'), a comma-separated string or a sequence -> the finding names."""
  if isinstance(findings, str):
    if findings in FINDINGS_PRESETS:
      return list(FINDINGS_PRESETS[findings])
    findings = findings.split(",")
  names = [str(f).strip() for f in findings]
  if not names or any(not n for n in names):
    raise ValueError(
      f"--findings={','.join(names)!r} has an empty name; give comma-separated names, one per "
      f"output of the head, or a preset ({', '.join(sorted(FINDINGS_PRESETS))})"
    )
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"--findings names {repeated} more than once; each output needs its own name")
  return names


def _floats(v: Any, what: str) -> list[float] | None:
  if v is None:
    return None
  if isinstance(v, str):
    v = v.split(",")
  try:
    out = [float(x) for x in np.atleast_1d(np.asarray(v, dtype=object)).tolist()]
  except (TypeError, ValueError):
    raise ValueError(
      f"--{what}={v!r} is not a number or a comma-separated list of numbers"
    ) from None
  if not out or not all(np.isfinite(out)):
    raise ValueError(f"--{what}={v!r} must be finite numbers")
  return out


def standardize_spec(
  standardize: str, mean: Any = None, std: Any = None, channels: int | None = None
) -> dict[str, Any]:
  """A mode or a preset (STANDARDIZE_PRESETS) with mean/std -> the bundle's input.standardize."""
  presets = sorted(STANDARDIZE_PRESETS)
  if standardize in STANDARDIZE_PRESETS:
    if mean is not None or std is not None:
      raise ValueError(
        f"--standardize={standardize} is a preset with its own mean and std; drop --mean/--std "
        "or use --standardize=dataset"
      )
    mode, mean, std = STANDARDIZE_PRESETS[standardize]
  elif standardize in IMAGE_MODES:
    mode, mean, std = standardize, _floats(mean, "mean"), _floats(std, "std")
    if mode != "dataset" and (mean is not None or std is not None):
      raise ValueError(
        f"--mean/--std apply to --standardize=dataset only, not {mode!r}; drop them or use "
        "--standardize=dataset"
      )
    if mode == "dataset" and (mean is None or std is None):
      raise ValueError(
        "--standardize=dataset needs --mean and --std (per channel, comma-separated): the "
        "values the weights were trained with"
      )
  else:
    raise ValueError(
      f"--standardize={standardize!r} is unknown; choose a mode {IMAGE_MODES} or a preset {presets}"
    )
  if mode == "dataset":
    if any(s <= 0 for s in std):
      raise ValueError(f"--std={std} must be > 0")
    for name, values in (("mean", mean), ("std", std)):
      if channels is not None and len(values) not in (1, channels):
        raise ValueError(
          f"--{name} has {len(values)} values for a {channels}-channel input; give 1 or {channels}"
        )
  return {"mode": mode, "mean": mean, "std": std}


def bundle_from_weights(
  model_name: str,
  source: str,
  input_path: str,
  output_dir: str,
  *,
  findings: str | Sequence[str],
  image_size: int,
  channels: int | None = None,
  standardize: str = "none",
  mean: Any = None,
  std: Any = None,
  **model_kwargs: Any,
) -> str:
  """Imports a classifier's weights (with its head) and writes them as a bundle; returns its path.

  findings: one name per output of the head, in order (or a preset name, e.g. 'xrv');
  channels: the input channels (default: the first convolution's, from the file);
  standardize: a mode of mdx.data.standardize or a preset of STANDARDIZE_PRESETS (module
  docstring); model_kwargs: fields of the registry model (as for import_weights)."""
  from mdx.models import import_weights, registry

  names = parse_findings(findings)
  if int(image_size) <= 0:
    raise ValueError(f"--image_size={image_size} must be a positive number of pixels")
  output_dir = os.path.abspath(os.path.expanduser(output_dir))
  if os.path.exists(output_dir) and not os.path.isfile(os.path.join(output_dir, bundle_lib.SPEC)):
    raise FileExistsError(
      f"--output={output_dir} exists and is not a bundle; choose a new folder (an existing "
      "bundle there would be replaced)"
    )
  variables = import_weights.import_weights(model_name, source, input_path, **model_kwargs)
  head = variables["params"].get("head")
  if not head:
    raise ValueError(
      f"weight file {input_path} has no classification head (only the backbone); a bundle "
      "needs a head: fine-tune the backbone in mdx (config.model.init_from) and export that run"
    )
  num_classes = int(head["dense"]["kernel"].shape[1])
  if num_classes != len(names):
    raise ValueError(
      f"--findings has {len(names)} names but the head in {input_path} has {num_classes} "
      "outputs; give one name per output, in the head's order"
    )
  stem_channels = int(variables["params"]["stem"]["conv"]["kernel"].shape[2])
  if channels is None:
    channels = stem_channels
  elif int(channels) != stem_channels:
    raise ValueError(
      f"--channels={channels} but the weights in {input_path} take {stem_channels}-channel "
      f"images; use --channels={stem_channels}"
    )
  model = {"name": model_name, "num_classes": num_classes, "dtype": "float32", **model_kwargs}
  smallest = registry.min_input_size(model)
  if int(image_size) < smallest:
    raise ValueError(
      f"--image_size={image_size} is below {model_name}'s smallest input ({smallest} pixels)"
    )
  provenance = {  # bundle.write adds mdx's version, commit and the time
    "imported_from": {
      "file": os.path.abspath(input_path),
      "sha256": outputs.digest(input_path),
      "format": source,
      "model": model_name,
    },
  }
  spec = bundle_lib.classification_spec(
    model,
    image_size=int(image_size),
    channels=int(channels),
    standardize=standardize_spec(standardize, mean, std, int(channels)),
    findings=names,
    provenance=provenance,
  )
  spec["thresholds"]["description"] = "none chosen (imported weights): no positive/negative calls"
  for m in spec["calibration"]["maps"].values():
    m["reason"] = "imported weights: nothing to fit on"
  return bundle_lib.write(output_dir, spec, variables)  # the card from the final spec
