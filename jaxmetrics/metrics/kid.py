"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with a polynomial kernel.

For two feature sets (normally the 2048-d pool3 features of the FID Inception) and the kernel
``k(x, y) = (γ·xᵀy + coef0)^degree`` (defaults ``γ = 1/d``, ``coef0 = 1``, ``degree = 3``), each of
``subsets`` draws takes ``m = subset_size`` rows without replacement from each side, X and Y, and
computes the unbiased estimator (diagonals of the within-set kernels excluded)::

  MMD²(X, Y) = Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (m(m−1))
             − 2 Σ_{i,j} k(xᵢ, yⱼ) / m²

KID is the mean and the population standard deviation (ddof = 0) of MMD² over the draws. This is
torch-fidelity's ``kid_features_to_metric`` (``mmd2(..., mmd_est="unbiased")``, after MMD-GAN's
``compute_scores.py``): defaults 100 subsets of 1000, and the draws are the same for the same seed
because they are made the same way on the host, ``rng = numpy.random.RandomState(seed)`` then, per
subset, ``rng.choice(n1, m, replace=False)`` followed by ``rng.choice(n2, m, replace=False)``.

Evaluation. All subsets are evaluated in one compiled call, by whichever of two exact routes needs
fewer operations (chosen on the host from the sizes, both give the same sums up to rounding):

* per subset: gather X and Y, three ``m×m`` kernel matrices from ``m×d`` products, summed.
  ``lax.map`` walks the subsets in chunks sized so that a chunk's kernels and gathered rows stay
  under ~256 MiB (100 subsets of 1000 at once would be 1.2 GB of float32 kernels);
* whole Gram: when the sets are small next to ``subsets·m²`` (``n ≲ m·√subsets``, e.g. KID on a
  few thousand samples), each full kernel matrix is built once, block of rows by block of rows
  under the same memory bound, and every subset's sum is read off it with 0/1 membership vectors
  ``a``: ``Σ_{i,j∈S} k(xᵢ, xⱼ) = aᵀ K a``. With ``n = m`` this is ``subsets``× fewer FLOPs.

Products run at ``Precision.HIGHEST`` (no TF32 on GPUs). Dtypes: float64 in, float64 out. If
either feature array is float64 (NumPy, or a ``jax.Array`` made with x64 on), both are widened and
KID is computed under ``jax.enable_x64(True)`` whatever the global flag, on the default device if
it is a CPU or GPU and on the host CPU otherwise (TPUs emulate float64), and returned as NumPy
float64; otherwise it is computed in float64 when ``jax_enable_x64`` is on and in float32 when it
is off, as torch-fidelity does (it evaluates float32 features in float32 NumPy and float64 ones in
float64). In float32, MMD² is a difference of kernel means of order
``(γ|x|² + coef0)^degree`` (~1..10 for Inception features) and inherits ~1e-6 of that as absolute
error, like torch-fidelity's own (measured: both within 5e-7 of float64 on 2048-d features); in
float64 it agrees with torch-fidelity given float64 features to ~1e-14 relative. Where the kernel
values are far larger than MMD² (random-weight features of RMS ~20: kernels ~6e7, MMD² ~3e4)
float32 loses ~1e-3 relative, so ``evaluate`` and the CLI compute KID from float64 features.

Input checks, on the device before the kernels: rows with NaN or inf are refused, and so are
finite features large enough for a kernel sum to overflow the dtype (``_check_kernel_bound``;
float32 2048-d features of RMS above ~1.6e5), which used to come back as a silent inf or NaN.
"""

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics._errors import InputError
from jaxmetrics.metrics import _float64

_HIGHEST = jax.lax.Precision.HIGHEST
_MEMORY_BUDGET = 256 * 2**20


def kid(features1, features2, *, subsets=100, subset_size=1000, degree=3, gamma=None, coef0=1.0,
        seed=2020):
  """KID between ``features1`` ``(N1, d)`` and ``features2`` ``(N2, d)``: ``(mean, std)`` of MMD².

  Formula, defaults and the torch-fidelity correspondence are in the module docstring. Equal to
  ``kid_features_to_metric(f1, f2, kid_subsets=subsets, kid_subset_size=subset_size,
  kid_kernel_poly_degree=degree, kid_kernel_poly_gamma=gamma, kid_kernel_poly_coef0=coef0,
  rng_seed=seed)``. Compiled once per shape, dtype and ``degree`` (the float64 route included);
  the seed, ``gamma`` and ``coef0`` do not trigger recompilation.

  Args:
    features1: float array ``(N1, d)``, ``N1 >= subset_size``.
    features2: float array ``(N2, d)``, ``N2 >= subset_size``.
    subsets: number of random subsets, ``>= 1``.
    subset_size: rows drawn without replacement from each side per subset, ``>= 2``.
    degree: polynomial degree, an integer ``>= 1``.
    gamma: kernel scale ``> 0``; ``None`` means ``1 / d``.
    coef0: kernel offset ``>= 0`` (the kernel is positive definite only then).
    seed: seed of ``numpy.random.RandomState`` for the draws.

  Returns:
    ``(mean, std)``: two ``numpy.float64`` when a feature array is float64 (the float64 route of
    the module docstring), else two 0-d ``jax.Array``, float64 when x64 is enabled and float32 when
    it is not. Values slightly below 0 are valid: the estimator is unbiased, and equal
    distributions give 0 on average.

  Raises:
    InputError: before any kernel, for a traced or non-floating input, shapes other than
      ``(N, d)`` or with another ``d``, options out of range, ``subset_size`` above either
      side's rows, rows with NaN or inf, and finite rows large enough for a kernel sum to
      overflow the computation dtype (``_check_kernel_bound``).
  """
  f1 = _check_features(features1, "features1")
  f2 = _check_features(features2, "features2")
  if f1.shape[1] != f2.shape[1]:
    raise InputError(f"features2: expected {f1.shape[1]} features per row like features1, got "
                     f"shape {tuple(f2.shape)}")
  if not _is_int(subsets) or subsets < 1:
    raise InputError(f"subsets: expected an integer >= 1, got {subsets!r}")
  if not _is_int(subset_size) or subset_size < 2:
    raise InputError(f"subset_size: expected an integer >= 2, got {subset_size!r}")
  (n1, d), n2 = f1.shape, f2.shape[0]
  if subset_size > min(n1, n2):
    raise InputError(f"subset_size: expected at most the number of rows of each side (features1: "
                     f"{n1}, features2: {n2}), got {subset_size}; pass a smaller subset_size")
  if not _is_int(degree) or degree < 1:
    raise InputError(f"degree: expected an integer >= 1, got {degree!r}")
  gamma = 1.0 / d if gamma is None else gamma
  if not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma <= 0:
    raise InputError(f"gamma: expected a finite number > 0 or None (1/d), got {gamma!r}")
  if not isinstance(coef0, numbers.Real) or not math.isfinite(coef0) or coef0 < 0:
    raise InputError(f"coef0: expected a finite number >= 0, got {coef0!r}")

  draws = _draw_subsets(n1, n2, subsets, subset_size, seed)
  method = _choose_method(n1, n2, d, subsets, subset_size)
  if _float64.takes_route(f1, f2):
    with _float64.scope() as device:
      # device_put first: a jax array committed to another device would pull the jit there.
      mean, std = _evaluate(jax.device_put(f1, device), jax.device_put(f2, device), draws, gamma,
                            coef0, np.float64, degree=int(degree), method=method)
      return np.float64(mean), np.float64(std)
  return _evaluate(f1, f2, draws, gamma, coef0, jax.dtypes.canonicalize_dtype(jnp.float64),
                   degree=int(degree), method=method)


def _evaluate(f1, f2, draws, gamma, coef0, dtype, *, degree, method):
  f1, f2 = jnp.asarray(f1, dtype), jnp.asarray(f2, dtype)
  (bad1, bad2), (sq1, sq2) = jax.device_get(_row_checks(f1, f2))
  for name, bad in (("features1", bad1), ("features2", bad2)):
    if bad:
      raise InputError(f"{name}: expected finite values, got NaN or inf in {int(bad)} row(s)")
  _check_kernel_bound(max(float(sq1), float(sq2)), "features1" if sq1 >= sq2 else "features2",
                      gamma, coef0, degree, *draws[0].shape, np.dtype(dtype))
  return _kid(f1, f2, *draws, jnp.asarray(gamma, dtype), jnp.asarray(coef0, dtype),
              degree=degree, method=method)


def _is_int(x):
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_features(x, name):
  if isinstance(x, jax.core.Tracer):
    raise InputError(f"{name}: expected a concrete array, got a tracer: kid draws its subsets and "
                     f"checks its input on the host, call it outside jit")
  if not hasattr(x, "dtype"):
    x = np.asarray(x)
  if x.ndim != 2:
    raise InputError(f"{name}: expected shape (N, d), got {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputError(f"{name}: expected a floating array, got {x.dtype}")
  return x


def _draw_subsets(n1, n2, subsets, subset_size, seed):
  """torch-fidelity's draws: one RandomState, per subset side 1 then side 2."""
  rng = np.random.RandomState(seed)
  idx1 = np.empty((subsets, subset_size), np.int32)
  idx2 = np.empty((subsets, subset_size), np.int32)
  for s in range(subsets):
    idx1[s] = rng.choice(n1, subset_size, replace=False)
    idx2[s] = rng.choice(n2, subset_size, replace=False)
  return idx1, idx2


def _choose_method(n1, n2, d, subsets, subset_size):
  """Picks "gram" when building the full kernels once costs fewer multiply-adds than per subset."""
  per_subset = 3 * subsets * subset_size**2 * d
  gram = (n1 * n1 + n2 * n2 + n1 * n2) * (d + subsets)
  return "gram" if gram < per_subset else "subsets"


@jax.jit
def _row_checks(f1, f2):
  """Per side: the rows with NaN or inf (int32), and the largest squared norm of a finite row."""
  def check(f):
    finite = jnp.all(jnp.isfinite(f), axis=1)
    sq = jnp.where(finite, jnp.einsum("ij,ij->i", f, f, precision=_HIGHEST), 0)
    return jnp.sum(~finite, dtype=jnp.int32), jnp.max(sq)
  (bad1, sq1), (bad2, sq2) = check(f1), check(f2)
  return (bad1, bad2), (sq1, sq2)


def _check_kernel_bound(max_sq_norm, name, gamma, coef0, degree, subsets, subset_size, dtype):
  """Refuses features whose kernel sums could overflow ``dtype`` (a silent inf or NaN KID before).

  With ``S`` the largest squared norm of a row of either side, Cauchy–Schwarz bounds every kernel
  value (and every partial sum of its product): ``|k(u, v)| <= K = (γ·S + coef0)^degree``, reached
  by the diagonal ``k(x, x)`` that the estimator computes and subtracts. Every sum of either route
  is then within ``(m² + m)·K`` (``m = subset_size``), the numerator of an MMD² within
  ``4m²·K``, an MMD² within ``8K`` and their sum over the subsets within ``8·subsets·K``
  (:func:`_std` keeps the standard deviation's squares in range). ``16·max(m², subsets)·K <= max``
  (a factor 2 for rounding) therefore keeps every intermediate finite; in float32 with the
  default 1000-row subsets that is ``K <= 2.1e31``, ``γ·S <= 2.8e10``: 2048-d features of RMS
  ~1.6e5 per coordinate, against ~0.3..20 for Inception's pool3. It is not the accuracy bound:
  float32 KID carries an absolute error of ~eps·K (module docstring) long before this.
  """
  if gamma > float(np.finfo(dtype).max):
    raise InputError(f"gamma: expected at most {float(np.finfo(dtype).max):.3g} (the largest "
                     f"{dtype}), got {gamma!r}")
  limit = float(np.finfo(dtype).max) / (16 * max(subset_size**2, subsets))
  largest_base = math.exp(math.log(limit) / degree)  # γ·S + coef0 at K = limit
  if coef0 > largest_base:
    raise InputError(f"coef0: expected at most {largest_base:.3g} with degree {degree} ({dtype} "
                     f"KID would overflow), got {coef0!r}")
  bound = (largest_base - coef0) / gamma
  if not max_sq_norm <= bound:
    advice = "; pass float64 features" if dtype.itemsize < 8 else ""
    raise InputError(f"{name}: expected squared norms of at most {bound:.3g} (the {dtype} kernel "
                     f"sums of (gamma·x·y + coef0)^{degree} with gamma = {gamma:.3g}, coef0 = "
                     f"{coef0:.3g} would overflow), got {max_sq_norm:.3g}{advice}")


def _kernel(x, y, gamma, coef0, degree):
  # Same operation order as torch-fidelity's kernel_poly: (X Yᵀ · γ + coef0) ** degree.
  return (jnp.matmul(x, y.T, precision=_HIGHEST) * gamma + coef0) ** degree


@functools.partial(jax.jit, static_argnames=("degree", "method"))
def _kid(f1, f2, idx1, idx2, gamma, coef0, *, degree, method):
  m = idx1.shape[1]
  kernel = functools.partial(_kernel, gamma=gamma, coef0=coef0, degree=degree)
  if method == "gram":
    sum_xx, sum_yy, sum_xy = _gram_sums(f1, f2, idx1, idx2, kernel)
  else:
    sum_xx, sum_yy, sum_xy = _subset_sums(f1, f2, idx1, idx2, kernel)
  mmd2 = (sum_xx + sum_yy) / (m * (m - 1)) - 2 * sum_xy / (m * m)
  return jnp.mean(mmd2), _std(mmd2)


def _std(x):
  """``jnp.std(x)`` (ddof = 0) computed on ``x`` divided by a power of two near ``max |x|``.

  The scaling is exact, and in the normal range the value is ``jnp.std``'s bit for bit; it keeps
  the squared deviations from overflowing where ``x`` is finite (MMD² of ~1e19 and more in
  float32), and from underflowing below ~1e-19.
  """
  _, exponent = jnp.frexp(jnp.max(jnp.abs(x)))  # 2^(e-1) <= max |x| < 2^e
  # 2^s and 2^-s both normal (a subnormal factor is flushed to 0 by XLA on CPUs): |x|·2^-s < 4.
  info = jnp.finfo(x.dtype)
  s = jnp.clip(exponent - 1, info.minexp, info.maxexp - 2)
  one = jnp.ones((), x.dtype)
  return jnp.std(x * jnp.ldexp(one, -s)) * jnp.ldexp(one, s)


def _subset_sums(f1, f2, idx1, idx2, kernel):
  """Per subset: off-diagonal sums of K_XX and K_YY, and the full sum of K_XY."""
  subsets, m = idx1.shape
  d, itemsize = f1.shape[1], f1.dtype.itemsize
  chunk = int(max(1, min(subsets, _MEMORY_BUDGET // ((3 * m * m + 2 * m * d) * itemsize))))

  def one(indices):
    x, y = f1[indices[0]], f2[indices[1]]
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    # Row sums first, then their sum, as torch-fidelity: a two-level sum keeps float32 rounding
    # at ~√m·eps per level instead of growing with m².
    total = lambda k: jnp.sum(jnp.sum(k, axis=1))
    return (total(k_xx) - jnp.trace(k_xx), total(k_yy) - jnp.trace(k_yy), total(k_xy))

  return jax.lax.map(one, (idx1, idx2), batch_size=chunk)


def _gram_sums(f1, f2, idx1, idx2, kernel):
  """The same sums as ``_subset_sums`` read off full kernel matrices with membership vectors."""
  subsets = idx1.shape[0]
  dtype = f1.dtype
  rows = jnp.arange(subsets, dtype=jnp.int32)[:, None]
  a1 = jnp.zeros((subsets, f1.shape[0]), dtype).at[rows, idx1].set(1)
  a2 = jnp.zeros((subsets, f2.shape[0]), dtype).at[rows, idx2].set(1)
  diag = jax.vmap(lambda x: kernel(x[None], x[None])[0, 0])
  trace_x = jnp.matmul(a1, diag(f1), precision=_HIGHEST)
  trace_y = jnp.matmul(a2, diag(f2), precision=_HIGHEST)
  sum_xx = _quadratic_forms(f1, f1, a1, a1, kernel)
  sum_yy = _quadratic_forms(f2, f2, a2, a2, kernel)
  sum_xy = _quadratic_forms(f1, f2, a1, a2, kernel)
  return sum_xx - trace_x, sum_yy - trace_y, sum_xy


def _quadratic_forms(f, g, a, b, kernel):
  """``a_s · K(f, g) · b_s`` for every subset ``s``, building K one block of rows at a time."""
  n, itemsize = f.shape[0], f.dtype.itemsize
  block = int(max(1, min(n, _MEMORY_BUDGET // (2 * g.shape[0] * itemsize))))
  num_blocks = -(-n // block)
  pad = num_blocks * block - n
  # Zero padding rows meet zero membership weights: they add exactly nothing.
  f = jnp.pad(f, ((0, pad), (0, 0))).reshape(num_blocks, block, f.shape[1])
  a = jnp.pad(a, ((0, 0), (0, pad))).reshape(a.shape[0], num_blocks, block).swapaxes(0, 1)

  def step(total, block_inputs):
    f_block, a_block = block_inputs
    k_times_b = jnp.matmul(kernel(f_block, g), b.T, precision=_HIGHEST)
    return total + jnp.einsum("sr,rs->s", a_block, k_times_b, precision=_HIGHEST), None

  total, _ = jax.lax.scan(step, jnp.zeros((a.shape[1],), f.dtype), (f, a))
  return total
