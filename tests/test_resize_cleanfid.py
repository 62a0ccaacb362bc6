"""``resize="clean"`` against clean-fid's own resize (``cleanfid/resize.py``, ``make_resizer``).

clean-fid's "clean" mode (``build_resizer("clean")`` = ``make_resizer("PIL", False, "bicubic",
(299, 299))``) converts each channel to a float32 PIL image (mode ``F``), resizes it with
``Image.resize(output_size, BICUBIC)`` and clips to [0, 255]. Pillow's float path
(``ImagingResampleHorizontal_32bpc`` / ``Vertical_32bpc`` in ``Resample.c``) sums each window in
double with double coefficients and stores each pass as float32. We use the same coefficients
(``pil_bicubic_weights``, Pillow's ``precompute_coeffs``) rounded to float32, summed in float32.

Bound (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1, ``u = 2⁻²⁴``): one pass of
ours, K taps with float32-rounded weights, is within ``γ_{K+1} · Σ|w|·|x|`` of the exact sum;
Pillow's pass within ``γ_1`` (one rounding to float32). Over two passes (row sums of |w| at most
L₁, L₂, the second carrying the first's error) ours is within ``γ_{K₁+K₂+2} · L₁L₂ · 255`` of the
exact resize and Pillow's within ``γ_2 · L₁L₂ · 255``; clipping does not widen a difference.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmetrics.networks import resize
from tests import _inception_fixtures as fixtures
from tests.test_resize_host import gamma

# Enlarging (16x20 → 299), shrinking by little (300x299) and by much (512, 700x380), both at once
# (37x500), the identity, and non-square outputs (the (W, H) order of PIL's and clean-fid's sizes).
CASES = [((16, 20), (299, 299)), ((40, 48), (299, 299)), ((300, 299), (299, 299)),
         ((512, 512), (299, 299)), ((700, 380), (299, 299)), ((37, 500), (299, 299)),
         ((299, 299), (299, 299)), ((64, 48), (33, 21)), ((21, 33), (80, 50))]


@pytest.fixture(scope="module")
def clean_fid_resize():
  from tests._peers import clean_fid_module
  try:
    return clean_fid_module("resize")
  except ImportError as e:
    pytest.skip(str(e))


def _bound(in_shape, out_shape):
  taps, sums = [], []
  for i, o in zip(in_shape, out_shape):
    matrix = resize.pil_bicubic_matrix(i, o)
    taps.append(int(np.max(np.count_nonzero(matrix, axis=1))))
    sums.append(float(np.max(np.sum(np.abs(matrix), axis=1, dtype=np.float64))))
  return (gamma(sum(taps) + 2) + gamma(2)) * sums[0] * sums[1] * 255.0


@pytest.mark.parametrize("in_shape, out_shape", CASES)
def test_clean_resize_matches_clean_fid(clean_fid_resize, in_shape, out_shape):
  image = fixtures.test_images(sum(in_shape), 1, *in_shape)[0]
  out_h, out_w = out_shape
  theirs = clean_fid_resize.make_resizer("PIL", False, "bicubic", (out_w, out_h))(image)
  assert theirs.shape == (out_h, out_w, 3) and theirs.dtype == np.float32
  theirs = theirs.astype(np.float64)
  device = np.asarray(resize.resize(jnp.asarray(image[None], jnp.float32), out_shape, "clean"))[0]
  host = resize.host_resize(image, out_shape, "clean")
  bound = _bound(in_shape, out_shape)
  for name, ours in (("device", device), ("host", host)):
    error = float(np.max(np.abs(ours - theirs)))
    assert error <= bound, (name, in_shape, out_shape, error, bound)
  if in_shape == out_shape:
    np.testing.assert_array_equal(device, image)  # the identity (tests/test_resize_host.py)


def test_clean_fid_builds_the_clean_resizer_this_compares_against(clean_fid_resize):
  """``build_resizer("clean")`` is the PIL float bicubic resizer to 299x299 (what its FID uses)."""
  image = fixtures.test_images(3, 1, 45, 61)[0]
  built = clean_fid_resize.build_resizer("clean")(image)
  made = clean_fid_resize.make_resizer("PIL", False, "bicubic", (299, 299))(image)
  np.testing.assert_array_equal(built, made)
