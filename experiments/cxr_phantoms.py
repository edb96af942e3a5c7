"""The default experiment and demo: DenseNet-121 on the built-in chest X-ray phantoms, split by
patient.

./launch.sh demo runs it on 2 CPU cores in minutes; on a GPU or TPU raise image_size, steps and
batch_size.
"""

from mdx.config import defaults


def get_config():
  c = defaults()
  c.data.source = "phantoms"
  c.data.num_patients = 1500  # ~3,600 studies; rendering is ~1 ms per 64 px image
  c.data.image_size = 64
  c.data.split.test = 0.2
  c.data.augment = "chest_xray"
  c.data.workers = 1
  c.model.name = "densenet121"
  c.train.steps = 400
  c.eval.bootstrap = 200
  # DenseNet-121 downsamples 32x: at 64 px its last feature map is 2x2, too coarse to point at a
  # lesion. block2's 8x8 map is the deepest one that localises (see the note in the report).
  c.eval.gradcam.layer = "block2"
  return c
