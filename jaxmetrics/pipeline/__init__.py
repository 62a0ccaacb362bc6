"""The pipeline from images to numbers: sources → sharded extraction → statistics → metrics.

:mod:`~jaxmetrics.pipeline.sources` reads folders, arrays and datasets;
:mod:`~jaxmetrics.pipeline.extract` runs a network over them on every device and host, feeding
metric states; :mod:`~jaxmetrics.pipeline.evaluation` turns sources into metric values with a
statistics cache; :mod:`~jaxmetrics.pipeline.cli` is the command line over it.
"""
