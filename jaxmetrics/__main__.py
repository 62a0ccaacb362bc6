"""``python -m jaxmetrics``: the same command line as the ``jaxmetrics`` script."""

import sys

from jaxmetrics.cli import main

sys.exit(main())
