"""The host resize (NumPy, one image) against the device resize, in every mode.

Both routes apply the same float32 tables with the same formulas and pass order; they differ only
in the order float32 products are summed. The bounds below follow from that (Higham, *Accuracy and
Stability of Numerical Algorithms*, §3.1: a K-term float32 inner product in any order, fused or
not, is within ``γ_K · Σ|w_i x_i|`` of the exact one, ``γ_K = K·u / (1 − K·u)``, ``u = 2⁻²⁴``).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmetrics.networks import resize
from tests import _inception_fixtures as fixtures

U = 2.0**-24  # float32 unit round-off
SIZES = [(16, 20), (40, 48), (400, 350), (37, 500), (299, 299), (300, 299), (7, 1)]


def gamma(k):
  return k * U / (1 - k * U)


def _table(mode, in_size, out_size):
  matrix = (resize.pil_bicubic_matrix if mode == "clean" else
            resize.antialias_bilinear_matrix)(in_size, out_size)
  taps = int(np.max(np.count_nonzero(matrix, axis=1)))
  return taps, float(np.max(np.sum(np.abs(matrix), axis=1, dtype=np.float64)))


def route_bound(mode, in_shape, out_shape, scale=255.0):
  """Largest |host − device| on values in [0, scale] allowed by float32 round-off.

  Bilinear modes: each of the two interpolation stages is three float32 operations (a subtraction,
  a product, a sum; XLA may fuse the last two) on values ≤ ``scale``, and the second stage is a
  convex combination that carries the first stage's error unchanged: each route is within
  ``2 · 3 · u · scale`` of the exact value, so they are within twice that of each other.

  Separable modes: pass 1 (K₁ nonzero taps, rows of |w| summing to at most L₁) is within
  ``γ_K₁ · L₁ · scale`` of exact; pass 2 multiplies that by at most L₂ and adds its own
  ``γ_K₂ · L₂ · (L₁ · scale)``, together at most ``γ_{K₁+K₂} · L₁ · L₂ · scale``; twice that
  between the two routes (clipping to [0, 255] does not widen a difference).
  """
  if mode in ("tf1", "pytorch"):
    return 2 * 2 * 3 * U * scale
  (k1, l1), (k2, l2) = (_table(mode, i, o) for i, o in zip(in_shape, out_shape))
  return 2 * gamma(k1 + k2) * l1 * l2 * scale


def _device(image, size, mode):
  return np.asarray(resize.resize(jnp.asarray(image[None], jnp.float32), size, mode))[0]


@pytest.mark.parametrize("mode", resize.RESIZE_MODES)
def test_host_resize_equals_the_device_resize_to_float32_round_off(mode):
  for seed, (height, width) in enumerate(SIZES):
    image = fixtures.test_images(seed, 1, height, width)[0]
    for size in ((299, 299), (33, 21)):
      host = resize.host_resize(image, size, mode)
      device = _device(image, size, mode)
      assert host.dtype == np.float32 and host.shape == (*size, 3)
      bound = route_bound(mode, (height, width), size)
      error = float(np.max(np.abs(host.astype(np.float64) - device)))
      assert error <= bound, (mode, (height, width), size, error, bound)


@pytest.mark.parametrize("mode", resize.RESIZE_MODES)
def test_resizing_to_the_same_size_is_the_identity_on_both_routes(mode):
  """Every table at in = out is the identity (λ = 0, or one weight 1 and the rest 0), and
  ``x + 0·y``, ``1·x + 0·y`` are exact in IEEE float32 for finite values in any order: what lets
  host-resized rows go through the device's resize unchanged."""
  x = np.random.default_rng(0).uniform(0, 255, (2, 23, 17, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(resize.resize(jnp.asarray(x), (23, 17), mode)), x)
  np.testing.assert_array_equal(resize.host_resize(x[0], (23, 17), mode), x[0])
  if mode in ("clean", "torchmetrics"):
    np.testing.assert_array_equal(_table_matrix(mode, 23), np.eye(23, dtype=np.float32))


def _table_matrix(mode, n):
  return (resize.pil_bicubic_matrix if mode == "clean" else resize.antialias_bilinear_matrix)(n, n)


def test_host_resize_rejects_an_unknown_mode():
  with pytest.raises(resize.InputError, match="resize: expected one of tf1, pytorch, clean"):
    resize.host_resize(np.zeros((4, 4, 3), np.uint8), (2, 2), "bicubic")
