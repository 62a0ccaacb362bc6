"""Metric math on features: pure functions and mergeable pytree states, independent of networks.

Fréchet distance (FID, sFID, FD_DINOv2), Gaussian feature statistics, Inception Score, KID,
precision/recall and density/coverage, CMMD (RBF MMD²), reconstruction error and CLIP similarity.
Any feature array goes in; which network made it is the pipeline's business (:mod:`jaxmetrics.pipeline`).
"""
