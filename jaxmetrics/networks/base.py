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
import functools
import inspect
from collections.abc import Callable, Mapping

import numpy as np

from jaxmetrics._errors import InputError


_FORWARD_KEYWORDS = ("resize", "precision", "shards", "mask", "host_resized")


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
    forward: ``forward(params, images, *, resize, precision, shards, mask, host_resized)``:
      uint8 or [0, 1] float images ``(N, H, W, 3)`` of any size → ``{feature: (N, dim)}``,
      traceable inside ``jit``, without input checks. ``shards``: the devices the batch axis is
      split over; ``mask``: ``(N,)`` bool, the rows that count (a network may skip the others,
      whose features are then arbitrary); ``host_resized``: the rows were made on the host by
      ``host_resize`` (static).
    weights_file: ``weights_file(path, *, check_hash, progress)`` → ``(path, sha256)``: resolves
      (downloads) the checkpoint and hashes it once.
    load_weights_file: ``load_weights_file(path, sha256)`` → parameters.
    input_size: the ``(H, W)`` its preprocessing resizes every image to, or ``None`` when it has
      none; a folder of images of several sizes is resized to it on the host
      (:func:`jaxmetrics.pipeline.sources.open_source`).
    host_resize: ``host_resize(image, resize)``: one uint8 image ``(H, W, 3)`` of any size →
      ``(*input_size, 3)`` float32 pixel values in [0, 255], as the device's preprocessing in mode
      ``resize`` would resize it, computed on the host (the route of folders of several sizes);
      the device's preprocessing of such rows must then be the identity up to float32 round-off.
      ``None``: the network has no host route (such folders need ``image_size``).
  """

  name: str
  weights: str
  features: Mapping[str, int]
  resize_modes: tuple[str, ...]
  forward: Callable = dataclasses.field(repr=False)
  weights_file: Callable = dataclasses.field(repr=False)
  load_weights_file: Callable = dataclasses.field(repr=False)
  input_size: tuple[int, int] | None = None
  host_resize: Callable | None = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    try:
      parameters = inspect.signature(self.forward).parameters
    except (TypeError, ValueError):
      return  # a callable without a signature to read: trusted as it is
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
      return
    missing = [name for name in _FORWARD_KEYWORDS if name not in parameters]
    if missing:
      raise InputError(f"forward: expected forward(params, images, *, "
                       f"{', '.join(_FORWARD_KEYWORDS)}), got {self.name}'s without "
                       f"{', '.join(missing)}")

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


def _no_weights(*args, **kwargs):
  del args, kwargs
  raise InputError("network: a combined network has no weights file of its own: resolve and load "
                   "each part's weights, and pass {key: params} as its parameters")


def combine(parts):
  """One :class:`FeatureNetwork` that runs several networks on the same images, in one step.

  What lets one pass over a source feed metrics of several feature spaces (FID in Inception's,
  FD_DINOv2 in DINOv2's, CMMD in CLIP's): each image is read and decoded once.

  Args:
    parts: a tuple of ``(key, network, resize)``: each network with the resize mode it runs in.

  Returns:
    A network (the same instance for the same ``parts``, so it is one static ``jit`` argument)
    whose features are ``"key/feature"``, whose parameters are ``{key: the part's parameters}``
    and whose one resize mode, ``"parts"``, applies each part's own. Folders of several image
    sizes are resized on the host for every part: each row is every part's ``host_resize``
    output, flattened and concatenated, as an image of ``(Σ H·W, 1)`` pixels (its
    ``input_size``), which ``forward`` cuts back into each part's image; this needs every part
    to have a host route.
  """
  try:
    parts = tuple((key, network, resize) for key, network, resize in parts)
  except (TypeError, ValueError):
    raise InputError(f"parts: expected (key, network, resize) triples, got {parts!r}") from None
  keys = [key for key, _, _ in parts]
  if not parts or len(set(keys)) != len(keys) or any(
      not isinstance(key, str) or "/" in key for key in keys):
    raise InputError(f"parts: expected (key, network, resize) triples with distinct string keys "
                     f"without '/', got keys {keys}")
  for key, network, _ in parts:
    if not isinstance(network, FeatureNetwork):
      raise InputError(f"parts[{key!r}]: expected a FeatureNetwork, got "
                       f"{type(network).__name__}")
  # Each part's resize as it will run (None: its default): equal parts give the same instance.
  return _combine(tuple((key, network, network.check_resize(resize))
                        for key, network, resize in parts))


@functools.lru_cache(maxsize=None)
def _combine(parts):
  sizes = [network.input_size for _, network, _ in parts]
  host = all(size is not None and network.host_resize is not None
             for size, (_, network, _) in zip(sizes, parts))
  pixels = sum(h * w for h, w in sizes) if host else None

  def forward(params, images, *, resize, precision, shards=1, mask=None, host_resized=False):
    del resize
    out, offset = {}, 0
    for (key, network, mode), size in zip(parts, sizes):
      part = images
      if host_resized:
        part = images[:, offset:offset + size[0] * size[1]].reshape(-1, *size, images.shape[-1])
        offset += size[0] * size[1]
      features = network.forward(params[key], part, resize=mode, precision=precision,
                                 shards=shards, mask=mask, host_resized=host_resized)
      out.update({f"{key}/{name}": value for name, value in features.items()})
    return out

  def host_resize(image, resize):
    del resize
    return np.concatenate([network.host_resize(image, mode).reshape(-1, 1, image.shape[-1])
                           for _, network, mode in parts])

  return FeatureNetwork(
      name="+".join(f"{key}:{network.name}:{resize}" for key, network, resize in parts),
      weights="", features={f"{key}/{name}": dim for key, network, _ in parts
                            for name, dim in network.features.items()},
      resize_modes=("parts",), forward=forward, weights_file=_no_weights,
      load_weights_file=_no_weights, input_size=(pixels, 1) if host else None,
      host_resize=host_resize if host else None)
