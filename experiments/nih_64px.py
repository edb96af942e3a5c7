"""DenseNet-121 on the 856-image, 64 px NIH ChestX-ray14 sample (219 patients), split by patient.

Data: ../shared/data/nih_chestxray14_64px (Data_Entry.csv in the official layout + images/).
The first run writes ArrayRecord files into data.prepared_dir (the per-user cache; `./launch.sh
prepare experiments/nih_64px.py` does it ahead) and later runs read them; set
--config.data.prepared_dir='' to decode the PNGs instead.
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
  c.data.metadata = os.path.join(DATA, "nih_chestxray14_64px", "Data_Entry.csv")
  c.data.images = os.path.join(DATA, "nih_chestxray14_64px", "images")
  c.data.prepared_dir = records_dir()  # ~/.cache/mdx/records, or MDX_RECORDS
  c.data.channels = 1
  c.data.on_error = "raise"
  c.data.image_size = 64
  c.data.split.test = 0.2
  c.data.augment = "chest_xray"
  c.data.workers = 1
  c.model.name = "densenet121"
  c.train.steps = 300
  c.eval.bootstrap = 200
  return c
