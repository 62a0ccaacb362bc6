"""Feature networks: the FID Inception-v3 and CLIP as Flax modules, and their input resizing.

Each network module holds the Flax module, the mapping of its official checkpoint's tensor names to
parameters (``load_params``) and an on-device forward that returns named features. Networks depend
on :mod:`jaxmetrics.checkpoints` and on nothing of the metrics or the pipeline.
"""
