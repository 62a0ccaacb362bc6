"""The float64 route of the metrics: concrete float64 inputs are computed in float64, x64 or not.

pytorch-fid, torch-fidelity and torchmetrics compute FID and KID from float64 statistics or
features in float64. With ``jax_enable_x64`` off (JAX's default) JAX would round such inputs to
float32 and compute in float32: FID, a cancellation of traces larger than itself, then carries
float32 round-off of the traces, and KID, a difference of kernel means far larger than itself,
more. So :func:`~jaxmetrics.frechet_distance`, :class:`~jaxmetrics.FrechetReference` and
:func:`~jaxmetrics.kid` run their usual jitted kernels under ``jax.enable_x64(True)`` when an input
is a concrete float64 array (NumPy, or a ``jax.Array`` created with x64 on), and hand the result
back as NumPy float64: a float64 ``jax.Array`` outside an x64 scope silently computes in float32
in any further ``jnp`` operation and fails strict dtype promotion against float32 arrays.

While a jaxpr is being traced (``jit``, ``eval_shape``, a ``scan`` body) the route is never taken,
even for NumPy constants: a result there is a tracer, not a number, and flipping
``jax_enable_x64`` in the middle of a trace leaves a jitted function's cache holding a float64
executable that later float32 calls hit (seen with jax 0.10: "expected parameter 0 of size 16
(f32[4]) but got ... f64[4]").
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np


def takes_route(*arrays) -> bool:
  """Whether arrays (NumPy or ``jax.Array``) take the float64 route: none traced, one float64."""
  if any(isinstance(a, jax.core.Tracer) for a in arrays):
    return False
  return any(np.dtype(a.dtype) == np.float64 for a in arrays) and not _tracing()


def _tracing():
  # Inside a jaxpr trace every operation, even on constants, gives a tracer; JAX has no public
  # "is a trace being built" query.
  return isinstance(jnp.zeros((), jnp.float32), jax.core.Tracer)


def device():
  """Where float64 work runs: the default device if a CPU or GPU, else the host CPU.

  The default device is ``jax.default_device``'s when one is set, else the first local device.
  TPUs emulate float64 in software (several float32 operations per one), so there the host CPU is
  used; without a CPU backend (``JAX_PLATFORMS`` without ``cpu``) the default device stays.
  """
  default = jax.config.jax_default_device
  if default is None:
    default = jax.local_devices()[0]
  elif isinstance(default, str):
    default = jax.local_devices(backend=default)[0]
  if default.platform in ("cpu", "gpu"):
    return default
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return default


@contextlib.contextmanager
def scope():
  """x64 on and the float64 :func:`device` as default device; yields that device."""
  target = device()
  with jax.enable_x64(True), jax.default_device(target):
    yield target
