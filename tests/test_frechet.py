"""Tests of the Fréchet distance kernel against float64 SciPy references and the peers' routes.

Tolerances: FID is the cancellation ‖Δμ‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂) of terms larger than the
result, so its round-off is bounded relative to their size, ``scale = tr Σ₁ + tr Σ₂ + ‖Δμ‖²``, not
relative to FID. Over 20 seeds of these data (d = 128) the float32 kernel stayed within 3.9 ε·scale
(ε = 1.19e-7) of the float64 reference, rank-deficient, identical and 1e±3-scaled cases included;
the tests allow F32_TOL = 32 ε·scale: room for other LAPACK/BLAS builds without hiding a real loss,
which shows up as 1e-4·scale and more (the eigvalsh-of-the-sandwich route: 3e-4·scale at d = 2048
with N < d, 7e-4·scale on identical statistics; benchmarks/results/frechet_kernel.md).

Routes: concrete float64 inputs (the NumPy statistics built here) are computed in float64 whatever
the x64 flag, which the suite leaves off; the float32 tests therefore pass float32 arrays
(``_f32``), as a jitted training loop would.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from tests._peers import torch_fidelity_metric_module
from tests._reference import reference_fid as _reference_fid
from jaxmetrics._errors import InputError
from jaxmetrics.metrics.frechet import FrechetReference
from jaxmetrics.metrics.frechet import frechet_distance
from jaxmetrics.metrics.frechet import frechet_distance_from_features

D = 128
F32_TOL = 32 * np.finfo(np.float32).eps
# float64 kernel vs float64 reference: both are a few ε64·scale from the truth (measured ≤ 1e-15);
# 1e-12 is far below anything a float32 step in the float64 path would produce (1e-7).
F64_TOL = 1e-12


def _features(seed, n, d=D, scale=1.0, tilt=0.0):
  """Inception-like features: ReLU of a rotated Gaussian with a 1/k^(1+tilt) spectrum, mean ~0.5."""
  rng = np.random.default_rng(seed)
  rotation, _ = np.linalg.qr(np.random.default_rng(1000 + int(tilt * 100)).standard_normal((d, d)))
  z = rng.standard_normal((n, d)) * np.arange(1, d + 1) ** (-(1.0 + tilt) / 2)
  return scale * np.maximum(z @ rotation.T + 0.5 + tilt, 0)


def _stats(x):
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _f32(*arrays):
  """NumPy float32 copies: inputs that take the float32 route with x64 off."""
  return [np.asarray(a, np.float32) for a in arrays]


def _exact_features_fid(x, y):
  """Float64 FID from features: nuclear norm of X Yᵀ by scipy's SVD, exact when N < d."""
  xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
  n1, n2 = len(x), len(y)
  nuclear = scipy.linalg.svdvals(xc @ yc.T).sum() / np.sqrt((n1 - 1) * (n2 - 1))
  diff = x.mean(axis=0) - y.mean(axis=0)
  return diff @ diff + (xc**2).sum() / (n1 - 1) + (yc**2).sum() / (n2 - 1) - 2 * nuclear


def _scale(mu1, sigma1, mu2, sigma2):
  return np.trace(sigma1) + np.trace(sigma2) + np.sum((mu1 - mu2) ** 2)


def _torch_fidelity_fid():
  """torch-fidelity's own ``fid_statistics_to_metric``, imported and run unmodified."""
  metric_fid = torch_fidelity_metric_module("metric_fid")
  return lambda mu1, s1, mu2, s2: metric_fid.fid_statistics_to_metric(
      {"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)[metric_fid.KEY_METRIC_FID]


CASES = {
    # name: (samples of x, samples of y, feature scale)
    "well_conditioned": (2000, 3000, 1.0),
    "rank_deficient_both": (60, 90, 1.0),
    "rank_deficient_one": (60, 3000, 1.0),
    # fewer than d/4 samples: factors with only their last d/4 columns nonzero, the small products
    "few_samples_both": (20, 30, 1.0),
    "few_samples_one": (20, 3000, 1.0),
    "large_scale": (2000, 3000, 1e3),
    "small_scale": (2000, 3000, 1e-3),
}


@pytest.mark.parametrize("case", CASES)
def test_float32_matches_float64_reference(case):
  n1, n2, scale = CASES[case]
  x, y = _features(1, n1, scale=scale), _features(2, n2, scale=scale, tilt=0.1)
  stats = (*_stats(x), *_stats(y))
  reference = _reference_fid(*stats)
  fid = frechet_distance(*_f32(*stats))  # NumPy float32 with x64 off: computed in float32
  assert isinstance(fid, jax.Array) and fid.dtype == jnp.float32 and fid.shape == ()
  assert abs(float(fid) - reference) <= F32_TOL * _scale(*stats)
  jax_f32 = frechet_distance(*[jnp.asarray(a, jnp.float32) for a in stats])
  assert abs(float(jax_f32) - reference) <= F32_TOL * _scale(*stats)


@pytest.mark.parametrize("case", ["well_conditioned", "rank_deficient_one", "large_scale"])
def test_float64_with_x64(case):
  n1, n2, scale = CASES[case]
  x, y = _features(1, n1, scale=scale), _features(2, n2, scale=scale, tilt=0.1)
  stats = (*_stats(x), *_stats(y))
  # With N < d the textbook reference itself carries √(ε64·λ) per null direction (~1e-9 relative);
  # the nuclear norm of X Yᵀ has no such term, so it is the reference there.
  reference = _reference_fid(*stats) if min(n1, n2) > D else _exact_features_fid(x, y)
  with jax.enable_x64(True):
    fid = frechet_distance(*stats)
  assert isinstance(fid, np.float64)
  assert abs(float(fid) - reference) <= F64_TOL * _scale(*stats)


def _relu_low_rank(seed, n, d=D, rank=D // 8):
  """ReLU of a rank-16 Gaussian with a quarter of the channels dead (constant 0): a covariance
  singular with N > d and a steep live spectrum, like Inception features with dead channels."""
  weights = np.random.default_rng(77).standard_normal((rank, d)) / np.sqrt(rank)
  bias = np.where(np.arange(d) % 4 == 0, -10.0, 0.2)  # P(z·w > 10) = 0 to double precision
  return np.maximum(np.random.default_rng(seed).standard_normal((n, rank)) @ weights + bias, 0)


def _near_identical():
  x = _features(4, 2000)
  return x, x[:1990] * (1 + 1e-4)


# name: (features of x and y, reference). "exact" is the nuclear norm of X Yᵀ: the textbook eigh
# reference carries √(ε64·λ) per null direction of a singular covariance (measured 2e-9·scale on
# the ReLU case, far above F64_TOL); "textbook" is used where both covariances are full rank.
HARD_CASES = {
    "identical": (lambda: (_features(3, 2000),) * 2, "zero"),
    "near_identical": (_near_identical, "textbook"),
    "rank_deficient_both": (lambda: (_features(1, 60), _features(2, 90, tilt=0.1)), "exact"),
    "rank_deficient_one": (lambda: (_features(1, 60), _features(2, 3000, tilt=0.1)), "exact"),
    "few_samples_both": (lambda: (_features(1, 20), _features(2, 30, tilt=0.1)), "exact"),
    "few_samples_one": (lambda: (_features(1, 20), _features(2, 3000, tilt=0.1)), "exact"),
    "relu_low_rank": (lambda: (_relu_low_rank(1, 1000), _relu_low_rank(2, 1200)), "exact"),
    "large_scale": (lambda: (_features(1, 2000, scale=1e3), _features(2, 3000, scale=1e3,
                                                                     tilt=0.1)), "textbook"),
}


@pytest.mark.parametrize("case", HARD_CASES)
def test_float64_inputs_without_x64(case):
  """Float64 in, float64 out: NumPy float64 statistics with x64 off (this suite's setting) are
  computed in float64 to F64_TOL·scale of the float64 references, by frechet_distance and by a
  FrechetReference made from them. The same data as float32 cannot meet that bar: rounding the
  inputs to float32 alone is ε32 ≈ 1e-7 relative per entry (measured 1e-8..2e-7·scale), so the bar
  shows that the float64 route ran."""
  make, kind = HARD_CASES[case]
  x, y = make()
  stats = (*_stats(x), *_stats(y))
  scale = _scale(*stats)
  reference = {"zero": lambda: 0.0, "textbook": lambda: _reference_fid(*stats),
               "exact": lambda: _exact_features_fid(x, y)}[kind]()
  fid = frechet_distance(*stats)
  assert isinstance(fid, np.float64)
  assert abs(fid - reference) <= F64_TOL * scale
  ref = FrechetReference.create(*stats[:2])
  assert all(isinstance(a, np.ndarray) and a.dtype == np.float64 for a in jax.tree.leaves(ref))
  distance = ref.distance(*stats[2:])
  assert isinstance(distance, np.float64)
  assert abs(distance - reference) <= F64_TOL * scale
  fid32 = frechet_distance(*_f32(*stats))
  assert isinstance(fid32, jax.Array) and fid32.dtype == jnp.float32
  assert abs(float(fid32) - reference) > F64_TOL * scale


def test_float64_route_inputs():
  """Which inputs take the float64 route with x64 off: concrete ones of which one is float64."""
  x, y = _features(13, 500, d=16), _features(14, 600, d=16, tilt=0.1)
  stats = (*_stats(x), *_stats(y))
  scale = _scale(*stats)
  reference = _reference_fid(*stats)
  with jax.enable_x64(True):
    jax64 = [jnp.asarray(a) for a in stats]  # float64 jax.Arrays, used below with x64 off
  as_lists = [a.tolist() for a in stats]
  for inputs in (jax64, as_lists, [stats[0], *_f32(*stats[1:])]):
    fid = frechet_distance(*inputs)
    assert isinstance(fid, np.float64)
    # The mixed case computes from float32-rounded covariances, widened: its own reference.
    widened = [np.asarray(a, np.float64) for a in inputs]
    assert abs(fid - _reference_fid(*widened)) <= F64_TOL * scale
  assert abs(frechet_distance(*jax64) - reference) <= F64_TOL * scale
  # Integers are not float64: the float32 route, as before.
  ints = frechet_distance(np.zeros(4, np.int64), np.eye(4, dtype=np.int64), np.ones(4, np.int64),
                          np.eye(4, dtype=np.int64))
  assert isinstance(ints, jax.Array) and ints.dtype == jnp.float32
  assert abs(float(ints) - 4.0) <= F32_TOL * 12  # ‖Δμ‖² = 4, scale = 4 + 4 + 4


def test_traced_inputs_stay_float32():
  """Under jit the route is JAX's: float32 with x64 off, NumPy float64 constants included, and a
  float64 FrechetReference passed in as an argument serves a float32 training loop."""
  x, y = _features(13, 500, d=16), _features(14, 600, d=16, tilt=0.1)
  stats = (*_stats(x), *_stats(y))
  scale = _scale(*stats)
  reference = _reference_fid(*stats)
  traced = jax.jit(frechet_distance)(*stats)
  constants = jax.jit(lambda: frechet_distance(*stats))()  # no tracer among the inputs
  ref = FrechetReference.create(*stats[:2])
  in_loop = jax.jit(lambda ref, mu, sigma: ref.distance(mu, sigma))(ref, *stats[2:])
  closed_over = jax.jit(lambda mu, sigma: ref.distance(mu, sigma))(*stats[2:])
  for value in (traced, constants, in_loop, closed_over):
    assert isinstance(value, jax.Array) and value.dtype == jnp.float32
    assert abs(float(value) - reference) <= F32_TOL * scale
  # Tracing with float64 constants must not flip x64 (that corrupts jit caches): both routes
  # still work afterwards.
  assert isinstance(frechet_distance(*stats), np.float64)
  assert frechet_distance(*_f32(*stats)).dtype == jnp.float32
  # A float64 reference outside jit takes the float64 route whatever its arguments' dtype.
  mixed = ref.distance(*[jnp.asarray(a, jnp.float32) for a in stats[2:]])
  assert isinstance(mixed, np.float64)


def test_float64_route_compiles_once():
  """The float64 route compiles one executable per shape, like the float32 one."""
  from jaxmetrics.metrics import frechet as frechet_lib
  kernels = (frechet_lib._frechet_distance, frechet_lib._create_reference,
             frechet_lib._reference_distance, frechet_lib._features_distance)

  def run(seed):
    x, y = _features(seed, 300, d=24), _features(seed + 1, 400, d=24, tilt=0.1)
    stats = (*_stats(x), *_stats(y))
    assert isinstance(frechet_distance(*stats), np.float64)
    assert isinstance(FrechetReference.create(*stats[:2]).distance(*stats[2:]), np.float64)
    assert isinstance(frechet_distance_from_features(x, y), np.float64)

  run(20)
  sizes = [kernel._cache_size() for kernel in kernels]
  run(30)
  assert [kernel._cache_size() for kernel in kernels] == sizes


def test_identical_statistics_give_zero():
  for n in (2000, 60):  # full rank and rank-deficient
    mu, sigma = _stats(_features(3, n))
    # |FID| of identical inputs is pure round-off: ≤ F32_TOL·scale (scale = 2 tr Σ ≈ 20 here).
    mu32, sigma32 = _f32(mu, sigma)
    assert abs(float(frechet_distance(mu32, sigma32, mu32, sigma32))) <= (
        F32_TOL * 2 * np.trace(sigma))
    with jax.enable_x64(True):
      assert abs(float(frechet_distance(mu, sigma, mu, sigma))) <= F64_TOL * 2 * np.trace(sigma)


def test_near_identical_statistics():
  x = _features(4, 2000)
  mu1, sigma1 = _stats(x)
  mu2, sigma2 = _stats(x[:1990] * (1 + 1e-4))  # FID ~1e-2 of the traces: 100x cancellation
  stats = (mu1, sigma1, mu2, sigma2)
  reference = _reference_fid(*stats)
  assert 0 < reference < 0.02 * _scale(*stats)
  assert abs(float(frechet_distance(*_f32(*stats))) - reference) <= F32_TOL * _scale(*stats)


def _near_duplicate(independent_eps, seed=0):
  """Features whose column 5 repeats the widest column plus noise of `independent_eps` x ε32 of
  its variance: a covariance singular (0) or nearly singular to float32 precision, N ≫ d."""
  x = _features(1, 2000)
  widest = int(np.argmax(x.var(axis=0)))
  noise = np.random.default_rng(seed).standard_normal(len(x))
  x[:, 5] = x[:, widest] + np.sqrt(independent_eps * np.finfo(np.float32).eps) * x[:, widest].std(
  ) * noise
  return x


@pytest.mark.parametrize("independent_eps", [0, 1, 8, 100])
def test_near_duplicate_feature(independent_eps):
  """A duplicated feature (singular covariance, N ≫ d) and nearly duplicated ones."""
  x, y = _near_duplicate(independent_eps), _features(2, 3000, tilt=0.1)
  stats = (*_stats(x), *_stats(y))
  # Measured: 0.8, 11, 2.6 and 0.4 ε·scale; the eigh factor alone would give 0.8, 11, 31 and 0.4.
  error = abs(float(frechet_distance(*_f32(*stats))) - _exact_features_fid(x, y))
  assert error <= F32_TOL * _scale(*stats)


def test_covariance_factor_route():
  """Cholesky where the covariance is well defined to working precision, eigh where it is singular
  to it: the branch matters for speed (eigh costs 10x) and, near singularity, for accuracy.

  The decision is the kernel's pivot test, not LAPACK's: on an exactly duplicated feature one
  LAPACK build ends the Cholesky factorisation on a round-off pivot (Intel MKL-style blocking: a
  finite factor) and another fails with NaN (seen on an AVX2 AMD machine). Both must land on the
  eigh factor, recognisable as the dense one (a Cholesky factor is lower triangular).
  """
  from jaxmetrics.metrics.frechet import _covariance_factor

  def route(x):
    sigma = jnp.asarray(np.cov(x, rowvar=False), jnp.float32)
    factor = np.asarray(_covariance_factor(sigma))
    return factor, bool(np.all(np.triu(factor, 1) == 0)), np.asarray(sigma)

  factor, triangular, sigma = route(_features(1, 2000))
  assert triangular
  np.testing.assert_array_equal(
      factor, np.asarray(jnp.linalg.cholesky(jnp.asarray(sigma), symmetrize_input=False)))
  _, triangular, _ = route(_near_duplicate(100))
  assert triangular  # smallest relative pivot ~100 ε: resolved by Cholesky
  for x in (_near_duplicate(0), _features(1, 60)):  # a duplicated column; rank 59 < d
    factor, triangular, sigma = route(x)
    assert not triangular
    assert np.all(np.isfinite(factor))
    # eigh is backward stable (residual a small multiple of ε‖Σ‖₂) and the eigenvalues it drops
    # are below 4 ε λ_max each: 32 ε‖Σ‖₂ bounds F Fᵀ − Σ entrywise with room for any LAPACK.
    np.testing.assert_allclose(factor @ factor.T, sigma, rtol=0,
                               atol=F32_TOL * np.linalg.norm(sigma, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_products_of_compact_factors(dtype):
  """A covariance of fewer than d/4 samples has an eigh factor whose columns before its last d/4
  are exactly 0, and the distance then takes the singular values of the d/4-wide products (the
  cheap branch of frechet._nuclear_norm_of_product). Every branch gives the full product's sum of
  singular values, to the float32 bar or 1e-12 relative in float64."""
  from jaxmetrics.metrics import frechet
  few, many = _features(1, 20), _features(2, 3000, tilt=0.1)
  with jax.enable_x64(dtype == np.float64):
    factors = [frechet._covariance_factor(jnp.asarray(np.cov(x, rowvar=False), dtype))
               for x in (few, many)]
    # The eigh factor is compact and takes the small branch; the Cholesky factor does not.
    assert np.all(np.asarray(factors[0])[:, :-D // 4] == 0)
    assert [int(frechet._compact(f)[1]) for f in factors] == [1, 0]
    for a in factors:
      for b in factors:
        full = np.linalg.svd(np.asarray(a, np.float64).T @ np.asarray(b, np.float64),
                             compute_uv=False).sum()
        got = float(frechet._nuclear_norm_of_product(a, b))
        tolerance = F32_TOL if dtype == np.float32 else F64_TOL
        assert abs(got - full) <= tolerance * full


def test_matches_pytorch_fid_sqrtm_route():
  """pytorch-fid's route: trace of scipy.linalg.sqrtm(Σ₁Σ₂) in float64, on well-conditioned data."""
  x, y = _features(5, 2000, d=64), _features(6, 3000, d=64, tilt=0.1)
  mu1, sigma1 = _stats(x)
  mu2, sigma2 = _stats(y)
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  diff = mu1 - mu2
  peer = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real
  with jax.enable_x64(True):
    fid = float(frechet_distance(mu1, sigma1, mu2, sigma2))
  # sqrtm's Schur method loses ~κ·ε64 (κ(Σ₁Σ₂) ~ 1e3 here): 1e-10 of the scale is ample.
  assert abs(fid - peer) <= 1e-10 * _scale(mu1, sigma1, mu2, sigma2)
  assert abs(float(frechet_distance(*_f32(mu1, sigma1, mu2, sigma2))) - peer) <= (
      F32_TOL * _scale(mu1, sigma1, mu2, sigma2))


def test_matches_torch_fidelity():
  """torch-fidelity's own function (eigvals of Σ₁Σ₂, real part of the square roots), float64."""
  peer_fid = _torch_fidelity_fid()
  x, y = _features(7, 2000, d=64), _features(8, 3000, d=64, tilt=0.1)
  stats = (*_stats(x), *_stats(y))
  peer = peer_fid(*stats)
  with jax.enable_x64(True):
    fid = float(frechet_distance(*stats))
  # Non-symmetric eigvals of a κ ~ 1e3 product: ~κ·ε64 relative per eigenvalue, 1e-10 is ample.
  assert abs(fid - peer) <= 1e-10 * _scale(*stats)


@pytest.mark.parametrize("n1, n2", [(2000, 3000), (60, 90), (60, 3000)])
def test_features_route(n1, n2):
  x, y = _features(9, n1), _features(10, n2, tilt=0.1)
  # The SVD of the N₁ x N₂ matrix X Yᵀ is the exact reference for N < d, the textbook one (much
  # cheaper there) for N > d, where it has no null space to take square roots of.
  exact = _exact_features_fid(x, y) if min(n1, n2) < D else _reference_fid(*_stats(x), *_stats(y))
  scale = _scale(*_stats(x), *_stats(y))
  x32, y32 = _f32(x, y)
  if min(n1, n2) < D:
    with pytest.warns(UserWarning, match=r"fewer than d = 128.*biased.*exact small-sample route"):
      fid = frechet_distance_from_features(x32, y32)
  else:
    with warnings.catch_warnings():
      warnings.simplefilter("error", UserWarning)  # no warning with enough samples
      fid = frechet_distance_from_features(x32, y32)
    # On N > d data both routes factor the same covariances: they agree to float32 round-off.
    assert abs(float(fid) - float(frechet_distance(*_f32(*_stats(x), *_stats(y))))) <= (
        F32_TOL * scale)
  assert fid.dtype == jnp.float32
  assert abs(float(fid) - exact) <= F32_TOL * scale
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # the N < d warning is checked above
    fid64 = frechet_distance_from_features(x, y)  # float64 features, x64 off: the float64 route
    with jax.enable_x64(True):
      fid64_x64 = frechet_distance_from_features(x, y)
  assert isinstance(fid64, np.float64)
  for value in (fid64, fid64_x64):
    assert abs(float(value) - exact) <= F64_TOL * scale


def test_reference_matches_frechet_distance():
  x, y = _features(11, 500, d=32), _features(12, 700, d=32, tilt=0.1)
  (mu1, sigma1), (mu2, sigma2) = _f32(*_stats(x)), _f32(*_stats(y))
  direct = float(frechet_distance(mu1, sigma1, mu2, sigma2))
  ref = FrechetReference.create(mu1, sigma1)
  assert isinstance(ref.factor, jax.Array) and ref.factor.dtype == jnp.float32
  # Same operations, compiled in two programs: equal up to a few float32 ulps of the scale.
  tol = 4 * np.finfo(np.float32).eps * _scale(mu1, sigma1, mu2, sigma2)
  assert abs(float(ref.distance(mu2, sigma2)) - direct) <= tol
  jitted = jax.jit(lambda ref, mu, sigma: ref.distance(mu, sigma))
  assert abs(float(jitted(ref, mu2, sigma2)) - direct) <= tol
  inside = jax.jit(lambda mu1, sigma1, mu2, sigma2: FrechetReference.create(mu1, sigma1).distance(
      mu2, sigma2))
  assert abs(float(inside(mu1, sigma1, mu2, sigma2)) - direct) <= tol
  stats64 = (*_stats(x), *_stats(y))
  with jax.enable_x64(True):
    ref64 = FrechetReference.create(*stats64[:2])
    assert ref64.factor.dtype == jnp.float64
    assert abs(float(ref64.distance(*stats64[2:])) - float(frechet_distance(*stats64))) <= (
        F64_TOL * _scale(*stats64))


def test_jit_and_tracers():
  mu1, sigma1 = _stats(_features(13, 500, d=16))
  mu2, sigma2 = _stats(_features(14, 500, d=16, tilt=0.1))
  eager = frechet_distance(mu1, sigma1, mu2, sigma2)  # NumPy float64: the float64 route
  jitted = jax.jit(frechet_distance)(mu1, sigma1, mu2, sigma2)  # traced: float32, x64 off
  assert isinstance(eager, np.float64)
  assert isinstance(jitted, jax.Array) and jitted.dtype == jnp.float32
  assert abs(float(jitted) - float(eager)) <= F32_TOL * _scale(mu1, sigma1, mu2, sigma2)


def _good(d=8):
  mu, sigma = _stats(_features(15, 100, d=d))
  return mu, sigma


BAD_INPUTS = {
    "non_square": (lambda m, s: frechet_distance(m, s[:, :-1], m, s),
                   r"^sigma1: expected a square \(d, d\) matrix matching mu1 of shape \(8,\), "
                   r"got \(8, 7\)$"),
    "mismatched_d": (lambda m, s: frechet_distance(m, s, m[:4], s[:4, :4]),
                     r"^mu2: expected shape \(8,\) matching mu1, got \(4,\)$"),
    "matrix_mean": (lambda m, s: frechet_distance(m[None], s, m, s),
                    r"^mu1: expected a mean vector"),
    "nan_sigma": (lambda m, s: frechet_distance(m, s, m, np.where(np.eye(8) > 0, np.nan, s)),
                  r"^sigma2: expected finite float64 values, got 8 NaN and 0 inf"),
    "inf_mean_jax": (lambda m, s: frechet_distance(*_f32(m, s), jnp.asarray(m, jnp.float32).at[
        0].set(jnp.inf), _f32(s)[0]), r"^mu2: expected finite float32 values, got 0 NaN and 1 inf"),
    # Traced sigma1: the float32 route, where a NumPy float64 constant mean can overflow the cast.
    "float32_overflow": (lambda m, s: jax.jit(lambda s: frechet_distance(m * 1e39, s, m, s))(s),
                         r"^mu1: expected finite float32 values, got 0 NaN and 8 inf"),
    "complex": (lambda m, s: frechet_distance(m + 0j, s, m, s), r"^mu1: expected real"),
    "reference_mismatch": (lambda m, s: FrechetReference.create(m, s).distance(m[:4], s[:4, :4]),
                           r"^mu: expected shape \(8,\) matching reference mu, got \(4,\)$"),
    "one_sample": (lambda m, s: frechet_distance_from_features(np.ones((1, 8)), np.ones((5, 8))),
                   r"^x: expected at least 2 samples to estimate a covariance, "
                   r"got shape \(1, 8\)$"),
    "features_mismatched_d": (
        lambda m, s: frechet_distance_from_features(np.ones((5, 8)), np.ones((5, 7))),
        r"^y: expected d = 8 features per sample matching x of shape \(5, 8\), "
        r"got shape \(5, 7\)$"),
    "nan_features": (
        lambda m, s: frechet_distance_from_features(np.full((20, 8), np.nan), np.ones((20, 8))),
        r"^x: expected finite float64 values, got 160 NaN"),
    "features_1d": (lambda m, s: frechet_distance_from_features(np.ones(8), np.ones((5, 8))),
                    r"^x: expected features of shape \(N, d\), got shape \(8,\)$"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_one_line_input_error(case):
  call, message = BAD_INPUTS[case]
  with pytest.raises(InputError, match=message) as error:
    call(*_good())
  assert "\n" not in str(error.value)


def test_no_nan_for_degenerate_valid_input():
  d = 8
  zero = np.zeros((d, d))
  mu = np.arange(d, dtype=np.float64)
  # Zero covariances (a single repeated sample) and negative round-off eigenvalues stay finite.
  assert float(frechet_distance(mu, zero, mu + 1, zero)) == pytest.approx(d)
  tiny_negative = np.diag(np.r_[np.ones(d - 1), -1e-9])
  assert np.isfinite(float(frechet_distance(mu, tiny_negative, mu, np.eye(d))))
