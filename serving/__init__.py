"""Serving side: face detection and cropping, Triton model code."""
