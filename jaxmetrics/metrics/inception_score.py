"""Inception Score (Salimans et al. 2016) from Inception logits, in one call or streamed.

For softmax probabilities ``p(y|x)`` of the ``logits_unbiased`` of the FID Inception-v3 (1008
classes, no fc bias: improved-gan's ``inception_score/model.py`` multiplies pool3 by the weight of
``softmax/logits/MatMul``, as guided-diffusion's evaluator does in ``_create_softmax_graph``)
and a split ``S`` of the samples::

  IS(S) = exp( 1/|S| Σ_{x∈S} KL(p(y|x) ‖ p̄_S) ),   p̄_S = 1/|S| Σ_{x∈S} p(y|x)
        = exp( 1/|S| Σ_{x∈S} Σ_y p log p  −  Σ_y p̄_S log p̄_S )

The samples are cut into ``splits`` parts and the score is reported as the mean and the population
standard deviation (ddof = 0) of ``IS(S)`` over the parts. Split ``k`` holds the rows
``[k·N // splits, (k+1)·N // splits)`` of the logits, in the given order, as in improved-gan's
``get_inception_score`` and torch-fidelity's ``isc_features_to_metric`` (the two use the same
boundaries; when ``splits`` does not divide ``N`` the parts differ in size by one row).
torch-fidelity first permutes the rows with ``numpy.random.RandomState(2020).permutation(N)``;
``shuffle_seed=2020`` does the same. guided-diffusion's evaluator (parts of 5000 samples in order,
the last one shorter, mean only) is the same state with split ``i // 5000`` per row
(``jaxmetrics.extract.extract(..., split_size=5000)``, ``jaxmetrics adm``).

The second form is written with per-split sufficient statistics (count, ``Σ p``, ``Σ p log p``),
which is how :class:`InceptionScoreState` streams batches and merges shards in any order;
:func:`inception_score` is that state updated once with the whole array.

Numerics. ``p log p`` is ``exp(log_softmax) · log_softmax``, so extreme logits (±1e4) give exact
zeros instead of ``0 · log 0``, and ``p̄ log p̄`` is taken as 0 where ``p̄ = 0``. The sums are plain
sums of same-sign terms (``p ≥ 0``, ``p log p ≤ 0``): no cancellation builds up in them, only in
the final difference of the two entropy terms, each at most ``log C ≈ 6.9`` in magnitude.
Computation is in float64 when ``jax_enable_x64`` is on (measured against torch-fidelity's float64:
relative ≲1e-13) and float32 otherwise (relative ≲1e-6 on the score: each row's ``Σ p log p``
carries ~1e-7 relative rounding, amplified by at most the size of the entropy terms in the
exponent).
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from jaxmetrics._errors import InputError

NUM_CLASSES = 1008
_HIGHEST = jax.lax.Precision.HIGHEST


def _float_dtype():
  """float64 when ``jax_enable_x64`` is on (also inside ``jax.enable_x64()``), else float32."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def _is_traced(x):
  return isinstance(x, jax.core.Tracer)


def contiguous_split(index, num_samples, splits):
  """The split that improved-gan and torch-fidelity put row ``index`` of ``num_samples`` into.

  Row ``i`` belongs to split ``k`` when ``k·N // splits <= i < (k+1)·N // splits``, that is
  ``k = ((i + 1)·splits − 1) // N``. Pass the result as ``split=`` to
  :meth:`InceptionScoreState.update` to reproduce :func:`inception_score` exactly while streaming.
  Integer arithmetic in int32: requires ``num_samples · splits < 2**31``.

  Args:
    index: integer array of global row indices in ``[0, num_samples)``.
    num_samples: total number of rows ``N`` that will be fed.
    splits: number of splits.

  Returns:
    An int32 array of split indices in ``[0, splits)``, shaped like ``index``.
  """
  index = jnp.asarray(index, jnp.int32)
  return ((index + 1) * splits - 1) // num_samples


@flax.struct.dataclass
class InceptionScoreState:
  """Streaming Inception Score: per-split sufficient statistics with fixed shapes.

  ``empty`` → ``update(logits, mask)`` per batch → ``merge`` across devices or hosts (associative
  and commutative: any order) → ``compute()``. All of it is pure and ``jit``-able; ``compute``
  additionally raises :class:`InputError` when called outside ``jit`` on a state that saw
  non-finite logits, an out-of-range split index or an empty split (inside ``jit`` it returns NaN
  for those instead, since it cannot raise there).

  Split membership. By default ``update`` deals rows round-robin: the ``j``-th accepted row seen by
  this state (counting across updates, masked rows not counted) goes to split ``j % splits``. This
  balances the splits without knowing ``N`` in advance, but the parts are not improved-gan's
  contiguous ones, so the numbers equal :func:`inception_score` only for the correspondingly
  interleaved order (``logits.reshape(N // s, s, C).swapaxes(0, 1)``), not for the same order. To
  reproduce :func:`inception_score` exactly, pass ``split=contiguous_split(global_index, N,
  splits)`` (or any explicit assignment, e.g. from a torch-fidelity-style permutation). Merged
  shards each count rows from 0, so with the default the membership depends on the sharding;
  explicit ``split`` indices make the result independent of it.

  Attributes:
    num: ``(splits,)`` int32, rows accepted per split.
    sum_p: ``(splits, C)`` float, ``Σ p(y|x)`` per split.
    sum_plogp: ``(splits,)`` float, ``Σ_x Σ_y p log p`` per split.
    seen: ``()`` int32, rows accepted so far (drives the round-robin assignment).
    num_nonfinite: ``()`` int32, unmasked rows rejected for NaN or ±inf logits.
    num_bad_split: ``()`` int32, unmasked rows rejected for a split index outside ``[0, splits)``.

  Example::

    state = InceptionScoreState.empty(num_classes=1008, splits=10)
    for batch_logits, batch_mask in batches:
      state = state.update(batch_logits, batch_mask)
    mean, std = state.compute()
  """

  num: jax.Array
  sum_p: jax.Array
  sum_plogp: jax.Array
  seen: jax.Array
  num_nonfinite: jax.Array
  num_bad_split: jax.Array

  @classmethod
  def empty(cls, num_classes=NUM_CLASSES, splits=10, dtype=None):
    """A state with no rows: ``splits`` parts over ``num_classes`` classes (default 1008, 10).

    ``dtype`` defaults to float64 when x64 is enabled, else float32.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
      raise InputError(f"num_classes: expected an integer >= 2, got {num_classes!r}")
    if not isinstance(splits, (int, np.integer)) or splits < 1:
      raise InputError(f"splits: expected an integer >= 1, got {splits!r}")
    dtype = _float_dtype() if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise InputError(f"dtype: expected a floating dtype, got {dtype}")
    zero = jnp.zeros((), jnp.int32)
    return cls(num=jnp.zeros((splits,), jnp.int32), sum_p=jnp.zeros((splits, num_classes), dtype),
               sum_plogp=jnp.zeros((splits,), dtype), seen=zero, num_nonfinite=zero,
               num_bad_split=zero)

  @property
  def splits(self):
    return self.num.shape[-1]

  @property
  def num_classes(self):
    return self.sum_p.shape[-1]

  def update(self, logits, mask=None, split=None):
    """Adds a batch of logits ``(B, C)``; rows where ``mask`` (``(B,)`` bool) is False are skipped.

    Args:
      logits: float array ``(B, num_classes)`` of ``logits_unbiased``.
      mask: optional bool array ``(B,)``; padded rows carry False.
      split: optional int array ``(B,)`` of split indices in ``[0, splits)``; default round-robin
        (see the class docstring).

    Returns:
      The updated state. Shapes and dtypes are unchanged, so a ``jit``-ed loop compiles once.
    """
    logits = _check_logits(logits, "logits", self.num_classes)
    batch = logits.shape[0]
    if mask is None:
      mask = jnp.ones((batch,), jnp.bool_)
    elif jnp.shape(mask) != (batch,):
      raise InputError(f"mask: expected shape ({batch},) to match logits, got {jnp.shape(mask)}")
    if split is not None:
      if jnp.shape(split) != (batch,):
        raise InputError(f"split: expected shape ({batch},) to match logits, got "
                         f"{jnp.shape(split)}")
      if not jnp.issubdtype(jnp.result_type(split), jnp.integer):
        raise InputError(f"split: expected an integer array, got {jnp.result_type(split)}")
      split = jnp.asarray(split, jnp.int32)
    return _update(self, logits, jnp.asarray(mask, jnp.bool_), split)

  def merge(self, other):
    """Combines two states over the same classes and splits (associative and commutative)."""
    if (self.num.shape, self.sum_p.shape, self.sum_p.dtype) != (
        other.num.shape, other.sum_p.shape, other.sum_p.dtype):
      raise InputError(f"other: expected a state with {self.splits} splits of {self.num_classes} "
                       f"classes in {self.sum_p.dtype}, got {other.splits} splits of "
                       f"{other.num_classes} in {other.sum_p.dtype}")
    return jax.tree_util.tree_map(jnp.add, self, other)

  def compute(self):
    """Returns ``(mean, std)`` of the Inception Score over the splits, as 0-d arrays."""
    mean, std = _compute(self)
    if _is_traced(mean):
      return mean, std
    num_nonfinite, num_bad_split, num = jax.device_get(
        (self.num_nonfinite, self.num_bad_split, self.num))
    if num_nonfinite:
      raise InputError(f"logits: expected finite values, got NaN or inf in {int(num_nonfinite)} "
                       f"row(s)")
    if num_bad_split:
      raise InputError(f"split: expected indices in [0, {self.splits}), got "
                       f"{int(num_bad_split)} row(s) outside")
    empty = np.flatnonzero(num == 0)
    if empty.size:
      raise InputError(f"splits: expected at least one row in each of the {self.splits} splits, "
                       f"got {int(num.sum())} rows and split {int(empty[0])} empty")
    return mean, std


def inception_score(logits, splits=10, shuffle_seed=None):
  """Inception Score of ``logits`` ``(N, C)``: ``(mean, std)`` over ``splits`` parts.

  Formula and numerics in the module docstring. Defaults follow improved-gan (10 contiguous splits
  in the given order); ``shuffle_seed=2020`` reproduces torch-fidelity's default
  (``isc_features_to_metric(features, splits, shuffle=True, rng_seed=2020)``), whose permutation
  ``numpy.random.RandomState(seed).permutation(N)`` is drawn on the host. Compiled once per shape
  and dtype; the seed does not trigger recompilation.

  Args:
    logits: float array ``(N, C)``, normally the 1008 ``logits_unbiased`` of the FID Inception.
    splits: number of parts, ``1 <= splits <= N``.
    shuffle_seed: ``None`` for the given order, or an int seed for torch-fidelity's permutation.

  Returns:
    ``(mean, std)`` as 0-d arrays, float64 when x64 is enabled, else float32.

  Example::

    mean, std = inception_score(logits)                     # improved-gan
    mean, std = inception_score(logits, shuffle_seed=2020)  # torch-fidelity
  """
  if _is_traced(logits):
    raise InputError("logits: expected a concrete array, got a tracer: inception_score checks its "
                     "input on the host; inside jit use InceptionScoreState")
  logits = _check_logits(logits, "logits")
  n = logits.shape[0]
  if not isinstance(splits, (int, np.integer)) or not 1 <= splits <= n:
    raise InputError(f"splits: expected an integer in [1, {n}] (number of logits rows), got "
                     f"{splits!r}")
  split = np.repeat(np.arange(splits, dtype=np.int32), np.diff(np.arange(splits + 1) * n // splits))
  if shuffle_seed is not None:
    # torch-fidelity splits logits[perm]: row perm[i] lands where row i would have been.
    perm = np.random.RandomState(shuffle_seed).permutation(n)
    split = split[np.argsort(perm)]
  state = InceptionScoreState.empty(logits.shape[1], splits)
  return state.update(logits, split=split).compute()


def _check_logits(logits, name, num_classes=None):
  if not hasattr(logits, "dtype"):
    logits = np.asarray(logits)
  if logits.ndim != 2 or (num_classes is not None and logits.shape[1] != num_classes):
    want = f"(N, {num_classes})" if num_classes is not None else "(N, C)"
    raise InputError(f"{name}: expected shape {want}, got {tuple(logits.shape)}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise InputError(f"{name}: expected a floating array, got {logits.dtype}")
  if logits.shape[0] == 0 or logits.shape[1] < 2:
    raise InputError(f"{name}: expected at least 1 row and 2 classes, got shape "
                     f"{tuple(logits.shape)}")
  return logits


@jax.jit
def _update(state, logits, mask, split):
  logits = logits.astype(state.sum_p.dtype)
  splits = state.splits
  finite = jnp.all(jnp.isfinite(logits), axis=-1)
  if split is None:  # round-robin
    accepted = mask & finite
    position = state.seen + jnp.cumsum(accepted, dtype=jnp.int32) - 1
    split = position % splits
    in_range = jnp.ones_like(mask)
  else:
    in_range = (split >= 0) & (split < splits)
    accepted = mask & finite & in_range
  # Rejected rows are zeroed before any arithmetic: 0 · NaN would still be NaN in the products.
  logits = jnp.where(accepted[:, None], logits, 0)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(log_p)
  plogp = jnp.sum(p * log_p, axis=-1)
  # A one-hot product rather than a scatter-add: deterministic on every backend.
  onehot = (split[:, None] == jnp.arange(splits, dtype=jnp.int32)) & accepted[:, None]
  onehot_f = onehot.astype(p.dtype)
  return state.replace(
      num=state.num + jnp.sum(onehot, axis=0, dtype=jnp.int32),
      sum_p=state.sum_p + jnp.einsum("bs,bc->sc", onehot_f, p, precision=_HIGHEST),
      sum_plogp=state.sum_plogp + jnp.einsum("bs,b->s", onehot_f, plogp, precision=_HIGHEST),
      seen=state.seen + jnp.sum(accepted, dtype=jnp.int32),
      num_nonfinite=state.num_nonfinite + jnp.sum(mask & ~finite, dtype=jnp.int32),
      num_bad_split=state.num_bad_split + jnp.sum(mask & finite & ~in_range, dtype=jnp.int32))


@jax.jit
def _compute(state):
  num = state.num.astype(state.sum_p.dtype)
  safe_num = jnp.maximum(num, 1)
  p_bar = state.sum_p / safe_num[:, None]
  kl = state.sum_plogp / safe_num - jnp.sum(xlogy(p_bar, p_bar), axis=-1)
  scores = jnp.exp(kl)
  mean, std = jnp.mean(scores), jnp.std(scores)
  invalid = (state.num_nonfinite > 0) | (state.num_bad_split > 0) | jnp.any(state.num == 0)
  nan = jnp.array(jnp.nan, mean.dtype)
  return jnp.where(invalid, nan, mean), jnp.where(invalid, nan, std)
