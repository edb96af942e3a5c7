"""A seconds-long run for tests and smoke checks: a tiny DenseNet on 32 px phantoms."""

from mdx.config import defaults


def get_config():
  c = defaults()
  c.data.source = "phantoms"
  c.data.num_patients = 60
  c.data.image_size = 32
  c.data.split.test = 0.2
  c.data.split.val = 0.2
  c.model.name = "densenet_tiny"
  c.train.batch_size = 8
  c.train.steps = 6
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  c.eval.batch_size = 16
  c.eval.bootstrap = 20
  c.eval.examples = 4
  return c
