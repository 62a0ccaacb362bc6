"""k-NN manifold metrics: precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020).

Every function takes ``(generated, reference)`` in that order, the order of ``jaxmetrics eval A B``
(A generated, B the reference set). The peers take them in other orders:

================================  ==================================  =============================
peer call                         generated (samples, "fake")         reference (real data)
================================  ==================================  =============================
jaxmetrics (this module)          1st argument ``generated``          2nd argument ``reference``
ADM ``compute_prec_recall``       2nd, ``activations_sample``         1st, ``activations_ref``
torch-fidelity ``prc_features_    1st, ``features_1`` (input1)        2nd, ``features_2`` (input2)
to_metric``
prdc ``compute_prdc``             2nd, ``fake_features``              1st, ``real_features``
================================  ==================================  =============================

(ADM is openai/guided-diffusion ``evaluations/evaluator.py``; swapping the two sets swaps precision
and recall, so the mapping matters.)

Each point ``x`` of a set gets a ball of squared radius ``r_k(x)²``, the k-th smallest squared
distance from ``x`` to the points of its own set, counting ``x`` itself at distance 0 (the
``(k+1)``-th entry of its sorted distance row: the distance to its k-th nearest other point; a
duplicate of ``x`` is such a point, at distance 0). With ``G`` generated and ``R`` reference::

  precision = |{g ∈ G : ∃ r ∈ R, ‖g − r‖² <= r_k(r)²}| / |G|       (k = 3)
  recall    = |{r ∈ R : ∃ g ∈ G, ‖r − g‖² <= r_k(g)²}| / |R|
  density   = (1/k) · (1/|G|) · Σ_{g ∈ G} |{r ∈ R : ‖g − r‖ < r_k(r)}|    (k = 5)
  coverage  = |{r ∈ R : min_{g ∈ G} ‖r − g‖ < r_k(r)}| / |R|

Precision/recall follow ADM's ``ManifoldEstimator`` (``manifold_radii``: index ``k`` of each
partitioned row of squared distances, ``nhood_sizes=(3,)``; ``evaluate_pr`` and
``DistanceBlock``: ``dist <= radius``) and torch-fidelity's ``metric_prc.py``
(``kthvalue(neighborhood + 1)`` of ``torch.cdist`` rows, ``<=``, ``prc_neighborhood=3``).
Density/coverage follow prdc's ``prdc/prdc.py`` ``compute_prdc`` (``get_kth_value(distances,
k=nearest_k + 1)``, strict ``<`` everywhere; ``nearest_k`` has no default there, 5 is the paper's).
Note that prdc's own precision and recall use ``<`` where ADM and torch-fidelity use ``<=``: they
differ when a distance equals a radius, e.g. a generated copy of a reference point whose radius is
0 because the reference set holds that point twice; this module follows ADM for precision/recall.
Comparing squared distances decides the same as comparing distances (the square root is
increasing), so both pairs of metrics are computed from squared distances.

Distances are ``max(‖u‖² − 2u·v + ‖v‖², 0)`` in float32 as ADM's ``_batch_pairwise_distances``
writes them (in the cross pass ``u`` is the reference point, as in ADM's ``evaluate_pr``), with the
product at ``Precision.HIGHEST`` (GPUs would otherwise use TF32, TPUs bfloat16 passes). ADM itself
evaluates them in float16 and recomputes a 10000×10000 block in float32 only if one of its float16
values is not finite; torch-fidelity uses ``torch.cdist`` in float32, prdc scikit-learn's
``pairwise_distances`` (float32 inputs are upcast to float64 by chunks). So the metrics agree with
every peer exactly whenever no squared distance lies within float32 round-off
(~d·eps·(‖u‖ + ‖v‖)²) of the radius it is compared with, and may differ by such borderline points
otherwise. Features are cast to float32 first (float64 inputs too).

How it runs. Three blockwise passes, none of which holds an ``N×N`` matrix: the k-NN radii of the
reference set, those of the generated set (only for recall) and one cross pass that yields all four
metrics. In each pass the query rows are sharded over a 1-D mesh of devices (default: every device
of every process), the other set is replicated, and each device walks its rows in blocks of
``block_size`` and, for each, the other set in column blocks of its own ``block_size``: a
``block×block`` float32 tile at a time. The cross pass keeps per query row counts (precision,
density) and per column block the "inside some query's ball" flags (recall) and "some query
strictly inside its ball" flags (coverage: the nearest query is inside exactly when some query is),
combined over devices with ``pmax``. The two k-NN passes use that a set's distances to itself are
symmetric: the tile of blocks ``I < J`` is computed once and updates the running ``k + 1`` smallest
distances of both ``I``'s rows and ``J``'s, so a k-NN pass does half the products of a full one,
plus half of the diagonal tiles (row blocks are dealt to the devices cyclically so that each gets
the same share of tiles). The update is a ``lax.top_k``; on a CPU, where its cost is per value
sorted, only the ``k + 1`` chunks of 16 values of each tile row (and column) with the smallest
minima are searched, without a sort, which is exact (:func:`_smallest`); that needs tiles of whole
chunks, at least ``2(k + 1)`` of them (default tiles are from 256 rows per device on), smaller or
ragged tiles use ``lax.top_k``. A transposed tile holds ``‖u‖² − 2u·v + ‖v‖²`` with the roles of
``u`` and ``v`` swapped, which can round differently in the last bits; like every other rounding
difference from the peers, that decides a result only for a distance within float32 round-off of a
radius. Both sets are padded with zero rows to a multiple of ``block × devices`` rows (the default
block is sized to keep that padding small, :func:`_tile_rows`; NumPy inputs are padded on the host,
into an array the CPU devices use in place, :func:`_padded`). A padded row's squared norm is +inf,
so its distances are +inf and it is never anyone's neighbour, and its ball has radius −inf: no tile
needs a mask. Counts are int32 on the device and the fractions are formed on the host from exact
integer counts, in the peers' order of operations (density as prdc's ``(1/k) · mean``). One
compilation per (shapes, k, block, mesh, screen).

The cross pass's bfloat16 screen. On CPUs with bfloat16 dot instructions and from 8 reference
blocks on (:func:`_screen`), the cross pass takes each tile's product in bfloat16 with float32
accumulation, 1.75× as fast, and bounds rigorously how far each of those squared distances can be
from the float32 one (:func:`_screened_tile`): a pair whose bounds lie on one side of every radius
it is compared with is decided from it, the few others ("in doubt": ~3.5 per reference point on
the benchmark's features) are recomputed in float32 from their two rows. The decisions are those
of the float32 pass, up to the same float32 round-off as ever; the k-NN passes stay in float32
(the k-th smallest distance itself is needed, not a comparison). A tile with more pairs in doubt
than it has slots for is computed in float32 instead, and a device stops screening after
``_SCREEN_MAX_OVERFLOWS`` of those. On the benchmark's 2048-d features and 2-core CPU it saves
0.5 s of 4.6 at 10 000 + 10 000 points, 8.5 s of 113 at 50 000 + 50 000.
Time and memory against prdc and torch-fidelity: ``benchmarks/manifold.py``.
"""

import dataclasses
import functools
import mmap
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmetrics._errors import InputError

_HIGHEST = jax.lax.Precision.HIGHEST
_U32 = 2.0**-24  # float32's unit round-off

# A block×block float32 tile is block² × 4 bytes; a step holds a few (distances, the comparisons,
# the top-k candidates). 1024 keeps a CPU step's temporaries near 16 MB and its product large
# enough for the BLAS kernels; accelerators want larger tiles to fill their cores (4096: 64 MB).
_DEFAULT_BLOCK = {"cpu": 1024}
_DEFAULT_BLOCK_ACCELERATOR = 4096
# Default tiles are whole multiples of _ALIGN rows once they have _ALIGN_FROM rows (_tile_rows).
_ALIGN = 16
_ALIGN_FROM = 256
# Chunk of a tile row that the CPU k-NN passes select by (_smallest): of 8, 16, 32 and 64 on a
# 1024² tile at kk = 6, 16 is the fastest (0.93 ms per rows or columns update, 8: 1.06–1.08 ms,
# 32 and 64: 4.5–6.6 ms, whose merge has kk·chunk candidates; ``benchmarks/manifold.py
# --selection``).
_CHUNK = {"cpu": 16}
# The cross pass's bfloat16 screen (_screened_tile): the pairs in doubt are found by chunks of
# this many columns; it runs from this many reference blocks on (_screen) and stops on a device
# after this many tiles had more pairs in doubt than slots (_cross).
_SCREEN_CHUNK = 16
_SCREEN_MIN_BLOCKS = 8
_SCREEN_MAX_OVERFLOWS = 4
# Alignment of the host arrays handed to the devices where mmap cannot give pages (_host_array): a
# page, more than XLA's CPU client needs to use them in place.
_HOST_ALIGN = 4096


@dataclasses.dataclass(frozen=True)
class ManifoldMetrics:
  """Per-sample results of :func:`manifold_metrics` and the four metrics formed from them.

  Attributes:
    generated_inside: bool ``(N_gen,)``, generated point inside some reference ball of radius
      ``r_{pr_k}`` (``<=``): precision's numerator.
    reference_inside: bool ``(N_ref,)``, reference point inside some generated ball of radius
      ``r_{pr_k}`` (``<=``): recall's numerator.
    generated_ball_counts: int32 ``(N_gen,)``, number of reference balls of radius ``r_{dc_k}``
      strictly containing the generated point: density's numerator.
    reference_covered: bool ``(N_ref,)``, nearest generated point strictly inside the reference
      point's ball of radius ``r_{dc_k}``: coverage's numerator.
    pr_k: neighbourhood of precision/recall; ``None`` (and the first two fields ``None``) when
      they were not asked for.
    dc_k: neighbourhood of density/coverage; ``None`` (and the last two fields ``None``) when
      they were not asked for.
  """
  generated_inside: np.ndarray | None
  reference_inside: np.ndarray | None
  generated_ball_counts: np.ndarray | None
  reference_covered: np.ndarray | None
  pr_k: int | None
  dc_k: int | None

  @property
  def precision(self) -> float:
    return _fraction(self.generated_inside, "precision", "pr_k")

  @property
  def recall(self) -> float:
    return _fraction(self.reference_inside, "recall", "pr_k")

  @property
  def density(self) -> float:
    if self.generated_ball_counts is None:
      raise InputError("density: not computed, pass dc_k to manifold_metrics")
    total = int(np.sum(self.generated_ball_counts, dtype=np.int64))
    # prdc: (1. / float(nearest_k)) * counts.mean(), the mean being sum / N in float64.
    return (1.0 / float(self.dc_k)) * (total / self.generated_ball_counts.size)

  @property
  def coverage(self) -> float:
    return _fraction(self.reference_covered, "coverage", "dc_k")


def _fraction(flags, name, k_name):
  if flags is None:
    raise InputError(f"{name}: not computed, pass {k_name} to manifold_metrics")
  return int(np.count_nonzero(flags)) / flags.size


def precision_recall(generated, reference, *, k=3, block_size=None, mesh=None):
  """Improved precision and recall of ``generated`` against ``reference``, as ADM computes them.

  ``precision`` is the share of generated points inside the reference manifold (the union of the
  reference points' k-NN balls), ``recall`` the share of reference points inside the generated
  manifold; a point is inside a ball when its squared distance is ``<=`` the ball's squared radius
  (module docstring). Equal to guided-diffusion's ``Evaluator.compute_prec_recall(activations_ref=
  reference, activations_sample=generated)`` (up to its float16 distances) and to torch-fidelity's
  ``prc_features_to_metric(features_1=generated, features_2=reference, prc_neighborhood=k)``.

  Args:
    generated: float array ``(N_gen, d)``, features of the generated samples (ADM's
      ``activations_sample``, torch-fidelity's ``features_1``); ``N_gen > k``.
    reference: float array ``(N_ref, d)``, features of the real data (ADM's ``activations_ref``,
      torch-fidelity's ``features_2``); ``N_ref > k``.
    k: neighbourhood size: a ball's radius is the distance to the k-th nearest other point.
    block_size: rows and columns per distance tile (default: at most 1024 on CPU, 4096 on
      accelerators, sized to pad each device's rows little; smaller for small sets). Changes
      speed and memory, never the result.
    mesh: a 1-D :class:`jax.sharding.Mesh` whose devices share the query rows; default every
      device of every process.

  Returns:
    ``(precision, recall)``, Python floats in [0, 1].
  """
  result = manifold_metrics(generated, reference, pr_k=k, dc_k=None, block_size=block_size,
                            mesh=mesh)
  return result.precision, result.recall


def density_coverage(generated, reference, *, k=5, block_size=None, mesh=None):
  """Density and coverage of ``generated`` against ``reference``, as prdc computes them.

  ``density`` is the mean over generated points of the number of reference k-NN balls containing
  them, divided by k (it exceeds 1 where generated points crowd the reference modes);
  ``coverage`` is the share of reference points whose nearest generated point lies inside their
  own ball. All comparisons are strict (module docstring). Equal to prdc's
  ``compute_prdc(real_features=reference, fake_features=generated, nearest_k=k)["density"]`` and
  ``["coverage"]``.

  Args:
    generated: float array ``(N_gen, d)``, features of the generated samples (prdc's
      ``fake_features``); ``N_gen >= 2``.
    reference: float array ``(N_ref, d)``, features of the real data (prdc's ``real_features``);
      ``N_ref > k``.
    k: neighbourhood size (prdc's ``nearest_k``).
    block_size: rows and columns per distance tile, as in :func:`precision_recall`.
    mesh: as in :func:`precision_recall`.

  Returns:
    ``(density, coverage)``, Python floats; density ``>= 0``, coverage in [0, 1].
  """
  result = manifold_metrics(generated, reference, pr_k=None, dc_k=k, block_size=block_size,
                            mesh=mesh)
  return result.density, result.coverage


def manifold_metrics(generated, reference, *, pr_k=3, dc_k=5, block_size=None, mesh=None):
  """Precision, recall, density and coverage together: three distance passes instead of six.

  Args:
    generated: float array ``(N_gen, d)``, the generated samples' features.
    reference: float array ``(N_ref, d)``, the real data's features.
    pr_k: neighbourhood of precision/recall (ADM's ``nhood_sizes=(3,)``); ``None`` skips them
      and the generated set's radii, a pass only recall needs.
    dc_k: neighbourhood of density/coverage (prdc's ``nearest_k``); ``None`` skips them.
    block_size: rows and columns per distance tile, as in :func:`precision_recall`.
    mesh: as in :func:`precision_recall`.

  Returns:
    A :class:`ManifoldMetrics` with per-sample results and the properties ``precision``,
    ``recall``, ``density`` and ``coverage`` (Python floats).
  """
  if pr_k is None and dc_k is None:
    raise InputError("pr_k, dc_k: expected at least one neighbourhood size, got None for both")
  gen = _check_features(generated, "generated")
  ref = _check_features(reference, "reference")
  if gen.shape[1] != ref.shape[1]:
    raise InputError(f"reference: expected {gen.shape[1]} features per row like generated, got "
                     f"shape {tuple(ref.shape)}")
  for name, k in (("pr_k", pr_k), ("dc_k", dc_k)):
    if k is not None:
      _check_k(k, name, ref.shape[0], "reference")
  if pr_k is not None:
    _check_k(pr_k, "pr_k", gen.shape[0], "generated")
  mesh = _check_mesh(mesh)
  _check_block_size(block_size)
  _check_finite(gen, "generated")
  _check_finite(ref, "reference")
  inside, counts, ref_inside, covered, _ = _evaluate(
      gen, ref, pr_k=None if pr_k is None else int(pr_k),
      dc_k=None if dc_k is None else int(dc_k), block_size=block_size, mesh=mesh)
  pr, dc = pr_k is not None, dc_k is not None
  return ManifoldMetrics(
      generated_inside=inside if pr else None, reference_inside=ref_inside if pr else None,
      generated_ball_counts=counts if dc else None, reference_covered=covered if dc else None,
      pr_k=int(pr_k) if pr else None, dc_k=int(dc_k) if dc else None)


def _evaluate(gen, ref, *, pr_k, dc_k, block_size, mesh, screen=None):
  """:func:`manifold_metrics`' per-sample results of checked float32 features, and the number of
  tiles of the cross pass whose bfloat16 screen overflowed (:func:`_screened_tile`); ``screen``
  forces the screen on or off (default: :func:`_screen` decides)."""
  gen_block = _block(gen.shape[0], mesh, block_size)
  ref_block = _block(ref.shape[0], mesh, block_size)
  r = _padded(ref, ref_block, mesh)
  if screen is None:
    screen = _screen(mesh, ref_block, r.shape[0])
  elif screen and ref_block % _SCREEN_CHUNK:
    raise ValueError(f"a screened pass needs blocks of whole chunks of {_SCREEN_CHUNK}, got "
                     f"{ref_block}")
  return tuple(np.asarray(a) for a in jax.device_get(_manifold(
      _padded(gen, gen_block, mesh), r, n_gen=gen.shape[0], n_ref=ref.shape[0], pr_k=pr_k,
      dc_k=dc_k, gen_block=gen_block, ref_block=ref_block, screen=bool(screen), mesh=mesh)))


def knn_radii(features, k, *, block_size=None, mesh=None):
  """Squared k-NN radii: for each row, its k-th smallest squared distance to its own set.

  The point itself counts at distance 0, so this is the squared distance to the k-th nearest
  *other* point (ADM's ``manifold_radii``; torch-fidelity's ``kthvalue(k + 1)`` and prdc's
  ``get_kth_value(k=k + 1)`` of unsquared distances).

  Args:
    features: float array ``(N, d)``, ``N > k``.
    k: an integer ``>= 1``.
    block_size: rows and columns per distance tile, as in :func:`precision_recall`.
    mesh: as in :func:`precision_recall`.

  Returns:
    float32 NumPy array ``(N,)``.
  """
  x = _check_features(features, "features")
  _check_k(k, "k", x.shape[0], "features")
  mesh = _check_mesh(mesh)
  _check_block_size(block_size)
  _check_finite(x, "features")
  block = _block(x.shape[0], mesh, block_size)
  return np.asarray(jax.device_get(_radii(_padded(x, block, mesh), n=x.shape[0], k=int(k),
                                          block=block, mesh=mesh)))


# ------------------------------------------------------------------------------------ checks ---

def _check_features(x, name):
  if isinstance(x, jax.core.Tracer):
    raise InputError(f"{name}: expected a concrete array, got a tracer: manifold metrics check "
                     f"their input and count on the host, call them outside jit")
  if not hasattr(x, "dtype") or not hasattr(x, "shape"):
    x = np.asarray(x)
  if x.ndim != 2:
    raise InputError(f"{name}: expected features of shape (N, d), got shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputError(f"{name}: expected a floating array, got {x.dtype}")
  if x.shape[0] < 2:
    raise InputError(f"{name}: expected at least 2 samples (a k-NN ball needs another point), "
                     f"got shape {tuple(x.shape)}")
  if x.shape[1] < 1:
    raise InputError(f"{name}: expected at least 1 feature per row, got shape {tuple(x.shape)}")
  if isinstance(x, np.ndarray):
    # float32 on the host: the cast the device would do anyway, without a float64 transfer.
    x = np.asarray(x, np.float32)
  return x


def _check_k(k, name, n, set_name):
  if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
    raise InputError(f"{name}: expected an integer >= 1, got {k!r}")
  if k >= n:
    raise InputError(f"{name}: expected fewer than the {n} samples of {set_name} (a radius is the "
                     f"distance to the k-th nearest other point), got {k}")


def _check_block_size(block_size):
  if block_size is not None and (isinstance(block_size, bool)
                                 or not isinstance(block_size, numbers.Integral) or block_size < 1):
    raise InputError(f"block_size: expected a positive integer or None, got {block_size!r}")


def _check_mesh(mesh):
  if mesh is None:
    # As jaxmetrics.pipeline.extract.default_mesh (not imported: metrics do not depend on the
    # pipeline): every device of every process, each process's devices contiguous.
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), ("data",))
  if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
    raise InputError(f"mesh: expected a 1-D jax.sharding.Mesh or None, got {mesh!r}")
  return mesh


def _check_finite(x, name, *, dtype=np.float32, what="features"):
  """Refuses rows of ``x`` (computed with in ``dtype``) with NaN or inf, and finite rows whose
  squared norm exceeds :func:`_max_sq_norm`, in one line naming ``name``. A NumPy ``x`` must
  already be of ``dtype``."""
  bound = _max_sq_norm(dtype)
  if isinstance(x, np.ndarray):
    sq = np.einsum("ij,ij->i", x, x)  # NaN or inf for rows that are not finite
    bad = ~(sq <= bound)
    nonfinite = int(np.count_nonzero(~np.isfinite(x[bad]).all(axis=1))) if bad.any() else 0
    large = int(np.count_nonzero(bad)) - nonfinite
  else:
    nonfinite, large = (int(v) for v in jax.device_get(_bad_rows(x, np.dtype(dtype))))
  if nonfinite:
    raise InputError(f"{name}: expected finite {what}, got NaN or inf in {nonfinite} row(s)")
  if large:
    raise InputError(f"{name}: expected squared norms of at most {bound:.3g} ({np.dtype(dtype)} "
                     f"distances would overflow), got {large} row(s) above")


def _max_sq_norm(dtype):
  """Largest squared norm of a row, a quarter of ``dtype``'s largest value.

  With ``‖u‖², ‖v‖² <= max/4``, also ``|2u·v| <= max/2`` (Cauchy–Schwarz, for every partial sum of
  the product too), so no term of ``‖u‖² − 2u·v + ‖v‖²`` overflows and no distance is
  ``inf − inf = NaN``, which the k-NN selection (:func:`_smallest`), the comparisons and the MMD
  kernel sums would not survive. float32 features reach it near 2e17 per coordinate at d = 2048.
  """
  return float(np.finfo(dtype).max) / 4


@functools.partial(jax.jit, static_argnames="dtype")
def _bad_rows(x, dtype):
  """(rows with NaN or inf, finite rows with a squared norm above the bound), int32, in ``dtype``."""
  x = x.astype(dtype)
  finite = jnp.all(jnp.isfinite(x), axis=1)
  large = finite & ~(_sq_norms(x) <= _max_sq_norm(dtype))
  return jnp.sum(~finite, dtype=jnp.int32), jnp.sum(large, dtype=jnp.int32)


def _replicated(x, mesh):
  """``x`` on every device of ``mesh``, whatever it came as: NumPy and JAX inputs, committed or
  not, then reach the compiled function alike and share one compilation."""
  return jax.device_put(x, NamedSharding(mesh, P()))


def _block(n, mesh, block_size):
  """Rows per tile for a set of ``n`` rows shared by the devices of ``mesh``."""
  return _tile_rows(-(-n // mesh.size), block_size, _platform(mesh))


def _platform(mesh):
  return mesh.devices.flat[0].platform


def _tile_rows(rows, block_size, platform, *, align=True):
  """Rows per tile for ``rows`` rows on devices of ``platform``.

  An explicit ``block_size`` is used as given, capped at ``rows``. The default (1024 on CPU, 4096
  on accelerators) is a bound: the rows are split into the fewest tiles of at most that size, of
  equal size, so that padding (products of zero rows) stays small: 10 000 rows in tiles of 1024
  pad to 10 240 (4.9% more products than 10 000² in a pass), in tiles of 1000 not at all. With
  ``align`` the tiles are then rounded up to a multiple of ``_ALIGN`` (16) rows from
  ``_ALIGN_FROM`` (256) rows on, whole chunks for the k-NN selection (:func:`_smallest`): 1008
  rows, 10 080 in all (1.6% more products); 15 rows of padding on a tile of 256 or more are at
  most 6% of it.
  """
  if block_size is not None:
    return int(min(block_size, rows))
  limit = _DEFAULT_BLOCK.get(platform, _DEFAULT_BLOCK_ACCELERATOR)
  tiles = -(-rows // limit)
  block = -(-rows // tiles)
  if align and block >= _ALIGN_FROM:
    block = -(-block // _ALIGN) * _ALIGN  # <= limit: the limits are multiples of _ALIGN
  return int(block)


# ----------------------------------------------------------------------------------- kernels ---

def _padded(x, block, mesh):
  """``x`` as float32, padded with zero rows to a multiple of ``block × devices``, on every device
  of ``mesh``: a NumPy ``x`` is padded on the host, into a new aligned array that CPU devices use
  without a copy (:func:`_host_rows`; other devices copy it in); a JAX one by the devices holding
  it."""
  n = x.shape[0]
  multiple = block * mesh.size
  length = -(-n // multiple) * multiple
  if isinstance(x, np.ndarray):
    padded = _host_rows([(x, length)], np.float32)
  else:
    padded = _pad_rows(x, length)
  return _replicated(padded, mesh)


@functools.partial(jax.jit, static_argnames="length")
def _pad_rows(x, length):
  return jnp.pad(x.astype(jnp.float32), ((0, length - x.shape[0]), (0, 0)))


def _host_rows(parts, dtype):
  """``[a₁; 0; a₂; 0; …]`` in ``dtype`` for ``(a, rows)`` in ``parts``: each NumPy array followed
  by zero rows up to ``rows``, written into one :func:`_host_array` (zeros included: a fallback
  host array is not zeroed)."""
  out = _host_array((sum(rows for _, rows in parts), parts[0][0].shape[1]), dtype)
  start = 0
  for a, rows in parts:
    out[start:start + a.shape[0]] = a
    out[start + a.shape[0]:start + rows] = 0
    start += rows
  return out


def _host_array(shape, dtype):
  """An uninitialised (Linux: zeroed) NumPy array whose data start on a page boundary.

  XLA's CPU client uses such an array as the device buffer instead of copying it:
  ``jax.device_put`` of 80 MB takes 0.1 ms instead of 37–53 ms (NumPy's own arrays are only
  16-byte aligned). On Linux the pages are mapped populated (``MAP_POPULATE``): NumPy's large
  arrays ask for transparent huge pages, whose first writes took 11 ms for 80 MB most of the time
  but 110–190 ms when the kernel had to compact memory first (right after a large computation
  freed its buffers, measured here); populating 4 KiB pages takes a steady 30 ms. The array must
  not be written once it is on a device.
  """
  size = int(np.prod(shape))
  nbytes = size * np.dtype(dtype).itemsize
  if nbytes and hasattr(mmap, "MAP_POPULATE"):
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    return np.frombuffer(memory, dtype, size).reshape(shape)
  raw = np.empty(nbytes + _HOST_ALIGN, np.uint8)
  start = -raw.ctypes.data % _HOST_ALIGN
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _sq_norms(x):
  return jnp.sum(x * x, axis=1)


def _sq_distances(q, q_sq, c, c_sq, *, columns_first=False):
  """``(len(q), len(c))`` squared distances ``max(|u|² − 2u·v + |v|², 0)``, ADM's expression.

  ``u`` is the query row, or the column when ``columns_first`` (ADM's cross pass takes the
  reference point first); the order fixes the float32 rounding of the two additions.
  """
  qc = jax.lax.dot_general(q, c, (((1,), (1,)), ((), ())), precision=_HIGHEST,
                           preferred_element_type=jnp.float32)
  if columns_first:
    d2 = c_sq[None, :] - 2 * qc + q_sq[:, None]
  else:
    d2 = q_sq[:, None] - 2 * qc + c_sq[None, :]
  return jnp.maximum(d2, 0)


def _row_blocks(block, *arrays):
  return tuple(a.reshape(a.shape[0] // block, block, *a.shape[1:]) for a in arrays)


def _varying(x, axis):
  """``x`` typed as differing across devices, as the scan carries that it seeds become."""
  return jax.lax.pcast(x, axis, to="varying")


def _smallest(best, tile, kk, chunk, *, columns=False):
  """The ``kk`` smallest values of each row of ``best`` together with the same row of ``tile``
  (with the same column of ``tile`` when ``columns``), ascending: a running k-NN update.

  Without ``chunk`` this is one ``lax.top_k`` of the concatenation, as it is when the lines are
  not whole chunks or have fewer than ``2·kk`` of them (most of a line would be searched anyway).
  With ``chunk``, each tile line is cut into chunks of ``chunk`` values and only the ``kk`` chunks
  with the smallest minima are searched. That is exact: a value ``e`` of any other chunk ``D`` is
  ``>= min(D) >=`` each of the ``kk`` chosen minima, so at least ``kk`` searched values are
  ``<= e`` and ``e`` can only tie with what is kept, never displace it. Any partition into chunks
  will do: a row's chunks are its columns ``j, j + m/chunk, j + 2m/chunk, …``, a column's are runs
  of ``chunk`` rows, so that the minima are elementwise minima of contiguous vectors. The tile
  must hold no NaN (:func:`_check_finite` rules it out).

  Why: on a CPU ``lax.top_k`` costs per value sorted (2.9 / 4.2 ms per row / column update of a
  1024² tile at ``kk = 6``, against 20 ms for the tile's product; 0.93 ms with chunks). The
  minima, the choice of ``kk`` chunks (:func:`_picks`), the gather and the final
  :func:`_smallest_values` are each a few passes of elementwise minima and comparisons over small
  arrays, laid out so that every reduction runs across rows of contiguous values (times:
  ``benchmarks/manifold.py --selection``).
  """
  n, m = tile.shape
  length = n if columns else m
  if chunk is None or length % chunk or length // chunk < 2 * kk:
    # Not whole chunks, or fewer than 2·kk of them: most of the line would be searched anyway.
    negated, _ = jax.lax.top_k(-jnp.concatenate([best, tile.T if columns else tile], 1), kk)
    return -negated
  if columns:
    chunks = tile.reshape(n // chunk, chunk, m)
    picks = _picks(jnp.min(chunks, axis=1), kk)  # (kk, m) chunk numbers
    searched = jnp.take_along_axis(chunks, picks[:, None, :], axis=0).reshape(kk * chunk, m)
  else:
    chunks = tile.reshape(n, chunk, m // chunk)
    picks = _picks(jnp.min(chunks, axis=1).T, kk)  # (kk, n)
    searched = jnp.take_along_axis(chunks, picks.T[:, None, :], axis=2).reshape(n, chunk * kk).T
  return _smallest_values(jnp.concatenate([best.T, searched], axis=0), kk).T


def _picks(values, kk):
  """Row numbers of ``kk`` distinct rows holding the ``kk`` smallest of each column of ``values``
  (ties in any order), ``(kk, columns)`` int32: ``kk`` rounds of a minimum and the first row equal
  to it not taken yet. A taken row is set to +inf, so "not taken" is tracked apart: once every
  remaining value is +inf a taken row also equals the minimum; a free one is then left as long as
  ``values`` has more than ``kk`` rows (:func:`_smallest` gives it ``>= 2·kk``). No NaN: a column
  with one would get the out-of-range pick ``len(values)``."""
  rows = jax.lax.broadcasted_iota(jnp.int32, values.shape, 0)

  def round_(i, carry):
    values, free, picks = carry
    low = jnp.min(values, axis=0, keepdims=True)
    pick = jnp.min(jnp.where((values == low) & free, rows, values.shape[0]), axis=0, keepdims=True)
    taken = rows == pick
    picks = jax.lax.dynamic_update_slice_in_dim(picks, pick, i, axis=0)
    return jnp.where(taken, jnp.inf, values), free & ~taken, picks

  # full_like: the carries vary over the devices as ``values`` does (inside shard_map).
  free = jnp.full_like(values, True, bool)
  picks = jax.lax.full_like(values, 0, jnp.int32, (kk, values.shape[1]))
  return jax.lax.fori_loop(0, kk, round_, (values, free, picks))[2]


def _smallest_values(values, kk):
  """The ``kk`` smallest of each column of ``values`` with their multiplicity, ascending,
  ``(kk, columns)``: ``kk`` rounds, each of which takes a column's minimum, fills as many of the
  remaining places with it as it occurs (at least once) and sets those entries to +inf. Once a
  column's minimum is +inf every remaining place is +inf, which is then right, whatever the count
  (entries already taken are +inf too). No NaN: a column with one would come out all +inf."""
  places = jnp.arange(kk)[:, None]

  def round_(_, carry):
    values, out, filled = carry
    low = jnp.min(values, axis=0, keepdims=True)
    equal = values == low
    count = jnp.sum(equal, axis=0, keepdims=True, dtype=jnp.int32)
    out = jnp.where((places >= filled) & (places < filled + count), low, out)
    return jnp.where(equal, jnp.inf, values), out, filled + count

  out = jax.lax.full_like(values, jnp.inf, values.dtype, (kk, values.shape[1]))
  filled = jax.lax.full_like(values, 0, jnp.int32, (1, values.shape[1]))
  return jax.lax.fori_loop(0, kk, round_, (values, out, filled))[1]


def _chunk(mesh):
  """The chunk :func:`_smallest` selects by on ``mesh``'s devices, or ``None`` (plain
  ``lax.top_k``): chunks on CPUs only, the one platform they were measured on."""
  return _CHUNK.get(_platform(mesh))


def _smallest_symmetric(q, q_sq, c, c_sq, *, kk, block, chunk, axis):
  """One device's share of the k-NN pass of a set against itself, each tile computed once.

  ``q`` holds this device's row blocks, ``c`` the whole set (replicated); the squared norms are
  +inf for padded rows, which makes every distance to a padded point +inf (a padded row is zero,
  so its products are exactly 0, and ``inf − 0 + v = inf``): no tile needs a mask. The distances
  between blocks ``I <= J`` are computed in ``I``'s pass only: they update ``I``'s running
  smallest distances and, transposed, ``J``'s (carried in ``col_best`` for the whole set, one copy
  per device), except on the diagonal tile ``I = J``, which holds both halves already; tiles with
  ``J < I`` are skipped (``lax.cond``), so the pass does half the products of a full one, plus
  half of the diagonal tiles. (Computing only ``3/4`` of a diagonal tile as three smaller
  products saved 4 ms of 20 per diagonal tile but added a second of compilation, more than it
  saves below ~10⁵ rows.) Device ``d``'s local block ``i`` is global block ``i · devices + d``
  (the caller deals the blocks out cyclically), which gives every device the same share of tiles.

  Returns this device's rows' smallest distances ``(len(q), kk)`` and its column candidates for
  the whole set ``(1, len(c), kk)``, to be combined over devices by the caller.
  """
  devices = jax.lax.axis_size(axis)
  device = jax.lax.axis_index(axis)
  cols = _row_blocks(block, c, c_sq)
  n_blocks = c.shape[0] // block

  def row_block(col_best, args):
    i, qb, qb_sq = args
    g = i * devices + device

    def compute(j, carry):
      best, col_best = carry
      cb, cb_sq = (jax.lax.dynamic_index_in_dim(a, j, keepdims=False) for a in cols)
      d2 = _sq_distances(qb, qb_sq, cb, cb_sq)
      current = jax.lax.dynamic_slice_in_dim(col_best, j * block, block)
      # The diagonal tile is already in both of its blocks' rows: its column update is dropped.
      update = jnp.where(j > g, _smallest(current, d2, kk, chunk, columns=True), current)
      col_best = jax.lax.dynamic_update_slice_in_dim(col_best, update, j * block, axis=0)
      return _smallest(best, d2, kk, chunk), col_best

    def step(carry, j):
      return jax.lax.cond(j >= g, functools.partial(compute, j), lambda carry: carry, carry), None

    init = _varying(jnp.full((qb.shape[0], kk), jnp.inf, jnp.float32), axis)
    (best, col_best), _ = jax.lax.scan(step, (init, col_best), jnp.arange(n_blocks))
    return col_best, best

  local = q.shape[0] // block
  init = _varying(jnp.full((c.shape[0], kk), jnp.inf, jnp.float32), axis)
  col_best, best = jax.lax.scan(row_block, init, (jnp.arange(local), *_row_blocks(block, q, q_sq)))
  return best.reshape(q.shape[0], kk), col_best[None]


def _masked_sq_norms(x, valid):
  """Squared norms, +inf for padded rows: every squared distance to a padded (zero) row is then
  +inf in :func:`_sq_distances`, without a mask on the tiles."""
  return jnp.where(valid, _sq_norms(x), jnp.inf)


def _knn(x, x_valid, *, kk, block, mesh):
  """The ``kk`` smallest squared distances of every row of ``x`` to the valid rows of ``x``.

  ``x`` is padded to whole blocks on every device (:func:`_padded`); the padded rows' results are
  all +inf (the callers mask them). Row blocks are dealt out to the devices cyclically (see
  :func:`_smallest_symmetric`), and every device's column candidates are merged with the rows'
  own at the end.
  """
  axis = mesh.axis_names[0]
  devices = mesh.size
  local = x.shape[0] // (block * devices)

  def deal(a):  # global block i · devices + d becomes device d's local block i
    return a.reshape(local, devices, block, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)

  def undeal(a):
    return a.reshape(devices, local, block, *a.shape[1:]).swapaxes(0, 1).reshape(a.shape)

  x_sq = _masked_sq_norms(x, x_valid)
  body = functools.partial(_smallest_symmetric, kk=kk, block=block, chunk=_chunk(mesh), axis=axis)
  rows, cols = jax.shard_map(
      body, mesh=mesh, in_specs=(P(axis), P(axis), P(), P()),
      out_specs=(P(axis), P(axis)))(deal(x), deal(x_sq), x, x_sq)
  # rows: (n, kk) in dealt order; cols: (devices, n, kk), one set of candidates per device.
  candidates = jnp.concatenate([undeal(rows), *cols], axis=1)
  negated, _ = jax.lax.top_k(-candidates, kk)
  return -negated


def _exact_tile(qb, qb_sq, qb_radius, cb, cb_sq, cb_pr, cb_dc):
  """One float32 tile of the cross pass: per query row "inside some column's ball of radius
  ``cb_pr``" (``<=``) and the number of column balls of radius ``cb_dc`` containing it (``<``);
  per column "inside some query's ball of radius ``qb_radius``" (``<=``) and "some query strictly
  inside its ball of radius ``cb_dc``" (coverage: the nearest query is inside exactly when some
  query is)."""
  d2 = _sq_distances(qb, qb_sq, cb, cb_sq, columns_first=True)
  return (jnp.any(d2 <= cb_pr[None, :], axis=1),
          jnp.sum(d2 < cb_dc[None, :], axis=1, dtype=jnp.int32),
          jnp.any(d2 <= qb_radius[:, None], axis=0), jnp.any(d2 < cb_dc[None, :], axis=0))


def _screen_parts(x, valid, block):
  """What :func:`_screened_tile` needs of a set besides its rows: the rows rounded to bfloat16
  (packed in pairs as uint32, :func:`_packed`), ``n`` >= both ``‖x‖`` and ``‖bf16(x)‖``, and
  ``e`` >= ``‖x − bf16(x)‖``, 0 for padded rows.

  ``e`` is measured with the rounding written in integer operations (:func:`_round_to_bfloat16`):
  a float32 → bfloat16 → float32 round trip could be simplified away by XLA
  (``SimplifyFPConversions``, run where excess precision is allowed), leaving ``e = 0`` while the
  product still used bfloat16. It is measured ``block`` rows at a time (``lax.map``): XLA's CPU
  code would otherwise keep a float32 copy of the rounded set. The norms are float32 square roots
  of float32 sums of squares, each within ``γ_d`` (sum) and ``2u`` (root, product) of the truth,
  so a factor ``1 + γ_d + 4u`` makes them upper bounds, and ``‖bf16(x)‖ <= ‖x‖ + e``. A square
  below 2⁻¹²⁶ may be flushed to zero (a component below 2⁻⁶³), which can leave out up to
  ``√d·2⁻⁶³`` of a norm: that is added to both.
  """
  d = x.shape[1]
  up = 1 + _gamma(d) + 4 * _U32
  flushed = np.sqrt(d) * 2.0**-63
  x_norm = jnp.sqrt(_sq_norms(x)) * up + flushed
  err = jax.lax.map(lambda rows: jnp.sqrt(_sq_norms(rows - _round_to_bfloat16(rows))),
                    x.reshape(-1, block, d)).reshape(-1)
  err = err * up + flushed
  return _packed(x), jnp.where(valid, x_norm + err, 0), jnp.where(valid, err, 0)


def _round_to_bfloat16(x):
  """``x`` rounded to bfloat16's 8 significant bits, to nearest even, as float32: the conversion's
  rounding written on the bits (add ``0x7FFF`` plus the lowest kept bit, clear the low 16), which
  no pass folds away. It equals XLA's conversion on every finite input but subnormals that one of
  them flushes (a difference below 2⁻¹²⁶ per component, within :func:`_screen_parts`' slack);
  features are finite with norms below 2⁶³, so nothing rounds up to infinity."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  bits = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) & np.uint32(0xFFFF0000)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _packed(x):
  """``x`` converted to bfloat16 and stored in pairs as uint32 ``(rows, ⌈d/2⌉)`` (odd ``d``: a
  zero column added, which adds nothing to a product): XLA's CPU code holds bfloat16 arrays
  carried through loops as float32 copies, twice the memory; :func:`_unpacked` undoes it per tile.
  """
  low = x.astype(jnp.bfloat16)
  if x.shape[1] % 2:
    low = jnp.pad(low, ((0, 0), (0, 1)))
  return jax.lax.bitcast_convert_type(low.reshape(x.shape[0], -1, 2), jnp.uint32)


def _unpacked(packed):
  return jax.lax.bitcast_convert_type(packed, jnp.bfloat16).reshape(packed.shape[0], -1)


def _gamma(n):
  """``γ_n = n·u/(1 − n·u)``: a float32 sum of ``n`` products is within ``γ_n·Σ|terms|`` of the
  exact sum, in any order of summation (Higham, Accuracy and Stability, §3.1)."""
  return n * _U32 / (1 - n * _U32)


def _screened_tile(q_parts, c_parts, *, slots):
  """The results of :func:`_exact_tile` from a bfloat16 product, with the pairs that it cannot
  decide recomputed in float32; and whether more than ``slots`` pairs needed that (overflow: the
  results are then :func:`_exact_tile`'s, computed in full).

  Why: a bfloat16 product with float32 accumulation runs 1.75× as fast as the float32 one on CPUs
  with bfloat16 dot instructions (11.2 against 19.6 ms for a 1008² × 2048 tile on an AMD EPYC Zen
  4), and with k-NN balls only the pairs near a ball's boundary decide anything.

  Exactness. Write ``D`` for the float32 value ``fl(fl(‖v‖² − 2·fl(u·v)) + ‖u‖²)`` that the exact
  pass compares with a radius (ADM's expression, :func:`_sq_distances`), in any order of summation,
  and ``D̃`` for the same expression with ``fl(ũ·ṽ)``, ``ũ = bf16(u)``, ``δu = u − ũ``; both use
  the same float32 squared norms. Then ``u·v − ũ·ṽ = δu·ṽ + ũ·δv + δu·δv`` and the two
  accumulations are within ``γ_d·‖ũ‖‖ṽ‖`` and ``γ_d·‖u‖‖v‖`` (products of bfloat16 values are
  exact in float32), the two additions of each expression within ``2u·s²``, ``s = ‖u‖ + ‖v‖``,
  so with ``n >= ‖x‖, ‖x̃‖`` and ``e >= ‖δx‖`` (:func:`_screen_parts`), by Cauchy–Schwarz::

    |D̃ − D| <= 2(e_u·(n_v + e_v) + n_u·e_v) + (γ_d + 4u)·s²

  The bound used adds ``2u·s²`` for the rounding of ``D̃ ± bound`` themselves, ``d·2⁻¹¹⁸·(1 + s)``
  for what flushing subnormal products and partial sums to zero can change (bfloat16 dot
  instructions and XLA's CPU code do; flushed squares in the norms: :func:`_screen_parts`), and a
  factor ``1 + 2⁻¹⁵`` for the rounding of its own float32 evaluation. A tile with a norm bound from
  2⁶² on is computed in float32: there ``D̃`` itself could overflow. A pair whose
  ``D̃ ± bound`` lie on one side of each radius it is compared with is decided as ``D`` would be;
  any other pair ("in doubt") is recomputed in float32 from its two rows (an elementwise product
  and a sum: no TF32 on GPUs) and decided from that. That recomputation sums in another order than
  a tile's product, so, as everywhere else here, a result can differ from another float32
  implementation's only through a distance within float32 round-off of a radius.

  The pairs in doubt are found in two steps that keep every array's shape fixed: the tile's chunks
  of ``_SCREEN_CHUNK`` columns holding any (at most ``slots`` of them, ``jnp.nonzero`` on a
  16-times-smaller mask), then the pairs within those chunks (at most ``slots``). On the
  benchmark's 2048-d features a 1008² tile of 10 000 + 10 000 points has ~350 pairs in doubt,
  ~3.5 per reference point over its three radii; their number per tile shrinks as ``1/N``.

  ``q_parts`` are a query block's rows, squared norms (+inf for padding), radii, and its
  :func:`_screen_parts`; ``c_parts`` a column block's rows, squared norms, the two radii, and its
  :func:`_screen_parts`. Padded rows have norm bounds 0 and distances +inf: certainly outside
  every ball, never in doubt.
  """
  qb, qb_sq, qb_radius, _, qb_norm, _ = q_parts
  cb, cb_sq, cb_pr, cb_dc, _, cb_norm, _ = c_parts
  rows, cols = qb.shape[0], cb.shape[0]
  d2, bound = _screened_distances(q_parts, c_parts)
  low, high = d2 - bound, d2 + bound
  pr_in, pr_out = high <= cb_pr[None, :], low > cb_pr[None, :]
  dc_in, dc_out = high < cb_dc[None, :], low >= cb_dc[None, :]
  q_in, q_out = high <= qb_radius[:, None], low > qb_radius[:, None]
  doubt = ~(pr_in | pr_out) | ~(dc_in | dc_out) | ~(q_in | q_out)

  chunks = doubt.reshape(rows, cols // _SCREEN_CHUNK, _SCREEN_CHUNK)
  chunk_doubt = jnp.any(chunks, axis=2)
  n_chunks = jnp.sum(chunk_doubt, dtype=jnp.int32)
  chunk_row, chunk_col = jnp.nonzero(chunk_doubt, size=slots, fill_value=0)
  found = chunks[chunk_row, chunk_col] & (jnp.arange(slots) < n_chunks)[:, None]
  n_pairs = jnp.sum(found, dtype=jnp.int32)
  pick, offset = jnp.nonzero(found, size=slots, fill_value=0)
  i, j = chunk_row[pick], chunk_col[pick] * _SCREEN_CHUNK + offset
  valid = jnp.arange(slots) < n_pairs
  exact = jnp.maximum(cb_sq[j] - 2 * jnp.sum(qb[i] * cb[j], axis=1) + qb_sq[i], 0)

  def mark(flags, index, where):  # flags[index] = True where ``where``; the rest is dropped
    return flags.at[jnp.where(where, index, flags.shape[0])].set(True, mode="drop")

  results = (
      mark(jnp.any(pr_in, axis=1), i, valid & (exact <= cb_pr[j])),
      jnp.sum(dc_in & ~doubt, axis=1, dtype=jnp.int32).at[i].add(
          (valid & (exact < cb_dc[j])).astype(jnp.int32)),
      mark(jnp.any(q_in, axis=0), j, valid & (exact <= qb_radius[i])),
      mark(jnp.any(dc_in, axis=0), j, valid & (exact < cb_dc[j])))
  # Norms from 2⁶² on (squared norms near float32's max / 4, :func:`_max_sq_norm`): the bfloat16
  # rounding could make ũ·ṽ overflow, and an infinite D̃ would look certainly outside.
  huge = jnp.max(qb_norm) + jnp.max(cb_norm) >= 2.0**63
  overflow = (n_chunks > slots) | (n_pairs > slots) | huge
  results = jax.lax.cond(overflow, lambda: _exact_tile(qb, qb_sq, qb_radius, cb, cb_sq, cb_pr,
                                                       cb_dc), lambda: results)
  return results, overflow


def _screened_distances(q_parts, c_parts):
  """The bfloat16 squared distances ``D̃`` of a tile and their bound (:func:`_screened_tile`)."""
  qb, qb_sq, _, qb_low, qb_norm, qb_err = q_parts
  _, cb_sq, _, _, cb_low, cb_norm, cb_err = c_parts
  d = qb.shape[1]
  product = jax.lax.dot_general(_unpacked(qb_low), _unpacked(cb_low), (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
  d2 = jnp.maximum(cb_sq[None, :] - 2 * product + qb_sq[:, None], 0)
  s = qb_norm[:, None] + cb_norm[None, :]
  bound = (2 * (qb_err[:, None] * (cb_norm + cb_err)[None, :] + qb_norm[:, None] * cb_err[None, :])
           + (_gamma(d) + 6 * _U32) * s * s + d * 2.0**-118 * (1 + s)) * (1 + 2.0**-15)
  return d2, bound


def _cross(q, q_sq, q_radius, c, c_sq, c_radius_pr, c_radius_dc, *screen_parts, q_block, c_block,
           axis):
  """One device's share of the cross pass: generated query rows ``q`` against reference ``c``.

  Returns, per query row, "inside some reference ball of radius ``c_radius_pr``" (``<=``) and the
  number of reference balls of radius ``c_radius_dc`` containing it (``<``); per column, "inside
  some query's ball of radius ``q_radius``" (``<=``) and "covered" (some query strictly inside its
  ball of radius ``c_radius_dc``), both over every device's queries; and the number of tiles whose
  screen overflowed, over every device. Padded rows of either set have +inf squared norms, so their
  distances are +inf (as in :func:`_smallest_symmetric`), and radius −inf: they are in no ball,
  nobody is in theirs, and no tile needs a mask.

  With ``screen_parts`` (the query's and the reference's :func:`_screen_parts`), tiles are
  computed by :func:`_screened_tile`, until a device has seen ``_SCREEN_MAX_OVERFLOWS`` tiles
  overflow: data with more pairs in doubt than it has slots for then costs that many tiles twice
  and goes on in float32 (:func:`_exact_tile`).
  """
  screen = bool(screen_parts)
  q_screen, c_screen = (screen_parts[:3], screen_parts[3:]) if screen else ((), ())
  cols = _row_blocks(c_block, c, c_sq, c_radius_pr, c_radius_dc, *c_screen)
  slots = _screen_slots(q_block)

  def row_block(carry, rows):
    col_inside, col_covered, overflows = carry

    def step(carry, col):
      inside, balls, overflows = carry
      if screen:
        screened = lambda: _screened_tile(rows, col, slots=slots)
        exact = lambda: (_exact_tile(*rows[:3], *col[:4]), _varying(jnp.bool_(False), axis))
        tile, overflow = jax.lax.cond(overflows < _SCREEN_MAX_OVERFLOWS, screened, exact)
        overflows = overflows + overflow.astype(jnp.int32)
      else:
        tile = _exact_tile(*rows[:3], *col[:4])
      return (inside | tile[0], balls + tile[1], overflows), (tile[2], tile[3])

    qb = rows[0]
    init = _varying((jnp.zeros(qb.shape[0], bool), jnp.zeros(qb.shape[0], jnp.int32)), axis)
    (inside, balls, overflows), (hit, covered) = jax.lax.scan(step, (*init, overflows), cols)
    carry = (col_inside | hit.reshape(-1), col_covered | covered.reshape(-1), overflows)
    return carry, (inside, balls)

  init = _varying((jnp.zeros(c.shape[0], bool), jnp.zeros(c.shape[0], bool), jnp.int32(0)), axis)
  rows = _row_blocks(q_block, q, q_sq, q_radius, *q_screen)
  (col_inside, col_covered, overflows), (inside, balls) = jax.lax.scan(row_block, init, rows)
  col_inside = jax.lax.pmax(col_inside.astype(jnp.int32), axis) > 0
  col_covered = jax.lax.pmax(col_covered.astype(jnp.int32), axis) > 0
  return (inside.reshape(-1), balls.reshape(-1), col_inside, col_covered,
          jax.lax.psum(overflows, axis))


@functools.partial(jax.jit, static_argnames=("n_gen", "n_ref", "pr_k", "dc_k", "gen_block",
                                             "ref_block", "screen", "mesh"))
def _manifold(g, r, *, n_gen, n_ref, pr_k, dc_k, gen_block, ref_block, screen, mesh):
  """The four metrics' per-sample results from the sets padded by :func:`_padded`, whose first
  ``n_gen`` and ``n_ref`` rows are the samples, and the number of screened tiles that overflowed
  (0 without ``screen``)."""
  axis = mesh.axis_names[0]
  g_valid, r_valid = jnp.arange(g.shape[0]) < n_gen, jnp.arange(r.shape[0]) < n_ref
  ref_ks = [k for k in (pr_k, dc_k) if k is not None]
  ref_best = _knn(r, r_valid, kk=max(ref_ks) + 1, block=ref_block, mesh=mesh)
  # Padded reference points get radius −inf: no squared distance (>= 0) is inside their balls.
  ball = lambda k: jnp.where(r_valid, ref_best[:, k], -jnp.inf)
  r_pr = ball(dc_k if pr_k is None else pr_k)
  r_dc = ball(pr_k if dc_k is None else dc_k)
  if pr_k is None:
    g_radius = jnp.full(g.shape[0], -jnp.inf, jnp.float32)  # recall is not asked for: any value
  else:
    g_best = _knn(g, g_valid, kk=pr_k + 1, block=gen_block, mesh=mesh)
    g_radius = jnp.where(g_valid, g_best[:, pr_k], -jnp.inf)
  body = functools.partial(_cross, q_block=gen_block, c_block=ref_block, axis=axis)
  args = [g, _masked_sq_norms(g, g_valid), g_radius, r, _masked_sq_norms(r, r_valid), r_pr, r_dc]
  specs = [P(axis), P(axis), P(axis), P(), P(), P(), P()]
  if screen:
    args += [*_screen_parts(g, g_valid, gen_block), *_screen_parts(r, r_valid, ref_block)]
    specs += [P(axis)] * 3 + [P()] * 3
  inside, balls, ref_inside, ref_covered, overflows = jax.shard_map(
      body, mesh=mesh, in_specs=tuple(specs), out_specs=(P(axis), P(axis), P(), P(), P()))(*args)
  replicated = NamedSharding(mesh, P())
  out = (inside[:n_gen], balls[:n_gen], ref_inside[:n_ref], ref_covered[:n_ref], overflows)
  # Replicated outputs: every process can read them (a row-sharded result would not be
  # addressable from one host of several).
  return jax.lax.with_sharding_constraint(out, replicated)


def _screen_slots(q_block):
  """Pairs in doubt (and chunks holding them) a screened tile of ``q_block`` query rows can
  recompute: one per query row, ~2.5× the most that a tile of the benchmark's 10 000 + 10 000
  points needs (406 of 1008)."""
  return q_block


def _screen(mesh, ref_block, ref_rows):
  """Whether the cross pass screens with bfloat16 products (:func:`_screened_tile`): on CPUs with
  bfloat16 dot instructions (:func:`_cpu_bfloat16`), tiles of whole ``_SCREEN_CHUNK`` columns and
  at least ``_SCREEN_MIN_BLOCKS`` reference blocks.

  Not on GPUs and TPUs: their bfloat16 products are far faster still, but the screen has not been
  measured there. Not on meshes of several processes (:func:`_single_process`). Not for fewer
  reference blocks: the pairs in doubt per tile grow as the reference set shrinks (a few per
  reference point, spread over its blocks) and would overflow the slots, and such passes are
  short anyway. The generated set's size is not looked at: a small one has large radii and more
  pairs in doubt for recall, which at worst costs each device ``_SCREEN_MAX_OVERFLOWS`` tiles
  computed twice.
  """
  return (_platform(mesh) == "cpu" and _single_process(mesh) and _cpu_bfloat16()
          and ref_block % _SCREEN_CHUNK == 0 and ref_rows // ref_block >= _SCREEN_MIN_BLOCKS)


def _single_process(mesh):
  """Whether this process holds every device of ``mesh``. The screen is decided from this host's
  CPU, and every process of a multi-process mesh must compile the same program: those stay in
  float32."""
  return all(d.process_index == jax.process_index() for d in mesh.devices.flat)


@functools.cache
def _cpu_bfloat16():
  """Whether this machine's CPU has bfloat16 dot-product instructions (x86 ``avx512_bf16`` or
  ``amx_bf16``, as Linux lists them in ``/proc/cpuinfo``), which XLA's CPU products use. Without
  them a bfloat16 product is converted and no faster than the float32 one; unknown (other
  systems) counts as without."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          flags = line.split(":", 1)[1].split()
          return "avx512_bf16" in flags or "amx_bf16" in flags
  except OSError:
    pass
  return False


@functools.partial(jax.jit, static_argnames=("n", "k", "block", "mesh"))
def _radii(xp, *, n, k, block, mesh):
  valid = jnp.arange(xp.shape[0]) < n
  radii = _knn(xp, valid, kk=k + 1, block=block, mesh=mesh)[:n, k]
  return jax.lax.with_sharding_constraint(radii, NamedSharding(mesh, P()))
