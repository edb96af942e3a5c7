"""Evaluation: metrics, bootstrap, calibration, Grad-CAM, reports. Reads predictions, not models."""
