"""Random-weight bundles for the inference tests (tests/conftest.py puts tests/ on the path)."""

from mdx.inference import bundle as bundle_lib
from mdx.models import registry


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


def write_segmenter_bundle(path: str) -> str:
  """A tiny 3D U-Net bundle: 16^3 patches, classes background / lesion written as 0 / 3."""
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
  )
  return bundle_lib.write(
    path, spec, registry.random_variables(model_spec, (1, 16, 16, 16, 1)), "# test"
  )
