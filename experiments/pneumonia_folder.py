"""Pediatric pneumonia (Kermany et al.) from NORMAL/ and PNEUMONIA/ folders: one binary finding.

Data: ../shared/data/kermany_pneumonia_subset. The patient id comes from the file name
(personN_virus_M.jpeg -> personN; IM-XXXX-YYYY.jpeg -> IM-XXXX), so a child's several films stay in
one set. The first run prepares records in the per-user cache (ahead: `./launch.sh prepare
experiments/pneumonia_folder.py`).
"""

import os

from mdx.config import defaults
from mdx.data.image.file_source import records_dir

DATA = os.environ.get(
  "MDX_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def get_config():
  c = defaults()
  c.data.source = "folders"
  c.data.root = os.path.join(DATA, "kermany_pneumonia_subset")
  c.data.negative_class = "NORMAL"
  c.data.patient_regex = r"^(person\d+|(?:NORMAL2-)?IM-\d+)"
  c.data.prepared_dir = records_dir()  # ~/.cache/mdx/records, or MDX_RECORDS
  c.data.on_error = "raise"  # or "skip": drop unreadable images, listed in the workdir
  c.data.split.test = 0.2
  c.data.split.val = 0.2
  c.data.augment = "chest_xray"
  c.model.name = "densenet121"
  c.train.batch_size = 16
  c.train.steps = 100
  c.train.checkpoint_every = 50
  c.eval.bootstrap = 200
  return c
