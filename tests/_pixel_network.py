"""A feature network whose feature is the image itself, for tests of the data path.

Extraction of its ``pixels`` feature with ``keep_features`` returns every image that reached the
devices, flattened, in source order: a source test compares them with the images it stored,
exactly, without the cost of an Inception pass (a few images/s on 2 cores).
"""

import jax.numpy as jnp

from jaxmetrics.networks.base import FeatureNetwork


def _no_weights(*args, **kwargs):
  raise AssertionError("the pixel network has no weights")


def network(height, width):
  """A :class:`FeatureNetwork` with one feature, ``pixels``: ``(N, H·W·3)`` float32, 0..255."""

  def forward(params, images, *, resize, precision, shards, mask, host_resized):
    del params, resize, precision, shards, mask, host_resized
    return {"pixels": jnp.reshape(images, (images.shape[0], -1)).astype(jnp.float32)}

  return FeatureNetwork(name=f"pixels-{height}x{width}", weights="", features={
      "pixels": height * width * 3}, resize_modes=("none",), forward=forward,
      weights_file=_no_weights, load_weights_file=_no_weights)


def pixels(images):
  """What the network returns for uint8 ``images``: the flattened float32 rows."""
  return images.reshape(len(images), -1).astype("float32")
