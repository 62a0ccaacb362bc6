r"""Streaming, mergeable feature statistics (count, mean, centred scatter) and their ``.npz`` files.

:class:`FeatureStats` is the state of FID's feature pass, in the style of ``clu.metrics``: a pytree
of fixed shapes built by ``empty``, folded over padded batches by ``update(features, mask)``, over
devices, hosts or shards by ``merge`` in any order, and read out as ``mean`` and ``covariance()``.
:func:`save_stats` and :func:`load_stats` read and write the ``.npz`` statistics files of
pytorch-fid, clean-fid, TTUR and guided-diffusion.

Example::

  stats = FeatureStats.empty(2048)
  step = jax.jit(lambda stats, images, mask: stats.update(inception(images), mask))
  for images, mask in padded_batches:     # one shape for every batch: one compilation
    stats = step(stats, images, mask)
  fid = frechet_distance(stats.mean, stats.covariance(), *load_stats("cifar10_train.npz"))
"""

import contextlib
import os
import secrets

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics.metrics import frechet
from jaxmetrics._errors import InputError


@flax.struct.dataclass
class FeatureStats:
  r"""Count, mean and centred scatter of a stream of d-dimensional features.

  For the n samples seen so far, ``mean`` = :math:`\bar x` and ``scatter`` =
  :math:`M = \sum_k (x_k-\bar x)(x_k-\bar x)^\top`, the centred sum of squares, never the raw
  :math:`\sum x x^\top`, whose float32 cancellation would cost digits of the covariance.
  ``merge`` is the parallel update of Chan, Golub and LeVeque (1979): with
  :math:`\delta = \bar x_b - \bar x_a`, :math:`n = n_a + n_b`,

  .. math::

    \bar x = \bar x_a + \delta\,\frac{n_b}{n}, \qquad
    M = M_a + M_b + \delta\delta^\top \frac{n_a n_b}{n},

  exact for any split, so batches, devices and hosts can be merged in any order (associative and
  commutative up to round-off); an empty side (n = 0) leaves the other unchanged, without NaN.
  ``update`` is the merge of the batch's own statistics (two-pass mean, then the centred scatter as
  one matrix product at ``Precision.HIGHEST``). ``covariance()`` is the unbiased :math:`M/(n-1)`,
  matching ``np.cov(features, rowvar=False)``, the estimate of pytorch-fid, torch-fidelity and TTUR.

  ``count`` is int32: exact up to 2**31 - 1 samples, where a float32 count would stop counting at
  2**24 (16.7M). Mean and scatter have the dtype given to ``empty`` (float32, or float64 with
  ``jax_enable_x64``). Float32 statistics of 50000 x 2048 Inception-like features in batches of
  1000 are within 4.3e-7 (mean) and 2.2e-7 (covariance) of the largest entry of NumPy's float64
  ones, and move FID by 1.1e-8 relative (``benchmarks/results/frechet_kernel.md``). All methods
  are pure and jit-able, and every batch of one shape is one compilation: pad the last batch and
  mask it.

  Attributes:
    count: number of samples, an int32 scalar.
    mean: mean of the samples, shape (d,).
    scatter: centred sum of squares, shape (d, d).
  """

  count: jax.Array
  mean: jax.Array
  scatter: jax.Array

  @classmethod
  def empty(cls, dim: int, dtype=jnp.float32) -> "FeatureStats":
    """Statistics of no samples: count 0, zero mean and scatter of dimension ``dim``."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
      raise InputError(f"dim: expected a positive int feature dimension, got {dim!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
      raise InputError(f"dtype: expected float32 or float64, got {dtype}")
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:
      raise InputError("dtype: expected float32, or float64 with jax_enable_x64 on, got float64 "
                       "with jax_enable_x64 off")
    return cls(count=jnp.zeros((), jnp.int32), mean=jnp.zeros((dim,), dtype),
               scatter=jnp.zeros((dim, dim), dtype))

  def update(self, features, mask=None) -> "FeatureStats":
    """Adds a batch of features (B, d); rows where ``mask`` (B,) is False or 0 change nothing.

    Features are cast to the dtype of the statistics. Host values (NumPy) are checked for NaN/inf in
    the rows that count; jax arrays are not, so that a loop of updates never waits on the device:
    non-finite features then surface as an ``InputError`` from ``covariance()``. Masked rows may
    hold anything, NaN included.
    """
    d = self.mean.shape[0]
    dtype = self.mean.dtype
    features = frechet._as_real_array("features", features, dtype)
    if features.ndim != 2 or features.shape[1] != d:
      raise InputError(
          f"features: expected a batch of shape (B, {d}) matching the statistics, got shape "
          f"{features.shape}")
    if mask is not None:
      mask = _check_mask(mask, features.shape)
    if isinstance(features, np.ndarray) and not frechet._is_tracer(mask):
      frechet._check_finite("features", features if mask is None else features[np.asarray(mask)])
    return _update(self, features, mask)

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Statistics of the union of both sample sets (Chan's parallel update); any order."""
    if not isinstance(other, FeatureStats):
      raise InputError(f"other: expected FeatureStats, got {type(other).__name__}")
    if other.mean.shape != self.mean.shape or other.mean.dtype != self.mean.dtype:
      raise InputError(
          f"other: expected FeatureStats of dimension {self.mean.shape[0]} and {self.mean.dtype}, "
          f"got dimension {other.mean.shape[0]} and {other.mean.dtype}")
    return _merge(self, other)

  def covariance(self) -> jax.Array:
    """Unbiased covariance M / (n - 1), shape (d, d), symmetric.

    Outside ``jit`` it raises an ``InputError`` for fewer than 2 samples and for non-finite
    statistics (NaN features). Inside ``jit`` it cannot raise: with n < 2 it returns the scatter
    itself (zeros), never NaN, so check ``count`` there.
    """
    if not frechet._is_tracer(self.count):
      count = int(self.count)
      if count < 2:
        raise InputError(
            f"FeatureStats: expected at least 2 samples to compute a covariance, got count={count}")
      if not bool(jnp.isfinite(self.mean).all() & jnp.isfinite(self.scatter).all()):
        raise InputError(
            "features: expected finite values, but the statistics are NaN/inf: a batch passed to "
            "FeatureStats.update held NaN or inf in an unmasked row")
    return _covariance(self)


@flax.struct.dataclass
class FeatureBuffer:
  """A bounded buffer of feature rows: the state of KID, precision/recall and density/coverage.

  Those metrics need the features themselves, not sufficient statistics, so the state holds up to
  ``capacity`` rows in a fixed ``(capacity, d)`` array with a ``valid`` mask: fixed shapes, so an
  update compiles once and the buffer can live inside a jitted loop or a sharded extraction.
  ``update(features, mask)`` appends the unmasked rows after the rows already held;
  ``update(features, mask, index=rows)`` writes each row to slot ``rows[i]`` instead (a global
  row index: the order of the source whatever the sharding or batch order, as
  :func:`jaxmetrics.pipeline.extract.extract` passes it). Rows that do not fit (slot ≥ capacity)
  are counted in ``dropped``, never silently lost: :meth:`compute` raises when any were.
  ``merge`` appends the other buffer's rows in slot order after this one's (associative; not
  commutative, since order is kept).

  Attributes:
    features: ``(capacity, d)`` rows; invalid slots hold zeros.
    valid: ``(capacity,)`` bool, which slots hold a row.
    count: int32, rows held.
    dropped: int32, rows that did not fit.
  """

  features: jax.Array
  valid: jax.Array
  count: jax.Array
  dropped: jax.Array

  @classmethod
  def empty(cls, capacity: int, dim: int, dtype=jnp.float32) -> "FeatureBuffer":
    """A buffer for up to ``capacity`` rows of dimension ``dim`` (float32 by default)."""
    for name, value in (("capacity", capacity), ("dim", dim)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: expected a positive int, got {value!r}")
    zero = jnp.zeros((), jnp.int32)
    return cls(features=jnp.zeros((capacity, dim), dtype), valid=jnp.zeros((capacity,), bool),
               count=zero, dropped=zero)

  @property
  def capacity(self):
    return self.features.shape[0]

  def update(self, features, mask=None, index=None) -> "FeatureBuffer":
    """Adds the rows of ``features`` (B, d) where ``mask`` (B,) is true; see the class docstring."""
    d = self.features.shape[1]
    features = frechet._as_real_array("features", features, self.features.dtype)
    if features.ndim != 2 or features.shape[1] != d:
      raise InputError(f"features: expected a batch of shape (B, {d}) matching the buffer, got "
                       f"shape {features.shape}")
    mask = (np.ones(features.shape[:1], bool) if mask is None else
            _check_mask(mask, features.shape))
    if index is not None:
      if jnp.shape(index) != features.shape[:1] or not jnp.issubdtype(jnp.result_type(index),
                                                                       jnp.integer):
        raise InputError(f"index: expected integer row slots of shape ({features.shape[0]},), got "
                         f"{jnp.result_type(index)} {jnp.shape(index)}")
      index = jnp.asarray(index, jnp.int32)
    return _buffer_update(self, features, jnp.asarray(mask, bool), index)

  def merge(self, other: "FeatureBuffer") -> "FeatureBuffer":
    """This buffer's rows, then ``other``'s in slot order (overflow counted in ``dropped``)."""
    if not isinstance(other, FeatureBuffer) or other.features.shape[1:] != self.features.shape[1:] \
        or other.features.dtype != self.features.dtype:
      raise InputError(f"other: expected a FeatureBuffer of dimension {self.features.shape[1]} and "
                       f"{self.features.dtype}, got {_describe_state(other)}")
    order = jnp.argsort(~other.valid, stable=True)  # other's valid rows first, in slot order
    merged = _buffer_update(self, other.features[order], other.valid[order], None)
    return merged.replace(dropped=merged.dropped + other.dropped)

  def compute(self) -> np.ndarray:
    """The rows held, ``(count, d)`` in slot order, as a host array (outside ``jit`` only)."""
    if frechet._is_tracer(self.count):
      raise InputError("FeatureBuffer.compute: expected a concrete buffer, got a traced one: "
                       "return the buffer from the jitted function and call compute() outside")
    dropped = int(self.dropped)
    if dropped:
      raise InputError(f"FeatureBuffer: {dropped} row(s) did not fit in its capacity of "
                       f"{self.capacity}: create it with a larger capacity")
    valid = np.asarray(self.valid)
    return np.asarray(self.features)[valid]


def _describe_state(state):
  if isinstance(state, FeatureBuffer):
    return f"dimension {state.features.shape[1]} and {state.features.dtype}"
  return type(state).__name__


@jax.jit
def _buffer_update(buffer, features, mask, index):
  capacity = buffer.features.shape[0]
  if index is None:
    index = buffer.count + jnp.cumsum(mask, dtype=jnp.int32) - 1
  fits = mask & (index >= 0) & (index < capacity)
  # Rows that do not count go to an out-of-range slot, which mode="drop" discards.
  slot = jnp.where(fits, index, capacity)
  return buffer.replace(
      features=buffer.features.at[slot].set(features.astype(buffer.features.dtype), mode="drop"),
      valid=buffer.valid.at[slot].set(True, mode="drop"),
      count=buffer.count + jnp.sum(fits, dtype=jnp.int32),
      dropped=buffer.dropped + jnp.sum(mask & ~fits, dtype=jnp.int32))


def save_stats(path, mu, sigma, extra=None) -> None:
  """Writes FID statistics as an ``.npz`` with float64 arrays ``mu`` (d,) and ``sigma`` (d, d).

  ``extra`` (name → array) adds more statistics to the same file, widened to float64 likewise:
  guided-diffusion's reference batches hold the sFID statistics as ``mu_s`` and ``sigma_s``.

  The format of pytorch-fid, clean-fid and TTUR: ``np.load(path)['mu']`` reads it. Arrays are
  widened to float64 (exactly, from float32), the dtype of their ``np.cov``, so that a file does not
  depend on the precision of the run that wrote it. The file is written to ``path`` exactly (no
  ``.npz`` is appended) through a temporary file in the same directory and ``os.replace``: a
  failed write leaves neither a partial file nor a changed old one. Host-only.

  Raises:
    InputError: for bad statistics (as :func:`frechet_distance`), traced values, or a missing
      directory.
  """
  for name, value in (("mu", mu), ("sigma", sigma)):
    if frechet._is_tracer(value):
      raise InputError(f"{name}: expected a concrete array, got a traced value: call save_stats "
                       "outside jit")
  mu, sigma = frechet._check_mean_cov(
      "mu", np.asarray(mu), "sigma", np.asarray(sigma), np.dtype(np.float64))
  extra = {name: np.asarray(value, np.float64) for name, value in (extra or {}).items()}
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise InputError(f"path: expected a file in an existing directory, got {path!r} "
                     f"({directory} does not exist)")
  temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
  try:
    with open(temporary, "xb") as f:
      np.savez(f, mu=mu, sigma=sigma, **extra)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temporary)
    raise


def load_stats(path, keys=("mu", "sigma")) -> tuple[np.ndarray, np.ndarray]:
  """Reads FID statistics ``(mu (d,), sigma (d, d))`` as float64 NumPy arrays from an ``.npz``.

  ``keys`` names the mean and covariance arrays: ``("mu_s", "sigma_s")`` reads the sFID statistics
  of a guided-diffusion reference batch.

  Reads the files of pytorch-fid, clean-fid and TTUR (keys ``mu``, ``sigma``) and guided-diffusion's
  reference batches (which also hold ``arr_0``, ``mu_s``, ``sigma_s``: ignored, and not read from
  disk). Pickled objects are refused (``allow_pickle=False``). Host-only.

  Raises:
    InputError: for a missing or unreadable file, a missing ``mu`` or ``sigma``, wrong shapes or
      non-finite values.
  """
  path = os.fspath(path)
  mu_key, sigma_key = keys
  expected = f"an .npz archive with arrays {mu_key} and {sigma_key}"
  try:
    data = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise InputError(f"path: expected {expected}, got {path!r}, which does not exist") from None
  except (OSError, ValueError) as e:
    raise InputError(
        f"path: expected {expected}, could not read {path!r}: {_one_line(e)}") from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise InputError(f"path: expected {expected}, got a single .npy array in {path!r}")
  with data:
    missing = [key for key in keys if key not in data.files]
    if missing:
      raise InputError(
          f"path: expected {expected}, {path!r} lacks {' and '.join(missing)} "
          f"(it has: {', '.join(data.files) or 'nothing'})")
    try:
      mu, sigma = data[mu_key], data[sigma_key]
    except ValueError as e:
      raise InputError(
          f"path: expected {expected} of numbers in {path!r}: {_one_line(e)}") from None
  return frechet._check_mean_cov(
      f"{mu_key} in {path!r}", mu, f"{sigma_key} in {path!r}", sigma, np.dtype(np.float64))


def _one_line(error):
  return " ".join(str(error).split())


def _check_mask(mask, features_shape):
  """A (B,) mask as bool; host values must be 0/1 (a jax array: nonzero keeps the row)."""
  if not isinstance(mask, jax.Array):
    mask = np.asarray(mask)
  if mask.shape != features_shape[:1]:
    raise InputError(f"mask: expected shape ({features_shape[0]},) matching features of shape "
                     f"{features_shape}, got {mask.shape}")
  if isinstance(mask, np.ndarray) and mask.dtype != bool and not np.isin(mask, (0, 1)).all():
    raise InputError(f"mask: expected bool or 0/1 values, got {mask.dtype} values such as "
                     f"{mask[~np.isin(mask, (0, 1))][:3].tolist()}")
  return mask.astype(bool)


@jax.jit
def _update(stats, features, mask):
  keep = jnp.ones(features.shape[:1], bool) if mask is None else mask
  count = jnp.sum(keep, dtype=jnp.int32)
  n = jnp.maximum(count, 1).astype(features.dtype)
  # where, not a product with the mask: padding rows may hold NaN, and NaN * 0 is NaN.
  x = jnp.where(keep[:, None], features, 0)
  mean = jnp.sum(x, axis=0) / n
  mean = mean + jnp.sum(jnp.where(keep[:, None], x - mean, 0), axis=0) / n
  centred = jnp.where(keep[:, None], x - mean, 0)
  scatter = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST)
  return _merge(stats, FeatureStats(count=count, mean=mean, scatter=scatter))


@jax.jit
def _merge(a, b):
  dtype = a.mean.dtype
  count = a.count + b.count
  # n_a * n_b overflows int32 from 46341**2 samples on, so the weights are formed in floating point.
  weight_b = b.count.astype(dtype) / jnp.maximum(count, 1).astype(dtype)
  delta = b.mean - a.mean
  return FeatureStats(
      count=count,
      mean=a.mean + delta * weight_b,
      scatter=a.scatter + b.scatter + jnp.outer(delta, delta) * (a.count.astype(dtype) * weight_b))


@jax.jit
def _covariance(stats):
  n = jnp.maximum(stats.count - 1, 1).astype(stats.scatter.dtype)
  return (stats.scatter + stats.scatter.T) / (2 * n)
