"""Inception Score against torch-fidelity's own ``metric_isc`` and improved-gan's loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.special import softmax

from tests._peers import torch_fidelity_metric_module
from jaxmetrics._errors import InputError
from jaxmetrics.metrics.inception_score import (InceptionScoreState, _update, contiguous_split,
                                        inception_score)

# float32 vs the peer's float64: each row's Σ p log p carries ~1e-7 relative rounding, which moves
# every split's log-score by ~1e-7·|entropy| ≲ 1e-6. The mean is bounded by that relatively; the
# std is a small difference of scores, so its error is absolute, of the same size times the mean.
# Two float32 results from the same rows summed in other orders (streamed, merged, jitted) are each
# within ~1e-6 of the exact score: the same 2e-6 bounds their difference.
F32_RTOL = 2e-6
# float64: both sides are exact to a few ulps of the entropies (measured ≲ 1e-13 on the std).
F64_RTOL = 1e-12
# Exact-answer cases: the exponent is a difference of two entropy terms, each ≤ log C ≈ 6.9 and
# rounded to a few float32 ε of itself, so the score is off by a few ε·log C relative (3.3e-6).
EXACT_F32_RTOL = 4 * float(np.finfo(np.float32).eps) * np.log(1008)


def _logits(n, seed=0, scale=4.0, classes=1008):
  # Scaled so that the softmax is peaked but not one-hot: scores of ~30 over 1008 classes.
  return (np.random.default_rng(seed).normal(size=(n, classes)) * scale).astype(np.float32)


def _torch_fidelity(logits, splits, shuffle):
  metric_isc = torch_fidelity_metric_module("metric_isc")
  out = metric_isc.isc_featuresdict_to_metric(
      {"logits_unbiased": torch.from_numpy(logits)}, "logits_unbiased", isc_splits=splits,
      samples_shuffle=shuffle, rng_seed=2020, verbose=False)
  return out["inception_score_mean"], out["inception_score_std"]


def _improved_gan(logits, splits):
  """improved-gan's ``get_inception_score`` loop, verbatim but for float64 softmax inputs."""
  preds = softmax(logits.astype(np.float64), axis=1)
  scores = []
  for i in range(splits):
    part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    kl = np.mean(np.sum(kl, 1))
    scores.append(np.exp(kl))
  return np.mean(scores), np.std(scores)


def _assert_close(ours, ref, rtol):
  mean, std = map(float, ours)
  ref_mean, ref_std = ref
  np.testing.assert_allclose(mean, ref_mean, rtol=rtol)
  np.testing.assert_allclose(std, ref_std, rtol=0, atol=rtol * ref_mean)


@pytest.mark.parametrize("n", [500, 503])
@pytest.mark.parametrize("shuffle", [True, False])
def test_matches_torch_fidelity_float32(n, shuffle):
  logits = _logits(n)
  ours = inception_score(logits, shuffle_seed=2020 if shuffle else None)
  assert ours[0].dtype == jnp.float32
  _assert_close(ours, _torch_fidelity(logits, 10, shuffle), F32_RTOL)


@pytest.mark.parametrize("n", [500, 503])
@pytest.mark.parametrize("shuffle", [True, False])
def test_matches_torch_fidelity_float64(n, shuffle):
  logits = _logits(n, seed=1)
  with jax.enable_x64(True):
    ours = inception_score(logits, shuffle_seed=2020 if shuffle else None)
    assert ours[0].dtype == jnp.float64
  _assert_close(ours, _torch_fidelity(logits, 10, shuffle), F64_RTOL)


@pytest.mark.parametrize("n, splits", [(503, 10), (37, 7), (20, 20)])
def test_default_order_matches_improved_gan(n, splits):
  logits = _logits(n, seed=2, scale=2.0)
  _assert_close(inception_score(logits, splits=splits), _improved_gan(logits, splits), F32_RTOL)
  with jax.enable_x64(True):
    _assert_close(inception_score(logits, splits=splits), _improved_gan(logits, splits), F64_RTOL)


def test_one_hot_extreme_logits_are_exact():
  # 100 rows, 10 classes each hit 5 times per split of 50: p̄ is uniform over 10 classes and every
  # p(y|x) is one-hot, so IS = exp(log 10) = 10 in each split; ±1e4 logits must not give 0·log 0.
  labels = np.arange(100) % 10
  logits = np.full((100, 1008), -1e4, np.float32)
  logits[np.arange(100), labels] = 1e4
  mean, std = inception_score(logits, splits=2)
  assert np.isfinite(float(mean)) and np.isfinite(float(std))
  # The std of two such scores is a difference: bounded by the same round-off of the mean (10).
  np.testing.assert_allclose(float(mean), 10.0, rtol=EXACT_F32_RTOL)
  assert float(std) == pytest.approx(0.0, abs=EXACT_F32_RTOL * 10.0)


def test_uniform_predictions_score_one():
  mean, std = inception_score(np.zeros((40, 1008), np.float32), splits=4)
  # p = p̄ = 1/1008 up to float32 rounding: KL = 0 but for the round-off of log p ≈ −6.9.
  np.testing.assert_allclose([float(mean), float(std)], [1.0, 0.0], rtol=0, atol=EXACT_F32_RTOL)


@pytest.mark.parametrize("splits", [0, 11, 2.0, None])
def test_bad_splits(splits):
  with pytest.raises(InputError, match="^splits: expected an integer in \\[1, 10\\]"):
    inception_score(_logits(10), splits=splits)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_logits(value):
  logits = _logits(50)
  logits[7, 3] = value
  with pytest.raises(InputError,
                     match="^logits: expected finite values, got NaN or inf in 1 row\\(s\\)$"):
    inception_score(logits, splits=5)


@pytest.mark.parametrize("logits, message", [
    (np.zeros((4, 3, 2), np.float32), "expected shape \\(N, C\\), got \\(4, 3, 2\\)"),
    (np.zeros((4, 1008), np.int32), "expected a floating array, got int32"),
    (np.zeros((4, 1), np.float32), "expected at least 1 row and 2 classes"),
])
def test_bad_logits(logits, message):
  with pytest.raises(InputError, match="^logits: " + message):
    inception_score(logits, splits=2)


def test_tracer_logits_point_to_the_streaming_state():
  with pytest.raises(InputError, match="inside jit use InceptionScoreState"):
    jax.jit(inception_score)(_logits(20))


# Streaming.

def _stream(logits, batch, mask_tail=True, split_fn=None, state=None):
  """Feeds ``logits`` in fixed-size batches, padding the last one and masking the padding."""
  n, c = logits.shape
  state = InceptionScoreState.empty(c, 10) if state is None else state
  for start in range(0, n, batch):
    chunk = logits[start:start + batch]
    valid = len(chunk)
    padded = np.zeros((batch, c), np.float32)
    padded[:valid] = chunk
    mask = np.arange(batch) < valid
    split = None if split_fn is None else split_fn(np.arange(start, start + batch))
    state = state.update(padded, mask, split=split)
  return state


def test_streaming_contiguous_split_equals_batch():
  logits = _logits(503)
  # The padded rows past 502 are masked; their split index only has to be in range.
  split_fn = lambda index: contiguous_split(np.minimum(index, 502), 503, 10)
  state = _stream(logits, 64, split_fn=split_fn)
  _assert_close(state.compute(), tuple(map(float, inception_score(logits))), F32_RTOL)


def test_streaming_round_robin_equals_batch_on_interleaved_order():
  logits = _logits(500)
  interleaved = logits.reshape(50, 10, 1008).swapaxes(0, 1).reshape(500, 1008)
  ref = tuple(map(float, inception_score(interleaved)))
  _assert_close(_stream(logits, 64).compute(), ref, F32_RTOL)


def test_streaming_permutation_equals_torch_fidelity():
  logits = _logits(500)
  split = np.empty(500, np.int32)
  split[np.random.RandomState(2020).permutation(500)] = np.repeat(np.arange(10), 50)
  state = InceptionScoreState.empty().update(logits, split=split)
  _assert_close(state.compute(), _torch_fidelity(logits, 10, True), F32_RTOL)


def test_merge_in_any_order_equals_one_shot():
  logits = _logits(400)
  split_fn = lambda index: contiguous_split(index, 400, 10)
  shards = [_stream(logits[i:i + 100], 100, split_fn=lambda index, i=i: split_fn(index + i))
            for i in range(0, 400, 100)]
  one_shot = tuple(map(float, inception_score(logits)))
  a, b, c, d = shards
  orders = (a.merge(b).merge(c).merge(d), d.merge(b).merge(a.merge(c)),
            c.merge(d.merge(b.merge(a))))
  for merged in orders:
    _assert_close(merged.compute(), one_shot, F32_RTOL)


def test_update_compiles_once():
  logits = _logits(64)
  state = InceptionScoreState.empty()
  state = state.update(logits, np.ones(64, bool))
  size = _update._cache_size()
  for seed in range(3):
    state = state.update(_logits(64, seed=seed), np.arange(64) < 40 + seed)
  assert _update._cache_size() == size
  assert int(state.seen) == 64 + 40 + 41 + 42


def test_jitted_loop_and_compute():
  logits = _logits(256)

  @jax.jit
  def run(batches):
    state = jax.lax.fori_loop(
        0, 4, lambda i, s: s.update(batches[i]), InceptionScoreState.empty(1008, 8))
    return state.compute()

  ref = _stream(logits, 64, state=InceptionScoreState.empty(1008, 8)).compute()
  # The std to F32_RTOL of the mean, not of itself: it is a difference of near-equal scores.
  _assert_close(run(logits.reshape(4, 64, 1008)), tuple(map(float, ref)), F32_RTOL)


def test_compute_rejects_bad_states():
  with pytest.raises(InputError,
                     match="^splits: expected at least one row in each of the 10 splits, got 9"):
    InceptionScoreState.empty().update(_logits(9)).compute()
  with pytest.raises(InputError,
                     match="^split: expected indices in \\[0, 10\\), got 1 row\\(s\\) outside$"):
    InceptionScoreState.empty().update(_logits(20), split=np.arange(20) % 11).compute()
  bad = _logits(20)
  bad[0, 0] = np.nan
  state = InceptionScoreState.empty(1008, 2).update(bad)
  with pytest.raises(InputError, match="^logits: expected finite values"):
    state.compute()
  # Inside jit compute cannot raise, so a bad state gives NaN, never a plausible number.
  assert np.isnan(float(jax.jit(lambda s: s.compute()[0])(state)))


def test_merge_rejects_mismatched_states():
  with pytest.raises(InputError,
                     match="^other: expected a state with 10 splits of 1008 classes in float32, got 5 "):
    InceptionScoreState.empty().merge(InceptionScoreState.empty(1008, 5))
