"""How a segmentation bundle holds up on scans of another voxel spacing than it was planned for.

  python benchmarks/segment_at_other_spacing.py --bundle=runs/hippo/bundle \
      --data=../shared/data/msd_task04_hippocampus --cases=hippocampus_001,... [--spacing=0.8,1,1.4]

Each case (image and label, NIfTI) is segmented as it is, and again after resampling it to
--spacing (image cubic, label per class linear then argmax: mdx.data.volume.resample); the second
is segmented twice: with the bundle's own path (resampled to the plan's spacing and back) and
with that path turned off (the network run on the scan's own grid, as predict did before plans).
Prints the mean Dice per class of the three against each grid's own label, and the differences.
--cases: the case ids to use (e.g. a run's validation cases, from its report's metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from mdx.data.volume import nifti
from mdx.data.volume import resample as resample_lib
from mdx.evaluate import segmentation as seg_metrics
from mdx.inference import bundle as bundle_lib
from mdx.inference.segmenter import VolumeSegmenter


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--bundle", required=True)
  parser.add_argument("--data", required=True, help="an MSD folder (imagesTr/, labelsTr/)")
  parser.add_argument("--cases", default="", help="case ids, comma-separated (default: all)")
  parser.add_argument("--report", default="", help="a run's report/metrics.json: its cases")
  parser.add_argument("--spacing", default="0.8,1.0,1.4", help="mm along the array's axes")
  args = parser.parse_args()
  spacing = [float(v) for v in args.spacing.split(",")]
  bundle = bundle_lib.load(args.bundle)
  names = bundle.spec["output"]["class_names"]
  native = VolumeSegmenter(bundle)
  as_before = VolumeSegmenter(bundle)
  as_before.input = {**as_before.input, "spacing": None}  # no resampling: the network's own grid
  cases = [c for c in args.cases.split(",") if c]
  if args.report:
    cases = sorted(json.load(open(args.report))["per_case"])
  if not cases:
    cases = sorted(nifti.strip_suffix(n) for n in os.listdir(f"{args.data}/imagesTr"))
  dice = {"own grid": [], f"{args.spacing} mm, resampled": [], f"{args.spacing} mm, as is": []}
  for case in cases:
    image = nifti.load_nifti(f"{args.data}/imagesTr/{case}.nii.gz")
    label = nifti.load_nifti(f"{args.data}/labelsTr/{case}.nii.gz").data.astype(np.int32)
    img = image.data if image.data.ndim == 4 else image.data[..., None]
    moved = resample_lib.resample_image(img, image.spacing, spacing)
    moved_label = resample_lib.resample_label(label, image.spacing, spacing)
    runs = (
      (native, img, image.spacing, label),
      (native, moved, spacing, moved_label),
      (as_before, moved, spacing, moved_label),
    )
    for key, (seg, x, sp, truth) in zip(dice, runs):
      pred = seg.predict(x, sp)
      m = seg_metrics.case_metrics(pred, truth, names, False, sp, with_hd95=False)
      dice[key].append([m[n]["dice"] for n in names[1:]])
  print(f"{len(cases)} cases; mean Dice per class ({', '.join(names[1:])}) and their mean")
  base = np.mean(dice["own grid"])
  for key, values in dice.items():
    per = np.mean(values, 0)
    cells = ", ".join(f"{v:.4f}" for v in per)
    print(f"  {key:<28} {cells}  mean {per.mean():.4f}  (vs own grid {per.mean() - base:+.4f})")


if __name__ == "__main__":
  main()
