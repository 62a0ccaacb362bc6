"""Imports of the peer libraries' own code, for parity tests.

torch-fidelity's package ``__init__`` imports torchvision, which has no CPU wheel here. Its Inception
module does not need it, so we register a bare ``torch_fidelity`` package whose ``__path__`` is the
installed folder and import the submodules directly: the peer's code runs unmodified.

pytorch-fid imports ``torchvision`` and subclasses its Inception blocks. The torchvision wheels on
PyPI for this CPU torch fail at import (their compiled operators were built for another torch), but
``torchvision.models.inception`` and the transforms it pulls in are pure Python. ``.ci/run`` installs
the wheel into a folder of its own (``.venv/torchvision-python``), off ``sys.path`` so that nothing
else imports the broken package, and :func:`pytorch_fid_module` registers bare ``torchvision`` and
``torchvision.models`` packages from there. Where torchvision imports (a GPU machine) it is used as is.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import pathlib
import sys
import types
from unittest import mock


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


TORCHVISION_PYTHON = pathlib.Path(sys.prefix) / "torchvision-python"


def _bare_package(name, folder, **attributes):
  spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
  spec.submodule_search_locations = [str(folder)]
  module = importlib.util.module_from_spec(spec)
  module.__dict__.update(attributes)
  sys.modules[name] = module
  return module


def pytorch_fid_module(name):
  """Returns ``pytorch_fid.<name>`` (``inception``, ``fid_score``), unmodified.

  torchvision is the installed one where it is importable. Otherwise bare packages over the folder
  ``$JAXMETRICS_TORCHVISION_PYTHON`` (default ``.venv/torchvision-python``) holding its Python files
  stand in while pytorch-fid's two modules import, and leave ``sys.modules`` afterwards: pytorch-fid
  keeps the module objects it bound, and other importers (torchmetrics probes for torchvision) do
  not find a half torchvision.
  """
  if importlib.util.find_spec("pytorch_fid") is None:
    raise ImportError("pytorch-fid is not installed (pip install --no-deps pytorch-fid==0.3.0)")
  if "pytorch_fid.fid_score" not in sys.modules and importlib.util.find_spec("torchvision") is None:
    folder = pathlib.Path(os.environ.get("JAXMETRICS_TORCHVISION_PYTHON", TORCHVISION_PYTHON))
    folder = folder / "torchvision"
    if not (folder / "models" / "inception.py").is_file():
      raise ImportError(f"torchvision's Python files are not in {folder} (pip install --no-deps "
                        f"--target {folder.parent} torchvision==0.28.0)")
    version = (folder / "version.py").read_text().split("__version__ = ")[1].split()[0]
    before = set(sys.modules)
    try:
      package = _bare_package("torchvision", folder, __version__=version.strip("'\""))
      package.models = _bare_package("torchvision.models", folder / "models")
      inception = importlib.import_module("torchvision.models.inception")
      package.models.inception = inception
      package.models.inception_v3 = inception.inception_v3
      importlib.import_module("pytorch_fid.fid_score")  # imports pytorch_fid.inception too
    finally:
      for key in set(sys.modules) - before:
        if key == "torchvision" or key.startswith("torchvision."):
          del sys.modules[key]
  return importlib.import_module(f"pytorch_fid.{name}")


def pytorch_fid_frechet(mu1, sigma1, mu2, sigma2):
  """``(fid, note)`` from pytorch-fid's ``calculate_frechet_distance``, and what happened.

  pytorch-fid 0.3.0 calls ``scipy.linalg.sqrtm(..., disp=False)``; SciPy 1.18 removed ``disp`` and
  the call raises TypeError. The note records that, and the FID is then its own code with ``sqrtm``
  given back its old signature (what it computes on SciPy < 1.18). With fewer images than features
  its ``sqrtm`` may also return an imaginary part it refuses (ValueError): fid is None then.
  """
  fid_score = pytorch_fid_module("fid_score")
  try:
    return float(fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)), None
  except ValueError as e:
    return None, f"raised ValueError: {e}"
  except TypeError as e:
    if "disp" not in str(e):
      raise
    error = str(e)
  import scipy.linalg  # pylint: disable=g-import-not-at-top  (pytorch-fid's own dependency)
  sqrtm = scipy.linalg.sqrtm
  old_signature = lambda a, disp=True: sqrtm(a) if disp else (sqrtm(a), None)
  note = f"raised TypeError ({error}); FID with sqrtm's old signature shimmed"
  with mock.patch.object(fid_score.linalg, "sqrtm", old_signature):
    try:
      return float(fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)), note
    except ValueError as e2:
      return None, f"{note}, then raised ValueError: {e2}"


def clean_fid_module(name):
  """Returns ``cleanfid.<name>`` (e.g. ``resize``) without running the package ``__init__``.

  clean-fid's ``__init__`` is empty in 0.1.35, but its modules import torchvision at the top
  (``cleanfid.utils``, ``cleanfid.fid``); ``cleanfid.resize`` needs only NumPy, Pillow and torch.
  A bare package keeps the test from depending on what a later ``__init__`` imports.
  """
  if "cleanfid" not in sys.modules or not hasattr(sys.modules["cleanfid"], "__path__"):
    spec = importlib.util.find_spec("cleanfid")
    if spec is None or spec.origin is None:
      raise ImportError("clean-fid is not installed (pip install --no-deps clean-fid==0.1.35)")
    sys.modules["cleanfid"] = importlib.util.module_from_spec(spec)
  return importlib.import_module(f"cleanfid.{name}")
