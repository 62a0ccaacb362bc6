"""A feature network as a value: weights, on-device preprocessing and named features.

The pipeline (:mod:`jaxmetrics.pipeline.extract`) runs any :class:`FeatureNetwork` over a source
and feeds any of its named features to any metric state; evaluation caches statistics under the
network's name, the feature's name and the preprocessing. A network module (``inception``,
``clip``, ...) builds its own :class:`FeatureNetwork` from its Flax module and checkpoint reader.

Preprocessing is two steps on device, inside the same ``jit`` as the network: a resize to the
network's input size in one of :data:`jaxmetrics.networks.resize.RESIZE_MODES` (which filter
decides parity with a reference implementation, so it is a user choice), then the network's own
normalisation of the resized 0..255 pixels (fixed by how the network was trained, except where a
reference implementation normalises differently, as pytorch-fid does; see
:mod:`jaxmetrics.networks.inception`).
"""

import dataclasses
from collections.abc import Callable, Mapping

from jaxmetrics._errors import InputError


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNetwork:
  """A network that maps images to named feature vectors.

  Instances compare and hash by identity, so a network can be a static argument of ``jax.jit``;
  each network module defines one instance per architecture.

  Attributes:
    name: the network's name in cache keys and reports (``"inception-v3-fid"``).
    weights: its default entry in the weights registry (:mod:`jaxmetrics.checkpoints.weights`).
    features: every feature it returns, name → dimension per image (e.g. ``{"pool3": 2048}``).
    resize_modes: the resize modes it accepts; the first is the default.
    forward: ``forward(params, images, *, resize, precision, shards)``: uint8 or [0, 1] float
      images ``(N, H, W, 3)`` of any size → ``{feature: (N, dim)}``, traceable inside ``jit``,
      without input checks (``shards``: the devices the batch axis is split over).
    weights_file: ``weights_file(path, *, check_hash, progress)`` → ``(path, sha256)``: resolves
      (downloads) the checkpoint and hashes it once.
    load_weights_file: ``load_weights_file(path, sha256)`` → parameters.
    input_size: the ``(H, W)`` its preprocessing resizes every image to, or ``None`` when it has
      none; a folder of images of several sizes is resized to it on the host
      (:func:`jaxmetrics.pipeline.sources.open_source`).
  """

  name: str
  weights: str
  features: Mapping[str, int]
  resize_modes: tuple[str, ...]
  forward: Callable = dataclasses.field(repr=False)
  weights_file: Callable = dataclasses.field(repr=False)
  load_weights_file: Callable = dataclasses.field(repr=False)
  input_size: tuple[int, int] | None = None

  @property
  def default_resize(self) -> str:
    return self.resize_modes[0]

  def check_resize(self, resize):
    """``resize`` itself, or the default for ``None``; one-line ``InputError`` if unknown."""
    if resize is None:
      return self.default_resize
    if resize not in self.resize_modes:
      raise InputError(f"resize: expected one of {', '.join(self.resize_modes)}, got {resize!r}")
    return resize
