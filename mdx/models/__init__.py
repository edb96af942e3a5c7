"""Models: a registry by name, Flax Linen classifiers and segmenters, weight import."""
