"""Validation and fixed-shape batching of the inputs to the jitted models (Inception, CLIP)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics._errors import InputError

PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "high": jax.lax.Precision.HIGH,
    "default": jax.lax.Precision.DEFAULT,
}


def check_precision(precision):
  """Returns the ``jax.lax.Precision`` named ``precision``; one-line ``InputError`` otherwise."""
  if precision not in PRECISIONS:
    raise InputError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
  return PRECISIONS[precision]


def check_batch_size(batch_size):
  if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                 or batch_size < 1):
    raise InputError(f"batch_size: expected a positive integer or None, got {batch_size!r}")


def check_images(images, name="images"):
  """Validates a batch of images on the host; returns its ``(shape, dtype)``.

  Accepts ``(N, H, W, 3)`` uint8 (0..255) or float ([0, 1]) NumPy/JAX arrays with N ≥ 1. Float
  NumPy inputs are also checked for finite values in [0, 1]; JAX arrays are not, since that would
  wait for the device.
  """
  shape = getattr(images, "shape", None)
  dtype = getattr(images, "dtype", None)
  if shape is None or dtype is None:
    raise InputError(f"{name}: expected a NumPy or JAX array of shape (N, H, W, 3), "
                     f"got {type(images).__name__}")
  dtype = np.dtype(dtype)
  shape = tuple(shape)
  expected = "expected uint8 or float images of shape (N, H, W, 3)"
  if len(shape) != 4:
    raise InputError(f"{name}: {expected}, got {dtype} {shape}: rank {len(shape)}")
  if shape[-1] != 3:
    hint = ": channels-last is required" if shape[1] == 3 else ""
    raise InputError(f"{name}: {expected}, got {dtype} {shape}{hint}")
  if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating) or dtype == jnp.bfloat16):
    raise InputError(f"{name}: {expected}, got {dtype} {shape}: not an image dtype")
  if shape[0] == 0 or shape[1] == 0 or shape[2] == 0:
    raise InputError(f"{name}: {expected}, got an empty batch {shape}")
  if isinstance(images, np.ndarray) and dtype != np.uint8:
    if not np.isfinite(images).all():
      raise InputError(f"{name}: float images must be finite, got NaN or inf values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
      raise InputError(f"{name}: float images must lie in [0, 1], got values in "
                       f"[{low:.4g}, {high:.4g}]: pass uint8 for 0..255 data")
  return shape, dtype


def batched(forward, params, inputs, batch_size):
  """``forward(params, chunk)`` over chunks of ``batch_size`` rows, the last one padded, so any N
  compiles once.

  ``forward`` maps ``params`` and a ``(batch_size, ...)`` array to a pytree of arrays with a leading
  batch axis; the padded rows are dropped from every leaf and the chunks concatenated.
  ``batch_size=None`` (or ≥ N) runs one chunk of N. ``params`` are placed on the default device
  once, before the first chunk: host (NumPy) parameters handed to every call of a jitted function
  would be copied to the device each time (~95 MB per chunk for Inception).
  """
  params = jax.device_put(params)
  n = inputs.shape[0]
  if batch_size is None or batch_size >= n:
    return forward(params, inputs)
  # Pad with the input's own array library: a NumPy tail padded into a JAX array would be a
  # different argument type and compile a second time.
  xp = np if isinstance(inputs, np.ndarray) else jnp
  chunks = []
  for start in range(0, n, batch_size):
    chunk = inputs[start:start + batch_size]
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = xp.concatenate([chunk, xp.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    chunks.append(jax.tree.map(lambda v, keep=batch_size - pad: v[:keep], forward(params, chunk)))
  return jax.tree.map(lambda *parts: jnp.concatenate(parts), *chunks)
