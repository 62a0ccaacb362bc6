"""Reconstruction metrics against NumPy float64, torch's losses, scikit-image and torchmetrics."""

import importlib.util
import pathlib
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from jaxmetrics._errors import InputError
from jaxmetrics.metrics import reconstruction as rec
from jaxmetrics.metrics.reconstruction import ReconstructionState, psnr, reconstruction_error, ssim
from tests._peers import torchmetrics_module

# float32 against a float64 computation: each element carries ~6e-8 relative rounding and the mean
# over ≤ 10³ elements adds at most as much again; measured ≲ 3e-7 relative.
F32_RTOL = 1e-6
# x64: the same formulas in float64, differing only in summation order (measured ≲ 1e-15).
F64_RTOL = 1e-12
# SSIM in float32 vs skimage in float64, on values in [−1, 1]: the local moments of each window
# carry ~1e-7 relative rounding (kept small by the per-image mean shift); measured ≲ 5.2e-7 on these
# crops, 8.5e-7 on a 128² camera crop. 3e-6 leaves room for other images, not for a wrong formula
# (a wrong window or covariance normalisation moves SSIM by > 1e-3). x64: measured ≲ 1.6e-14.
SSIM_F32_ATOL = 3e-6
SSIM_F64_ATOL = 1e-12
# PSNR in float32: an MSE off by δ relative moves PSNR by 4.3·δ dB; with δ ~ 1e-7 that is ~5e-7 dB
# on values of 10-40 dB; measured ≲ 2e-6 dB (1e-7 relative) here, 4e-6 dB on other images.
PSNR_F32_RTOL = 1e-6
EPS32 = float(np.finfo(np.float32).eps)


def _close(ours, ref, rtol=0.0, atol=0.0):
  np.testing.assert_allclose(np.asarray(ours, np.float64), np.asarray(ref, np.float64), rtol=rtol,
                             atol=atol)


def _probabilities(shape, seed=0, exact_ends=True):
  rng = np.random.default_rng(seed)
  x = rng.random(shape)
  p = rng.random(shape)
  if exact_ends:
    # Exact 0 and 1 in both, in every combination: the clamp at −100 decides these.
    flat_x, flat_p = x.reshape(-1), p.reshape(-1)
    flat_x[:4], flat_p[:4] = [0, 0, 1, 1], [0, 1, 0, 1]
    flat_p[4:8] = [1e-45, 1 - 2**-24, 1e-30, 0.5]
  return x, p


def _textbook(kind, x, p):
  """Per-element losses in float64, written from the definitions (torch's clamp for BCE)."""
  x, p = np.float64(x), np.float64(p)
  if kind == "mse":
    return (x - p) ** 2
  if kind == "mae":
    return np.abs(x - p)
  with np.errstate(divide="ignore"):
    if kind == "bce":
      return -(x * np.maximum(np.log(p), -100) + (1 - x) * np.maximum(np.log1p(-p), -100))
  # bce_logits: −x·log σ(z) − (1 − x)·log(1 − σ(z)), through logaddexp for exactness.
  return x * np.logaddexp(0, -p) + (1 - x) * np.logaddexp(0, p)


def _reduce(elementwise, reduction, mask=None):
  n = elementwise.shape[0]
  mask = np.ones(n, bool) if mask is None else mask
  per_sample = elementwise.reshape(n, -1).mean(axis=1)
  if reduction == "none":
    return np.where(mask, per_sample, 0)
  if reduction == "sum":
    return elementwise[mask].sum()
  return elementwise[mask].mean()


# ---------------------------------------------------------------------- error kinds vs float64


@pytest.mark.parametrize("kind", rec.ERROR_KINDS)
@pytest.mark.parametrize("reduction", rec.REDUCTIONS)
def test_error_kinds_match_float64_textbook(kind, reduction):
  x, p = _probabilities((6, 5, 4, 3), seed=1)
  if kind == "bce_logits":
    p = np.random.default_rng(2).normal(size=p.shape) * 8
  mask = np.array([True, False, True, True, False, True])
  ref = _reduce(_textbook(kind, x, p), reduction, mask)
  ours = reconstruction_error(x.astype(np.float32), p.astype(np.float32), kind, reduction,
                              mask=mask)
  assert ours.dtype == jnp.float32 and ours.shape == np.shape(ref)
  # float32 inputs are themselves rounded: compare with the textbook on the rounded inputs. atol:
  # ~ε (1.2e-7) of the order-1 per-element losses, for a reduction that lands near 0.
  ref32 = _reduce(_textbook(kind, np.float32(x), np.float32(p)), reduction, mask)
  _close(ours, ref32, rtol=F32_RTOL, atol=1e-7)
  with jax.enable_x64(True):
    ours = reconstruction_error(x, p, kind, reduction, mask=mask)
    assert ours.dtype == jnp.float64
  _close(ours, ref, rtol=F64_RTOL)


def test_uint8_inputs_do_not_wrap():
  x = np.array([[0, 255]], np.uint8)
  y = np.array([[255, 0]], np.uint8)
  _close(reconstruction_error(x, y, "mse"), 255.0 ** 2, rtol=0)
  _close(reconstruction_error(x, y, "mae"), 255.0, rtol=0)


# ------------------------------------------------------------------------------ BCE vs torch


# torch and we both compute in float32 with one log per element; the per-element results agree to
# 1-2 ulps and the reductions add in different orders: 1e-6 relative. In float64, 1e-12.
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_bce_matches_torch_including_exact_zero_and_one(reduction, dtype, rtol):
  x, p = _probabilities((4, 3, 8, 8), seed=3)
  x, p = x.astype(dtype), p.astype(dtype)
  ref = F.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(x),
                               reduction=reduction).numpy()
  if reduction == "none":
    ref = ref.reshape(4, -1).mean(axis=1)
  with jax.enable_x64(dtype == np.float64):
    ours = reconstruction_error(x, p, "bce", reduction)
  assert np.all(np.isfinite(ours))
  _close(ours, ref, rtol=rtol)
  # The four exact-end combinations, one element per sample: 0 where p equals the target, else
  # 100 (the clamp), exactly, as torch.
  x4, p4 = x.reshape(-1)[:4, None], p.reshape(-1)[:4, None]
  with jax.enable_x64(dtype == np.float64):
    np.testing.assert_array_equal(reconstruction_error(x4, p4, "bce", "none"), [0, 100, 100, 0])
  ref = F.binary_cross_entropy(torch.from_numpy(p4), torch.from_numpy(x4), reduction="none")
  np.testing.assert_array_equal(ref.numpy()[:, 0], [0, 100, 100, 0])


# torch's form, (1 − x)·z − log σ(z), loses the tail to cancellation for z ≪ 0 that ours keeps;
# at |z| ≤ 30 both are within ~2 ulps of the per-element loss, so the per-sample means and the
# reductions agree to 1e-6 relative in float32 (measured ≲ 2e-7) and 1e-12 in float64.
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_bce_logits_matches_torch(reduction, dtype, rtol):
  rng = np.random.default_rng(4)
  x = rng.random((4, 3, 8, 8)).astype(dtype)
  x.reshape(-1)[:10] = [0, 1] * 5
  z = (rng.normal(size=x.shape) * 10).clip(-30, 30).astype(dtype)
  ref = F.binary_cross_entropy_with_logits(torch.from_numpy(z), torch.from_numpy(x),
                                           reduction=reduction).numpy()
  if reduction == "none":
    ref = ref.reshape(4, -1).mean(axis=1)
  with jax.enable_x64(dtype == np.float64):
    ours = reconstruction_error(x, z, "bce_logits", reduction)
  _close(ours, ref, rtol=rtol)


def test_bce_logits_is_stable_at_extreme_logits():
  x = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
  z = np.array([[1e4, -1e4, -1e4, 1e4]], np.float32)
  per_element = reconstruction_error(x, z, "bce_logits", "sum")
  _close(per_element, 2e4, rtol=1e-7)  # 1e4 + 1e4 are exact in float32: under one ulp
  # Tails: log(1 + e^{−30}) ≈ 9.36e-14 must survive, not round to 0 or go negative.
  tail = reconstruction_error(np.array([[1.0]], np.float32), np.array([[30.0]], np.float32),
                              "bce_logits")
  _close(tail, np.log1p(np.exp(-30.0)), rtol=1e-6)  # float32 exp and log1p: ~8 ε relative


def test_bce_gradients_are_finite_at_zero_and_one():
  x, p = _probabilities((2, 16), seed=5)
  x, p = x.astype(np.float32), p.astype(np.float32)
  grad = jax.grad(lambda q: reconstruction_error(x, q, "bce"))(p)
  assert np.all(np.isfinite(grad))
  grad = jax.grad(lambda z: reconstruction_error(x, z, "bce_logits"))(p * 40 - 20)
  assert np.all(np.isfinite(grad))


# --------------------------------------------------------------------- PSNR / SSIM vs skimage


def _batch(channels, as_float):
  """Three crops of camera (grey) or astronaut (RGB) and a random image, 40×33, with noisy copies.

  The copies are dimmed, offset and noised at a different level per image, so the per-image values
  spread widely and a mix-up between images or a wrong window shows.
  """
  image = skimage.data.camera()[..., None] if channels == 1 else skimage.data.astronaut()
  rng = np.random.default_rng(channels)
  crops = [image[200:240, 180:213], image[60:100, 300:333], image[300:340, 100:133],
           rng.integers(0, 256, (40, 33, channels), dtype=np.uint8)]
  x = np.stack(crops)
  noise = np.array([4.0, 12.0, 25.0, 40.0])[:, None, None, None]
  y = np.clip(np.round(x * 0.9 + 12 + rng.normal(size=x.shape) * noise), 0, 255).astype(np.uint8)
  if as_float:
    return x.astype(np.float32) / 255, y.astype(np.float32) / 255, 1.0
  return x, y, None


SSIM_MODES = {
    "uniform7": {},  # skimage's default: 7×7 uniform, sample covariance
    "gauss11": {"gaussian_weights": True},  # 11-tap Gaussian, σ = 1.5
    "gauss-crop7": {"gaussian_weights": True, "win_size": 7},  # crop narrower than the filter
    "custom": {"win_size": 5, "use_sample_covariance": False, "k1": 0.02, "k2": 0.05},
}
# Both defaults on grey/RGB × uint8/float; the two unusual modes on one combination each (every
# case compiles twice, float32 and x64, and the suite has a time budget).
SSIM_CASES = [(mode, channels, as_float) for mode in ("uniform7", "gauss11") for channels in (1, 3)
              for as_float in (False, True)] + [("gauss-crop7", 3, True), ("custom", 1, False)]


@pytest.mark.parametrize("mode, channels, as_float", SSIM_CASES)
def test_ssim_matches_skimage(mode, channels, as_float):
  mode = SSIM_MODES[mode]
  x, y, data_range = _batch(channels, as_float)
  sk_mode = {("K1" if k == "k1" else "K2" if k == "k2" else k): v for k, v in mode.items()}
  # skimage computes float32 input in float32 (uint8 in float64): feed it float64, the exact value.
  ref = np.array([sk_ssim(np.float64(x[i]), np.float64(y[i]), data_range=data_range or 255.0,
                          channel_axis=-1, **sk_mode) for i in range(len(x))])
  if data_range is None:  # and for uint8 its own inference gives the same
    _close(sk_ssim(x[0], y[0], channel_axis=-1, **sk_mode), ref[0], atol=0)
  assert np.ptp(ref) > 0.05  # the images differ enough to tell a wrong per-image value
  ours = ssim(x, y, data_range, reduction="none", **mode)
  assert ours.dtype == jnp.float32
  _close(ours, ref, atol=SSIM_F32_ATOL)
  with jax.enable_x64(True):
    _close(ssim(x, y, data_range, reduction="none", **mode), ref, atol=SSIM_F64_ATOL)


def test_ssim_reductions():
  x, y, _ = _batch(1, False)
  per_image = np.asarray(ssim(x, y, reduction="none"))
  # Two float32 reductions of the same n values in other orders: each sum within (n − 1) ε Σ|v| of
  # the exact one, so 2 n ε Σ|v| covers their difference; a mean, that / n (with its division).
  roundoff = lambda v: 2 * len(v) * EPS32 * np.abs(v).sum()
  _close(ssim(x, y), per_image.mean(), atol=roundoff(per_image) / len(per_image))
  _close(ssim(x, y, reduction="sum"), per_image.sum(), atol=roundoff(per_image))
  mask = np.array([False, True, True, False])
  _close(ssim(x, y, mask=mask), per_image[mask].mean(), atol=roundoff(per_image[mask]) / 2)
  _close(ssim(x, y, mask=mask, reduction="none"), np.where(mask, per_image, 0), atol=0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("as_float", [False, True])
def test_psnr_matches_skimage(channels, as_float):
  x, y, data_range = _batch(channels, as_float)
  ref = np.array([sk_psnr(np.float64(x[i]), np.float64(y[i]), data_range=data_range or 255.0)
                  for i in range(len(x))])
  if data_range is None:
    _close(sk_psnr(x[0], y[0]), ref[0], atol=0)
  ours = psnr(x, y, data_range, reduction="none")
  _close(ours, ref, rtol=PSNR_F32_RTOL)
  _close(psnr(x, y, data_range), ref.mean(), rtol=PSNR_F32_RTOL)
  _close(psnr(x, y, data_range, reduction="sum"), ref.sum(), rtol=PSNR_F32_RTOL)
  with jax.enable_x64(True):
    _close(psnr(x, y, data_range, reduction="none"), ref, rtol=F64_RTOL)


def test_psnr_of_identical_images_is_inf_like_skimage():
  x, _, _ = _batch(1, False)
  with np.errstate(divide="ignore"):
    assert sk_psnr(x[0], x[0]) == np.inf
  assert float(psnr(x, x)) == np.inf


def test_data_range_inferred_for_uint8_only():
  x, y, _ = _batch(3, False)
  _close(psnr(x, y), psnr(x, y, 255.0), rtol=0)
  _close(ssim(x, y), ssim(x, y, 255.0), rtol=0)


# --------------------------------------------------------------------------- torchmetrics


def _torchmetrics_image():
  return torchmetrics_module("functional.image")


# The peer runs in float64 (the exact value): ours in x64 agrees to 1e-16 (measured; tolerance
# 1e-12), ours in float32 as against skimage (SSIM_F32_ATOL, measured 5e-8). torchmetrics' own
# float32 SSIM is 2.3e-5 off its float64 value on these crops (E[x²] − E[x]² cancels without our
# mean shift). Its PSNR multiplies by 10/log(10) taken in float32 even for float64 input: ~5e-8
# relative, hence 2e-7 for x64.
def test_ssim_and_psnr_match_torchmetrics():
  image = _torchmetrics_image()
  x, y, _ = _batch(3, True)
  tx, ty = (torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)).astype(np.float64))
            for a in (x, y))
  # torchmetrics' default: 11×11 Gaussian σ = 1.5, population covariance, reflect, no crop.
  tm_gauss = image.structural_similarity_index_measure(ty, tx, data_range=1.0, reduction="none")
  tm_uniform = image.structural_similarity_index_measure(
      ty, tx, data_range=1.0, gaussian_kernel=False, kernel_size=7, reduction="none")
  tm_psnr = image.peak_signal_noise_ratio(ty, tx, data_range=1.0, dim=(1, 2, 3), reduction="none")
  # Its default dim=None pools the batch into one MSE: the documented equivalent.
  tm_pooled = image.peak_signal_noise_ratio(ty, tx, data_range=1.0)
  torchmetrics_like = dict(use_sample_covariance=False, border="reflect", reduction="none")
  for x64, ssim_atol, psnr_rtol in ((False, SSIM_F32_ATOL, PSNR_F32_RTOL), (True, 1e-12, 2e-7)):
    with jax.enable_x64(x64):
      _close(ssim(x, y, 1.0, gaussian_weights=True, **torchmetrics_like), tm_gauss.numpy(),
             atol=ssim_atol)
      _close(ssim(x, y, 1.0, **torchmetrics_like), tm_uniform.numpy(), atol=ssim_atol)
      _close(psnr(x, y, 1.0, reduction="none"), tm_psnr.numpy(), rtol=psnr_rtol)
      pooled = 10 * np.log10(1.0 / float(reconstruction_error(x, y, "mse")))
      _close(pooled, tm_pooled.numpy(), rtol=psnr_rtol)


# -------------------------------------------------------------------------------- bad input


def _one_line_error(fn, *args, match, **kwargs):
  with pytest.raises(InputError, match=match) as info:
    fn(*args, **kwargs)
  assert "\n" not in str(info.value)
  return str(info.value)


def test_bad_input_raises_one_line_errors():
  x = np.zeros((2, 8, 8, 1), np.float32)
  message = _one_line_error(reconstruction_error, x, np.zeros((2, 8, 8, 3), np.float32),
                            match="x, x_hat: expected the same shape")
  assert "(2, 8, 8, 1)" in message and "(2, 8, 8, 3)" in message
  _one_line_error(reconstruction_error, x[:0], x[:0], match=r"x: expected a batch .* N >= 1")
  _one_line_error(reconstruction_error, x, x, kind="bce2", match=r"kind: expected one of")
  _one_line_error(reconstruction_error, x, x, reduction="avg", match=r"reduction: expected one of")
  _one_line_error(reconstruction_error, x, x, mask=np.ones(3, bool), match=r"mask: expected shape")
  _one_line_error(reconstruction_error, x, x, mask=np.zeros(2, bool),
                  match=r"mask: expected at least one unmasked row")
  bad = x.copy()
  bad[1, 0, 0, 0] = np.nan
  _one_line_error(reconstruction_error, x, bad, match=r"x_hat: expected finite values.*1 unmasked")
  _one_line_error(psnr, bad, x, 1.0, match=r"x: expected finite values")
  # NaN in a masked row is padding: accepted, also when every row is padding ("sum", "none").
  assert float(reconstruction_error(x, bad, mask=np.array([True, False]))) == 0
  assert float(reconstruction_error(x, bad, reduction="sum", mask=np.zeros(2, bool))) == 0
  over = x + 1.5
  _one_line_error(reconstruction_error, x, over, kind="bce",
                  match=r"x_hat: expected probabilities in \[0, 1\].*bce_logits")
  _one_line_error(reconstruction_error, x - 0.5, x, kind="bce", match=r"x: expected targets")
  _one_line_error(reconstruction_error, over, x, kind="bce_logits", match=r"x: expected targets")
  _one_line_error(reconstruction_error, x.astype(np.complex64), x, match=r"x: expected a real")


def test_bad_image_options_raise_one_line_errors():
  x = np.zeros((2, 8, 8, 3), np.float32)
  _one_line_error(psnr, x, x, match=r"data_range: expected a number.*float32 images")
  _one_line_error(ssim, x, x, match=r"data_range: expected a number")
  _one_line_error(psnr, x.astype(np.uint8), x, match=r"x uint8 and x_hat float32")
  _one_line_error(psnr, x, x, -1.0, match=r"data_range: expected a positive finite")
  _one_line_error(ssim, x[..., 0], x[..., 0], 1.0, match=r"x: expected NHWC images")
  _one_line_error(ssim, x, x, 1.0, gaussian_weights=True, match=r"at least win_size=11")
  _one_line_error(ssim, x, x, 1.0, win_size=4, match=r"win_size: expected an odd integer")
  _one_line_error(ssim, x, x, 1.0, border="same", match=r"border: expected one of")
  _one_line_error(ssim, x, x, 1.0, sigma=0.0, match=r"sigma: expected a finite number > 0")


# ------------------------------------------------------------------------------- jit and masks


def test_inside_jit_bad_rows_give_nan_and_masked_garbage_gives_nothing():
  rng = np.random.default_rng(6)
  x, p = rng.random((2, 4, 6, 6, 1)).astype(np.float32)
  f = jax.jit(reconstruction_error, static_argnames=("kind", "reduction"))
  p_bad = p.copy()
  p_bad[1, 0, 0, 0] = 1.5
  per_sample = f(x, p_bad, "bce", "none")
  assert np.isfinite(per_sample[0]) and np.isnan(per_sample[1])
  assert np.isnan(f(x, p_bad, "bce"))
  # Masked rows full of NaN give bit-identical results to masked rows of clean data (the mask's
  # arithmetic itself is checked against the textbook above).
  mask = np.array([True, False, True, True])
  garbage = np.where(mask[:, None, None, None], p, np.nan).astype(np.float32)
  for kind in rec.ERROR_KINDS:
    np.testing.assert_array_equal(reconstruction_error(x, garbage, kind, mask=mask),
                                  reconstruction_error(x, p, kind, mask=mask))
  np.testing.assert_array_equal(psnr(x, garbage, 1.0, mask=mask), psnr(x, p, 1.0, mask=mask))
  per_image = ssim(x, garbage, 1.0, win_size=5, mask=mask, reduction="none")
  np.testing.assert_array_equal(per_image, ssim(x, p, 1.0, win_size=5, mask=mask, reduction="none"))
  assert per_image[1] == 0


# -------------------------------------------------------------------------------- streaming


STREAM_KINDS = [("mse", {}), ("mae", {}), ("bce", {}), ("bce_logits", {}),
                ("psnr", {"data_range": 1.0}),
                ("ssim", {"data_range": 1.0, "gaussian_weights": True})]


def _one_shot(kind, options, x, y):
  if kind in rec.ERROR_KINDS:
    return reconstruction_error(x, y, kind)
  return (psnr if kind == "psnr" else ssim)(x, y, **options)


@pytest.mark.parametrize("kind, options", STREAM_KINDS, ids=[k for k, _ in STREAM_KINDS])
def test_streaming_in_shuffled_order_equals_one_shot(kind, options):
  rng = np.random.default_rng(7)
  x, y = rng.random((2, 37, 12, 12, 2)).astype(np.float32)
  if kind == "bce_logits":
    y = (y - 0.5) * 12
  expected = _one_shot(kind, options, x, y)
  # Uneven batches, each padded to 8 rows with garbage behind a mask, one state per batch.
  bounds = [0, 5, 13, 14, 22, 30, 37]
  states = []
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    pad = 8 - (hi - lo)
    garbage = np.full((pad,) + x.shape[1:], np.nan, np.float32)
    bx, by = np.concatenate([x[lo:hi], garbage]), np.concatenate([y[lo:hi], -garbage])
    mask = np.arange(8) < hi - lo
    states.append(ReconstructionState.empty(kind, **options).update(bx, by, mask))
  random.Random(0).shuffle(states)
  merged = states[0]
  for state in states[1:]:
    merged = merged.merge(state)
  assert int(merged.count) == 37 and int(merged.num_invalid) == 0
  # Different summation orders: a few ulps of the mean (the order-1 per-element values: atol ε).
  _close(merged.compute(), expected, rtol=F32_RTOL, atol=1e-7)
  # Tree-shaped merge: associativity.
  tree = (states[0].merge(states[1])).merge(states[2].merge(states[3].merge(states[4])))
  _close(tree.merge(states[5]).compute(), expected, rtol=F32_RTOL, atol=1e-7)


def test_jitted_streaming_step_compiles_once():
  kinds = [(k, o) for k, o in STREAM_KINDS if k != "bce_logits"]

  def fresh():
    return tuple(ReconstructionState.empty(kind, **options) for kind, options in kinds)

  @jax.jit
  def step(states, x, y, mask):
    return tuple(state.update(x, y, mask) for state in states)

  rng = np.random.default_rng(8)
  x, y = rng.random((2, 29, 11, 11, 1)).astype(np.float32)
  states, sizes = fresh(), []
  for lo in range(0, 29, 8):  # batches of 8, the last one 5 rows + 3 of padding
    n = min(8, 29 - lo)
    bx, by = np.zeros((2, 8, 11, 11, 1), np.float32)
    bx[:n], by[:n] = x[lo:lo + n], y[lo:lo + n]
    states = step(states, bx, by, np.arange(8) < n)
    sizes.append(step._cache_size())
  # Resetting to fresh empty states (same avals) does not recompile either.
  step(fresh(), bx, by, np.ones(8, bool))
  assert sizes == [1, 1, 1, 1] and step._cache_size() == 1
  for state, (kind, options) in zip(states, kinds):
    _close(state.compute(), _one_shot(kind, options, x, y), rtol=F32_RTOL, atol=1e-7)


def test_streaming_under_jit_flags_bad_rows_and_compute_raises():
  x = np.full((4, 3), 0.5, np.float32)
  y = x.copy()
  y[2, 1] = 2.0  # outside [0, 1] for BCE
  state = jax.jit(lambda s, a, b: s.update(a, b))(ReconstructionState.empty("bce"), x, y)
  assert int(state.count) == 3 and int(state.num_invalid) == 1
  assert np.isnan(jax.jit(lambda s: s.compute())(state))
  _one_line_error(state.compute, match=r"x, x_hat: expected finite values in \[0, 1\].*1 unmasked")
  _one_line_error(ReconstructionState.empty("mse").compute, match=r"state: expected at least one")
  _one_line_error(ReconstructionState.empty, "ssim", data_range=1.0, window=3,
                  match=r"ssim_options: expected keywords")
  _one_line_error(ReconstructionState.empty, "psnr", win_size=3,
                  match=r"ssim_options: expected none for kind='psnr'")
  _one_line_error(ReconstructionState.empty("mse").merge, ReconstructionState.empty("mae"),
                  match=r"other: expected a ReconstructionState of kind='mse'")
  _one_line_error(ReconstructionState.empty("psnr").update, x, y,
                  match=r"data_range: expected a number")


def test_compensated_sum_does_not_drift():
  # 20000 batch sums of 0.1 + 2e-9·k: a plain float32 running sum drifts by ~1e-4 relative; the
  # compensated one stays within an ulp or two of the exact mean.
  values = (0.1 + 2e-9 * np.arange(20000)).astype(np.float32)
  states = jax.vmap(lambda v: ReconstructionState.empty("mae").update(
      jnp.reshape(v, (1, 1)), jnp.zeros((1, 1), jnp.float32)))(values)

  def fold(carry, state):
    return carry.merge(state), None

  total, _ = jax.lax.scan(fold, ReconstructionState.empty("mae"), states)
  exact = values.astype(np.float64).mean()
  naive = np.cumsum(values, dtype=np.float32)[-1] / len(values)
  assert abs(naive - exact) / exact > 1e-5  # the drift this guards against is real
  _close(total.compute(), exact, rtol=2e-7)


def test_streaming_with_sharded_batches():
  devices = np.array(jax.devices())
  mesh = jax.sharding.Mesh(devices, ("batch",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  n = 4 * len(devices)
  rng = np.random.default_rng(9)
  x, y = rng.random((2, n, 9, 9, 1)).astype(np.float32)
  sx, sy = jax.device_put(x, sharding), jax.device_put(y, sharding)
  state = ReconstructionState.empty("ssim", data_range=1.0, win_size=5).update(sx, sy)
  _close(state.compute(), ssim(x, y, 1.0, win_size=5), rtol=F32_RTOL, atol=1e-7)


# ------------------------------------------------------------------------------------ example


def test_vae_example_trains_without_recompiling():
  path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "vae_training.py"
  spec = importlib.util.spec_from_file_location("vae_training", path)
  example = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(example)
  # optax's Adam raises a float to an int32 power (bias correction), which the suite's strict
  # promotion rejects; jaxmetrics itself is exercised under strict promotion by the tests above.
  with jax.numpy_dtype_promotion("standard"):
    out = example.main(steps=30, log_every=10, verbose=False)
  assert out["compiles"] == {"train_step": 1, "eval_step": 1}
  assert out["losses"][-5:].mean() < out["losses"][:5].mean()
  assert out["after"]["bce"] < out["before"]["bce"]
  assert out["after"]["psnr"] > out["before"]["psnr"]
