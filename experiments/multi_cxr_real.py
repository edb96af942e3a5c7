"""DenseNet-121 trained across three chest X-ray datasets as distributed: NIH ChestX-ray14, RSNA
Pneumonia Detection Challenge (stage 2) and SIIM-ACR Pneumothorax, in one label space.

Data under $MDX_DATA (default ../shared/data), each dataset in its published layout:
  nih_chestxray14/   Data_Entry_2017.csv, images_001/images/ ... images_012/images/
  rsna_pneumonia/    stage_2_train_labels.csv, stage_2_detailed_class_info.csv,
                     stage_2_train_images/<patientId>.dcm
  siim_pneumothorax/ train-rle.csv, dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm
Each dataset is split by patient on its own (RSNA's patientId is one film; SIIM's patient is the
DICOM header's PatientID), and a finding a dataset does not label is unknown there (nan: NIH its
14, RSNA Pneumonia / Lung Opacity / No Finding, SIIM Pneumothorax). Equal weights draw a third of
every epoch from each, so the two smaller datasets are seen several times per pass over NIH. The
test split is reported per dataset, with patient-bootstrap CIs, and pooled
(WORKDIR/per_dataset_metrics.json; the pooled numbers are report/metrics.json's). The first run
writes each dataset's prepared records (data.prepared_dir); tests/train/test_multi_dataset.py runs
this config on tiny fixtures in the same layouts.
"""

import os

from mdx.config import defaults
from mdx.data.image.file_source import records_dir

DATA = os.environ.get(
  "MDX_DATA", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


def get_config():
  c = defaults()
  nih, rsna, siim = (
    os.path.join(DATA, d) for d in ("nih_chestxray14", "rsna_pneumonia", "siim_pneumothorax")
  )
  c.data.source = "mixture"
  c.data.image_size = 224
  c.data.sources = [
    dict(
      source="nih",
      metadata=os.path.join(nih, "Data_Entry_2017.csv"),
      images=nih,
      prepared_dir=records_dir(),
      weight=1.0,
    ),
    dict(
      source="rsna",
      metadata=os.path.join(rsna, "stage_2_train_labels.csv"),
      classes=os.path.join(rsna, "stage_2_detailed_class_info.csv"),
      images=os.path.join(rsna, "stage_2_train_images"),
      prepared_dir=records_dir(),
      weight=1.0,
    ),
    dict(
      source="siim",
      metadata=os.path.join(siim, "train-rle.csv"),
      images=os.path.join(siim, "dicom-images-train"),
      prepared_dir=records_dir(),
      weight=1.0,
    ),
  ]
  c.data.split.test = 0.2
  c.data.augment = "chest_xray"
  c.model.name = "densenet121"
  c.train.steps = 20000
  return c
