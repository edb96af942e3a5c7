"""Chest X-ray sources (NIH, CheXpert, expert labels, phantoms), their findings and metadata
tables; the generic 2D code they build on is in mdx.data.image."""
