"""Optional packages (the ``tfds`` and ``grain`` extras) for the tests that need them.

A test module that imports one with ``pytest.importorskip`` at module level is skipped at
collection, which conftest's skip-to-failure hook (a run-time report) does not see: under ``CI``
the import is plain instead, so a missing extra fails the run.
"""

import importlib
import os

import pytest


def require(name):
  """The module ``name``; skips the calling module without it, unless ``CI`` is set."""
  if os.environ.get("CI"):
    return importlib.import_module(name)
  return pytest.importorskip(name)
