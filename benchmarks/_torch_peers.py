"""The peers' own torch Inception extractors, on the CPU or a CUDA GPU, for the benchmarks.

Each extractor is the peer's own module loading the same checkpoint file, fed a uint8 NHWC batch
from the host the way the peer's own pipeline feeds it, and returns pool3 ``(N, 2048)`` on the
torch device:

* torch-fidelity: ``FeatureExtractorInceptionV3`` takes uint8 NCHW and resizes with TF1 bilinear;
* pytorch-fid: ``InceptionV3`` takes [0, 1] floats (its loader's ``ToTensor``) and resizes with
  torch's half-pixel bilinear (``resize="pytorch"`` in jaxmetrics);
* torchmetrics: ``NoTrainInceptionV3`` takes uint8 and resizes with torch's antialiased bilinear
  (``resize="torchmetrics"``).

Precision: ``"default"`` leaves torch's defaults (on an NVIDIA GPU of Ampere or later, cuDNN
convolutions in TF32, matmuls in float32), which is how the peers run for their users;
``"highest"`` turns TF32 off. On a CPU both are float32.
"""

import contextlib

import numpy as np
import torch

from tests import _inception_fixtures as fixtures
from tests._peers import torchmetrics_module

PEERS = ("torch-fidelity", "pytorch-fid", "torchmetrics")
RESIZE = {"torch-fidelity": "tf1", "pytorch-fid": "pytorch", "torchmetrics": "torchmetrics"}


def device():
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_precision(precision):
  """``"default"``: torch's defaults (TF32 cuDNN convolutions); ``"highest"``: TF32 off."""
  if precision not in ("default", "highest"):
    raise ValueError(f"torch precision: expected default or highest, got {precision!r}")
  torch.backends.cudnn.allow_tf32 = precision == "default"
  torch.backends.cuda.matmul.allow_tf32 = False  # torch's default for matmuls


def extractor(library, checkpoint, dev=None):
  """``fn(uint8 NHWC numpy) -> pool3`` (a torch tensor on ``dev``) running ``library``'s module."""
  dev = dev or device()
  if library == "torch-fidelity":
    model = fixtures.torch_fidelity_extractor(checkpoint).to(dev)
    forward = lambda x: model(x)[0]
  elif library == "pytorch-fid":
    model = fixtures.pytorch_fid_model(checkpoint).to(dev)
    forward = lambda x: model(x.float().div(255.0))[0].flatten(1)
  elif library == "torchmetrics":
    network = torchmetrics_module("image.fid").NoTrainInceptionV3
    with contextlib.redirect_stdout(None):
      model = network("inception-v3-compat", ["2048"],
                      feature_extractor_weights_path=str(checkpoint)).to(dev)
    forward = model
  else:
    raise ValueError(f"library: expected one of {', '.join(PEERS)}, got {library!r}")

  def run(images):
    x = torch.from_numpy(np.ascontiguousarray(images)).to(dev).permute(0, 3, 1, 2)
    with torch.no_grad():
      return forward(x)

  return run
