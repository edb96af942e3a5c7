"""Data: sources (random access), phantoms, splits, label tools, transforms, grain pipelines."""
