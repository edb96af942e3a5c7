"""Does Grad-CAM point at the lesion? A Mass-only model on 128 px phantoms, checked against the
drawn masks.

The report's gradcam.json gives, for positive test images, the share whose heat-map peak lies inside
the drawn mass (and within 4 px of it). 128 px keeps the feature maps fine enough to point at a mass
(~1.7% of the image); the default experiment's 64 px is chosen for speed, not localisation.

  ./launch.sh train experiments/gradcam_phantoms.py --workdir=runs/gradcam
"""

from mdx.config import defaults


def get_config():
  c = defaults()
  c.data.source = "phantoms"
  c.data.num_patients = 600
  c.data.findings = ("Mass",)
  c.data.prevalence = {"Mass": 0.5}
  c.data.split.test = 0.25
  c.data.augment = "chest_xray"
  c.data.workers = 1
  c.model.name = "densenet_tiny"
  c.train.steps = 300
  c.train.lr = 2e-3
  c.eval.bootstrap = 200
  # transition1 (16x16 at 128 px) localises; the last map (norm_final) is the Grad-CAM default.
  c.eval.gradcam = dict(findings=("Mass",), images=400, overlays=6, layer="transition1")
  return c
