"""Random-weight bundles for the inference tests (tests/conftest.py puts tests/ on the path)."""

from mdx.inference import bundle as bundle_lib
from mdx.models import registry

# One calibration map of each kind a bundle carries, by finding (Platt, isotonic, none)
CALIBRATION_MAPS = {
  "Effusion": {"kind": "platt", "a": 1.7, "b": -0.3},
  "Mass": {"kind": "isotonic", "x": [0.0, 0.4, 0.6, 1.0], "y": [0.1, 0.2, 0.7, 0.9]},
  "Nodule": {"kind": "identity", "reason": "not calibrated"},
}


def calibration(findings) -> dict:
  """A bundle's 'calibration' of CALIBRATION_MAPS for `findings`, as fitted on validation."""
  return {
    "method": "platt",
    "fitted_on": "validation",
    "maps": {f: CALIBRATION_MAPS[f] for f in findings},
  }


def write_classifier_bundle(
  path: str, findings, thresholds: dict, standardize: dict, size: int = 32, calibration=None
) -> str:
  """A tiny DenseNet bundle for 1-channel films of `size` px with hand-written raw thresholds."""
  model_spec = {"name": "densenet_tiny", "num_classes": len(findings), "dtype": "float32"}
  spec = bundle_lib.classification_spec(
    model_spec,
    image_size=size,
    channels=1,
    standardize=standardize,
    findings=findings,
    thresholds={
      "policy": "fixed",
      "description": "hand-written for the test",
      "chosen_on": None,
      "scale": "raw",
      "values": thresholds,
    },
    calibration=calibration,
  )
  return bundle_lib.write(
    path, spec, registry.random_variables(model_spec, (1, size, size, 1)), "# test"
  )


def write_segmenter_bundle(path: str, mirror_axes=(), seed: int = 0) -> str:
  """A tiny 3D U-Net bundle: 16^3 patches, classes background / lesion written as 0 / 3;
  test-time mirroring along mirror_axes; random weights of `seed`."""
  model_spec = {
    "name": "unet3d",
    "num_classes": 2,
    "dtype": "float32",
    "depth": 2,
    "base_width": 4,
    "conv_impl": "native",  # compiles faster on CPU than the default slices
  }
  spec = bundle_lib.segmentation_spec(
    model_spec,
    channels=1,
    standardize="per_channel",
    patch_size=(16, 16, 16),
    overlap=0.25,
    batch_size=2,
    class_names=("background", "lesion"),
    label_mode="classes",
    label_values=(0, 3),
    mirror_axes=mirror_axes,
  )
  return bundle_lib.write(
    path, spec, registry.random_variables(model_spec, (1, 16, 16, 16, 1), seed), "# test"
  )


# A bundle kind of a task mdx does not have (one score per image), registered by a test under
# bundle.KINDS['toy_score'] = 'bundle_fixtures:TOY_KIND': it shows what a new task's kind is, and
# that loading, predicting and the card need nothing else.
TOY_TASK = "toy_score"


def toy_spec(model: dict, *, image_size: int, results=None, provenance=None) -> dict:
  return {
    "task": TOY_TASK,
    "model": dict(model),
    "input": {"image_size": int(image_size), "channels": 1, "standardize": {"mode": "none"}},
    "output": {"name": "score"},
    "results": results or {},
    "provenance": provenance or {},
  }


class ToyFiles:
  """predict over PNG films: one raw logit per film."""

  unit = "image"

  def __init__(self, bundle, batch_size=None):
    self.bundle, self.model = bundle, bundle.model()
    self.header = ["path", bundle.spec["output"]["name"]]

  def check_outputs(self, inputs, out):
    pass

  def writes(self, inputs):
    return [], []  # predictions.csv and errors.csv alone

  def read(self, path):
    from mdx.data.image import images
    from mdx.inference import classifier

    return classifier.preprocess(images.read_image(path, 1), self.bundle.spec["input"])

  def run(self, files, out, writer, errors, bar):
    from mdx.inference import predict_files

    predicted = 0
    for chunk, results in predict_files.read_ahead(self.read, [[f] for f in files], 1):
      (index, name, _), (x, reason) = chunk[0], results[0]
      if reason is not None:
        errors.append((index, name, reason))
      else:
        logit = self.model.apply(self.bundle.variables, x[None], train=False)[0, 0]
        writer.writerow([name, predict_files.number(float(logit))])
        predicted += 1
      bar.update(1)
    return predicted


def _toy_card(spec):
  return [[f"# Toy card: {spec['model']['name']} scores {spec['output']['name']}", ""]]


def _toy_kind():
  from mdx.inference.bundle import BundleKind

  return BundleKind(
    task=TOY_TASK,
    required={
      "model": ("name", "num_classes"),
      "input": ("image_size", "channels", "standardize"),
      "output": ("name",),
    },
    spec=toy_spec,
    input_shape=lambda spec: (1, spec["input"]["image_size"], spec["input"]["image_size"], 1),
    suffixes=(".png",),
    noun="image",
    predictor=ToyFiles,
    card=_toy_card,
  )


TOY_KIND = _toy_kind()
