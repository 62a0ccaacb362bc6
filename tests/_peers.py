"""Imports of the peer libraries' own code, for parity tests.

torch-fidelity's package ``__init__`` imports torchvision, which has no CPU wheel here. Its Inception
module does not need it, so we register a bare ``torch_fidelity`` package whose ``__path__`` is the
installed folder and import the submodules directly: the peer's code runs unmodified.
"""

import importlib
import importlib.util
import sys
import types


def torch_fidelity_module(name):
  """Returns ``torch_fidelity.<name>`` without running the package ``__init__``."""
  if "torch_fidelity" not in sys.modules or not hasattr(sys.modules["torch_fidelity"], "__path__"):
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or spec.origin is None:
      raise ImportError("torch-fidelity is not installed (pip install --no-deps torch-fidelity)")
    # module_from_spec gives the package its __spec__ and __path__ without executing __init__;
    # a bare ModuleType lacks __spec__, which breaks importers that look for it (torchmetrics).
    sys.modules["torch_fidelity"] = importlib.util.module_from_spec(spec)
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
  """
  torch_fidelity_module("helpers")
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


def torchmetrics_module(name):
  """Returns ``torchmetrics.<name>``, unmodified.

  torchmetrics' package ``__init__`` imports its FID module, which imports
  ``torch_fidelity.feature_extractor_inceptionv3``; registering the bare ``torch_fidelity`` package
  first (:func:`torch_fidelity_module`) lets that import go through without torchvision.
  """
  torch_fidelity_module("feature_extractor_inceptionv3")
  return importlib.import_module(f"torchmetrics.{name}")
