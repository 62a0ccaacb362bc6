"""jaxmetrics with ``resize="pytorch"`` against pytorch-fid's own network, loader and FID.

pytorch-fid 0.3.0 runs unmodified (``tests/_peers.pytorch_fid_module``: torchvision's Python files
stand in for the package, whose compiled operators do not load on this CPU torch). Its
``InceptionV3`` loads the same random-weight checkpoint file through its own
``fid_inception_v3`` (only the download is redirected), resizes with torch's half-pixel bilinear on
[0, 1] values and maps them to [-1, 1]: jaxmetrics' ``resize="pytorch"``.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import jaxmetrics
from jaxmetrics.networks import inception
from tests import _inception_fixtures as fixtures
from tests._peers import pytorch_fid_frechet
from tests._peers import pytorch_fid_module

# Relative L2 of pool3, as for torch-fidelity (test_inception.py): float32 networks that sum in
# different orders; measured 1.0e-6..1.3e-6 here.
FEATURES_RTOL = 1e-4


@pytest.fixture(scope="module")
def params(inception_checkpoints):
  return inception.load_params(inception_checkpoints["legacy"], check_hash=False, progress=False)


@pytest.fixture(scope="module")
def model(inception_checkpoints):
  return fixtures.pytorch_fid_model(inception_checkpoints["legacy"])


@pytest.mark.parametrize("height,width", [(320, 304), (299, 299), (40, 36)],
                         ids=["shrink", "identity", "enlarge"])
def test_features_match_pytorch_fid(model, params, height, width):
  images = fixtures.test_images(height + width, 3, height, width)
  theirs = fixtures.pytorch_fid_features(model, images)
  ours = np.asarray(jaxmetrics.features(params, images, resize="pytorch")["pool3"])
  error = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
  assert error < FEATURES_RTOL


def test_fid_matches_pytorch_fid_from_folders(inception_checkpoints, params, model, tmp_path):
  """Two folders of PNGs through pytorch-fid's loader, statistics and FID, and ``jaxmetrics.fid``.

  ``compute_statistics_of_path`` is its own: sorted files, ``ToTensor`` in a DataLoader, its model,
  ``np.mean``/``np.cov``; its ``calculate_frechet_distance`` then takes the ``sqrtm`` route (with
  ``sqrtm``'s pre-1.18 signature restored if SciPy removed it; the note says so).
  """
  fid_score = pytorch_fid_module("fid_score")
  folders = []
  for seed in (1, 2):
    folder = tmp_path / f"set{seed}"
    folder.mkdir()
    for i, image in enumerate(fixtures.test_images(seed, 10, 48, 40)):
      Image.fromarray(image).save(folder / f"{i:03d}.png")
    folders.append(folder)
  with torch.no_grad():
    stats = [fid_score.compute_statistics_of_path(str(f), model, 4, 2048, "cpu", 0)
             for f in folders]
  theirs, note = pytorch_fid_frechet(*stats[0], *stats[1])
  assert theirs is not None, note
  ours = jaxmetrics.fid(*folders, params=params, resize="pytorch", cache=False)
  # FID is a difference of larger terms; both sides are float64 over float32 features 1e-6 apart,
  # and pytorch-fid's sqrtm of the singular Σ₁Σ₂ (10 samples) adds its own round-off: measured
  # 5.5e-6 relative; 1e-4 leaves room for BLAS differences between machines.
  assert ours == pytest.approx(theirs, rel=1e-4)
