"""``python -m jaxmetrics``: the same command line as the ``jaxmetrics`` script."""

import sys

from jaxmetrics.pipeline.cli import main

sys.exit(main())
