"""Generic 2D code, whatever the modality: image decoding (PNG/JPEG 8/16-bit, DICOM), a film as
the classifier reads it, CSV-backed file sources, class-per-folder datasets (dermatology, fundus,
histopathology, radiographs) and the TFDS ArrayRecord preparation of any 2D source."""
