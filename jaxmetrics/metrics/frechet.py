r"""Fréchet distance between two Gaussians: the kernel of FID.

.. math::

  d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
        - 2 \operatorname{tr}\sqrt{\Sigma_1 \Sigma_2}

The matrix square root is never formed. For any factors :math:`\Sigma_i = F_i F_i^\top`,
:math:`\operatorname{tr}\sqrt{\Sigma_1\Sigma_2} = \|F_1^\top F_2\|_*`, the sum of the singular
values of :math:`F_1^\top F_2`: they are the square roots of the eigenvalues of the symmetric PSD
matrix :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}`, whose eigenvalues are those of
:math:`\Sigma_1\Sigma_2` (similar matrices: :math:`\Sigma_1\Sigma_2 = \Sigma_1^{1/2}
(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})\Sigma_1^{-1/2}` where :math:`\Sigma_1` is invertible, and
by continuity otherwise). From covariances the factors are Cholesky factors
:math:`L` (a tenth of the cost of ``eigh``), or :math:`F = V\operatorname{diag}(\sqrt{w})` of
``eigh`` for a covariance that is singular to working precision; from features with fewer samples
than dimensions they are the centred feature matrices themselves, which makes that route exact.

Why singular values of the factor product rather than ``eigvalsh`` of the sandwich
:math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}`: ``eigvalsh`` resolves an eigenvalue only to
:math:`\epsilon\lambda_{max}`, and the square root turns that into an error of
:math:`\sqrt{\epsilon\lambda_{max}}` on every small one; the singular values are resolved to
:math:`\epsilon\sqrt{\lambda_{max}}`. Measured at d = 2048 in float32
(``benchmarks/results/frechet_kernel.md``), the sandwich errs by 3e-4 of the traces with N < d and
gives FID 0.0115 for identical statistics, 0.0126 instead of 0.00145 for near-identical ones; the
factor route stays within 3e-7 of the traces in all of these, and with Cholesky factors it is
also the faster of the two (0.97 s vs 1.08 s at d = 2048 on 2 CPU cores).

Everything here runs under ``jax.jit``, with matrix products at ``Precision.HIGHEST`` (TPUs and
GPUs with TF32 would otherwise round products to ~1e-3). Float64 in, float64 out: concrete inputs
of which one is float64 (NumPy statistics such as pytorch-fid's ``.npz``) are computed in float64
whatever ``jax_enable_x64`` says, as the PyTorch peers compute them, on the default device if it
is a CPU or GPU and on the host CPU otherwise (TPUs emulate float64), and come back as NumPy
float64. Traced inputs (under ``jit``) and concrete ones of narrower types follow JAX's dtype rule
on the default device: float32 unless x64 is on.
"""

import functools
import warnings

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics._errors import InputError
from jaxmetrics.metrics import _float64

_HIGHEST = jax.lax.Precision.HIGHEST

# Eigenvalues of a covariance below this many epsilons of the largest are round-off: a float32 eigh
# puts the null space of a rank-deficient covariance at about +-1 eps*lambda_max (measured at
# d = 2048), while the smallest true eigenvalue of a covariance of N = 1900 samples in d = 2048
# sits at 15 eps*lambda_max. Their square roots, ~sqrt(eps*lambda_max) each, would otherwise add
# up over the whole null space (a 1.5e-4 relative FID error at N = 1000, d = 2048).
_ROUND_OFF_EPS = 4

# A Cholesky pivot L_jj² below this many epsilons of its diagonal entry Σ_jj is round-off: column j
# is a linear combination of the earlier ones to working precision. An exact duplicate of a feature
# leaves a pivot of 0.65 eps Σ_jj (float32, d = 128); a feature whose independent part is 8 eps of
# its variance leaves one of 6-8 eps, which the Cholesky factor resolves better than eigh does
# (2.6 vs 31 eps x scale from the exact FID; see test_near_duplicate_feature).
_CHOLESKY_PIVOT_EPS = 4


def frechet_distance(mu1, sigma1, mu2, sigma2) -> jax.Array | np.float64:
  r"""Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): FID from statistics.

  .. math::

    \|\mu_1-\mu_2\|^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
    - 2\sum_i s_i(F_1^\top F_2), \qquad F_j = V_j \operatorname{diag}(\sqrt{w_j}),\
    (w_j, V_j) = \operatorname{eigh}\big((\Sigma_j + \Sigma_j^\top)/2\big)

  with Cholesky factors :math:`F_j = L_j` wherever they are well defined (the same singular values
  at a tenth of the cost of ``eigh``), where :math:`s_i` are singular values;
  :math:`\sum_i s_i = \operatorname{tr}\sqrt{\Sigma_1\Sigma_2}
  = \sum_i \sqrt{\lambda_i(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})}`. Eigenvalues ``w`` below
  ``4 * eps * max(w)`` (negative ones included) are round-off and count as zero, so the result is
  real and finite for any finite symmetric input, rank-deficient covariances included. That
  ``eigh`` route is taken for a covariance whose Cholesky factorisation fails or ends on a pivot
  below 4 eps of its diagonal entry (singular to working precision). It is the
  value pytorch-fid, torch-fidelity, torchmetrics and clean-fid compute (``sqrtm`` or ``eigvals`` of
  :math:`\Sigma_1\Sigma_2`: pytorch-fid's ``calculate_frechet_distance``, torch-fidelity's
  ``fid_statistics_to_metric``), without their complex round-off. Like theirs it is not
  clipped at zero: identical statistics give a round-off-sized value of either sign.

  Accuracy at d = 2048 with Inception-like covariances (spectrum ~1/k, tr Σ ≈ 8, FID ≈ 8-10;
  ``benchmarks/results/frechet_kernel.md``), against float64 SciPy and exact references. The error
  is bounded relative to ``scale = tr Σ₁ + tr Σ₂ + ‖μ₁-μ₂‖²``, the size of the terms FID cancels:

  * float32: |error| ≤ 3e-7 · scale with N = 10000 per side (1.9e-7 relative), with N = 1000 < d on
    one or both sides (≤ 2.5e-7 relative), for identical statistics (-3.8e-6, scale 17) and
    near-identical ones (FID 0.00145 ± 3e-6).
  * float64 (float64 inputs, or traced ones with x64 on): |error| ≤ 2e-16 · scale, singular
    covariances included, where the float64 ``eigvals``/``sqrtm`` routes of the peers are off by up
    to 7e-8 · scale.
  * float32 cannot resolve a covariance whose eigenvalues span more than ~1/eps (1e7): dead
    (constant) features plus N close to d, or a steep spectrum. On random-weight Inception features
    (N = 2500, 22 dead channels, eigenvalues from 2e-8 to 4e4) float32 gives FID 575.97 for 561.64;
    on a k^-2.5 spectrum 13% off (``tests/test_evaluation.py``), where float64 stays within 3e-12 of
    the exact value from features. ``jaxmetrics.fid``, ``evaluate`` and the command line therefore
    compute the distance in float64; inside a jitted training loop, float32 is right for tracking
    progress, and final numbers should come from float64 statistics outside ``jit``.

  Time at d = 2048 on the 2-core benchmark CPU (``benchmarks/results/frechet_kernel*.md``): with
  both cores, 0.97 s in float32 and 1.78 s in float64 (``FrechetReference.distance``: 0.90 s and
  1.65 s), where pytorch-fid's ``sqrtm`` takes 10.2 s (10.6x and 11.3x slower) and the ``eigvals``
  routes of torch-fidelity and torchmetrics 2.0-2.1 s; with one thread per library, 1.34 s (8.7x)
  and 1.30 s (9.0x) against 11.7 s. Most of it is the float32 singular values (0.74 s on 2 cores).

  Dtypes: float64 in, float64 out. When no input is traced and one is float64 (a NumPy array, a
  list of floats, a ``jax.Array`` made with x64 on), all are widened to float64 and the distance
  is computed under ``jax.enable_x64(True)`` whatever the global flag, on the default device if it
  is a CPU or GPU and on the host CPU otherwise (TPUs emulate float64); the result is a NumPy
  ``float64`` (a float64 ``jax.Array`` outside an x64 scope would silently compute in float32 in
  further ``jnp`` operations). That route compiles once per shape, like the float32 one. Traced
  inputs (inside ``jit``, NumPy constants there included) and concrete inputs none of which is
  float64 keep JAX's rule: float64 if x64 is on and an input is float64, else float32, on the
  default device, returned as a ``jax.Array``.

  Cost: two Cholesky factorisations (or ``eigh``), one product and one singular-value decomposition
  of d x d matrices; the product and its singular values shrink to d x d/4 or d/4 x d/4 for a
  covariance of rank below d/4 (fewer than d/4 samples; ``_nuclear_norm_of_product``): at
  d = 2048 in float64 on 2 CPU cores, two covariances of 12 samples take 1.64 s instead of 2.71 s
  (``benchmarks/results/frechet_kernel_few_samples.md``). For many distances to one reference,
  :class:`FrechetReference` caches the reference's factor.

  Args:
    mu1: mean of the first set of features, shape (d,).
    sigma1: covariance of the first set, shape (d, d), symmetric positive semi-definite. Symmetry
      is not checked (a full check costs 40 ms at d = 2048): the Cholesky route reads the lower
      triangle, the ``eigh`` route (Σ + Σᵀ)/2.
    mu2: mean of the second set, shape (d,).
    sigma2: covariance of the second set, shape (d, d).

  Returns:
    The squared Fréchet distance: a ``numpy.float64`` on the float64 route, else a scalar
    ``jax.Array`` of the computation dtype.

  Raises:
    InputError: for wrong shapes, mismatched dimensions, non-real or non-finite values (checked on
      the host for NumPy inputs and concrete jax arrays; under ``jit`` only shapes are checked).

  Example::

    mu1, sigma1 = jaxmetrics.load_stats("cifar10_train.npz")
    fid = float(frechet_distance(mu1, sigma1, stats.mean, stats.covariance()))
  """
  (mu1, sigma1, mu2, sigma2), dtype, float64 = _route(
      ("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2))
  mu1, sigma1 = _check_mean_cov("mu1", mu1, "sigma1", sigma1, dtype)
  mu2, sigma2 = _check_mean_cov("mu2", mu2, "sigma2", sigma2, dtype, like=("mu1", mu1))
  if float64:
    with _float64.scope():
      return np.float64(_frechet_distance(mu1, sigma1, mu2, sigma2))
  return _frechet_distance(mu1, sigma1, mu2, sigma2)


@flax.struct.dataclass
class FrechetReference:
  r"""The reference side of FID, prepared once: mean, a covariance factor and its trace.

  ``FrechetReference.create(mu_ref, sigma_ref)`` factors the reference covariance once and keeps
  :math:`F_{ref}` with :math:`F_{ref}F_{ref}^\top = \Sigma_{ref}` (its Cholesky factor, or scaled
  eigenvectors when it is singular to working precision; see :func:`frechet_distance`);
  ``ref.distance(mu, sigma)`` is then :func:`frechet_distance` ``(mu_ref, sigma_ref, mu, sigma)``
  at the cost of one factorisation, one product and one singular-value decomposition: the common
  case of a fixed data set and a model evaluated during training. It is a pytree, so it can be
  passed to (and created inside) a jitted function.

  Dtypes follow :func:`frechet_distance`. Created outside ``jit`` from statistics of which one is
  float64, the reference is factored in float64 and holds NumPy float64 arrays (they exist
  whatever the x64 flag); ``distance`` outside ``jit`` then takes the float64 route, whatever the
  dtype of ``mu`` and ``sigma``, and returns a ``numpy.float64``. Passed into a jitted function
  with x64 off, those arrays become float32 like any NumPy argument, so the same reference serves
  a float32 training loop. Created from float32 statistics, or inside ``jit``, it holds
  ``jax.Array`` leaves of the computation dtype and ``distance`` computes in it, unless ``mu`` or
  ``sigma`` is a concrete float64 array.

  Attributes:
    mu: reference mean, shape (d,).
    factor: F with F Fᵀ = Σ_ref, shape (d, d) (Cholesky factor or scaled eigenvectors).
    trace: tr Σ_ref, a scalar.

  Example::

    ref = FrechetReference.create(*jaxmetrics.load_stats("imagenet256_ref.npz"))
    step_fid = jax.jit(lambda ref, mu, sigma: ref.distance(mu, sigma))
    fid = step_fid(ref, stats.mean, stats.covariance())         # float32 jax.Array
    final = ref.distance(stats.mean, stats.covariance())        # outside jit: numpy.float64
  """

  mu: jax.Array
  factor: jax.Array
  trace: jax.Array

  @classmethod
  def create(cls, mu, sigma) -> "FrechetReference":
    """Prepares reference statistics mu (d,), sigma (d, d); same checks as frechet_distance."""
    (mu, sigma), dtype, float64 = _route(("mu", mu), ("sigma", sigma))
    mu, sigma = _check_mean_cov("mu", mu, "sigma", sigma, dtype)
    if float64:
      with _float64.scope():
        return jax.device_get(_create_reference(mu, sigma))
    return _create_reference(mu, sigma)

  def distance(self, mu, sigma) -> jax.Array | np.float64:
    """frechet_distance(self.mu, Σ_ref, mu, sigma) from the cached factor; same checks, dtypes."""
    (mu, sigma, *leaves), dtype, float64 = _route(
        ("mu", mu), ("sigma", sigma), *((f"reference {name}", getattr(self, name))
                                        for name in ("mu", "factor", "trace")))
    ref = jax.tree.map(lambda a: a.astype(dtype), FrechetReference(*leaves))
    mu, sigma = _check_mean_cov("mu", mu, "sigma", sigma, dtype, like=("reference mu", ref.mu))
    if float64:
      with _float64.scope():
        return np.float64(_reference_distance(ref, mu, sigma))
    return _reference_distance(ref, mu, sigma)


def frechet_distance_from_features(x, y) -> jax.Array | np.float64:
  r"""Fréchet distance between the Gaussians fitted to two feature sets: FID from features.

  With means :math:`\mu_x, \mu_y`, centred features :math:`X` (N₁ x d), :math:`Y` (N₂ x d) and the
  unbiased covariances :math:`\Sigma_x = X^\top X/(N_1-1)`, :math:`\Sigma_y = Y^\top Y/(N_2-1)`:

  .. math::

    \|\mu_x-\mu_y\|^2 + \frac{\|X\|_F^2}{N_1-1} + \frac{\|Y\|_F^2}{N_2-1}
    - 2\,\frac{\|X Y^\top\|_*}{\sqrt{(N_1-1)(N_2-1)}}

  the same value as ``frechet_distance(mu_x, cov_x, mu_y, cov_y)``: with :math:`\Sigma_x =
  X^\top X / (N_1 - 1)`, the factors :math:`X^\top / \sqrt{N_1 - 1}` and :math:`Y^\top /
  \sqrt{N_2 - 1}` give :math:`\|F_x^\top F_y\|_* = \|X Y^\top\|_* / \sqrt{(N_1-1)(N_2-1)}`
  (module docstring). A side with
  N ≤ d enters through its centred feature matrix instead of an ``eigh`` of its singular covariance,
  so nothing is rounded to a square root of round-off: this is the exact route for small samples,
  and the cheap one (the singular values are of an at most min(N₁, d) x min(N₂, d) matrix). A side
  with N > d is factored through its covariance as in :func:`frechet_distance`. Singular values are
  taken directly rather than as square roots of ``eigvalsh`` of the Gram product
  :math:`XY^\top YX^\top`, which would square the condition number (see the module docstring).

  With fewer samples than dimensions the covariance is singular and FID is strongly biased upwards
  (it depends on N), so a ``UserWarning`` says so; compare FIDs only at equal N.

  Accuracy as :func:`frechet_distance`. Dtypes follow the same rule: float64 features outside
  ``jit`` are computed in float64 and give a ``numpy.float64``.

  Args:
    x: features of the first set, shape (N₁, d), N₁ ≥ 2.
    y: features of the second set, shape (N₂, d), N₂ ≥ 2.

  Returns:
    The squared Fréchet distance, a ``numpy.float64`` or a scalar ``jax.Array`` as in
    :func:`frechet_distance`.

  Raises:
    InputError: for wrong shapes, fewer than 2 samples, mismatched d, non-finite values.
  """
  (x, y), dtype, float64 = _route(("x", x), ("y", y))
  x = _check_features("x", x, dtype)
  y = _check_features("y", y, dtype, like=("x", x))
  d = x.shape[1]
  small = [f"{name} has {feats.shape[0]}" for name, feats in (("x", x), ("y", y))
           if feats.shape[0] < d]
  if small:
    warnings.warn(
        f"{' and '.join(small)} samples, fewer than d = {d}: the covariance is singular and FID is "
        "biased at this sample size; using the exact small-sample route", UserWarning, stacklevel=2)
  if float64:
    with _float64.scope():
      return np.float64(_features_distance(x, y))
  return _features_distance(x, y)


# ---------------------------------------------------------------------------------------------
# Kernels.


def _matmul(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


def _covariance_factor(sigma):
  """F with F Fᵀ = sym(sigma) up to round-off: the Cholesky factor, else scaled eigenvectors.

  Any factor gives the same singular values of F₁ᵀF₂, and a Cholesky factorisation costs a tenth of
  an ``eigh`` (67 ms vs 670 ms at d = 2048, one CPU thread). It is backward stable wherever it
  completes, but a covariance that is singular to working precision (fewer samples than dimensions,
  a constant or duplicated feature) either fails it, giving NaN, or leaves round-off pivots whose
  square roots, ~sqrt(eps) of their column's scale, would enter the distance. Such a covariance,
  one whose smallest relative pivot L_jj² / Σ_jj falls below 4 eps, is factored through ``eigh``
  instead, where round-off eigenvalues are dropped. Above that the Cholesky factor is also the more
  accurate one: ``eigh`` resolves eigenvalues only to eps·λ_max, the pivots to eps·Σ_jj.
  Both branches are traced; ``lax.cond`` runs one.

  The Cholesky factorisation reads the lower triangle of sigma, as LAPACK does, instead of
  symmetrising first: the two transposes cost 5% of the whole distance at d = 2048 on a CPU, and a
  covariance from any estimator is symmetric to round-off, which moves the result by round-off
  only. The ``eigh`` branch symmetrises.
  """
  chol = jnp.linalg.cholesky(sigma, symmetrize_input=False)
  pivots = jnp.diagonal(chol) ** 2
  well_conditioned = jnp.all(jnp.isfinite(chol)) & jnp.all(
      pivots >= _CHOLESKY_PIVOT_EPS * float(jnp.finfo(sigma.dtype).eps) * jnp.diagonal(sigma))
  return jax.lax.cond(
      well_conditioned, lambda: chol, lambda: _eigh_factor((sigma + sigma.T) / 2))


def _eigh_factor(sym):
  """F with F Fᵀ = sym up to round-off: eigenvectors scaled by √eigenvalues, round-off dropped."""
  w, v = jnp.linalg.eigh(sym, symmetrize_input=False)
  round_off = _ROUND_OFF_EPS * float(jnp.finfo(sym.dtype).eps) * jnp.maximum(jnp.max(w), 0)
  w = jnp.where(w > round_off, w, 0)
  return v * jnp.sqrt(w)


def _distance_from_factors(mu1, trace1, factor1, mu2, trace2, factor2):
  diff = mu1 - mu2
  trace_sqrt = _nuclear_norm_of_product(factor1, factor2)
  return jnp.dot(diff, diff, precision=_HIGHEST) + trace1 + trace2 - 2 * trace_sqrt


def _compact(factor):
  """``([factor] or [factor, its last d/4 columns], index of the one to use)``: the second where
  the columns before those are all exactly 0 (see :func:`_nuclear_norm_of_product`)."""
  k = factor.shape[0] // 4
  if factor.shape[1] <= 2 * k:  # small already (a feature matrix of few samples)
    return [factor], jnp.int32(0)
  return [factor, factor[:, -k:]], jnp.all(factor[:, :-k] == 0).astype(jnp.int32)


def _nuclear_norm_of_product(factor1, factor2):
  """The sum of the singular values of ``factor1ᵀ factor2``, from its nonzero columns only.

  An ``eigh`` factor of a covariance of rank r has exact zero columns but its last r (eigenvalues
  ascending, round-off ones set to 0), and ``F[:, -k:]`` then has the same ``F Fᵀ`` and the same
  nonzero singular values of the product. A factor whose columns before its last ``k = d // 4``
  are all 0 (checked on the device; a covariance of fewer than d/4 samples) enters through those
  ``k``: the whole product and its singular values are ~40% of such a distance at d = 2048 in
  float64 (timings in :func:`frechet_distance`). ``lax.switch`` runs the one product that the two
  checks pick (under ``vmap`` it becomes a select, and all of them run).
  """
  (choices1, index1), (choices2, index2) = _compact(factor1), _compact(factor2)
  nuclear = lambda a, b: jnp.sum(jnp.linalg.svd(_matmul(a.T, b), compute_uv=False))
  branches = [functools.partial(nuclear, a, b) for b in choices2 for a in choices1]
  if len(branches) == 1:
    return branches[0]()
  return jax.lax.switch(index1 + len(choices1) * index2, branches)


@jax.jit
def _frechet_distance(mu1, sigma1, mu2, sigma2):
  return _distance_from_factors(
      mu1, jnp.trace(sigma1), _covariance_factor(sigma1),
      mu2, jnp.trace(sigma2), _covariance_factor(sigma2))


@jax.jit
def _create_reference(mu, sigma):
  return FrechetReference(mu=mu, factor=_covariance_factor(sigma), trace=jnp.trace(sigma))


@jax.jit
def _reference_distance(ref, mu, sigma):
  return _distance_from_factors(
      ref.mu, ref.trace, ref.factor, mu, jnp.trace(sigma), _covariance_factor(sigma))


def _feature_summary(x):
  """Mean, trace of the covariance and a factor F (F Fᵀ = covariance) of features (N, d)."""
  n, d = x.shape
  mu = jnp.mean(x, axis=0)
  # A second pass removes the float32 rounding of the first mean (it grows with N).
  mu = mu + jnp.mean(x - mu, axis=0)
  centred = x - mu
  trace = jnp.sum(centred * centred) / (n - 1)
  if n <= d:
    return mu, trace, centred.T / (n - 1) ** 0.5
  return mu, trace, _covariance_factor(_matmul(centred.T, centred) / (n - 1))


@jax.jit
def _features_distance(x, y):
  return _distance_from_factors(*_feature_summary(x), *_feature_summary(y))


# ---------------------------------------------------------------------------------------------
# Host-side checks, before jit: they raise one-line InputErrors instead of returning NaN.


def _route(*named):
  """``(arrays, dtype, float64)`` for ``(name, value)`` pairs: the route they take.

  Concrete inputs of which one is float64 take the float64 route (``float64`` True): all become
  NumPy float64, to be computed under ``_float64.scope()``. Otherwise (a traced input, or none
  float64) the dtype is float64 if an input is float64 and jax_enable_x64 is on, else float32
  (also for integers), and the arrays stay where they are.
  """
  arrays = [_as_array(name, value) for name, value in named]
  if _float64.takes_route(*arrays):
    return [np.asarray(a, np.float64) for a in arrays], np.dtype(np.float64), True
  wide = any(np.dtype(a.dtype) == np.float64 for a in arrays)
  return arrays, jax.dtypes.canonicalize_dtype(np.float64 if wide else np.float32), False


def _is_tracer(x):
  return isinstance(x, jax.core.Tracer)


def _as_real_array(name, x, dtype):
  """x cast to dtype: host values as a NumPy array, a jax array (or tracer) on its device."""
  x = _as_array(name, x)
  with np.errstate(over="ignore"):  # an overflow to inf is reported by _check_finite
    return x.astype(dtype)


def _as_array(name, x):
  """x as a NumPy array (host values: lists, scalars) or as it is (jax arrays, tracers); real."""
  if not isinstance(x, jax.Array):
    try:
      x = np.asarray(x)
    except (TypeError, ValueError) as e:
      raise InputError(
          f"{name}: expected a real array, got {type(x).__name__} ({' '.join(str(e).split())})"
      ) from None
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
    raise InputError(f"{name}: expected real (float or integer) values, got dtype {x.dtype}")
  return x


def _check_finite(name, x):
  """Counts NaN/inf (overflow of the cast included) of a NumPy or concrete jax array."""
  if _is_tracer(x):
    return
  xp = np if isinstance(x, np.ndarray) else jnp
  if not bool(xp.all(xp.isfinite(x))):
    n_nan, n_inf = int(xp.sum(xp.isnan(x))), int(xp.sum(xp.isinf(x)))
    raise InputError(
        f"{name}: expected finite {x.dtype} values, got {n_nan} NaN and {n_inf} inf among "
        f"{x.size} entries")


def _check_mean_cov(mu_name, mu, sigma_name, sigma, dtype, like=None):
  """Checks a (mean (d,), covariance (d, d)) pair; like=(name, array) fixes d."""
  mu = _as_real_array(mu_name, mu, dtype)
  sigma = _as_real_array(sigma_name, sigma, dtype)
  if mu.ndim != 1:
    raise InputError(f"{mu_name}: expected a mean vector of shape (d,), got shape {mu.shape}")
  if like is not None and mu.shape != like[1].shape:
    raise InputError(
        f"{mu_name}: expected shape {like[1].shape} matching {like[0]}, got {mu.shape}")
  d = mu.shape[0]
  if d == 0:
    raise InputError(f"{mu_name}: expected at least one dimension, got shape {mu.shape}")
  if sigma.shape != (d, d):
    raise InputError(
        f"{sigma_name}: expected a square (d, d) matrix matching {mu_name} of shape {mu.shape}, "
        f"got {sigma.shape}")
  _check_finite(mu_name, mu)
  _check_finite(sigma_name, sigma)
  return mu, sigma


def _check_features(name, x, dtype, like=None):
  """Checks features of shape (N, d), N ≥ 2; like=(name, array) fixes d."""
  x = _as_real_array(name, x, dtype)
  if x.ndim != 2:
    raise InputError(f"{name}: expected features of shape (N, d), got shape {x.shape}")
  if like is not None and x.shape[1] != like[1].shape[1]:
    raise InputError(
        f"{name}: expected d = {like[1].shape[1]} features per sample matching {like[0]} of shape "
        f"{like[1].shape}, got shape {x.shape}")
  if x.shape[0] < 2:
    raise InputError(
        f"{name}: expected at least 2 samples to estimate a covariance, got shape {x.shape}")
  if x.shape[1] == 0:
    raise InputError(f"{name}: expected at least one feature dimension, got shape {x.shape}")
  _check_finite(name, x)
  return x
