"""Kernel Inception Distance against torch-fidelity's own ``metric_kid``."""

import re
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxmetrics.metrics import kid as kid_lib
from jaxmetrics._errors import InputError
from jaxmetrics.metrics.kid import kid
from tests._peers import torch_fidelity_metric_module

# float32: MMD² is a difference of kernel means of size ~(γ|x|² + coef0)^degree ≈ 8 here, each
# exact to ~eps·8 ≈ 1e-6, so both float32 implementations (ours and the peer's float32 NumPy) are
# ~1e-7 from the float64 value (measured 1e-8..2e-7) and we allow 1e-6 absolute.
F32_ATOL = 1e-6
# float64 (peer fed float64 tensors): agreement is at rounding level, measured ≲ 2e-14 relative.
F64_RTOL = 1e-11
SMALL = dict(subsets=20, subset_size=100)
_PEER_KWARGS = {"subsets": "kid_subsets", "subset_size": "kid_subset_size", "degree":
                "kid_kernel_poly_degree", "gamma": "kid_kernel_poly_gamma", "coef0":
                "kid_kernel_poly_coef0", "seed": "rng_seed"}


def _features(n1=300, n2=250, d=64, shift=0.1, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n1, d)).astype(np.float32)
  y = (rng.normal(size=(n2, d)) * 1.1 + shift).astype(np.float32)
  return x, y


def _torch_fidelity(x, y, **kwargs):
  metric_kid = torch_fidelity_metric_module("metric_kid")
  peer_kwargs = {_PEER_KWARGS[k]: v for k, v in kwargs.items()}
  out = metric_kid.kid_featuresdict_to_metric(
      {"f": torch.from_numpy(x)}, {"f": torch.from_numpy(y)}, "f", verbose=False, **peer_kwargs)
  return out["kernel_inception_distance_mean"], out["kernel_inception_distance_std"]


@pytest.fixture(params=["gram", "subsets"])
def method(request, monkeypatch):
  """Runs a test through each evaluation route, whichever the size heuristic would pick."""
  monkeypatch.setattr(kid_lib, "_choose_method", lambda *args: request.param)
  return request.param


# degree is a compile-time constant; gamma, coef0 and seed share one compilation.
VARIANTS = [{}, {"degree": 2}, {"gamma": 0.05, "coef0": 0.5, "seed": 7}]


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_torch_fidelity_float32(method, variant):
  x, y = _features()
  kwargs = {**SMALL, **variant}
  mean, std = kid(x, y, **kwargs)
  assert mean.dtype == jnp.float32
  np.testing.assert_allclose([float(mean), float(std)], _torch_fidelity(x, y, **kwargs),
                             rtol=0, atol=F32_ATOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_torch_fidelity_float64(method, variant):
  """Float64 in, float64 out: float64 features give float64 KID with x64 off (the suite's
  setting) as with it on, like the peer fed float64 tensors."""
  x, y = (f.astype(np.float64) for f in _features(seed=1))
  kwargs = {**SMALL, **variant}
  peer = _torch_fidelity(x, y, **kwargs)
  with jax.enable_x64(True):
    mean, std = kid(x, y, **kwargs)
    assert mean.dtype == jnp.float64
  np.testing.assert_allclose([float(mean), float(std)], peer, rtol=F64_RTOL)
  mean, std = kid(x, y, **kwargs)
  assert isinstance(mean, np.float64) and isinstance(std, np.float64)
  np.testing.assert_allclose([mean, std], peer, rtol=F64_RTOL)


def test_default_route_choice():
  assert kid_lib._choose_method(50_000, 50_000, 2048, 100, 1000) == "subsets"
  assert kid_lib._choose_method(1000, 1000, 2048, 100, 1000) == "gram"
  assert kid_lib._choose_method(300, 250, 64, 20, 100) == "gram"


def test_same_distribution_is_unbiased():
  # 40 independent pairs of samples of one distribution: their MMD² must average to 0 within 3
  # standard errors (fixed seed, so deterministic). Keeping the diagonals (the biased estimator)
  # would add (tr K_XX + tr K_YY)/m² − off-diagonal means/m ≈ 0.33 here, ~27 standard errors.
  rng = np.random.default_rng(11)
  m, d = 50, 8
  mmds, bias = [], []
  for _ in range(40):
    x, y = (rng.normal(size=(m, d)).astype(np.float32) for _ in range(2))
    mmds.append(float(kid(x, y, subsets=1, subset_size=m)[0]))
    k_xx, k_yy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3
    diag = np.trace(k_xx) + np.trace(k_yy)
    bias.append(diag / m**2 - (k_xx.sum() + k_yy.sum() - diag) / (m * m * (m - 1)))
  standard_error = np.std(mmds) / np.sqrt(len(mmds))
  assert abs(np.mean(mmds)) < 3 * standard_error
  assert np.mean(bias) > 10 * standard_error
  shifted = rng.normal(size=(m, d)).astype(np.float32) + 0.5
  assert float(kid(x, shifted, subsets=1, subset_size=m)[0]) > 10 * standard_error


def test_whole_sets_give_identical_subsets(method):
  # subset_size = N: every draw is a permutation of the same rows, so every MMD² is the same.
  x, y = _features(n1=120, n2=120)
  mean, std = kid(x, y, subsets=5, subset_size=120)
  ref_mean, _ = _torch_fidelity(x, y, subsets=5, subset_size=120)
  np.testing.assert_allclose(float(mean), ref_mean, atol=F32_ATOL)
  assert float(std) < F32_ATOL


def test_does_not_recompile():
  x, y = _features()
  kid(x, y, **SMALL)
  size = kid_lib._kid._cache_size()
  kid(x * 2, y, **SMALL, seed=3, gamma=0.1, coef0=0.5)
  assert kid_lib._kid._cache_size() == size
  # The float64 route (under jax.enable_x64) compiles its own executable once, too.
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  kid(x64, y64, **SMALL)
  size = kid_lib._kid._cache_size()
  kid(x64 * 2, y64, **SMALL, seed=3, gamma=0.1, coef0=0.5)
  assert kid_lib._kid._cache_size() == size


def test_too_few_samples():
  x, y = _features(n1=300, n2=80)
  with pytest.raises(InputError, match="^subset_size: expected at most the number of rows of each "
                     "side \\(features1: 300, features2: 80\\), got 100; pass a smaller "
                     "subset_size$"):
    kid(x, y, **SMALL)


@pytest.mark.parametrize("kwargs, message", [
    ({"subsets": 0}, "^subsets: expected an integer >= 1, got 0$"),
    ({"subset_size": 1}, "^subset_size: expected an integer >= 2, got 1$"),
    ({"degree": 0}, "^degree: expected an integer >= 1, got 0$"),
    ({"degree": 2.5}, "^degree: expected an integer >= 1, got 2.5$"),
    ({"gamma": 0.0}, "^gamma: expected a finite number > 0 or None \\(1/d\\), got 0.0$"),
    ({"coef0": float("nan")}, "^coef0: expected a finite number >= 0, got nan$"),
    # finite in Python, inf in float32: it would make every kernel value inf
    ({"gamma": 1e39}, "^gamma: expected at most 3.4e\\+38 \\(the largest float32\\), got 1e\\+39$"),
])
def test_bad_options(kwargs, message):
  x, y = _features()
  with pytest.raises(InputError, match=message):
    kid(x, y, **{**SMALL, **kwargs})


def test_bad_features():
  x, y = _features()
  with pytest.raises(InputError, match="^features2: expected 64 features per row like features1, "
                     "got shape \\(250, 32\\)$"):
    kid(x, y[:, :32], **SMALL)
  with pytest.raises(InputError,
                     match="^features1: expected shape \\(N, d\\), got \\(300, 8, 8\\)$"):
    kid(x.reshape(300, 8, 8), y, **SMALL)
  with pytest.raises(InputError, match="^features2: expected a floating array, got int32$"):
    kid(x, y.astype(np.int32), **SMALL)
  y[3, 1], y[9, 0] = np.nan, np.inf
  with pytest.raises(InputError,
                     match="^features2: expected finite values, got NaN or inf in 2 row\\(s\\)$"):
    kid(x, y, **SMALL)


def _textbook_mmd2(x, y, d):
  """Unbiased MMD², cubic kernel (x·y/d + 1)³, whole sets, float64 NumPy: the formula as written."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n, m = len(x), len(y)
  kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
  return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
          - 2 * kxy.sum() / (n * m))


def test_float64_kid_where_float32_cancels():
  """Float64 features with x64 off: float64 KID, accurate where float32 sums cancel badly.

  Features offset by 20 (random-weight Inception pool3 has an RMS of ~20) make the kernel values
  ~(400 + 1)³ = 6e7 and MMD² thousands of times smaller. float32 sums then lose ~1e-3 of MMD²
  (measured 4.3e-3 here on the CPU; 1.8e-3 on an H100 at 2560 rows), which the first assertion
  checks so that the others have teeth. float64: the textbook value to 1e-9 (4e-12 measured),
  whichever input is float64 (the other is widened) and whether NumPy or a float64 jax.Array.
  """
  rng = np.random.default_rng(3)
  n, d = 600, 64
  x = (rng.normal(size=(n, d)) * 3 + 20).astype(np.float32)
  y = (rng.normal(size=(n, d)) * 3.05 + 20.02).astype(np.float32)
  reference = _textbook_mmd2(x, y, d)
  float32 = kid(x, y, subsets=1, subset_size=n)[0]
  assert isinstance(float32, jax.Array) and float32.dtype == jnp.float32
  assert abs(float(float32) - reference) > 1e-5 * abs(reference)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  with jax.enable_x64(True):
    jax_x64 = jnp.asarray(x64)  # used below with x64 off
  for inputs in ((x64, y64), (x, y64), (jax_x64, y)):
    mean, std = kid(*inputs, subsets=1, subset_size=n)
    assert isinstance(mean, np.float64) and isinstance(std, np.float64)
    assert mean == pytest.approx(reference, rel=1e-9)
    assert std == 0.0


def test_large_mmd2_matches_the_peer(method):
  """Features of RMS 1e4 give MMD² of ~6e20 in float32: the standard deviation squared them to inf
  before (kid._std scales first). torch-fidelity fed the same features as float64 is the
  reference; the kernels (~1e24) dwarf nothing here, as MMD² is a tenth of them, so float32 keeps
  ~sqrt(m)·eps ≈ 1e-6 of it (measured ≤ 8e-7): 1e-5 relative."""
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(300, 64)) * 1e4).astype(np.float32)
  y = (rng.normal(size=(250, 64)) * 1.1e4 + 1e3).astype(np.float32)
  mean, std = kid(x, y, **SMALL)
  peer = _torch_fidelity(x.astype(np.float64), y.astype(np.float64), **SMALL)
  np.testing.assert_allclose([float(mean), float(std)], peer, rtol=1e-5)


def test_std_is_exact_where_the_squares_overflow():
  values = np.array([3e30, -1e30, 2.5e30, 0.0], np.float32)
  assert not np.isfinite(float(jnp.std(values)))
  # float32 inputs, float64 textbook: one float32 rounding of a value of ~1e30 (6e-8) and the
  # reduction's few more: 1e-6.
  assert float(kid_lib._std(jnp.asarray(values))) == pytest.approx(
      np.std(values.astype(np.float64)), rel=1e-6)
  assert float(kid_lib._std(jnp.zeros(3, jnp.float32))) == 0.0
  # Up to the largest float32 (2^127 <= 2e38: a scale of 2^128 would be inf).
  top = np.array([2e38, -1e38, 0.0], np.float32)
  assert float(kid_lib._std(jnp.asarray(top))) == pytest.approx(
      np.std(top.astype(np.float64)), rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_sums_that_would_overflow_are_refused(method, dtype):
  """A row whose squared norm passes kid._check_kernel_bound's bound makes the unchecked
  computation non-finite (so the check is needed), and is refused in one line; rows scaled to 0.9
  of the bound everywhere (every kernel value near the limit) still give a finite KID."""
  x, y = (f.astype(dtype) for f in _features())
  d, (subsets, m) = x.shape[1], (SMALL["subsets"], SMALL["subset_size"])
  limit = float(np.finfo(dtype).max) / (16 * max(m * m, subsets))
  bound = (limit ** (1 / 3) - 1) * d  # squared norm at K = limit, with gamma = 1/d, coef0 = 1
  with jax.enable_x64(dtype == np.float64):
    huge = y.copy()
    huge[7] *= 10 * np.sqrt(bound / np.sum(y[7].astype(np.float64) ** 2))
    draws = kid_lib._draw_subsets(len(x), len(y), subsets, m, seed=2020)
    unchecked = kid_lib._kid(jnp.asarray(x), jnp.asarray(huge), *draws, jnp.asarray(1 / d, dtype),
                             jnp.asarray(1, dtype), degree=3, method=method)
    assert not np.all(np.isfinite(jax.device_get(unchecked)))
    advice = "; pass float64 features" if dtype == np.float32 else ""
    message = (f"features2: expected squared norms of at most {bound:.3g} (the {np.dtype(dtype)} "
               f"kernel sums of (gamma·x·y + coef0)^3 with gamma = {1 / d:.3g}, coef0 = 1 would "
               f"overflow), got {100 * bound:.3g}{advice}")
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
      kid(x, huge, **SMALL)
    near = y * (0.9 * np.sqrt(bound / np.max(np.sum(y.astype(np.float64) ** 2, axis=1))))
    mean, std = kid(x, near.astype(dtype), **SMALL)
    assert np.isfinite(float(mean)) and np.isfinite(float(std))
