"""Imports of the peer libraries' own code, for parity tests.

torch-fidelity's package ``__init__`` imports torchvision, which has no CPU wheel here. Its Inception
module does not need it, so we register a bare ``torch_fidelity`` package whose ``__path__`` is the
installed folder and import the submodules directly: the peer's code runs unmodified.
"""

import importlib
import importlib.util
import os
import sys
import types


def torch_fidelity_module(name):
  """Returns ``torch_fidelity.<name>`` without running the package ``__init__``."""
  if "torch_fidelity" not in sys.modules or not hasattr(sys.modules["torch_fidelity"], "__path__"):
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or spec.origin is None:
      raise ImportError("torch-fidelity is not installed (pip install --no-deps torch-fidelity)")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [os.path.dirname(spec.origin)]
    sys.modules["torch_fidelity"] = package
  return importlib.import_module(f"torch_fidelity.{name}")


def torch_fidelity_metric_module(name):
  """Returns ``torch_fidelity.<name>`` (e.g. ``metric_isc``), ``torch_fidelity.utils`` stood in.

  The metric modules import four names from ``torch_fidelity.utils`` (feature extraction from
  images: ``extract_featuresdict_from_input_id_cached``, ``create_feature_extractor``, ...), and
  that module imports torchvision, names from the package ``__init__`` and, through ``registry``,
  every feature extractor. A stand-in torchvision would not get it past those. The
  ``*_features_to_metric`` / ``*_featuresdict_to_metric`` functions call none of the four (they use
  only ``helpers``, NumPy and torch), so a stand-in ``utils`` whose every attribute raises when
  called keeps the peer's math unmodified: if it ever reached for ``utils``, the test would fail.

  ``metric_kid`` also wraps its subset loop in ``tqdm`` for a progress bar, and ``--no-deps`` does
  not install tqdm; where it is missing, a stand-in that returns the iterable takes its place.
  """
  torch_fidelity_module("helpers")
  if importlib.util.find_spec("tqdm") is None and "tqdm" not in sys.modules:
    stand_in = types.ModuleType("tqdm")
    stand_in.tqdm = lambda iterable=None, *args, **kwargs: iterable
    sys.modules["tqdm"] = stand_in
  if "torch_fidelity.utils" not in sys.modules:
    stand_in = types.ModuleType("torch_fidelity.utils")

    def __getattr__(attr):
      if attr.startswith("__"):
        raise AttributeError(attr)

      def unavailable(*args, **kwargs):
        raise RuntimeError(f"torch_fidelity.utils.{attr} is a test stand-in (no torchvision here)")

      return unavailable

    stand_in.__getattr__ = __getattr__
    sys.modules["torch_fidelity.utils"] = stand_in
  return importlib.import_module(f"torch_fidelity.{name}")
