"""Resizing to a network's input size, on device, exactly as each reference implementation does it.

Four modes decide how images of any size become the 299×299 input of the FID network, and they
change FID noticeably, so every number jaxmetrics prints names the mode it used. Each returns 0..255
pixel values; the network normalises them afterwards (:mod:`jaxmetrics.networks.inception` applies
the normalisation of the reference each mode comes from).

``"tf1"`` (default)
  TensorFlow 1.x ``resize_bilinear`` with ``align_corners=False``, as inside the
  ``inception-2015-12-05`` graph that defines FID and IS: source coordinate ``dst · in/out`` (no
  half-pixel offset, no antialiasing). torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``
  (``interpolate_compat_tensorflow.py``) does the same and is our parity target.
``"pytorch"``
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (half-pixel centres,
  no antialiasing): pytorch-fid's choice (``pytorch_fid/inception.py``, ``InceptionV3.forward``,
  which resizes [0, 1] values; resizing is linear, so 0..255 values give the same up to float32
  round-off).
``"clean"``
  PIL's ``Image.resize(..., BICUBIC)`` on each float32 channel (antialiased when shrinking), clipped
  to [0, 255]: clean-fid's "clean" mode. PIL's filter weights are computed on the host in float64
  (they depend only on the sizes) and applied on device as two matrix products, in the order Pillow
  runs its two passes.
``"torchmetrics"``
  ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)`` on
  0..255 values: torchmetrics' FID, KID and IS with their default ``antialias=True`` (with
  ``antialias=False`` they resize as ``"tf1"``). When shrinking, the triangle filter widens with the
  scale (Pillow's algorithm, which torch adopted); when enlarging it is ``"pytorch"``'s
  interpolation to float32 round-off. Torch forms the filter in float32; so do we, on the host, and
  apply it as two matrix products, horizontal pass first as torch does.

All four run inside ``jit`` on any backend; the interpolation tables are compile-time constants.

On the host. :func:`host_resize` applies the same float32 tables to one image in NumPy, in the same
order of passes and with the same interpolation formulas (``left + (right − left)·λ`` for the
bilinear modes, the same weights as block matrix products for the other two), so it agrees with
:func:`resize` to float32 round-off; it serves folders of mixed sizes
(:class:`jaxmetrics.pipeline.sources.FolderSource`), whose images cannot share a device batch until
they have one size. Resizing to the size an image already has is the identity in every mode, on
device and on the host, exactly: every table is then the identity (``λ = 0``; one weight 1, the
others 0) and ``x + 0·y``, ``1·x + 0·y`` are exact in IEEE arithmetic for finite values, in any
summation order.

The module also holds the filters other networks preprocess with: Pillow's bicubic on uint8
images in its 8-bit fixed-point arithmetic (:func:`pil_bicubic`; CLIP and DINOv2) and torch's
antialiased bicubic (:func:`antialias_bicubic_matrix`; EDM2's DINOv2 resize).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics._errors import InputError

RESIZE_MODES = ("tf1", "pytorch", "clean", "torchmetrics")
INCEPTION_SIZE = 299


def resize(images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="tf1"):
  """Resizes 0..255 float images ``(N, H, W, C)`` to ``size`` with the filter of ``mode``.

  Args:
    images: float array of pixel values in [0, 255], channels last.
    size: ``(height, width)`` of the output.
    mode: one of ``"tf1"``, ``"pytorch"``, ``"clean"``, ``"torchmetrics"`` (see the module
      docstring).

  Returns:
    A float32 array ``(N, size[0], size[1], C)`` of 0..255 pixel values (``"clean"`` clips to that
    range as clean-fid does; the bilinear modes stay inside it by construction).
  """
  if mode not in RESIZE_MODES:
    raise InputError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {mode!r}")
  images = images.astype(jnp.float32)
  out_h, out_w = size
  _, in_h, in_w, _ = images.shape
  if mode == "tf1":
    return _bilinear(images, _tf1_taps(in_h, out_h), _tf1_taps(in_w, out_w))
  if mode == "pytorch":
    return _bilinear(images, _half_pixel_taps(in_h, out_h), _half_pixel_taps(in_w, out_w))
  if mode == "torchmetrics":
    rows, cols = antialias_bilinear_matrix(in_h, out_h), antialias_bilinear_matrix(in_w, out_w)
    return _separable(images, rows, cols, horizontal_first=True)
  rows, cols = pil_bicubic_matrix(in_h, out_h), pil_bicubic_matrix(in_w, out_w)
  horizontal_first = pil_horizontal_first(in_h, in_w, out_h, out_w)
  return jnp.clip(_separable(images, rows, cols, horizontal_first=horizontal_first), 0.0, 255.0)


@functools.lru_cache(maxsize=None)
def _tf1_taps(in_size, out_size):
  # TF1 (and torch-fidelity) form the source coordinate in float32: dst * float32(in / out).
  scale = np.float32(in_size / out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lo = src.astype(np.int32)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, src - lo.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _half_pixel_taps(in_size, out_size):
  # torch's area_pixel_compute_source_index: (dst + 0.5) · in/out − 0.5, clamped at 0, with a
  # float32 scale. Compiled as a fused multiply-add it is rounded once: the float64 value of the
  # same expression rounded to float32 (two float32 roundings put lambdas off by up to 10 ulps).
  scale = np.float64(np.float32(in_size / out_size))
  src = np.maximum(scale * (np.arange(out_size) + 0.5) - 0.5, 0.0).astype(np.float32)
  lo = src.astype(np.int32)
  hi = np.minimum(lo + 1, in_size - 1)
  return lo, hi, src - lo.astype(np.float32)


def _bilinear(x, rows, cols):
  """Gathers the four neighbours and interpolates along x then y, in torch-fidelity's order."""
  y_lo, y_hi, dy = rows
  x_lo, x_hi, dx = cols
  dx = jnp.asarray(dx)[None, None, :, None]
  dy = jnp.asarray(dy)[None, :, None, None]

  def along_x(r):
    left = jnp.take(r, x_lo, axis=2)
    right = jnp.take(r, x_hi, axis=2)
    return left + (right - left) * dx

  top = along_x(jnp.take(x, y_lo, axis=1))
  bottom = along_x(jnp.take(x, y_hi, axis=1))
  return top + (bottom - top) * dy


def _bicubic(t):
  # PIL's bicubic filter (Resample.c, a = −0.5); support 2.
  a = -0.5
  t = np.abs(t)
  near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
  far = (((t - 5.0) * t + 8.0) * t - 4.0) * a
  return np.where(t < 1.0, near, np.where(t < 2.0, far, 0.0))


@functools.lru_cache(maxsize=None)
def pil_bicubic_weights(in_size, out_size):
  """Pillow's ``precompute_coeffs`` for BICUBIC: first input index ``(out,)`` and float64 weights
  ``(out, taps)``, zero past each window.

  Pillow's exact operation order — ``(x + xmin − center + 0.5) · (1 / filterscale)`` and a
  sequential sum — because its 8-bit path rounds ``k · 2²²`` to an integer, and a last-bit
  difference can move a coefficient across a rounding boundary.
  """
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 2.0 * filterscale
  taps = int(math.ceil(support)) * 2 + 1
  inv = 1.0 / filterscale
  first = np.zeros(out_size, np.int32)
  weights = np.zeros((out_size, taps), np.float64)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    # C's (int) cast truncates towards zero, then the window is clipped to the image.
    xmin = max(int(center - support + 0.5), 0)
    count = min(int(center + support + 0.5), in_size) - xmin
    w = _bicubic((np.arange(count) + xmin - center + 0.5) * inv)
    total = np.cumsum(w)[-1]  # cumsum adds in order, as Pillow's loop; np.sum is pairwise
    first[xx] = xmin
    weights[xx, :count] = w / total if total != 0.0 else w
  return first, weights


@functools.lru_cache(maxsize=None)
def pil_bicubic_matrix(in_size, out_size):
  """:func:`pil_bicubic_weights` as a dense ``(out_size, in_size)`` float32 matrix."""
  first, weights = pil_bicubic_weights(in_size, out_size)
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)[:, None]
  cols = first[:, None] + np.arange(weights.shape[1])[None, :]
  valid = cols < in_size
  matrix[np.broadcast_to(rows, cols.shape)[valid], cols[valid]] = weights[valid]
  return matrix.astype(np.float32)


def antialias_bilinear_weights(in_size, out_size):
  """torch's antialiased bilinear filter (``interpolate(..., antialias=True)``): first input index
  ``(out,)`` and float32 weights ``(out, taps)``, zero past each window.

  The triangle filter on Pillow's window (``_compute_index_ranges_weights`` in ATen's
  ``UpSampleKernel.cpp``), evaluated in float32 as ATen does for float input: its float32 scale
  moves the window centres by ~1e-7 relative, which at 300 → 299 shifts outputs by up to 4e-3 on
  0..255 values against a float64 filter.
  """
  f = np.float32
  scale = f(in_size / out_size)
  filterscale = max(scale, f(1.0))
  support, inv = filterscale, f(1.0) / filterscale  # bilinear: interp_size / 2 = 1
  windows = []
  for xx in range(out_size):
    center = scale * (f(xx) + f(0.5))
    xmin = max(int(center - support + f(0.5)), 0)
    count = min(int(center + support + f(0.5)), in_size) - xmin
    t = np.abs((np.arange(xmin, xmin + count, dtype=f) - center + f(0.5)) * inv)
    w = np.where(t < f(1.0), f(1.0) - t, f(0.0)).astype(f)
    total = np.cumsum(w, dtype=f)[-1]  # summed in order, as ATen's loop
    windows.append((xmin, w / total if total != 0.0 else w))
  first = np.array([xmin for xmin, _ in windows], np.int32)
  weights = np.zeros((out_size, max(len(w) for _, w in windows)), np.float32)
  for xx, (_, w) in enumerate(windows):
    weights[xx, :len(w)] = w
  return first, weights


@functools.lru_cache(maxsize=None)
def antialias_bilinear_matrix(in_size, out_size):
  """:func:`antialias_bilinear_weights` as a dense ``(out_size, in_size)`` float32 matrix."""
  first, weights = antialias_bilinear_weights(in_size, out_size)
  matrix = np.zeros((out_size, in_size), np.float32)
  for xx in range(out_size):
    count = min(weights.shape[1], in_size - first[xx])
    matrix[xx, first[xx]:first[xx] + count] = weights[xx, :count]
  return matrix


@functools.lru_cache(maxsize=None)
def antialias_bicubic_matrix(in_size, out_size):
  """torch's antialiased bicubic filter (``interpolate(mode="bicubic", antialias=True)``) as a dense
  ``(out_size, in_size)`` float32 matrix.

  ATen's ``_compute_index_ranges_weights`` with its ``aa_filter`` for bicubic, which is Pillow's
  cubic with ``a = −0.5`` (not the ``a = −0.75`` of torch's non-antialiased bicubic) on Pillow's
  window: support ``2 · max(in/out, 1)``, each row normalised to sum 1. It is evaluated in float32
  as ATen does for float input, as :func:`antialias_bilinear_matrix`. No clipping: torch's output
  may overshoot [0, 255] near edges, and EDM2, which resizes this way, does not clip either.
  """
  f = np.float32
  scale = f(in_size / out_size)
  filterscale = max(scale, f(1.0))
  support, inv = f(2.0) * filterscale, f(1.0) / filterscale  # bicubic: interp_size / 2 = 2
  matrix = np.zeros((out_size, in_size), np.float32)
  for xx in range(out_size):
    center = scale * (f(xx) + f(0.5))
    xmin = max(int(center - support + f(0.5)), 0)
    count = min(int(center + support + f(0.5)), in_size) - xmin
    w = _bicubic((np.arange(xmin, xmin + count, dtype=f) - center + f(0.5)) * inv).astype(f)
    total = np.cumsum(w, dtype=f)[-1]  # summed in order, as ATen's loop
    matrix[xx, xmin:xmin + count] = w / total if total != 0.0 else w
  return matrix


def pil_horizontal_first(in_h, in_w, out_h, out_w):
  """Whether Pillow resamples horizontally before vertically (``ImagingResampleInner``).

  Since Pillow 13 the vertical pass goes first when the height shrinks by more than twice as many
  pixels as the width (``in_h − out_h > 0`` and ``in_h − out_h > 2 · (in_w − out_w)``); older
  Pillow always went horizontally first. The order decides the float32 (mode F) or 8-bit rounding
  of the intermediate image.
  """
  shrink_h = in_h - out_h
  return not (shrink_h > 0 and shrink_h > 2 * (in_w - out_w))


def _separable(x, rows, cols, *, horizontal_first):
  # PIL and torch store the first pass as float32 before the second, so the order matters.
  highest = jax.lax.Precision.HIGHEST
  horizontal = lambda v: jnp.einsum("pw,nhwc->nhpc", jnp.asarray(cols), v, precision=highest)
  vertical = lambda v: jnp.einsum("oh,nhwc->nowc", jnp.asarray(rows), v, precision=highest)
  if horizontal_first:
    return vertical(horizontal(x))
  return horizontal(vertical(x))


def host_resize(image, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="tf1"):
  """Resizes one image ``(H, W, C)`` of 0..255 values on the host, as :func:`resize` does on device.

  NumPy float32 throughout, with the tables :func:`resize` uses (``"tf1"``, ``"pytorch"``: the
  same taps and the same ``left + (right − left)·λ``, x then y; ``"clean"``, ``"torchmetrics"``:
  the same float32 matrices, cut into blocks of 16 outputs by the inputs their windows reach and
  applied as small matrix products, passes in the same order, ``"clean"`` clipped to [0, 255]).
  The results differ from the device's only by the order in which float32 products are summed (a
  matrix product may add the terms in any order, fused or not; the zeros of a block add exactly
  nothing): each route is within ``γ_K · Σ|w|·|x|`` of the exact pass for ``K`` nonzero taps,
  ``γ_K = K·u / (1 − K·u)``, ``u = 2⁻²⁴``.

  Args:
    image: uint8 or float array ``(H, W, C)`` of pixel values in [0, 255].
    size: ``(height, width)`` of the output.
    mode: one of :data:`RESIZE_MODES`.

  Returns:
    A float32 NumPy array ``(size[0], size[1], C)``.
  """
  if mode not in RESIZE_MODES:
    raise InputError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {mode!r}")
  x = np.asarray(image, np.float32)
  out_h, out_w = size
  in_h, in_w = x.shape[:2]
  if mode == "tf1":
    return _host_bilinear(x, _tf1_taps(in_h, out_h), _tf1_taps(in_w, out_w))
  if mode == "pytorch":
    return _host_bilinear(x, _half_pixel_taps(in_h, out_h), _half_pixel_taps(in_w, out_w))
  if mode == "torchmetrics":
    return _host_separable(x, _window("antialias", in_h, out_h), _window("antialias", in_w, out_w),
                           horizontal_first=True)
  rows, cols = _window("pil", in_h, out_h), _window("pil", in_w, out_w)
  horizontal_first = pil_horizontal_first(in_h, in_w, out_h, out_w)
  return np.clip(_host_separable(x, rows, cols, horizontal_first=horizontal_first), 0.0, 255.0)


def _host_bilinear(x, rows, cols):
  """:func:`_bilinear` on one ``(H, W, C)`` image in NumPy float32."""
  y_lo, y_hi, dy = rows
  x_lo, x_hi, dx = cols
  dx, dy = dx[None, :, None], dy[:, None, None]

  def along_x(r):
    left, right = r[:, x_lo], r[:, x_hi]
    return left + (right - left) * dx

  top, bottom = along_x(x[y_lo]), along_x(x[y_hi])
  return top + (bottom - top) * dy


@functools.lru_cache(maxsize=128)
def _window(kind, in_size, out_size, group=16):
  """The ``"clean"`` (``kind="pil"``) or ``"torchmetrics"`` (``"antialias"``) table as blocks
  ``(o0, o1, s0, block)``: outputs ``[o0, o1)`` read inputs ``[s0, s0 + block.shape[1])`` with the
  float32 weights the dense matrix holds there (zero outside each output's window).

  Groups of ``group`` outputs make each block a small dense matrix product (BLAS) instead of a
  loop over taps, without the dense tables: a folder of photographs has thousands of distinct
  sizes, and the dense table of a 4000-pixel side is 4.8 MB.
  """
  if kind == "pil":
    first, weights = pil_bicubic_weights.__wrapped__(in_size, out_size)
  else:
    first, weights = antialias_bilinear_weights(in_size, out_size)
  weights = weights.astype(np.float32)
  taps = weights.shape[1]
  blocks = []
  for o0 in range(0, out_size, group):
    o1 = min(o0 + group, out_size)
    s0, s1 = int(first[o0:o1].min()), min(int(first[o0:o1].max()) + taps, in_size)
    block = np.zeros((o1 - o0, s1 - s0), np.float32)
    for o in range(o0, o1):
      count = min(taps, in_size - first[o])
      block[o - o0, first[o] - s0:first[o] - s0 + count] = weights[o, :count]
    blocks.append((o0, o1, s0, block))
  return tuple(blocks)


def _host_pass(x, blocks, axis):
  """``Σ_i w[o, i] · x[i]`` along ``axis`` (0: rows, 1: columns), in float32, block by block."""
  x = np.moveaxis(x, axis, 0)
  out = np.empty((blocks[-1][1], *x.shape[1:]), np.float32)
  for o0, o1, s0, block in blocks:
    out[o0:o1] = np.tensordot(block, x[s0:s0 + block.shape[1]], axes=1)
  return np.moveaxis(out, 0, axis)


def _host_separable(x, rows, cols, *, horizontal_first):
  if horizontal_first:
    return np.ascontiguousarray(_host_pass(_host_pass(x, cols, 1), rows, 0))
  return np.ascontiguousarray(_host_pass(_host_pass(x, rows, 0), cols, 1))


# Pillow's 8-bit (uint8) path: Resample.c's PRECISION_BITS = 32 − 8 − 2 for 8-bit images.
_PIL_PRECISION_BITS = 22


@functools.lru_cache(maxsize=None)
def pil_taps_8bpc(in_size, out_size):
  """Pillow's ``normalize_coeffs_8bpc``: the weights as int32 ``round_half_away(k · 2²²)``."""
  first, w = pil_bicubic_weights(in_size, out_size)
  fixed = w * (1 << _PIL_PRECISION_BITS)
  return first, np.where(fixed < 0, np.trunc(fixed - 0.5), np.trunc(fixed + 0.5)).astype(np.int32)


def pil_pass_8bpc(x, axis, out_size, start, count):
  """One pass of Pillow's 8-bit resampling along ``axis`` of int32 ``x`` (values 0..255), for the
  outputs ``start .. start + count − 1``: ``clip((2²¹ + Σ p·k) >> 22, 0, 255)``, exactly."""
  in_size = x.shape[axis]
  first, coeffs = pil_taps_8bpc(in_size, out_size)
  first, coeffs = first[start:start + count], coeffs[start:start + count]
  shape = [1] * x.ndim
  shape[axis] = count
  acc = None
  for t in range(coeffs.shape[1]):
    if not coeffs[:, t].any():
      continue
    index = np.minimum(first + t, in_size - 1)
    term = jnp.take(x, index, axis=axis) * jnp.asarray(coeffs[:, t].reshape(shape))
    acc = term if acc is None else acc + term
  # int32 like Pillow: |Σ p·k| < 255 · 1.25 · 2²² < 2³¹; >> is an arithmetic (floor) shift.
  return jnp.clip(jnp.right_shift(acc + (1 << (_PIL_PRECISION_BITS - 1)), _PIL_PRECISION_BITS),
                  0, 255)


def pil_pass_float(x, axis, out_size, start, count):
  """One pass of PIL's bicubic filter in float32 on 0..255 values ``x``, clipped to [0, 255]."""
  matrix = jnp.asarray(pil_bicubic_matrix(x.shape[axis], out_size)[start:start + count])
  spec = "oh,nhwc->nowc" if axis == 1 else "ow,nhwc->nhoc"
  return jnp.clip(jnp.einsum(spec, matrix, x, precision=jax.lax.Precision.HIGHEST), 0.0, 255.0)


def pil_pass_order(height, width, out_h, out_w, top=0, left=0):
  """``(axis, output size, first output kept)`` of the two passes, in Pillow's order.

  See :func:`pil_horizontal_first` (Pillow 13's ``ImagingResampleInner``). The order matters for
  uint8 images, rounded to 8 bits between the passes. A side already at its size is not
  resampled, as in Pillow.
  """
  passes = [(2, out_w, left), (1, out_h, top)]
  if not pil_horizontal_first(height, width, out_h, out_w):
    passes.reverse()
  return passes


def pil_bicubic(images, size):
  """``Image.resize((w, h), BICUBIC)`` of Pillow on device: ``(N, H, W, 3)`` → 0..255 float32
  ``(N, h, w, 3)``, ``size = (h, w)``.

  uint8 images take Pillow's 8-bit path exactly (fixed-point coefficients, rounding and clipping
  after each pass, passes in Pillow ≥ 13's order), so the result is Pillow's uint8 image bit for
  bit; float images in [0, 1] take the same filter in float32 on ``255 x``, clipped after each
  pass, without the 8-bit rounding.
  """
  _, height, width, _ = images.shape
  out_h, out_w = size
  if images.dtype == jnp.uint8:
    x, resample = images.astype(jnp.int32), pil_pass_8bpc
  else:
    x, resample = images.astype(jnp.float32) * 255.0, pil_pass_float
  for axis, out, start in pil_pass_order(height, width, out_h, out_w):
    if out != x.shape[axis]:
      x = resample(x, axis, out, start, out)
  return x.astype(jnp.float32)
