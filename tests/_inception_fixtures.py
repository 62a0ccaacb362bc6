"""Random-weight FID Inception checkpoints in the official file format, made with the peer's module.

The official weights cannot be downloaded here, so parity is checked on random weights written in
the same format (a torch state dict with pytorch-fid/torch-fidelity key names), loaded both by
torch-fidelity's own ``FeatureExtractorInceptionV3`` and by jaxmetrics.

Random weights must keep activations in a healthy range or a parity test proves nothing: convs are
He-normal, and the BatchNorm running statistics are calibrated on a forward pass over test images
(train mode, cumulative averages), then scale/bias/mean are perturbed so no layer is the identity.
"""

import contextlib
from unittest import mock

import numpy as np
import torch

from tests._peers import pytorch_fid_module
from tests._peers import torch_fidelity_module

FEATURES = ["2048", "logits_unbiased", "logits"]


def _extractor_class():
  return torch_fidelity_module("feature_extractor_inceptionv3").FeatureExtractorInceptionV3


def test_images(seed, n, height, width):
  """Smooth random images with texture: low-frequency colour fields plus pixel noise, uint8."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, size=(n, 5, 5, 3))
  ys = np.linspace(0, 4, height)
  xs = np.linspace(0, 4, width)
  y0 = np.floor(ys).astype(int).clip(0, 3)
  x0 = np.floor(xs).astype(int).clip(0, 3)
  fy = (ys - y0)[None, :, None, None]
  fx = (xs - x0)[None, None, :, None]
  top = coarse[:, y0][:, :, x0] * (1 - fx) + coarse[:, y0][:, :, x0 + 1] * fx
  bottom = coarse[:, y0 + 1][:, :, x0] * (1 - fx) + coarse[:, y0 + 1][:, :, x0 + 1] * fx
  field = top * (1 - fy) + bottom * fy
  return np.clip(field + rng.normal(0, 20, field.shape), 0, 255).astype(np.uint8)


test_images.__test__ = False  # a helper: pytest must not collect it where it is imported


def random_state_dict(seed=0):
  """A state dict with torch-fidelity's key names and healthy random values (see module doc)."""
  torch.manual_seed(seed)
  cls = _extractor_class()

  class Blank(cls):
    def load_state_dict(self, state_dict, strict=True, assign=False):
      return None

  with mock.patch.object(torch, "load", lambda *args, **kwargs: {}):
    model = Blank("inception-v3-compat", FEATURES, feature_extractor_weights_path="unused")
  model.requires_grad_(False)
  for module in model.modules():
    if isinstance(module, torch.nn.Conv2d):
      torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    elif isinstance(module, torch.nn.BatchNorm2d):
      module.momentum = None  # cumulative average: running stats = this pass's batch stats
      module.reset_running_stats()
  model.train()
  calibration = torch.from_numpy(test_images(seed + 1000, 6, 299, 299)).permute(0, 3, 1, 2)
  with torch.no_grad():
    model(calibration)
  model.eval()
  generator = torch.Generator().manual_seed(seed + 1)
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      c = module.num_features
      module.weight.copy_(torch.empty(c).uniform_(0.6, 1.4, generator=generator))
      module.bias.copy_(torch.empty(c).normal_(0.0, 0.2, generator=generator))
      module.running_mean.add_(torch.empty(c).normal_(0.0, 0.1, generator=generator)
                               * module.running_var.sqrt())
  # pool3 entries have an RMS of ~20: this scale gives logits of std ~3, so softmax is neither
  # one-hot (IS = 1 for every set) nor uniform, and the Inception Score says something.
  model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=generator) / np.sqrt(2048.0) * 0.15)
  model.fc.bias.copy_(torch.randn(model.fc.bias.shape, generator=generator))
  return {k: v.clone() for k, v in model.state_dict().items()}


def save_checkpoints(state_dict, folder):
  """Writes ``state_dict`` in the legacy (pre-zip) format, as the official file, and the zip one."""
  legacy = folder / "inception-random-legacy.pth"
  zipped = folder / "inception-random-zip.pth"
  torch.save(state_dict, legacy, _use_new_zipfile_serialization=False)
  torch.save(state_dict, zipped)
  return legacy, zipped


def torch_fidelity_extractor(path):
  """torch-fidelity's own extractor, loading ``path`` the way it loads the official weights."""
  with contextlib.redirect_stdout(None):
    return _extractor_class()("inception-v3-compat", FEATURES, feature_extractor_weights_path=str(path))


def torch_fidelity_features(extractor, images):
  """Runs the peer on uint8 NHWC images (it wants uint8 NCHW and resizes with TF1 itself).

  ``spatial`` is guided-diffusion's sFID feature read off the peer's own network: a forward hook on
  ``Mixed_6d.branch1x1`` (the module torch-fidelity's converter fills from the TF graph's
  ``mixed_6/conv``; its forward ends with the ReLU), first 7 channels, flattened in NHWC order as
  the evaluator reshapes the TF tensor.
  """
  device = next(extractor.parameters()).device
  captured = []
  hook = extractor.Mixed_6d.branch1x1.register_forward_hook(
      lambda module, inputs, output: captured.append(output))
  try:
    with torch.no_grad():
      outputs = extractor(torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous())
  finally:
    hook.remove()
  pool3, unbiased, logits = (x.cpu().numpy() for x in outputs)
  spatial = captured[0][:, :7].permute(0, 2, 3, 1).reshape(len(images), -1).cpu().numpy()
  return {"pool3": pool3, "logits_unbiased": unbiased, "logits": logits, "spatial": spatial}


def pytorch_fid_model(path):
  """pytorch-fid's own ``InceptionV3`` (pool3 block), its weights download replaced by ``path``.

  ``fid_inception_v3`` builds torchvision's network, patches in the FID blocks and calls
  ``load_state_dict_from_url(FID_WEIGHTS_URL)``; only that fetch is redirected to the local file.
  """
  module = pytorch_fid_module("inception")
  load = lambda url, progress=True: torch.load(path, map_location="cpu")
  with mock.patch.object(module, "load_state_dict_from_url", load):
    return module.InceptionV3([module.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def pytorch_fid_features(model, images):
  """pool3 of pytorch-fid's model on uint8 NHWC images, fed as its loader does: ToTensor, [0, 1]."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
  with torch.no_grad():
    return model(x)[0].squeeze(3).squeeze(2).numpy()
