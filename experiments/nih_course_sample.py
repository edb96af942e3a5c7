"""The 100-image NIH course sample at the original 1024 px, resized to 128 px, split by patient.

Data: ../shared/data/nih_chestxray14_course_sample (labels.csv in the Data_Entry layout + images/).
Too small to learn from; it exercises the full-resolution path: the first run decodes and resizes
the 1024 px PNGs once into records in the per-user cache (or ahead:
`./launch.sh prepare experiments/nih_course_sample.py`), and every run trains from the records.
"""

import os

from mdx.config import defaults
from mdx.data.image.file_source import records_dir

DATA = os.environ.get(
  "MDX_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def get_config():
  c = defaults()
  c.data.source = "nih"
  c.data.metadata = os.path.join(DATA, "nih_chestxray14_course_sample", "labels.csv")
  c.data.images = os.path.join(DATA, "nih_chestxray14_course_sample", "images")
  c.data.prepared_dir = records_dir()  # ~/.cache/mdx/records, or MDX_RECORDS
  c.data.split.test = 0.2
  c.data.split.val = 0.2
  c.data.augment = "chest_xray"
  c.model.name = "densenet121"
  c.train.batch_size = 16
  c.train.steps = 50
  c.train.checkpoint_every = 25
  c.eval.bootstrap = 100
  return c
