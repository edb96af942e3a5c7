"""3D sources (MSD, BraTS, brain phantoms), NIfTI reading and writing, and 3D transforms."""
