"""Writers of fixture files shared by several test folders: DICOM films and MSD-layout NIfTI
volumes. Imported as a top-level module: tests/conftest.py puts tests/ on sys.path."""

import os

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(path, pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None):
  """A 16-bit single-frame DICOM of `pixels` with a rescale (modality LUT) and optional window."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = ds.BitsStored = 16
  ds.HighBit = 15
  ds.PixelRepresentation = 0
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  if window:
    ds.WindowCenter, ds.WindowWidth = window
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  ds.save_as(str(path), enforce_file_format=True)


def write_msd(root, affine, n=6, shape=(10, 14, 9)):
  """A Medical Segmentation Decathlon layout (imagesTr/, labelsTr/) of `n` hippocampus volumes:
  two labelled boxes on noise, every file with `affine`."""
  rng = np.random.default_rng(0)
  for i in range(n):
    label = np.zeros(shape, np.uint8)
    label[2:6, 3:8, 2:5] = 1
    label[5:8, 8:11, 3:6] = 2
    image = (label * 100 + rng.normal(300, 20, shape)).astype(np.float32)
    for d, x in (("imagesTr", image), ("labelsTr", label)):
      os.makedirs(f"{root}/{d}", exist_ok=True)
      nib.save(nib.Nifti1Image(x, affine), f"{root}/{d}/hippocampus_{i:03d}.nii.gz")
