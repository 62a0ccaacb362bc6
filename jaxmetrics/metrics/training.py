r"""Metric states for JAX training loops: ``clu.metrics``' protocol, ``flax.nnx.Metric``, meshes.

Every class here is an immutable pytree (``flax.struct.dataclass``) with the protocol of
``clu.metrics.Metric``: ``empty()`` → ``from_model_output(**outputs)`` per batch → ``merge`` (any
order: batches, steps, hosts) → ``reduce`` (devices) → ``compute()``. Configuration (feature
dimension, reference statistics, buffer capacity, options) is not an argument of ``empty``: a
factory, ``FID.with_reference(ref)`` or ``KID.configure(capacity=..., dim=...)``, returns a
configured subclass, the way ``clu.metrics.Average.from_output("loss")`` does, so that the class
itself can go into ``clu.metrics.Collection.create(fid=FID.with_reference(ref), ...)``.
``InceptionScore``, ``Reconstruction`` and ``ClipScore`` also work unconfigured (their defaults).

Model outputs are read by name, as ``clu.metrics.Collection`` passes every output to every metric
(``Collection.single_from_model_output(features=..., reference_features=..., mask=...)``); unknown
names are ignored, a missing one is an :class:`~jaxmetrics.InputError` that names it. ``mask``
``(B,)`` marks the rows that count (padding of the last batch carries False); features of masked
rows may hold anything, NaN included.

States and what they hold (one module each for the math, reused here):

* :class:`FID`, :class:`SFID`: :class:`~jaxmetrics.FeatureStats` (count, mean, centred scatter) of
  the generated features, against a fixed reference (a statistics file, ``(mu, sigma)`` or a
  :class:`~jaxmetrics.FrechetReference`) or two-sided, with a second ``FeatureStats`` of
  reference features fed alongside. sFID is FID on the ``"spatial"`` feature of the Inception
  (guided-diffusion's ``mixed_6/conv`` slice), whose reference statistics are ``mu_s``/``sigma_s``.
* :class:`InceptionScore`: :class:`~jaxmetrics.InceptionScoreState` (per-split sums).
* :class:`KID`, :class:`CMMD`, :class:`PrecisionRecall`, :class:`DensityCoverage`: bounded
  :class:`~jaxmetrics.FeatureBuffer` s of fixed capacity (these metrics need the rows themselves),
  generated and, unless a fixed reference array is configured, reference.
* :class:`Reconstruction`: :class:`~jaxmetrics.ReconstructionState` (MSE, MAE, BCE, PSNR, SSIM).
* :class:`ClipScore`, :class:`SemanticSimilarity`: sums of cosines of CLIP embeddings, as
  :func:`~jaxmetrics.clip_score` and :func:`~jaxmetrics.semantic_similarity` define them.

``compute()``. Outside ``jit`` (a concrete state) it checks the state and returns the float64
result, whatever ``jax_enable_x64`` says: FID's distance is taken in float64 from the float32
statistics (through :func:`~jaxmetrics.frechet_distance`'s float64 route), KID from the buffers
widened to float64 (:func:`~jaxmetrics.kid`'s float64 route), the IS, reconstruction and CLIP
formulas from their float32 sums in NumPy float64, CMMD from the buffers widened to float64
(:func:`~jaxmetrics.mmd_rbf`'s float64 route). Too few samples is an ``InputError`` there
(FID with fewer than 2 rows on a side, KID with fewer rows than ``subset_size``, a k-NN ball without
k other points, an empty IS split), never a silent zero. Inside ``jit`` nothing can raise: FID,
sFID, IS, reconstruction and CLIP scores are computed in float32 (JAX's dtype with x64 off) and are
NaN when the host would have raised, which is right for tracking progress; KID, CMMD, the k-NN
metrics and semantic similarity draw subsets, sum kernel tiles, count or divide per prompt on the
host and raise an
``InputError`` on a traced state, saying to return the state from the jitted function and compute
outside.

Sharded. ``reduce()`` folds states stacked along a leading axis (what ``jax.lax.all_gather`` and
``clu.metrics.Collection.gather_from_model_output`` produce) in one vectorised step, and
``reduce(axis_name)`` folds the per-device states of a ``shard_map`` (or ``pmap``) axis by
collectives: for feature statistics with per-device :math:`(n_i, \bar x_i, M_i)`,

.. math::

  n = \sum_i n_i, \quad \bar x = \sum_i \frac{n_i}{n} \bar x_i, \quad
  M = \sum_i \big[M_i + n_i (\bar x_i - \bar x)(\bar x_i - \bar x)^\top\big],

two ``psum`` s (the count and weighted mean, then the scatter), the same statistics as Chan's
pairwise merge in any order (the k-way form of the same identity), without raw second moments.
Buffers are placed at their device's offset and ``psum`` med (each slot is written by one device:
exact, in device order), IS, reconstruction and CLIP sums ``psum`` med; every result is replicated
(invariant), as ``shard_map``'s ``out_specs=P()`` wants. Under plain ``jit`` with sharded arrays
none of this is needed: the sums inside ``update`` are reductions over the sharded batch axis,
which XLA turns into all-reduces itself.

NNX. :class:`NNXMetric` (or ``MetricClass.nnx()``) wraps a state class as a ``flax.nnx.Metric``
with ``update(**outputs)``, ``reset()`` and ``compute()``, the state in one
``nnx.metrics.MetricState`` variable, so it works in ``nnx.MultiMetric`` and under ``nnx.jit``.

Example (clu)::

  Metrics = clu.metrics.Collection.create(
      fid=jaxmetrics.training.FID.with_reference("cifar10_train.npz"),
      loss=clu.metrics.Average.from_output("loss"))

  @jax.jit
  def eval_step(metrics, params, batch, mask):
    images, loss = sample(params, batch)
    features = jaxmetrics.inception.forward(inception_params, images)["pool3"]
    return metrics.merge(Metrics.single_from_model_output(features=features, loss=loss, mask=mask))

  metrics = Metrics.empty()
  for batch, mask in padded_batches:            # one shape: one compilation
    metrics = eval_step(metrics, params, batch, mask)
  print(metrics.compute())                      # {'fid': numpy.float64, 'loss': Array}
"""

import hashlib
import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmetrics._errors import InputError
from jaxmetrics.metrics import frechet
from jaxmetrics.metrics import inception_score as _inception_score
from jaxmetrics.metrics import kid as _kid
from jaxmetrics.metrics import manifold
from jaxmetrics.metrics import mmd
from jaxmetrics.metrics import reconstruction
from jaxmetrics.metrics import statistics
from jaxmetrics.metrics.frechet import FrechetReference
from jaxmetrics.metrics.inception_score import InceptionScoreState
from jaxmetrics.metrics.reconstruction import ReconstructionState
from jaxmetrics.metrics.statistics import FeatureBuffer
from jaxmetrics.metrics.statistics import FeatureStats

__all__ = ["ClipScore", "CMMD", "DensityCoverage", "FID", "InceptionScore", "KID", "NNXMetric",
           "PrecisionRecall", "Reconstruction", "SFID", "SemanticSimilarity"]


def _is_tracer(x):
  return isinstance(x, jax.core.Tracer)


def _traced(state):
  return any(_is_tracer(leaf) for leaf in jax.tree.leaves(state))


def _host_only(state):
  if _traced(state):
    name = type(state).__name__
    raise InputError(
        f"{name}.compute: expected a concrete state, got a traced one (inside jit, scan or "
        f"shard_map): {name} draws or counts on the host, so return the state from the jitted "
        "function and call compute() outside")


class _Metric:
  """What every state shares: the class-level configuration and clu's / NNX's entry points."""

  # Set by the factories on a configured subclass: a dict of options; None means unconfigured.
  _config = None
  # The options of a class usable unconfigured (InceptionScore, Reconstruction, ClipScore).
  _defaults = None
  _factory_hint = "configure(...)"

  @classmethod
  def _configured(cls, **config):
    # The description is what merge compares: formed once here, where arrays are digested.
    described = _describe_options(cls.__name__, config)
    subclass = type(cls.__name__, (cls,), {"_config": config, "_described": described,
                                           "__module__": cls.__module__,
                                           "__qualname__": cls.__qualname__})
    return flax.struct.dataclass(subclass)

  @classmethod
  def _options(cls):
    if cls._config is not None:
      return cls._config
    if cls._defaults is not None:
      return cls._defaults
    raise InputError(
        f"{cls.__name__}: expected a configured class, got the bare {cls.__name__}: create it "
        f"with {cls.__name__}.{cls._factory_hint}, which returns the class to use")

  @classmethod
  def _output(cls, outputs, name):
    if name not in outputs:
      raise InputError(
          f"{cls.__name__}.from_model_output: expected a model output named {name!r}, got "
          f"{', '.join(sorted(outputs)) or 'none'} (the name is an option of "
          f"{cls.__name__}.{cls._factory_hint})")
    return outputs[name]

  def _check_same(self, other):
    if not isinstance(other, _Metric) or other._describe() != self._describe():
      got = other._describe() if isinstance(other, _Metric) else type(other).__name__
      raise InputError(
          f"other: expected a {type(self).__name__} state of the same configuration "
          f"({self._describe()}), got {got}: states of different feature spaces or options "
          "cannot be merged")

  def _describe(self):
    cls = type(self)
    if cls._config is not None:
      return cls._described
    return _describe_options(cls.__name__, cls._options())

  def _reduce_merge(self, other):
    return self.merge(other)

  def compute_value(self):
    """``compute()`` as a ``clu.values.Scalar`` (clu's ``Collection.compute_values``)."""
    import clu.values  # clu is optional: only its own Collection calls this.
    return clu.values.Scalar(self.compute())

  @classmethod
  def nnx(cls):
    """This class as a ``flax.nnx.Metric``: ``NNXMetric(cls)``."""
    return NNXMetric(cls)


# ------------------------------------------------------------------------------------ checks ---

def _features(metric, name, x, dim):
  """x as (B, dim) floating features (cast to float32 only by FeatureStats/FeatureBuffer)."""
  if not hasattr(x, "dtype") or not hasattr(x, "shape"):
    x = np.asarray(x)
  if x.ndim != 2 or x.shape[1] != dim or not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputError(
        f"{name}: expected floating features of shape (B, {dim}) for {metric}, got {x.dtype} "
        f"{tuple(x.shape)}" + (": flatten the spatial axes first" if x.ndim > 2 else ""))
  return x


def _mask(name, mask, batch):
  if mask is None:
    return None
  shape = tuple(jnp.shape(mask))
  dtype = jnp.result_type(mask)
  if shape != (batch,) or not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer)):
    raise InputError(f"{name}: expected a bool (or 0/1 integer) mask of shape ({batch},) matching "
                     f"the batch, got {dtype} {shape}")
  return mask


def _describe_options(name, options):
  return f"{name}({', '.join(f'{k}={_fingerprint(v)}' for k, v in options.items())})"


def _fingerprint(value):
  """A short text for an option: its repr, or shape and a digest for arrays (references)."""
  if isinstance(value, FrechetReference):
    value = value.factor
  if isinstance(value, np.ndarray):
    return f"<{value.dtype} {value.shape} sha1:{hashlib.sha1(value.tobytes()).hexdigest()[:8]}>"
  return repr(value)


def _reference_mask(outputs, mask):
  """The reference side's mask and its name in errors: ``reference_mask``, else ``mask``."""
  if "reference_mask" in outputs:
    return outputs["reference_mask"], "reference_mask"
  return mask, "mask (applied to the reference features too: pass reference_mask for theirs)"


def _is_int(x):
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _positive_int(name, value):
  if not _is_int(value) or value < 1:
    raise InputError(f"{name}: expected a positive integer, got {value!r}")
  return int(value)


# ---------------------------------------------------------------------------- sharded folds ---

def _fold_stats(stacked):
  """FeatureStats stacked along axis 0 → one FeatureStats: the k-way Chan merge."""
  dtype = stacked.mean.dtype
  count = jnp.sum(stacked.count, dtype=jnp.int32)
  weight = stacked.count.astype(dtype) / jnp.maximum(count, 1).astype(dtype)
  mean = jnp.sum(weight[:, None] * stacked.mean, axis=0)
  delta = stacked.mean - mean
  spread = jnp.einsum("k,ki,kj->ij", stacked.count.astype(dtype), delta, delta,
                      precision=jax.lax.Precision.HIGHEST)
  return FeatureStats(count=count, mean=mean, scatter=jnp.sum(stacked.scatter, axis=0) + spread)


def _psum_stats(stats, axis_name):
  """Per-device FeatureStats over ``axis_name`` → the same global statistics on every device."""
  dtype = stats.mean.dtype
  count = jax.lax.psum(stats.count, axis_name)
  weight = stats.count.astype(dtype) / jnp.maximum(count, 1).astype(dtype)
  mean = jax.lax.psum(weight * stats.mean, axis_name)
  delta = stats.mean - mean
  local = stats.scatter + stats.count.astype(dtype) * jnp.outer(delta, delta)
  return FeatureStats(count=count, mean=mean, scatter=jax.lax.psum(local, axis_name))


def _grow(buffer, capacity):
  """The buffer with ``capacity`` slots (its rows first): the shape every merge returns."""
  if buffer.capacity == capacity:
    return buffer
  empty = FeatureBuffer.empty(capacity, buffer.features.shape[1], buffer.features.dtype)
  return empty.merge(buffer)


def _fold_buffers(stacked, capacity):
  """FeatureBuffers stacked along axis 0 → one of ``capacity`` slots, rows in stacking order."""
  k, slots, d = stacked.features.shape
  flat_valid = stacked.valid.reshape(k * slots)
  order = jnp.argsort(~flat_valid, stable=True)  # valid rows first, in (buffer, slot) order
  empty = FeatureBuffer.empty(capacity, d, stacked.features.dtype)
  merged = statistics._buffer_update(empty, stacked.features.reshape(k * slots, d)[order],
                                     flat_valid[order], None)
  return merged.replace(dropped=merged.dropped + jnp.sum(stacked.dropped, dtype=jnp.int32))


def _psum_buffers(buffer, axis_name, capacity):
  """Per-device FeatureBuffers over ``axis_name`` → one of ``capacity`` slots on every device.

  Device i writes its rows at the slots after those of devices 0..i-1 (offsets from a ``psum`` of
  the counts) into a zero buffer; a ``psum`` of the buffers then adds each row to zeros only, so the
  rows arrive exactly, in device order. The result is replicated (invariant) by construction, as
  ``shard_map``'s ``out_specs=P()`` requires, where an ``all_gather`` would be typed as varying.
  """
  devices = jax.lax.axis_size(axis_name)
  rank = jax.lax.axis_index(axis_name)
  counts = jax.lax.psum(jnp.zeros((devices,), jnp.int32).at[rank].set(buffer.count), axis_name)
  offset = jnp.sum(jnp.where(jnp.arange(devices) < rank, counts, 0))
  order = jnp.argsort(~buffer.valid, stable=True)  # this device's rows first, in slot order
  valid = buffer.valid[order]
  slot = offset + jnp.arange(buffer.capacity, dtype=jnp.int32)
  fits = valid & (slot < capacity)
  slot = jnp.where(fits, slot, capacity)  # rows that do not count go to a dropped slot
  d = buffer.features.shape[1]
  features = jnp.zeros((capacity, d), buffer.features.dtype).at[slot].set(
      buffer.features[order], mode="drop")
  held = jnp.zeros((capacity,), jnp.int32).at[slot].set(1, mode="drop")
  return FeatureBuffer(
      features=jax.lax.psum(features, axis_name), valid=jax.lax.psum(held, axis_name) > 0,
      count=jax.lax.psum(jnp.sum(fits, dtype=jnp.int32), axis_name),
      dropped=jax.lax.psum(buffer.dropped + jnp.sum(valid & ~fits, dtype=jnp.int32), axis_name))


# ----------------------------------------------------------------------------------- FID ---

def _frechet_reference(reference, keys):
  """A float64 FrechetReference from a file path, (mu, sigma) or a FrechetReference."""
  if isinstance(reference, (str, os.PathLike)):
    reference = statistics.load_stats(reference, keys)
  if isinstance(reference, FrechetReference):
    if _traced(reference):
      raise InputError("reference: expected a concrete FrechetReference, got a traced one: "
                       "configure the metric outside jit")
    # float64 copies: compute() takes the float64 route from them outside jit (a factor computed
    # in float32 keeps its float32 rounding; pass statistics to have it factored in float64).
    return FrechetReference(*(np.asarray(leaf, np.float64) for leaf in
                              (reference.mu, reference.factor, reference.trace)))
  if isinstance(reference, tuple) and len(reference) == 2:
    mu, sigma = (np.asarray(a, np.float64) for a in reference)
    return FrechetReference.create(mu, sigma)
  raise InputError(f"reference: expected a statistics file path, a (mu, sigma) pair or a "
                   f"FrechetReference, got {type(reference).__name__}")


@flax.struct.dataclass
class FID(_Metric):
  r"""Fréchet Inception Distance as a training-loop state: feature statistics, one side or two.

  ``FID.with_reference(reference)`` scores the generated features against fixed statistics: a
  ``.npz`` file (pytorch-fid's ``mu``/``sigma``, read by :func:`~jaxmetrics.load_stats`), a
  ``(mu, sigma)`` pair, or a :class:`~jaxmetrics.FrechetReference`; statistics are factored once,
  in float64, when the class is made. ``FID.configure(dim=d)`` is two-sided: both sides are
  accumulated, the generated from the output ``features``, the reference from
  ``reference_features`` (each step may carry either or both; ``reference_mask``, else ``mask``,
  marks its rows). The value is :func:`~jaxmetrics.frechet_distance` of the two Gaussians
  :math:`\|\mu_1-\mu_2\|^2 + \operatorname{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})`
  with the unbiased covariances of pytorch-fid.

  ``compute()`` outside ``jit``: a ``numpy.float64`` from the float64 route (the float32
  statistics widened exactly), an ``InputError`` for fewer than 2 rows on a side or non-finite
  features. Inside ``jit``: a float32 scalar (the reference enters the program as a constant), NaN
  for fewer than 2 rows. The statistics are float32 either way (float64 only with x64 on).

  Attributes:
    stats: statistics of the generated features.
    reference_stats: statistics of the reference features (two-sided), else None.
  """

  stats: FeatureStats
  reference_stats: FeatureStats | None = None

  _factory_hint = "with_reference(reference) or .configure(dim=...)"
  _default_features = "features"
  _default_keys = ("mu", "sigma")

  @classmethod
  def configure(cls, *, dim=None, reference=None, features=None,
                reference_features="reference_features"):
    """The configured class: against ``reference`` if given (its dimension), else two-sided in
    ``dim``; ``features`` and ``reference_features`` name the model outputs read."""
    features = cls._default_features if features is None else features
    if reference is None:
      return cls._configured(dim=_positive_int("dim", dim), features=features,
                             reference_features=reference_features)
    ref = _frechet_reference(reference, cls._default_keys)
    ref_dim = int(ref.mu.shape[0])
    if dim is not None and dim != ref_dim:
      raise InputError(f"dim: expected the reference's dimension {ref_dim} or None, got {dim!r}")
    return cls._configured(dim=ref_dim, features=features, reference=ref)

  @classmethod
  def with_reference(cls, reference, *, features=None):
    """Against fixed statistics: ``configure(reference=reference, features=features)``."""
    return cls.configure(reference=reference, features=features)

  @classmethod
  def empty(cls):
    options = cls._options()
    stats = FeatureStats.empty(options["dim"])
    return cls(stats=stats, reference_stats=None if "reference" in options else stats)

  @classmethod
  def from_model_output(cls, /, mask=None, **outputs):
    # cls is positional-only in every from_model_output: DINOv2's feature is named "cls".
    options = cls._options()
    dim, name = options["dim"], options["features"]
    empty = FeatureStats.empty(dim)

    def side(key, side_mask, mask_name):
      x = _features(cls.__name__, key, outputs[key], dim)
      return empty.update(x, _mask(mask_name, side_mask, x.shape[0]))

    if "reference" in options:
      cls._output(outputs, name)
      return cls(stats=side(name, mask, "mask"), reference_stats=None)
    ref_name = options["reference_features"]
    if name not in outputs and ref_name not in outputs:
      cls._output(outputs, name)
    ref_mask, ref_mask_name = _reference_mask(outputs, mask)
    return cls(stats=side(name, mask, "mask") if name in outputs else empty,
               reference_stats=side(ref_name, ref_mask, ref_mask_name) if ref_name in outputs
               else empty)

  def merge(self, other):
    self._check_same(other)
    return type(self)(
        stats=self.stats.merge(other.stats),
        reference_stats=None if self.reference_stats is None else
        self.reference_stats.merge(other.reference_stats))

  def reduce(self, axis_name=None):
    """Folds per-device states: along axis 0 (stacked, clu's ``reduce``), or over ``axis_name``
    by ``psum`` under ``shard_map``/``pmap`` (module docstring)."""
    fold = _fold_stats if axis_name is None else lambda s: _psum_stats(s, axis_name)
    return type(self)(stats=fold(self.stats), reference_stats=None if self.reference_stats is None
                      else fold(self.reference_stats))

  def compute(self):
    options = type(self)._options()
    sides = [("generated", self.stats)]
    if self.reference_stats is not None:
      sides.append(("reference", self.reference_stats))
    if _traced(self):
      mu, sigma = self.stats.mean, self.stats.covariance()
      if self.reference_stats is None:
        value = options["reference"].distance(mu, sigma)
      else:
        value = frechet.frechet_distance(mu, sigma, self.reference_stats.mean,
                                         self.reference_stats.covariance())
      enough = jnp.all(jnp.stack([s.count >= 2 for _, s in sides]))
      return jnp.where(enough, value, jnp.nan)
    for side, stats in sides:
      count = int(stats.count)
      if count < 2:
        raise InputError(f"{type(self).__name__}: expected at least 2 {side} samples to estimate a "
                         f"covariance, got {count}: feed more batches before compute()")
    mu, sigma = (np.asarray(a, np.float64) for a in (self.stats.mean, self.stats.covariance()))
    if self.reference_stats is None:
      return options["reference"].distance(mu, sigma)
    return frechet.frechet_distance(
        mu, sigma, np.asarray(self.reference_stats.mean, np.float64),
        np.asarray(self.reference_stats.covariance(), np.float64))


@flax.struct.dataclass
class SFID(FID):
  """sFID (Nash et al. 2021, as guided-diffusion's evaluator): :class:`FID` on the ``"spatial"``
  feature of :func:`jaxmetrics.inception.forward` (the first 7 channels of ``mixed_6/conv``
  flattened, 2023-d), by default read from the model output ``spatial``; a statistics file is
  read at its ``mu_s``/``sigma_s`` arrays (guided-diffusion's reference batches)."""

  _default_features = "spatial"
  _default_keys = ("mu_s", "sigma_s")


# ------------------------------------------------------------------------------------ IS ---

@flax.struct.dataclass
class InceptionScore(_Metric):
  """Inception Score as a training-loop state: :class:`~jaxmetrics.InceptionScoreState`.

  Reads the logits from the output ``logits_unbiased`` (the 1008 logits without the fc bias that
  improved-gan scores; ``configure(logits=...)`` renames it). Rows go to split
  ``index % splits`` when the outputs carry a global row ``index`` (independent of batching and
  sharding), else round-robin within each batch (rows ``j % splits`` of the batch: balanced when
  the batch size is a multiple of ``splits``). This is the split of improved-gan and torch-fidelity
  for the interleaved order, not their contiguous parts (see ``InceptionScoreState``).

  ``compute()``: ``(mean, std)`` over the splits. Outside ``jit`` two ``numpy.float64`` from the
  float32 sums (an ``InputError`` for an empty split or non-finite logits); inside ``jit`` float32,
  NaN where the host would raise.
  """

  state: InceptionScoreState

  _factory_hint = "configure(num_classes=..., splits=...)"
  _defaults = dict(num_classes=_inception_score.NUM_CLASSES, splits=10, logits="logits_unbiased")

  @classmethod
  def configure(cls, *, num_classes=_inception_score.NUM_CLASSES, splits=10,
                logits="logits_unbiased"):
    InceptionScoreState.empty(num_classes, splits, jnp.float32)  # checks the options
    return cls._configured(num_classes=int(num_classes), splits=int(splits), logits=logits)

  @classmethod
  def empty(cls):
    o = cls._options()
    return cls(state=InceptionScoreState.empty(o["num_classes"], o["splits"], jnp.float32))

  @classmethod
  def from_model_output(cls, /, mask=None, index=None, **outputs):
    o = cls._options()
    logits = cls._output(outputs, o["logits"])
    if not hasattr(logits, "dtype"):
      logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != o["num_classes"] or not jnp.issubdtype(
        logits.dtype, jnp.floating):
      raise InputError(f"{o['logits']}: expected floating logits of shape (B, {o['num_classes']}) "
                       f"for InceptionScore, got {logits.dtype} {tuple(logits.shape)}")
    mask = _mask("mask", mask, logits.shape[0])
    split = None
    if index is not None:
      if tuple(jnp.shape(index)) != logits.shape[:1] or not jnp.issubdtype(
          jnp.result_type(index), jnp.integer):
        raise InputError(f"index: expected integer row indices of shape ({logits.shape[0]},), got "
                         f"{jnp.result_type(index)} {tuple(jnp.shape(index))}")
      split = jnp.asarray(index, jnp.int32) % o["splits"]
    return cls(state=cls.empty().state.update(logits, mask, split))

  def merge(self, other):
    self._check_same(other)
    return type(self)(state=self.state.merge(other.state))

  def reduce(self, axis_name=None):
    if axis_name is None:
      return type(self)(state=jax.tree.map(lambda a: jnp.sum(a, axis=0), self.state))
    return type(self)(state=jax.lax.psum(self.state, axis_name))

  def compute(self):
    if _traced(self):
      return self.state.compute()
    self.state.compute()  # the host checks: empty splits, non-finite logits, bad split indices
    num, sum_p, sum_plogp = (np.asarray(a, np.float64) for a in jax.device_get(
        (self.state.num, self.state.sum_p, self.state.sum_plogp)))
    p_bar = sum_p / num[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
      entropy = np.sum(np.where(p_bar > 0, p_bar * np.log(p_bar), 0.0), axis=1)
    scores = np.exp(sum_plogp / num - entropy)
    return np.float64(np.mean(scores)), np.float64(np.std(scores))


# ------------------------------------------------------------------- buffer-based metrics ---

@flax.struct.dataclass
class _BufferMetric(_Metric):
  """Generated rows and, two-sided, reference rows in bounded buffers of a fixed capacity.

  ``from_model_output`` returns buffers the size of the batch; ``merge`` and ``reduce`` always
  return buffers of the configured ``capacity`` (so a state carried through a jitted loop keeps one
  shape). Rows beyond the capacity are counted as dropped and ``compute()`` raises for them.
  """

  generated: FeatureBuffer
  reference: FeatureBuffer | None = None

  _factory_hint = "configure(capacity=..., dim=...)"

  @classmethod
  def _configure(cls, capacity, dim, reference, features, reference_features, **options):
    capacity = _positive_int("capacity", capacity)
    if reference is not None:
      if _is_tracer(reference):
        raise InputError("reference: expected concrete reference features, got a traced array: "
                         "configure the metric outside jit")
      reference = np.asarray(reference)
      if reference.ndim != 2 or not np.issubdtype(reference.dtype, np.floating):
        raise InputError(f"reference: expected floating features of shape (N, d), got "
                         f"{reference.dtype} {reference.shape}")
      if dim is not None and dim != reference.shape[1]:
        raise InputError(f"dim: expected the reference's dimension {reference.shape[1]} or None, "
                         f"got {dim!r}")
      dim = reference.shape[1]
    return cls._configured(capacity=capacity, dim=_positive_int("dim", dim), reference=reference,
                           features=features, reference_features=reference_features, **options)

  @classmethod
  def empty(cls):
    o = cls._options()
    buffer = FeatureBuffer.empty(o["capacity"], o["dim"])
    return cls(generated=buffer, reference=None if o["reference"] is not None else buffer)

  @classmethod
  def from_model_output(cls, /, mask=None, **outputs):
    o = cls._options()
    name, ref_name = o["features"], o["reference_features"]

    def side(key, side_mask, mask_name):
      x = _features(cls.__name__, key, outputs[key], o["dim"])
      return FeatureBuffer.empty(x.shape[0], o["dim"]).update(
          x, _mask(mask_name, side_mask, x.shape[0]))

    if o["reference"] is not None:
      cls._output(outputs, name)
      return cls(generated=side(name, mask, "mask"), reference=None)
    if name not in outputs and ref_name not in outputs:
      cls._output(outputs, name)
    none = FeatureBuffer.empty(1, o["dim"])
    ref_mask, ref_mask_name = _reference_mask(outputs, mask)
    return cls(generated=side(name, mask, "mask") if name in outputs else none,
               reference=side(ref_name, ref_mask, ref_mask_name) if ref_name in outputs
               else none)

  def merge(self, other):
    self._check_same(other)
    capacity = type(self)._options()["capacity"]
    merge = lambda a, b: _grow(a, capacity).merge(b)
    return type(self)(generated=merge(self.generated, other.generated),
                      reference=None if self.reference is None else
                      merge(self.reference, other.reference))

  def reduce(self, axis_name=None):
    """Folds per-device buffers in device order, along axis 0 or over ``axis_name`` by ``psum``
    (``_psum_buffers``); the result has the configured capacity."""
    capacity = type(self)._options()["capacity"]
    if axis_name is None:
      fold = lambda b: _fold_buffers(b, capacity)
    else:
      fold = lambda b: _psum_buffers(b, axis_name, capacity)
    return type(self)(generated=fold(self.generated),
                      reference=None if self.reference is None else fold(self.reference))

  def _rows(self):
    """(generated, reference) rows on the host; the reference is the configured array if any."""
    _host_only(self)
    generated = self.generated.compute()
    reference = type(self)._options()["reference"]
    if reference is None:
      reference = self.reference.compute()
    return generated, reference


@flax.struct.dataclass
class KID(_BufferMetric):
  """Kernel Inception Distance as a training-loop state: buffers of generated (and reference) rows.

  ``KID.configure(capacity=C, dim=d)`` keeps up to ``C`` rows a side, fed from the outputs
  ``features`` and ``reference_features``; ``reference=array`` instead fixes the reference rows.
  ``compute()`` (outside ``jit`` only) is :func:`~jaxmetrics.kid` of the rows, widened to float64
  (torch-fidelity's ``kid_features_to_metric`` with the same options and seed), as two
  ``numpy.float64`` ``(mean, std)``; an ``InputError`` when a side has fewer rows than
  ``subset_size`` (default 1000, torch-fidelity's) or rows were dropped for capacity.
  """

  @classmethod
  def configure(cls, *, capacity, dim=None, reference=None, subsets=100, subset_size=1000,
                degree=3, gamma=None, coef0=1.0, seed=2020, features="features",
                reference_features="reference_features"):
    return cls._configure(capacity, dim, reference, features, reference_features,
                          subsets=subsets, subset_size=subset_size, degree=degree, gamma=gamma,
                          coef0=coef0, seed=seed)

  def compute(self):
    o = type(self)._options()
    generated, reference = self._rows()
    m = o["subset_size"]
    if min(len(generated), len(reference)) < m:
      raise InputError(f"KID: expected at least subset_size={m} rows on each side, got "
                       f"{len(generated)} generated and {len(reference)} reference: feed more "
                       "samples or configure a smaller subset_size")
    return _kid.kid(np.asarray(generated, np.float64), np.asarray(reference, np.float64),
                    subsets=o["subsets"], subset_size=m, degree=o["degree"], gamma=o["gamma"],
                    coef0=o["coef0"], seed=o["seed"])


@flax.struct.dataclass
class CMMD(_BufferMetric):
  """CMMD as a training-loop state: buffers of generated (and reference) CLIP embeddings.

  ``CMMD.configure(capacity=C, dim=768)`` keeps up to ``C`` rows a side, fed from the outputs
  ``features`` (the L2-normalised CLIP ViT-L/14@336px image embeddings that
  :data:`jaxmetrics.networks.clip.CMMD_NETWORK` gives) and ``reference_features``;
  ``reference=array`` fixes the reference rows. ``compute()`` (outside ``jit`` only) is
  :func:`~jaxmetrics.mmd_rbf` of the rows widened to float64 (google-research/cmmd's
  ``distance.mmd``: 1000 · biased MMD², σ = 10, unless ``sigma`` / ``scale`` say otherwise), a
  ``numpy.float64``; an ``InputError`` when a side is empty or rows were dropped for capacity.
  """

  @classmethod
  def configure(cls, *, capacity, dim=None, reference=None, sigma=mmd.SIGMA, scale=mmd.SCALE,
                features="features", reference_features="reference_features"):
    return cls._configure(capacity, dim, reference, features, reference_features, sigma=sigma,
                          scale=scale)

  def compute(self):
    o = type(self)._options()
    generated, reference = self._rows()
    if min(len(generated), len(reference)) < 1:
      raise InputError(f"CMMD: expected at least 1 row on each side, got {len(generated)} "
                       f"generated and {len(reference)} reference")
    return mmd.mmd_rbf(np.asarray(generated, np.float64), np.asarray(reference, np.float64),
                       sigma=o["sigma"], scale=o["scale"])


@flax.struct.dataclass
class PrecisionRecall(_BufferMetric):
  """Improved precision and recall (k-NN manifolds, k = 3) as a training-loop state.

  Buffers as :class:`KID`. ``compute()`` (outside ``jit`` only) is
  :func:`~jaxmetrics.precision_recall` ``(generated, reference, k=k)`` (ADM's and torch-fidelity's
  definition), ``{"precision": float, "recall": float}``; an ``InputError`` when a side has no
  more than ``k`` rows.
  """

  @classmethod
  def configure(cls, *, capacity, dim=None, reference=None, k=3, features="features",
                reference_features="reference_features"):
    return cls._configure(capacity, dim, reference, features, reference_features,
                          k=_positive_int("k", k))

  def compute(self):
    generated, reference = self._rows()
    k = type(self)._options()["k"]
    precision, recall = manifold.precision_recall(generated, reference, k=k)
    return {"precision": precision, "recall": recall}


@flax.struct.dataclass
class DensityCoverage(_BufferMetric):
  """Density and coverage (prdc, k = 5) as a training-loop state.

  Buffers as :class:`KID`. ``compute()`` (outside ``jit`` only) is
  :func:`~jaxmetrics.density_coverage` ``(generated, reference, k=k)`` (prdc's ``compute_prdc``),
  ``{"density": float, "coverage": float}``; an ``InputError`` when the reference has no more than
  ``k`` rows or the generated side fewer than 2.
  """

  @classmethod
  def configure(cls, *, capacity, dim=None, reference=None, k=5, features="features",
                reference_features="reference_features"):
    return cls._configure(capacity, dim, reference, features, reference_features,
                          k=_positive_int("k", k))

  def compute(self):
    generated, reference = self._rows()
    k = type(self)._options()["k"]
    density, coverage = manifold.density_coverage(generated, reference, k=k)
    return {"density": density, "coverage": coverage}


# -------------------------------------------------------------------------- reconstruction ---

@flax.struct.dataclass
class Reconstruction(_Metric):
  """Mean reconstruction error as a training-loop state: :class:`~jaxmetrics.ReconstructionState`.

  ``Reconstruction.configure(kind="psnr", data_range=1.0)`` (kinds ``"mse"`` (the default),
  ``"mae"``, ``"bce"``, ``"bce_logits"``, ``"psnr"``, ``"ssim"``, as
  :func:`~jaxmetrics.reconstruction_error`, :func:`~jaxmetrics.psnr` and :func:`~jaxmetrics.ssim`
  define them) reads the targets from the output ``x`` and the reconstructions from ``x_hat``.
  ``compute()``: the mean per-sample value; outside ``jit`` a ``numpy.float64`` of the compensated
  float32 sum (an ``InputError`` for no rows or non-finite values), inside ``jit`` float32 (NaN
  there).
  """

  state: ReconstructionState

  _factory_hint = "configure(kind=...)"
  _defaults = dict(kind="mse", data_range=None, x="x", x_hat="x_hat", ssim_options=())

  @classmethod
  def configure(cls, kind="mse", *, data_range=None, x="x", x_hat="x_hat", **ssim_options):
    ReconstructionState.empty(kind, dtype=jnp.float32, data_range=data_range, **ssim_options)
    return cls._configured(kind=kind, data_range=data_range, x=x, x_hat=x_hat,
                           ssim_options=tuple(sorted(ssim_options.items())))

  @classmethod
  def empty(cls):
    o = cls._options()
    return cls(state=ReconstructionState.empty(o["kind"], dtype=jnp.float32,
                                               data_range=o["data_range"],
                                               **dict(o["ssim_options"])))

  @classmethod
  def from_model_output(cls, /, mask=None, **outputs):
    o = cls._options()
    x, x_hat = cls._output(outputs, o["x"]), cls._output(outputs, o["x_hat"])
    return cls(state=cls.empty().state.update(x, x_hat, mask))

  def merge(self, other):
    self._check_same(other)
    return type(self)(state=self.state.merge(other.state))

  def reduce(self, axis_name=None):
    if axis_name is not None:
      return type(self)(state=jax.lax.psum(self.state, axis_name))
    stacked = self.state
    first = jax.tree.map(lambda a: a[0], stacked)
    rest = jax.tree.map(lambda a: a[1:], stacked)
    state, _ = jax.lax.scan(lambda s, t: (s.merge(t), None), first, rest)
    return type(self)(state=state)

  def compute(self):
    if _traced(self):
      return self.state.compute()
    self.state.compute()  # the host checks: no rows, invalid values
    total, compensation, count = jax.device_get(
        (self.state.total, self.state.compensation, self.state.count))
    return np.float64((np.float64(total) + np.float64(compensation)) / int(count))


# ---------------------------------------------------------------------------- CLIP metrics ---

def _unit(e):
  """Rows scaled to unit norm, and whether each row was finite with a nonzero norm."""
  norm = jnp.linalg.norm(e, axis=1)
  ok = jnp.all(jnp.isfinite(e), axis=1) & (norm > 0)
  return jnp.where(ok[:, None], e / jnp.where(ok, norm, 1)[:, None], 0), ok


def _embeddings(metric, name, e, dim=None):
  if not hasattr(e, "dtype") or not hasattr(e, "shape"):
    e = np.asarray(e)
  if e.ndim != 2 or (dim is not None and e.shape[1] != dim) or not jnp.issubdtype(
      e.dtype, jnp.floating):
    want = "(B, D)" if dim is None else f"(B, {dim})"
    raise InputError(f"{name}: expected floating embeddings of shape {want} for {metric}, got "
                     f"{e.dtype} {tuple(e.shape)}")
  return jnp.asarray(e, jnp.float32)


@flax.struct.dataclass
class ClipScore(_Metric):
  """CLIP score (torchmetrics' ``CLIPScore``) as a training-loop state: Σ 100·cos and a count.

  Reads CLIP image and text embeddings of matching pairs from the outputs ``image_embeddings``
  and ``text_embeddings`` (:func:`jaxmetrics.clip.image_embeddings` / ``text_embeddings``).
  ``compute()`` is ``max(mean_i 100·cos(image_i, text_i), 0)``, the clamp on the mean as
  torchmetrics' ``CLIPScore.compute`` and :func:`~jaxmetrics.clip_score` apply it. The sum is
  float32 with Neumaier's compensation (as ``ReconstructionState``); outside ``jit`` the result is a
  ``numpy.float64`` (an ``InputError`` for no pairs or a zero/non-finite embedding), inside float32
  (NaN there).
  """

  total: jax.Array
  compensation: jax.Array
  count: jax.Array
  num_invalid: jax.Array

  _defaults = dict(image_embeddings="image_embeddings", text_embeddings="text_embeddings")

  @classmethod
  def configure(cls, *, image_embeddings="image_embeddings", text_embeddings="text_embeddings"):
    return cls._configured(image_embeddings=image_embeddings, text_embeddings=text_embeddings)

  @classmethod
  def empty(cls):
    zero = jnp.zeros((), jnp.int32)
    return cls(total=jnp.zeros((), jnp.float32), compensation=jnp.zeros((), jnp.float32),
               count=zero, num_invalid=zero)

  @classmethod
  def from_model_output(cls, /, mask=None, **outputs):
    o = cls._options()
    images = _embeddings("ClipScore", o["image_embeddings"],
                         cls._output(outputs, o["image_embeddings"]))
    texts = _embeddings("ClipScore", o["text_embeddings"],
                        cls._output(outputs, o["text_embeddings"]), images.shape[1])
    if texts.shape[0] != images.shape[0]:
      raise InputError(f"{o['text_embeddings']}: expected one text per image, {images.shape[0]} "
                       f"rows, got {texts.shape[0]}")
    mask = _mask("mask", mask, images.shape[0])
    keep = jnp.ones(images.shape[:1], bool) if mask is None else jnp.asarray(mask).astype(bool)
    return _clip_update(cls, images, texts, keep)

  def merge(self, other):
    self._check_same(other)
    total, error = reconstruction._two_sum(self.total, other.total)
    return type(self)(total=total, compensation=self.compensation + other.compensation + error,
                      count=self.count + other.count,
                      num_invalid=self.num_invalid + other.num_invalid)

  def reduce(self, axis_name=None):
    if axis_name is not None:
      return jax.lax.psum(self, axis_name)
    first = jax.tree.map(lambda a: a[0], self)
    rest = jax.tree.map(lambda a: a[1:], self)
    return jax.lax.scan(lambda s, t: (s.merge(t), None), first, rest)[0]

  def compute(self):
    if _traced(self):
      value = jnp.maximum((self.total + self.compensation) / jnp.maximum(self.count, 1), 0)
      return jnp.where((self.count > 0) & (self.num_invalid == 0), value, jnp.nan)
    total, compensation, count, invalid = (int(a) if a.dtype == np.int32 else np.float64(a) for a
                                           in jax.device_get((self.total, self.compensation,
                                                              self.count, self.num_invalid)))
    if invalid:
      raise InputError(f"image_embeddings, text_embeddings: expected finite embeddings of nonzero "
                       f"norm, got {invalid} unmasked pair(s) that were not")
    if not count:
      raise InputError("ClipScore: expected at least one image-text pair, got none: feed batches "
                       "before compute()")
    return np.float64(max((total + compensation) / count, 0.0))


def _clip_update(cls, images, texts, keep):
  u, ok_u = _unit(images)
  v, ok_v = _unit(texts)
  ok = ok_u & ok_v
  cos = 100 * jnp.sum(u * v, axis=1)
  accepted = keep & ok
  zero = jnp.zeros((), jnp.float32)
  return cls(total=jnp.sum(jnp.where(accepted, cos, 0)), compensation=zero,
             count=jnp.sum(accepted, dtype=jnp.int32),
             num_invalid=jnp.sum(keep & ~ok, dtype=jnp.int32))


@flax.struct.dataclass
class SemanticSimilarity(_Metric):
  r"""Semantic similarity (self-consistency per prompt) as a training-loop state.

  ``SemanticSimilarity.configure(num_prompts=P, dim=D)`` keeps, per prompt, the count, the sum of
  the L2-normalised CLIP image embeddings :math:`\sum u` and :math:`\sum\|u\|^2`, fed from the
  outputs ``image_embeddings`` (B, D) and ``prompt`` (B,) (integer prompt ids in [0, P)).
  ``compute()`` is :func:`~jaxmetrics.semantic_similarity`'s score: per prompt the mean pairwise
  cosine :math:`c_p = (\|\sum u\|^2 - \sum\|u\|^2)/(N_p(N_p-1))`, then the mean over prompts of
  :math:`100\max(c_p, 0)`; in float64 on the host from the float32 sums (only outside ``jit``: an
  ``InputError`` for a prompt with fewer than 2 images, an id out of range or an invalid
  embedding). The float32 sums round :math:`c_p` by ~N·eps relative to the terms it cancels.
  """

  count: jax.Array
  sum_u: jax.Array
  sum_sq: jax.Array
  num_invalid: jax.Array

  _factory_hint = "configure(num_prompts=..., dim=...)"

  @classmethod
  def configure(cls, *, num_prompts, dim, image_embeddings="image_embeddings", prompt="prompt"):
    return cls._configured(num_prompts=_positive_int("num_prompts", num_prompts),
                           dim=_positive_int("dim", dim), image_embeddings=image_embeddings,
                           prompt=prompt)

  @classmethod
  def empty(cls):
    o = cls._options()
    p = o["num_prompts"]
    return cls(count=jnp.zeros((p,), jnp.int32), sum_u=jnp.zeros((p, o["dim"]), jnp.float32),
               sum_sq=jnp.zeros((p,), jnp.float32), num_invalid=jnp.zeros((), jnp.int32))

  @classmethod
  def from_model_output(cls, /, mask=None, **outputs):
    o = cls._options()
    e = _embeddings("SemanticSimilarity", o["image_embeddings"],
                    cls._output(outputs, o["image_embeddings"]), o["dim"])
    prompt = cls._output(outputs, o["prompt"])
    if tuple(jnp.shape(prompt)) != e.shape[:1] or not jnp.issubdtype(jnp.result_type(prompt),
                                                                      jnp.integer):
      raise InputError(f"{o['prompt']}: expected integer prompt ids of shape ({e.shape[0]},), got "
                       f"{jnp.result_type(prompt)} {tuple(jnp.shape(prompt))}")
    mask = _mask("mask", mask, e.shape[0])
    keep = jnp.ones(e.shape[:1], bool) if mask is None else jnp.asarray(mask).astype(bool)
    u, ok = _unit(e)
    prompt = jnp.asarray(prompt, jnp.int32)
    ok = ok & (prompt >= 0) & (prompt < o["num_prompts"])
    onehot = ((prompt[:, None] == jnp.arange(o["num_prompts"])) & (keep & ok)[:, None])
    onehot_f = onehot.astype(jnp.float32)
    highest = jax.lax.Precision.HIGHEST
    return cls(count=jnp.sum(onehot, axis=0, dtype=jnp.int32),
               sum_u=jnp.matmul(onehot_f.T, u, precision=highest),
               sum_sq=jnp.matmul(onehot_f.T, jnp.sum(u * u, axis=1), precision=highest),
               num_invalid=jnp.sum(keep & ~ok, dtype=jnp.int32))

  def merge(self, other):
    self._check_same(other)
    return jax.tree.map(jnp.add, self, other)

  def reduce(self, axis_name=None):
    if axis_name is not None:
      return jax.lax.psum(self, axis_name)
    return jax.tree.map(lambda a: jnp.sum(a, axis=0), self)

  def compute(self):
    _host_only(self)
    count, sum_u, sum_sq, invalid = jax.device_get(
        (self.count, self.sum_u, self.sum_sq, self.num_invalid))
    if invalid:
      raise InputError(f"image_embeddings, prompt: expected finite embeddings of nonzero norm and "
                       f"ids in [0, {count.shape[0]}), got {int(invalid)} unmasked row(s) that "
                       "were not")
    few = np.flatnonzero(count < 2)
    if few.size:
      raise InputError(f"SemanticSimilarity: expected at least 2 images per prompt to form a pair, "
                       f"got {int(count[few[0]])} for prompt {int(few[0])}")
    s = np.asarray(sum_u, np.float64)
    n = count.astype(np.float64)
    cosine = (np.einsum("pd,pd->p", s, s) - np.asarray(sum_sq, np.float64)) / (n * (n - 1))
    return np.float64(np.mean(100 * np.maximum(cosine, 0)))


# ------------------------------------------------------------------------------------- NNX ---

class NNXMetric(nnx.Metric):
  """A :mod:`jaxmetrics.training` state class as a ``flax.nnx.Metric``.

  ``NNXMetric(FID.with_reference(ref))`` holds ``FID.empty()`` in one ``nnx.metrics.MetricState``;
  ``update(**outputs)`` merges ``from_model_output(**outputs)`` into it (unknown outputs ignored, as
  ``nnx.MultiMetric`` passes every output to every metric), ``reset()`` empties it and ``compute()``
  is the state's: float64 outside ``nnx.jit``, float32 (or, for KID and the k-NN metrics, an
  ``InputError``) inside, as the module docstring says.

  Example::

    metrics = nnx.MultiMetric(fid=NNXMetric(FID.with_reference(ref)),
                              loss=nnx.metrics.Average("loss"))

    @nnx.jit
    def eval_step(model, metrics, batch, mask):
      metrics.update(features=model.features(batch), loss=model.loss(batch), mask=mask)

    metrics.compute()   # {'fid': numpy.float64, 'loss': Array}
  """

  def __init__(self, metric):
    if not (isinstance(metric, type) and issubclass(metric, _Metric)):
      raise InputError(f"metric: expected a jaxmetrics.training state class (e.g. "
                       f"FID.with_reference(ref)), got {metric!r}")
    self.metric = metric
    self.state = nnx.metrics.MetricState(metric.empty())

  def reset(self):
    self.state.set_value(self.metric.empty())

  def update(self, /, **outputs):
    self.state.set_value(self.state.get_value().merge(self.metric.from_model_output(**outputs)))

  def compute(self):
    return self.state.get_value().compute()
