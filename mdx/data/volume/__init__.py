"""3D sources (MSD, BraTS, brain phantoms), NIfTI reading and writing, and the self-configuration
a segmentation run does from its data (nnU-Net's):

  msd, brats, brain_phantoms   the sources (each states its modality, classes, mirror axes)
  nifti                        NIfTI volumes with their affine and spacing
  fingerprint                  per case spacing, shape, class volumes, foreground intensities
  plan                         target spacing, patch and batch, network, normalisation from it
  resample                     cases to the plan's spacing and probabilities back to their grid
  transforms                   a case as a segmenter reads it, sub-volumes, nnU-Net's augmentation
"""
