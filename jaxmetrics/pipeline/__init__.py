"""The pipeline from images to numbers: sources → sharded extraction → statistics → metrics.

:mod:`~jaxmetrics.pipeline.sources` reads folders, files and arrays, and
:mod:`~jaxmetrics.pipeline.datasets` TensorFlow Datasets, grain and on-device samplers;
:mod:`~jaxmetrics.pipeline.extract` runs a network over them on every device and host, feeding
metric states; :mod:`~jaxmetrics.pipeline.evaluation` turns sources into metric values with a
statistics cache; :mod:`~jaxmetrics.pipeline.cli` is the command line over it.
"""
