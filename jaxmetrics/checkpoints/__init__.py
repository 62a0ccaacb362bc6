"""Checkpoints: the weights registry (download, sha256, cache) and the NumPy-only torch reader.

Nothing here depends on JAX models or metrics: networks build their parameters from what these
modules read.
"""
