"""Training across datasets, end to end in seconds: two phantom 'hospitals' mixed in one stream.

Hospital A labels all 14 NIH findings, hospital B only three (its other findings are unknown, nan,
masked out of loss and metrics, never negative). Each is split by patient on its own; validation
and test are reported per hospital and pooled (WORKDIR/per_dataset_metrics.json), and the bundle's
provenance names both with the fingerprint of their training records. Real datasets go in the same
list, e.g. dict(source='nih', metadata=..., images=..., weight=1) and dict(source='rsna', ...).
"""

from mdx.config import defaults


def get_config():
  c = defaults()
  c.data.source = "mixture"
  c.data.image_size = 32
  c.data.sources = [
    dict(source="phantoms", name="hospital_a", num_patients=60, weight=1.0),
    dict(
      source="phantoms",
      name="hospital_b",
      num_patients=40,
      findings=["Cardiomegaly", "Effusion", "Pneumothorax"],
      prevalence={"Effusion": 0.3},
      weight=1.0,
    ),
  ]
  c.data.split.test = 0.2
  c.data.split.val = 0.2
  c.model.name = "densenet_tiny"
  c.train.batch_size = 8
  c.train.steps = 6
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.eval.batch_size = 16
  c.eval.bootstrap = 20
  c.eval.examples = 2
  return c
