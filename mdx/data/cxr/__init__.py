"""Chest X-ray and other 2D sources (NIH, CheXpert, folders, expert labels, phantoms), image
decoding (PNG/JPEG 8/16-bit, DICOM), metadata tables, and a film as the classifier reads it."""
