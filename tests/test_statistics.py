"""Tests of the streaming feature statistics and of the .npz statistics files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmetrics.metrics import statistics
from jaxmetrics._errors import InputError
from jaxmetrics.metrics.statistics import FeatureStats
from jaxmetrics.metrics.statistics import load_stats
from jaxmetrics.metrics.statistics import save_stats

D = 32
EPS32 = float(np.finfo(np.float32).eps)


def _features(n, d=D, seed=0):
  """Features far from the origin (mean ~100, std ~1): raw Σx² in float32 would lose all digits."""
  rng = np.random.default_rng(seed)
  mixing = rng.standard_normal((d, d)) / np.sqrt(d)
  return (100 + rng.standard_normal((n, d)) @ mixing).astype(np.float32)


def _assert_matches_numpy(stats, x, tol):
  """Mean and covariance vs NumPy float64 on the same float32 values (so input rounding is shared).

  Errors are measured in units of the feature spread (std ~1, cov entries ≤ ~1), the scale the
  float32 centred updates round to.
  """
  x64 = x.astype(np.float64)
  assert int(stats.count) == len(x)
  np.testing.assert_allclose(np.asarray(stats.mean, np.float64), x64.mean(axis=0), rtol=0, atol=tol)
  np.testing.assert_allclose(np.asarray(stats.covariance(), np.float64),
                             np.cov(x64, rowvar=False), rtol=0, atol=tol)


def test_uneven_batches_merged_in_shuffled_order_match_numpy():
  x = _features(1000)
  rng = np.random.default_rng(1)
  cuts = np.sort(rng.choice(np.arange(1, 1000), size=9, replace=False))
  parts = [FeatureStats.empty(D).update(b) for b in np.split(x, cuts)]  # sizes 1 .. ~300
  order = rng.permutation(len(parts))
  merged = FeatureStats.empty(D)
  for i in order:
    merged = merged.merge(parts[i])
  # Each float32 step rounds to ε·|x| ~ 1.2e-5 of the mean and ~ε·(spread) of the scatter; a handful
  # of merges keeps the error within ~10 ε·|mean| = 1.2e-4 absolute (measured ≤ 3e-5); a raw-moment
  # accumulator would be off by ~ε·100²·N/(N-1) ≈ 1e-3 in the covariance and fail.
  _assert_matches_numpy(merged, x, tol=10 * EPS32 * 100)
  # Sequential updates and a tree of merges agree too: associative up to the same round-off.
  sequential = FeatureStats.empty(D)
  for b in np.split(x, cuts):
    sequential = sequential.update(b)
  _assert_matches_numpy(sequential, x, tol=10 * EPS32 * 100)
  tree = (parts[0].merge(parts[1])).merge(parts[2].merge(parts[3]))
  chain = parts[0].merge(parts[1].merge(parts[2])).merge(parts[3])
  np.testing.assert_allclose(tree.covariance(), chain.covariance(), rtol=0, atol=10 * EPS32 * 100)


def test_masked_rows_change_nothing():
  x = _features(48)
  garbage = np.full((16, D), 3e38, np.float32)
  garbage[::2] = np.nan
  padded = np.concatenate([x, garbage])
  mask = np.r_[np.ones(48, bool), np.zeros(16, bool)]
  with_padding = FeatureStats.empty(D).update(padded, mask)
  without = FeatureStats.empty(D).update(x)
  assert int(with_padding.count) == 48
  # Padding rows are zeros in the sums: the same values, up to a changed summation order (XLA tiles
  # 64 rows and 48 rows differently). A sum of n = 48 terms in any order is within (n − 1) ε of
  # Σ|terms| of the exact one, so two orders within 2 (n − 1) ε: relative for the mean (same-sign
  # terms ~100), and of max|S| for the scatter (Σ|cᵢ cⱼ| ≤ max_k S_kk, Cauchy–Schwarz). A padding
  # row let through (3e38 or NaN) gives inf or NaN; one counted as a zero row, a 2% lower mean.
  roundoff = 2 * (48 - 1) * EPS32
  np.testing.assert_allclose(with_padding.mean, without.mean, rtol=roundoff)
  np.testing.assert_allclose(with_padding.scatter, without.scatter, rtol=0,
                             atol=roundoff * float(np.abs(without.scatter).max()))
  # A jax mask of 0/1 floats works the same, and a fully masked batch is a no-op.
  as_floats = FeatureStats.empty(D).update(jnp.asarray(padded), jnp.asarray(mask, jnp.float32))
  np.testing.assert_array_equal(as_floats.scatter, with_padding.scatter)
  unchanged = without.update(garbage, np.zeros(16, bool))
  for a, b in zip(jax.tree.leaves(unchanged), jax.tree.leaves(without)):
    np.testing.assert_array_equal(a, b)


def test_empty_merge_is_identity():
  stats = FeatureStats.empty(D).update(_features(10))
  empty = FeatureStats.empty(D)
  for merged in (stats.merge(empty), empty.merge(stats)):
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(stats)):
      np.testing.assert_array_equal(a, b)  # exact: weights 0 and 1, no rounding
  both = empty.merge(empty)
  assert int(both.count) == 0
  assert np.all(np.asarray(both.mean) == 0) and np.all(np.asarray(both.scatter) == 0)


def test_fixed_shape_loop_compiles_once():
  x = _features(100)
  batches = np.zeros((4, 32, D), np.float32)
  masks = np.zeros((4, 32), bool)
  batches.reshape(-1, D)[:100] = x
  masks.reshape(-1)[:100] = True
  traces = []

  def step(stats, batch, mask):
    traces.append(1)  # runs once per trace: a retrace would append again
    return stats.update(batch, mask)

  step = jax.jit(step)
  compiles = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  on_device = [(jnp.asarray(b), jnp.asarray(m)) for b, m in zip(batches, masks)]
  stats = step(FeatureStats.empty(D), *on_device[0])
  eager = FeatureStats.empty(D).update(batches[0], masks[0])  # the method itself, outside jit
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for (batch, mask), (device_batch, device_mask) in zip(zip(batches[1:], masks[1:]),
                                                          on_device[1:]):
      stats = step(stats, device_batch, device_mask)
      eager = eager.update(batch, mask)
    heard_before_control = len(compiles)
    jax.jit(lambda a: a * 3)(on_device[0][0])  # control: the listener does hear a compilation
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert len(traces) == 1
  assert heard_before_control == 0 and len(compiles) == 1
  np.testing.assert_array_equal(eager.scatter, stats.scatter)
  _assert_matches_numpy(stats, x, tol=10 * EPS32 * 100)

  @jax.jit
  def scan(stats, batches, masks):
    return jax.lax.scan(lambda s, bm: (s.update(*bm), None), stats, (batches, masks))[0]

  scanned = scan(FeatureStats.empty(D), batches, masks)
  # The same 4 updates compiled as one scan: each may round the running mean to ~ε·|mean| (mean
  # ~100) differently, and the covariance (entries ≤ ~1) inherits at most that per step.
  np.testing.assert_allclose(scanned.covariance(), stats.covariance(), rtol=0,
                             atol=4 * EPS32 * 100)


def test_float64_with_x64():
  x = np.random.default_rng(2).standard_normal((500, D)) + 100
  with jax.enable_x64(True):
    stats = FeatureStats.empty(D, jnp.float64)
    for batch in np.array_split(x, 7):
      stats = stats.update(batch)
    assert stats.scatter.dtype == jnp.float64
    # float64 throughout: ~ε64·|mean| = 2e-14 per step; 1e-12 is the float64 analogue of above.
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(x, rowvar=False), rtol=0, atol=1e-12)


def test_covariance_needs_two_samples():
  one = FeatureStats.empty(D).update(_features(1))
  with pytest.raises(InputError, match=r"^FeatureStats: expected at least 2 samples to compute a "
                     r"covariance, got count=1$"):
    one.covariance()
  with pytest.raises(InputError, match="count=0"):
    FeatureStats.empty(D).covariance()
  # Inside jit it cannot raise: it returns the (zero) scatter, never NaN.
  assert np.all(np.asarray(jax.jit(FeatureStats.covariance)(one)) == 0)


def test_nan_features():
  bad = _features(8)
  bad[3, 5] = np.nan
  with pytest.raises(InputError, match=r"^features: expected finite float32 values, got 1 NaN"):
    FeatureStats.empty(D).update(bad)
  # jax arrays are not synced to check: the NaN surfaces at covariance(), on the host.
  stats = FeatureStats.empty(D).update(jnp.asarray(bad))
  with pytest.raises(InputError, match=r"^features: expected finite values, but the statistics"):
    stats.covariance()


BAD_INPUTS = {
    "wrong_dim": (lambda s: s.update(np.ones((4, D + 1), np.float32)),
                  r"^features: expected a batch of shape \(B, 32\) matching the statistics, got "
                  r"shape \(4, 33\)$"),
    "one_dimensional": (lambda s: s.update(np.ones(D, np.float32)),
                        r"^features: expected a batch of shape \(B, 32\)"),
    "mask_shape": (lambda s: s.update(np.ones((4, D)), np.ones((4, 1), bool)),
                   r"^mask: expected shape \(4,\) matching features of shape \(4, 32\), got "
                   r"\(4, 1\)$"),
    "mask_values": (lambda s: s.update(np.ones((4, D)), np.array([0, 1, 2, 1])),
                    r"^mask: expected bool or 0/1 values"),
    "merge_dim": (lambda s: s.merge(FeatureStats.empty(D + 1)),
                  r"^other: expected FeatureStats of dimension 32 and float32, got dimension 33"),
    "merge_type": (lambda s: s.merge((1, 2, 3)), r"^other: expected FeatureStats, got tuple$"),
    "empty_dim": (lambda s: FeatureStats.empty(0), r"^dim: expected a positive int"),
    "empty_float64_without_x64": (lambda s: FeatureStats.empty(D, np.float64),
                                  r"^dtype: expected float32, or float64 with jax_enable_x64 on"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_one_line_input_error(case):
  call, message = BAD_INPUTS[case]
  with pytest.raises(InputError, match=message) as error:
    call(FeatureStats.empty(D))
  assert "\n" not in str(error.value)


# --- .npz files -----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
  stats = FeatureStats.empty(D).update(_features(100))
  path = tmp_path / "stats.npz"
  save_stats(path, stats.mean, stats.covariance())
  with np.load(path) as data:  # what pytorch-fid and clean-fid do
    assert set(data.files) == {"mu", "sigma"}
    assert data["mu"].dtype == np.float64 and data["sigma"].shape == (D, D)
  mu, sigma = load_stats(path)
  np.testing.assert_array_equal(mu, np.asarray(stats.mean, np.float64))  # exact widening
  np.testing.assert_array_equal(sigma, np.asarray(stats.covariance(), np.float64))
  assert [p.name for p in tmp_path.iterdir()] == ["stats.npz"]  # no temporary left behind


def test_loads_peer_files(tmp_path):
  mu, sigma = np.arange(D, dtype=np.float32), np.eye(D, dtype=np.float32)
  np.savez(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)  # pytorch-fid: whatever dtype
  np.savez_compressed(tmp_path / "clean_fid.npz", mu=mu.astype(np.float64), sigma=sigma)
  np.savez(tmp_path / "guided_diffusion.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=mu,
           sigma=sigma, mu_s=mu[:7], sigma_s=sigma[:7, :7])
  for name in ("pytorch_fid.npz", "clean_fid.npz", "guided_diffusion.npz"):
    loaded_mu, loaded_sigma = load_stats(str(tmp_path / name))
    assert loaded_mu.dtype == np.float64
    np.testing.assert_array_equal(loaded_mu, mu)
    np.testing.assert_array_equal(loaded_sigma, sigma)


def test_load_errors(tmp_path):
  np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(D))
  np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(D), sigma=np.zeros((D, D - 1)))
  np.savez(tmp_path / "nan.npz", mu=np.full(D, np.nan), sigma=np.eye(D))
  np.savez(tmp_path / "pickled.npz", mu=np.array([{}], dtype=object), sigma=np.eye(D))
  np.save(tmp_path / "single.npy", np.zeros(D))
  cases = {
      "no_sigma.npz": r"lacks sigma \(it has: mu\)$",
      "bad_shape.npz": r"^sigma in '.*bad_shape.npz': expected a square \(d, d\) matrix",
      "nan.npz": r"^mu in '.*nan.npz': expected finite float64 values, got 32 NaN",
      "pickled.npz": r"^path: expected an .npz archive with arrays mu and sigma of numbers",
      "single.npy": r"^path: expected an .npz archive with arrays mu and sigma, got a single .npy",
      "missing.npz": r"^path: expected .*, got '.*missing.npz', which does not exist$",
  }
  for name, message in cases.items():
    with pytest.raises(InputError, match=message) as error:
      load_stats(tmp_path / name)
    assert "\n" not in str(error.value)


def test_save_failures_leave_no_partial_file(tmp_path, monkeypatch):
  mu, sigma = np.zeros(D), np.eye(D)
  with pytest.raises(InputError, match=r"^path: expected a file in an existing directory"):
    save_stats(tmp_path / "missing_dir" / "stats.npz", mu, sigma)
  assert not (tmp_path / "missing_dir").exists()
  with pytest.raises(InputError, match=r"^sigma: expected a square"):
    save_stats(tmp_path / "stats.npz", mu, sigma[:, :3])
  path = tmp_path / "stats.npz"
  save_stats(path, mu, sigma)
  before = path.read_bytes()

  def fail_midway(file, **arrays):
    file.write(b"PK\x03\x04 partial")
    raise OSError("disk full")

  monkeypatch.setattr(statistics.np, "savez", fail_midway)
  with pytest.raises(OSError, match="disk full"):
    save_stats(path, mu + 1, sigma)
  assert path.read_bytes() == before  # the old file is untouched
  assert sorted(os.listdir(tmp_path)) == ["stats.npz"]  # and no temporary is left


def test_save_load_extra_statistics(tmp_path):
  """guided-diffusion's reference batches hold the sFID statistics as mu_s and sigma_s."""
  rng = np.random.default_rng(3)
  x, s = rng.standard_normal((50, 4)), rng.standard_normal((50, 6))
  path = tmp_path / "ref.npz"
  save_stats(path, x.mean(0), np.cov(x, rowvar=False),
             extra={"mu_s": s.mean(0), "sigma_s": np.cov(s, rowvar=False)})
  mu_s, sigma_s = load_stats(path, keys=("mu_s", "sigma_s"))
  np.testing.assert_array_equal(mu_s, s.mean(0))  # float64 written and read: exact
  np.testing.assert_array_equal(sigma_s, np.cov(s, rowvar=False))
  np.savez(tmp_path / "no_s.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
  with pytest.raises(InputError, match="lacks mu_s and sigma_s"):
    load_stats(tmp_path / "no_s.npz", keys=("mu_s", "sigma_s"))


def test_feature_buffer_appends_masked_batches_and_merges():
  """Rows are copies, so every comparison is exact."""
  rng = np.random.default_rng(4)
  rows = rng.standard_normal((11, 3)).astype(np.float32)
  step = jax.jit(lambda buffer, x, mask: buffer.update(x, mask))
  buffer = statistics.FeatureBuffer.empty(16, 3)
  mask = np.array([1, 1, 0, 1, 1, 1], bool)  # the third row is padding
  padded = np.concatenate([rows[:2], np.full((1, 3), np.nan, np.float32), rows[2:5]])
  buffer = step(buffer, padded, mask)
  buffer = step(buffer, rows[5:11], np.ones(6, bool))
  np.testing.assert_array_equal(buffer.compute(), rows)
  assert int(buffer.count) == 11 and step._cache_size() == 1  # one batch shape, one compilation

  a = statistics.FeatureBuffer.empty(8, 3).update(rows[:4])
  b = statistics.FeatureBuffer.empty(8, 3).update(rows[4:7])
  np.testing.assert_array_equal(a.merge(b).compute(), rows[:7])


def test_feature_buffer_by_index_and_overflow():
  rows = np.arange(18, dtype=np.float32).reshape(6, 3)
  buffer = statistics.FeatureBuffer.empty(4, 3)
  # Global row indices, out of order (as a sharded step may deliver them); 4 and 5 do not fit.
  buffer = buffer.update(rows[[3, 0, 5]], index=np.array([3, 0, 5]))
  buffer = buffer.update(rows[[1, 2, 4]], index=np.array([1, 2, 4]))
  assert int(buffer.count) == 4 and int(buffer.dropped) == 2
  np.testing.assert_array_equal(np.asarray(buffer.features), rows[:4])
  with pytest.raises(InputError, match="2 row\\(s\\) did not fit in its capacity of 4"):
    buffer.compute()
  with pytest.raises(InputError, match=r"features: expected a batch of shape \(B, 3\)"):
    buffer.update(rows[:, :2])
  with pytest.raises(InputError, match="index: expected integer row slots of shape"):
    buffer.update(rows, index=np.zeros(6, np.float32))
  with pytest.raises(InputError, match="other: expected a FeatureBuffer of dimension 3"):
    buffer.merge(statistics.FeatureBuffer.empty(4, 2))
