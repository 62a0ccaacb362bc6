"""CMMD (Jayasumana et al. 2024): the biased MMD² of a Gaussian RBF kernel, blockwise on the devices.

For embeddings ``X = (x_1 … x_n)`` and ``Y = (y_1 … y_m)`` (CMMD: the L2-normalised CLIP ViT-L/14@336
image embeddings of :data:`jaxmetrics.networks.clip.CMMD_NETWORK`) and the kernel
``k(a, b) = exp(−γ‖a − b‖²)``, ``γ = 1 / (2σ²)``::

  MMD² = (1/n²) Σ_{i,j} k(x_i, x_j) + (1/m²) Σ_{i,j} k(y_i, y_j) − (2/(nm)) Σ_{i,j} k(x_i, y_j)
  CMMD = scale · MMD²                                         (σ = 10, scale = 1000)

the minimum-variance ("biased") estimator, every diagonal included. This is google-research's
``cmmd/distance.py`` ``mmd`` (``_SIGMA = 10``, ``_SCALE = 1000``; the means of the full kernel
matrices, squared distances as ``−2·x·yᵀ + |x|² + |y|²``), and the ``mmd`` /
``mmd_efficient`` of the ``clip-mmd`` package (``clip_mmd/calculation.py``), which copies it.

How it is evaluated, and why:

* **Without the cancellation of the reference.** Every kernel value is ``1 − O(γ‖a − b‖²)``: for unit
  embeddings at most 4γ = 0.02 below 1, while MMD² is ~1e-4..5e-3. The reference averages values
  near 1 in float32 and subtracts three such means, so its result carries float32 round-off of 1
  (6e-8 per operation, 6e-5 on CMMD) plus that of the float32 means of up to 30000² terms. Here each
  kernel value is formed as ``expm1(−γ d²) = k − 1`` (the three constant 1s cancel exactly,
  1 + 1 − 2 = 0), a quantity of the size of γd², summed per tile in the working dtype and combined
  over tiles in float64 on the host.
* **Blockwise and sharded, never an N×N matrix.** ``X`` and ``Y`` are padded to a multiple of the
  block size (padded rows masked out) and replicated on every device of a 1-D mesh (default: every
  device of every process); the ``block × block`` tiles of the three sums form one list —
  ``i ≤ j`` only for the symmetric ``K_XX`` and ``K_YY`` (off-diagonal tiles counted twice), every
  tile of ``K_XY`` — dealt round-robin to the devices, each of which walks its share with
  ``lax.scan``, one tile's temporaries at a time. Memory per device: both sets
  (``(n + m)·d`` values) plus a few ``block²`` tiles (default block at most 1024 on CPU, 4096
  on accelerators: 4 MB / 64 MB float32 tiles, sized to pad the larger set little). One
  compilation per (shapes, dtype, block, mesh); σ and scale are arguments, not constants of the
  compiled code.
* **float64 in, float64 out** (:mod:`jaxmetrics.metrics._float64`): if either input is a concrete
  float64 array, both are widened and the tiles are computed in float64 under
  ``jax.enable_x64(True)`` whatever the global flag (on the mesh if its devices are CPUs or GPUs,
  otherwise on the float64 device, the host CPU for TPUs). Otherwise (float32, float16, bfloat16
  inputs) the tiles are float32. The result is a ``numpy.float64`` either way.

Accuracy. With ``u`` the unit round-off of the tile dtype (2⁻²⁴ float32, 2⁻⁵³ float64), ``d`` the
dimension, ``R`` the largest row norm of both sets and ``b`` the block size, each computed squared
distance is within ``(d + 2)·u·(|a| + |b|)² ≤ 4(d + 2)·u·R²`` of the exact one (the dot product and
the norms, then two additions), each ``expm1`` term within γ times that plus ``3u`` of its own size
(≤ min(1, 4γR²)), and each tile sum of ``b²`` same-sign terms (rows first, then the row sums) within
``2b·u`` of itself. The weights of the three means sum to 4, so::

  |Δ CMMD| ≤ scale · 4 · [4(d + 2)·u·γR² + (2b + 3)·u·min(1, 4γR²)]

For unit embeddings (R = 1, d = 768, b = 1024) that worst case is 0.013 in float32 and 2.5e-11 in
float64 (CMMD values are typically 0.1..5); rounding errors of independent terms mostly cancel, so
observed errors are far smaller (README, "CMMD"). Pass float64 embeddings for the float64 bound.
"""

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmetrics._errors import InputError
from jaxmetrics.metrics import _float64
# The tiles' default size (at most 1024 rows on CPU, 4096 on accelerators) and checks are
# manifold's.
from jaxmetrics.metrics.manifold import _check_block_size
from jaxmetrics.metrics.manifold import _check_finite
from jaxmetrics.metrics.manifold import _check_mesh
from jaxmetrics.metrics.manifold import _host_rows
from jaxmetrics.metrics.manifold import _platform
from jaxmetrics.metrics.manifold import _replicated
from jaxmetrics.metrics.manifold import _tile_rows

SIGMA = 10.0
"""cmmd's ``_SIGMA``: the bandwidth of the Gaussian RBF kernel."""
SCALE = 1000.0
"""cmmd's ``_SCALE``: MMD² is multiplied by it "to make the metric more human readable"."""

_HIGHEST = jax.lax.Precision.HIGHEST
# Tiles per sum: K_XX, K_YY and K_XY.
_XX, _YY, _XY = 0, 1, 2


def cmmd(x, y, *, block_size=None, mesh=None):
  """CMMD between embedding sets ``x`` ``(n, d)`` and ``y`` ``(m, d)``: ``1000 · MMD²``, σ = 10.

  google-research/cmmd's ``distance.mmd(x, y)`` (see the module docstring for the formula, how it is
  evaluated and its error bound); the inputs are L2-normalised CLIP ViT-L/14@336 image embeddings
  (:data:`jaxmetrics.networks.clip.CMMD_NETWORK`), and the value is symmetric in ``x`` and ``y``.

  Args:
    x: float array ``(n, d)``, NumPy or ``jax.Array``, ``n >= 1``.
    y: float array ``(m, d)``, ``m >= 1``.
    block_size: rows and columns per kernel tile (default at most 1024 on CPU, 4096 on
      accelerators, sized to pad the larger set little; smaller for small sets). Changes speed,
      memory and round-off, not the value.
    mesh: a 1-D :class:`jax.sharding.Mesh` whose devices share the tiles; default every device of
      every process.

  Returns:
    ``numpy.float64``. Equal distributions give values near 0 (never below it in exact
    arithmetic: the biased estimator is the squared distance of two kernel mean embeddings).
  """
  return mmd_rbf(x, y, sigma=SIGMA, scale=SCALE, block_size=block_size, mesh=mesh)


def mmd_rbf(x, y, *, sigma=SIGMA, scale=SCALE, block_size=None, mesh=None):
  """``scale ·`` the biased MMD² of ``x`` and ``y`` with the kernel ``exp(−‖a − b‖² / (2σ²))``.

  :func:`cmmd` with another bandwidth or scale (``scale=1`` gives MMD² itself). Computed outside
  ``jit`` only (the inputs are checked and the tile sums combined on the host); changing ``sigma``
  or ``scale`` does not recompile.

  Args:
    x, y, block_size, mesh: as in :func:`cmmd`.
    sigma: kernel bandwidth, a finite number ``> 0``.
    scale: finite multiplier of the result.

  Returns:
    ``numpy.float64``.
  """
  x = _check_embeddings(x, "x")
  y = _check_embeddings(y, "y")
  if x.shape[1] != y.shape[1]:
    raise InputError(f"y: expected {x.shape[1]} features per row like x, got shape "
                     f"{tuple(y.shape)}")
  if (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma)
      or sigma <= 0):
    raise InputError(f"sigma: expected a finite number > 0, got {sigma!r}")
  if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
    raise InputError(f"scale: expected a finite number, got {scale!r}")
  mesh = _check_mesh(mesh)
  _check_block_size(block_size)
  gamma = 1.0 / (2.0 * float(sigma) ** 2)
  n, m = x.shape[0], y.shape[0]
  if _float64.takes_route(x, y):
    with _float64.scope() as device:
      if any(d.platform not in ("cpu", "gpu") for d in mesh.devices.flat):
        mesh = Mesh(np.array([device]), mesh.axis_names)
      sums = _kernel_sums(x, y, gamma, np.float64, block_size, mesh)
  else:
    sums = _kernel_sums(x, y, gamma, np.float32, block_size, mesh)
  # Each mean carries an implicit + 1 (k = 1 + expm1): 1 + 1 − 2·1 = 0 exactly, so it is left out.
  mmd2 = sums[_XX] / (n * n) + sums[_YY] / (m * m) - 2.0 * (sums[_XY] / (n * m))
  return np.float64(float(scale) * mmd2)


# ------------------------------------------------------------------------------------ checks ---


def _check_embeddings(x, name):
  if isinstance(x, jax.core.Tracer):
    raise InputError(f"{name}: expected a concrete array, got a tracer: mmd checks its input and "
                     f"combines its tile sums on the host, call it outside jit")
  if not hasattr(x, "dtype") or not hasattr(x, "shape"):
    x = np.asarray(x)
  if x.ndim != 2:
    raise InputError(f"{name}: expected embeddings of shape (N, d), got shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputError(f"{name}: expected a floating array, got {x.dtype}")
  if x.shape[0] < 1 or x.shape[1] < 1:
    raise InputError(f"{name}: expected at least one row and one feature, got shape "
                     f"{tuple(x.shape)}")
  return x


# ---------------------------------------------------------------------------------- schedule ---


def _block(n, m, mesh, block_size):
  """Rows per tile: the requested size, or by default the larger set split into equal tiles of at
  most 1024 rows on CPU, 4096 on accelerators (manifold's ``_tile_rows``; the tiles, not the rows,
  are dealt to the devices, so the split is of the whole set, unaligned); and small sets get at
  least ~one tile per device."""
  share = -(-max(n, m) // mesh.size)
  return min(_tile_rows(max(n, m), block_size, _platform(mesh), align=False), share)


@functools.lru_cache(maxsize=64)
def _schedule(x_blocks, y_blocks, devices):
  """The tiles as (row block, column block) start rows in the stacked ``[X; Y]``, per device.

  Returns ``rows``, ``cols`` int32 ``(devices · per_device,)`` (device ``k`` owns entries
  ``k·per_device …``), and for each entry its sum (``_XX``, ``_YY``, ``_XY``) and weight: 1 on a
  diagonal tile of a symmetric matrix, 2 off it (the tile stands for its transpose too), 1 on
  ``K_XY``, 0 on the filler tiles that even out the devices' shares.
  """
  tiles = []
  for i in range(x_blocks):
    tiles += [(i, j, _XX, 1.0 if i == j else 2.0) for j in range(i, x_blocks)]
  for i in range(y_blocks):
    tiles += [(x_blocks + i, x_blocks + j, _YY, 1.0 if i == j else 2.0)
              for j in range(i, y_blocks)]
  tiles += [(i, x_blocks + j, _XY, 1.0) for i in range(x_blocks) for j in range(y_blocks)]
  per_device = -(-len(tiles) // devices)
  tiles += [(0, 0, _XX, 0.0)] * (per_device * devices - len(tiles))
  # Round-robin: tile t goes to device t % devices, at position t // devices of its share.
  order = np.arange(per_device * devices).reshape(per_device, devices).T.reshape(-1)
  table = np.array(tiles, dtype=np.float64)[order]
  return (table[:, 0].astype(np.int32), table[:, 1].astype(np.int32),
          table[:, 2].astype(np.int64), table[:, 3])


def _kernel_sums(x, y, gamma, dtype, block_size, mesh):
  """``Σ expm1(−γ d²)`` over each of ``K_XX``, ``K_YY``, ``K_XY``, float64 ``(3,)`` on the host."""
  n, m = x.shape[0], y.shape[0]
  block = _block(n, m, mesh, block_size)
  x_blocks, y_blocks = -(-n // block), -(-m // block)
  z, z_valid = _stacked(x, y, x_blocks * block, y_blocks * block, dtype)
  rows, cols, which, weight = _schedule(x_blocks, y_blocks, mesh.size)
  row_sharding = NamedSharding(mesh, P(mesh.axis_names[0]))
  tile_sums = _tiles(_replicated(z, mesh), _replicated(z_valid, mesh),
                     jax.device_put(rows * block, row_sharding),
                     jax.device_put(cols * block, row_sharding),
                     _replicated(np.asarray(gamma, dtype), mesh), block=block, mesh=mesh)
  tile_sums = np.asarray(jax.device_get(tile_sums), np.float64)
  sums = np.zeros(3, np.float64)
  for k in (_XX, _YY, _XY):
    # math.fsum: the float64 combination adds no round-off of its own (exactly rounded).
    sums[k] = math.fsum((weight[which == k] * tile_sums[which == k]).tolist())
  return sums


def _stacked(x, y, x_rows, y_rows, dtype):
  """``[X; 0; Y; 0]`` in ``dtype``, each set zero-padded to its rows, and the mask of real rows.

  Built before placement (on the host for NumPy inputs), so that the devices hold one copy of the
  two sets. Rows that are not finite, or whose squared norm would overflow the distances, are
  refused here (:func:`jaxmetrics.metrics.manifold._check_finite`).
  """
  parts = []
  for a, rows, name in ((x, x_rows, "x"), (y, y_rows, "y")):
    a = np.asarray(a, dtype) if isinstance(a, np.ndarray) else jnp.asarray(a, dtype)
    _check_finite(a, name, dtype=dtype, what="embeddings")
    parts.append((a, rows))
  valid = np.concatenate([np.arange(rows) < a.shape[0] for a, rows in parts])
  if all(isinstance(a, np.ndarray) for a, _ in parts):
    # Written in place into an aligned array, which the CPU devices then use without a copy.
    return _host_rows(parts, dtype), valid
  pad = lambda a, rows: jnp.pad(jnp.asarray(a), ((0, rows - a.shape[0]), (0, 0)))
  return jnp.concatenate([pad(a, rows) for a, rows in parts]), valid


# ----------------------------------------------------------------------------------- kernels ---


def _tile_sum(z, z_sq, z_valid, row, col, gamma, block):
  """``Σ expm1(−γ max(−2·a·b + |a|² + |b|², 0))`` over one ``block × block`` tile of ``[X; Y]``."""
  a = jax.lax.dynamic_slice_in_dim(z, row, block)
  b = jax.lax.dynamic_slice_in_dim(z, col, block)
  a_sq = jax.lax.dynamic_slice_in_dim(z_sq, row, block)
  b_sq = jax.lax.dynamic_slice_in_dim(z_sq, col, block)
  valid = (jax.lax.dynamic_slice_in_dim(z_valid, row, block)[:, None]
           & jax.lax.dynamic_slice_in_dim(z_valid, col, block)[None, :])
  ab = jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HIGHEST,
                           preferred_element_type=z.dtype)
  # cmmd's order: −2·x·yᵀ + |x|² (column) + |y|² (row); ≥ 0 in exact arithmetic.
  d2 = jnp.maximum(-2 * ab + a_sq[:, None] + b_sq[None, :], 0)
  terms = jnp.where(valid, jnp.expm1(-gamma * d2), 0)
  # Rows first, then the row sums: float32 round-off grows with 2·block, not block².
  return jnp.sum(jnp.sum(terms, axis=1))


@functools.partial(jax.jit, static_argnames=("block", "mesh"))
def _tiles(z, z_valid, rows, cols, gamma, *, block, mesh):
  axis = mesh.axis_names[0]

  def device_share(z, z_valid, rows, cols, gamma):
    z_sq = jnp.sum(z * z, axis=1)

    def step(_, tile):
      return None, _tile_sum(z, z_sq, z_valid, tile[0], tile[1], gamma, block)

    _, sums = jax.lax.scan(step, None, jnp.stack([rows, cols], axis=1))
    return sums

  sums = jax.shard_map(device_share, mesh=mesh, in_specs=(P(), P(), P(axis), P(axis), P()),
                       out_specs=P(axis))(z, z_valid, rows, cols, gamma)
  # Replicated: every process of a multi-host run can read the tile sums.
  return jax.lax.with_sharding_constraint(sums, NamedSharding(mesh, P()))
