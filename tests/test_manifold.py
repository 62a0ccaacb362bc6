"""Precision/recall and density/coverage against torch-fidelity's and prdc's own code.

Why exact equality is a sound expectation. A decision "‖u − v‖² <= r²" can differ between two
float32 implementations only when the squared distance lies within their round-off of the radius.
Two kinds of data make that impossible, and each test asserts the property it relies on:

* Quantised features (``_quantised``): Inception-like ReLU features rounded to multiples of 1/16 in
  [0, 4). Every product is a multiple of 2⁻⁸ and every partial sum of a norm, a dot product or of
  ``‖u‖² − 2u·v + ‖v‖²`` is bounded by ``(‖u‖ + ‖v‖)² <= 4 max‖x‖²``; when that is below 2¹⁶ it
  fits float32's 24 bits, so every squared distance is computed exactly by any summation order
  (ours, torch's ``cdist``, scikit-learn's float64 upcast, float64 NumPy), and ties are exact ties:
  this is the data that tests ``<=`` against ``<``, self-inclusion and duplicates. The peers then
  take square roots in float32; with squared distances below 2¹³ (2²¹ steps of 2⁻⁸) two distinct
  ones differ by more than 2 ulp relative, so the roots stay distinct and in order.
* Continuous features (``test_continuous_features_match_peers``): there float32 distances carry
  round-off, bounded for any summation order by ``γ·(‖u‖ + ‖v‖)²`` with ``γ = n·u/(1 − n·u)``,
  ``u = 2⁻²⁴`` and ``n = d + 8`` (the d products, the three additions of the expression, the
  peers' square root), and a radius by the same bound over its row. The test computes in float64
  which decisions that bound cannot flip and asserts that every precision, recall and coverage
  decision is such; density counts every pair, so there the allowed difference is the number of
  pairs within the bound.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh

from jaxmetrics._errors import InputError
from jaxmetrics.metrics import manifold
from tests._peers import torch_fidelity_metric_module

_U32 = 2.0**-24
_ALIGN = 16


def _inception_like(n, d, seed, shift=0.0):
  """ReLU of correlated Gaussians (16 shared factors plus noise): mean ~0.3, most of it sparse."""
  rng = np.random.default_rng(seed)
  mixing = np.random.default_rng(123).standard_normal((16, d)) / 4
  z = rng.standard_normal((n, 16)) @ mixing + 0.5 * rng.standard_normal((n, d))
  return np.maximum(0.5 * z + 0.2 + shift, 0).astype(np.float32)


def _quantised(n, d, seed, shift=0.0):
  x = np.minimum(np.round(_inception_like(n, d, seed, shift) * 16), 63) / 16
  return x.astype(np.float32)


def _sq_distances(a, b):
  a, b = a.astype(np.float64), b.astype(np.float64)
  return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :], 0)


def _assert_exact_arithmetic(*sets):
  """The two conditions of the module docstring under which quantised data is computed exactly."""
  everything = np.concatenate(sets)
  assert np.all(everything * 16 == np.round(everything * 16)) and everything.min() >= 0
  max_sq_norm = float(np.max(np.sum(everything.astype(np.float64) ** 2, axis=1)))
  assert 4 * max_sq_norm < 2**16, max_sq_norm
  assert max(float(_sq_distances(a, b).max()) for a in sets for b in sets) < 2**13


def _adm(generated, reference, k):
  """ADM's ``Evaluator.compute_prec_recall(activations_ref, activations_sample)`` in float64.

  ``ManifoldEstimator.manifold_radii``: index k of each partitioned row of squared distances;
  ``evaluate_pr(features_1=ref, radii_1, features_2=sample, radii_2)`` with ``dist <= radius``,
  returning (mean of features_2_status, mean of features_1_status) = (precision, recall). Returns
  the counts behind them.
  """
  features_1, features_2 = reference, generated
  radii_1 = np.partition(_sq_distances(features_1, features_1), k, axis=1)[:, k]
  radii_2 = np.partition(_sq_distances(features_2, features_2), k, axis=1)[:, k]
  distance = _sq_distances(features_1, features_2)
  features_1_status = np.any(distance <= radii_2[None, :], axis=1)
  features_2_status = np.any(distance <= radii_1[:, None], axis=0)
  return int(features_2_status.sum()), int(features_1_status.sum())


def _torch_fidelity(generated, reference, k):
  """torch-fidelity's ``prc_features_to_metric`` (features_1 = generated), as counts."""
  metric_prc = torch_fidelity_metric_module("metric_prc")
  out = metric_prc.prc_features_to_metric(
      torch.from_numpy(generated), torch.from_numpy(reference), prc_neighborhood=k,
      prc_batch_size=10000, save_cpu_ram=False, verbose=False)
  return _count(out["precision"], len(generated)), _count(out["recall"], len(reference))


def _prdc(generated, reference, k):
  """prdc's ``compute_prdc`` (real first): its dict, density as the total count of balls."""
  import prdc  # pylint: disable=g-import-not-at-top  (a test-only peer)
  out = prdc.compute_prdc(real_features=reference, fake_features=generated, nearest_k=k)
  return {"density_total": _count(out["density"] * k, len(generated)),
          "coverage": _count(out["coverage"], len(reference)),
          "precision_strict": _count(out["precision"], len(generated)),
          "recall_strict": _count(out["recall"], len(reference))}


def _count(fraction, n):
  """The integer count behind a peer's fraction (torch's is a float32 mean: ~1e-7 relative)."""
  count = round(fraction * n)
  assert abs(fraction * n - count) < 1e-3, (fraction, n)
  return count


def _counts(result):
  return (int(result.generated_inside.sum()), int(result.reference_inside.sum()),
          int(result.generated_ball_counts.sum()), int(result.reference_covered.sum()))


@pytest.mark.parametrize("d", [64, 2048])
def test_quantised_features_match_peers(d, capsys):
  # Uneven sizes (neither a multiple of 8 devices nor of the blocks) and a shifted generated set,
  # so that precision != recall and a swap of the two sets would show.
  generated, reference = _quantised(601, d, seed=1, shift=0.08), _quantised(487, d, seed=2)
  _assert_exact_arithmetic(generated, reference)
  result = manifold.manifold_metrics(generated, reference, block_size=32)
  inside, ref_inside, balls, covered = _counts(result)
  assert inside != ref_inside * len(generated) / len(reference)
  assert (inside, ref_inside) == _adm(generated, reference, 3)
  assert (inside, ref_inside) == _torch_fidelity(generated, reference, 3)
  peer = _prdc(generated, reference, 5)
  assert (balls, covered) == (peer["density_total"], peer["coverage"])
  assert result.precision == inside / 601 and result.recall == ref_inside / 487
  assert result.coverage == covered / 487
  # prdc's own arithmetic for density: (1/k) * mean of the per-sample counts.
  assert result.density == (1.0 / 5) * np.mean(result.generated_ball_counts.astype(np.int64))
  # The one-pair-of-metrics entry points agree with the combined one.
  assert manifold.precision_recall(generated, reference, k=3) == (result.precision, result.recall)
  assert manifold.density_coverage(generated, reference, k=5) == (result.density, result.coverage)
  capsys.readouterr()  # prdc prints the set sizes


def _robust(generated, reference, pr_k=3, dc_k=5):
  """Which decisions float32 round-off cannot flip (module docstring), from float64 distances."""
  g, r = generated.astype(np.float64), reference.astype(np.float64)
  n = g.shape[1] + 8
  gamma = n * _U32 / (1 - n * _U32)
  norm_g, norm_r = np.linalg.norm(g, axis=1), np.linalg.norm(r, axis=1)
  largest = max(norm_g.max(), norm_r.max())
  d_gr = _sq_distances(g, r)
  radius_g = np.partition(_sq_distances(g, g), pr_k, axis=1)[:, pr_k]
  d_rr = _sq_distances(r, r)
  radius_r, radius_r_dc = (np.partition(d_rr, k, axis=1)[:, k] for k in (pr_k, dc_k))
  pair = (norm_g[:, None] + norm_r[None, :]) ** 2
  bound_r = gamma * (pair + (norm_r[None, :] + largest) ** 2)  # the radius is the reference's
  bound_g = gamma * (pair + (norm_g[:, None] + largest) ** 2)  # the radius is the generated's

  def any_inside(margin, bound, axis):  # "any(margin <= 0)" is certain either way
    return np.any(margin < -bound, axis=axis) | np.all(margin > bound, axis=axis)

  precision = any_inside(d_gr - radius_r[None, :], bound_r, 1)
  recall = any_inside(d_gr - radius_g[:, None], bound_g, 0)
  coverage = np.abs(d_gr.min(axis=0) - radius_r_dc) > bound_r.max(axis=0)
  density_pairs_in_doubt = int(np.sum(np.abs(d_gr - radius_r_dc[None, :]) <= bound_r))
  return precision, recall, coverage, density_pairs_in_doubt


def test_continuous_features_match_peers(capsys):
  # d = 64: gamma ~4e-6, and with |x|² ~ 17 every precision, recall and coverage decision of these
  # 1000 x 1037 points clears its round-off bound (asserted below); at d = 2048 the bound, ~30x
  # larger, leaves some decisions in doubt, which is why the d = 2048 parity uses quantised data.
  generated, reference = _inception_like(1000, 64, seed=1), _inception_like(1037, 64, 2, 0.05)
  precision_ok, recall_ok, coverage_ok, in_doubt = _robust(generated, reference)
  assert precision_ok.all() and recall_ok.all() and coverage_ok.all()
  inside, ref_inside, balls, covered = _counts(manifold.manifold_metrics(generated, reference))
  assert (inside, ref_inside) == _adm(generated, reference, 3)
  assert (inside, ref_inside) == _torch_fidelity(generated, reference, 3)
  peer = _prdc(generated, reference, 5)
  assert covered == peer["coverage"]
  # Each implementation may decide the pairs in doubt either way (7 of 1037000 here).
  assert abs(balls - peer["density_total"]) <= in_doubt
  capsys.readouterr()


@pytest.mark.parametrize("generated_at_origin", [False, True])
def test_one_device_and_eight_devices_agree(generated_at_origin):
  assert jax.device_count() == 8
  # Reference points at and near the origin, where the zero rows that pad either set would act if
  # padding were not masked: a generated set far from them (shift) shows padded generated balls in
  # recall and padded generated points in coverage; a generated point at the origin shows padded
  # reference balls in precision and density.
  generated = _quantised(203, 64, seed=3, shift=0.0 if generated_at_origin else 0.5)
  reference = _quantised(150, 64, seed=4, shift=0.05)
  reference[:6] = np.random.default_rng(0).integers(0, 2, (6, 64)) * (np.arange(64) < 3) / 16
  if generated_at_origin:
    generated[0] = 0
  _assert_exact_arithmetic(generated, reference)
  # One device, one block per set (203 and 150 rows): no padding at all.
  one = Mesh(np.array(jax.devices()[:1]), ("rows",))
  reference_counts = _counts(manifold.manifold_metrics(generated, reference, mesh=one))
  assert (reference_counts[0], reference_counts[1]) == _adm(generated, reference, 3)
  # 8 devices with blocks of 8: several row blocks per device, 24 and 32 column blocks, padding
  # to 256 and 192 rows; and the default blocks (26 and 19 rows, padding to 208 and 152).
  for block_size in (8, None):
    result = manifold.manifold_metrics(generated, reference, block_size=block_size)
    assert _counts(result) == reference_counts
  # The cross pass screened with bfloat16 products (blocks of 16: 16 reference blocks, 106 rows of
  # padding), with every pair in doubt recomputed (no overflow).
  inside, balls, ref_inside, covered, overflows = _evaluate(generated, reference, block_size=16,
                                                            screen=True)
  assert overflows == 0
  assert tuple(int(np.sum(a)) for a in (inside, ref_inside, balls, covered)) == reference_counts


def test_duplicates_and_k1(capsys):
  # Reference points 0..9 appear twice and generated points 0..9 are copies of them. With k = 1 a
  # duplicated point's radius is the distance to its twin, 0, in every reference (the point itself
  # is at index 0 of its sorted row): ADM's and torch-fidelity's "<=" put the copies inside
  # (0 <= 0), prdc's "<" does not, so its density counts none of those balls.
  base = _quantised(120, 64, seed=5)
  reference = np.concatenate([base, base[:10]])
  generated = np.concatenate([base[:10], _quantised(90, 64, seed=6, shift=0.05)])
  _assert_exact_arithmetic(generated, reference)
  radii = manifold.knn_radii(reference, 1, block_size=16)
  assert np.all(radii[:10] == 0) and np.all(radii[120:] == 0) and np.all(radii[10:120] > 0)
  result = manifold.manifold_metrics(generated, reference, pr_k=1, dc_k=1, block_size=16)
  assert result.generated_inside[:10].all()
  inside, ref_inside, balls, covered = _counts(result)
  assert (inside, ref_inside) == _adm(generated, reference, 1)
  assert (inside, ref_inside) == _torch_fidelity(generated, reference, 1)
  peer = _prdc(generated, reference, 1)
  assert (balls, covered) == (peer["density_total"], peer["coverage"])
  assert peer["precision_strict"] < inside  # the "<" of prdc's precision, for the record
  capsys.readouterr()


@pytest.mark.parametrize("devices, block_size, chunk", [
    (8, 16, None), (1, 16, None), (3, 7, None), (8, None, None), (2, 1, None), (8, 16, 1),
    (3, 64, 2)])
def test_knn_radii_match_partition(devices, block_size, chunk, monkeypatch):
  # Exact arithmetic, so the symmetric pass (a tile used for both of its blocks, transposed) must
  # give exactly the sorted rows of the full matrix, for any dealing of blocks to devices: 333 rows
  # in blocks of 16 over 8 devices is 3 blocks per device and padding; 7 over 3 uneven padding;
  # blocks of 1 row are all diagonal tiles or single distances. These tiles are too small for the
  # CPU's chunked selection (lax.top_k); with chunks of 1 and 2 it runs (asserted) on them.
  x = _quantised(333, 64, seed=7)
  _assert_exact_arithmetic(x)
  mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
  picks = _count_calls(monkeypatch, "_picks")
  if chunk:
    monkeypatch.setitem(manifold._CHUNK, "cpu", chunk)
  manifold._radii.clear_cache()  # compiled with the default chunk, or with this one
  try:
    for k in (1, 4):
      expected = np.partition(_sq_distances(x, x), k, axis=1)[:, k]
      np.testing.assert_array_equal(manifold.knn_radii(x, k, block_size=block_size, mesh=mesh),
                                    expected)
  finally:
    manifold._radii.clear_cache()
  assert (picks.count > 0) == bool(chunk)


def _evaluate(generated, reference, *, pr_k=3, dc_k=5, block_size=None, mesh=None, screen):
  """manifold_metrics' per-sample results with the cross pass's bfloat16 screen on or off, and
  the number of screened tiles that overflowed."""
  return manifold._evaluate(generated, reference, pr_k=pr_k, dc_k=dc_k, block_size=block_size,
                            mesh=manifold._check_mesh(mesh), screen=screen)


def test_bfloat16_products_accumulate_in_float32():
  # The screen's bound (manifold._screened_tile) assumes that a product of bfloat16 rows with a
  # float32 result is accumulated in float32: within gamma_d * sum|a_i b_i| of the exact sum. Sums
  # of 2048 positive terms make a bfloat16 (or float16) accumulation miss that bound by far (its
  # unit round-off 2^-8 or 2^-11 against gamma_d = 1.2e-4, asserted).
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.uniform(0.5, 1.0, (64, 2048)), jnp.bfloat16) for _ in range(2))
  got = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                                 preferred_element_type=jnp.float32))(a, b)
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  exact = a64 @ b64.T  # products of bfloat16 values are exact in float64, sums to ~1e-13
  bound = manifold._gamma(2048) * (np.abs(a64) @ np.abs(b64).T)
  assert np.all(np.abs(np.asarray(got, np.float64) - exact) <= bound)
  assert np.all(bound < 2.0**-11 * exact)


def _float64_decisions(generated, reference, pr_k=3, dc_k=5):
  """Per-sample results of the module docstring's definitions, from float64 distances."""
  d_gr = _sq_distances(generated, reference)
  radius_g = np.partition(_sq_distances(generated, generated), pr_k, axis=1)[:, pr_k]
  d_rr = _sq_distances(reference, reference)
  radius_pr, radius_dc = (np.partition(d_rr, k, axis=1)[:, k] for k in (pr_k, dc_k))
  return (np.any(d_gr <= radius_pr[None, :], axis=1), np.sum(d_gr < radius_dc[None, :], axis=1),
          np.any(d_gr <= radius_g[:, None], axis=0), np.any(d_gr < radius_dc[None, :], axis=0))


@pytest.mark.parametrize("ks", [(3, 5), (1, 1)])
def test_screened_cross_pass_matches_peers(ks, capsys):
  # Exact arithmetic (quantised values are also exact in bfloat16), so the screen's bfloat16
  # distances equal the float32 ones, and every pair within the screen's bound of a radius (ties
  # included: duplicates make radii of 0 at k = 1, copies of reference points sit on them) must
  # be recomputed and decided as the peers decide it. 8 devices, tiles of 32: 16 reference blocks.
  pr_k, dc_k = ks
  generated, reference = _quantised(601, 2048, seed=1, shift=0.08), _quantised(487, 2048, seed=2)
  reference[400:420] = reference[:20]
  generated[:10] = reference[:10]
  _assert_exact_arithmetic(generated, reference)
  inside, balls, ref_inside, covered, overflows = _evaluate(
      generated, reference, pr_k=pr_k, dc_k=dc_k, block_size=32, screen=True)
  assert overflows == 0
  counts = (int(inside.sum()), int(ref_inside.sum()), int(balls.sum()), int(covered.sum()))
  assert counts[:2] == _adm(generated, reference, pr_k)
  assert counts[:2] == _torch_fidelity(generated, reference, pr_k)
  peer = _prdc(generated, reference, dc_k)
  assert counts[2:] == (peer["density_total"], peer["coverage"])
  for got, expected in zip((inside, balls, ref_inside, covered),
                           _float64_decisions(generated, reference, pr_k, dc_k)):
    np.testing.assert_array_equal(got, expected)
  capsys.readouterr()


def _integers(scale=1.0, d=16):
  """601 generated and 487 reference rows of integers below 500 (times ``scale``) in ``d <= 16``,
  with duplicates and copies as in test_screened_cross_pass_matches_peers."""
  rng = np.random.default_rng(3)
  generated, reference = (rng.integers(0, 500, (n, d)).astype(np.float32) for n in (601, 487))
  reference[400:420] = reference[:20]
  generated[:10] = reference[:10]
  return generated * np.float32(scale), reference * np.float32(scale)


def test_screen_bound_is_rigorous_and_tight():
  # Rows whose bfloat16 residuals all point along the other row (1 + 2⁻⁸ − 2⁻²⁰ rounds down to 1
  # in every component, against rows of 1s and 2s, exact in bfloat16) make Cauchy–Schwarz an
  # equality, so |D̃ − D| must reach most of the bound (a bound half as large fails) and never
  # exceed it; random Inception-like rows must stay inside it too.
  d = 2048
  near_half = np.float32(1 + 2.0**-8 - 2.0**-20)
  queries = np.concatenate([np.full((4, d), near_half, np.float32) * [[1], [2], [0.5], [4]],
                            _inception_like(28, d, seed=5)]).astype(np.float32)
  columns = np.concatenate([np.ones((4, d), np.float32) * [[1], [2], [3], [0.5]],
                            _inception_like(28, d, seed=6)]).astype(np.float32)
  valid = jnp.ones(32, bool)
  q_parts = (queries, manifold._sq_norms(queries), None,
             *manifold._screen_parts(queries, valid, 32))
  c_parts = (columns, manifold._sq_norms(columns), None, None,
             *manifold._screen_parts(columns, valid, 16))
  d2, bound = (np.asarray(a, np.float64) for a in jax.jit(manifold._screened_distances)(
      q_parts, c_parts))
  error = np.abs(d2 - _sq_distances(queries, columns))
  assert np.all(error <= bound)
  assert np.max(error[:4, :4] / bound[:4, :4]) > 0.9


@pytest.mark.parametrize("ks, d", [((3, 5), 16), ((1, 1), 15)])
def test_screened_cross_pass_is_exact_where_bfloat16_rounds(ks, d):
  # Integer features below 500 in d = 16 (and 15): float32 computes every squared distance
  # exactly (every partial sum is below 4·16·500² < 2²⁴), bfloat16 rounds the odd values from 256
  # on (8 significant bits; a quarter of all values, asserted) by 1. So the screen's decisions
  # must be exactly the float64 ones, and any bound too small for its bfloat16 products, or a pair
  # in doubt not recomputed, shows as a different decision (integer distances tie often). d = 15:
  # the bfloat16 rows are packed in pairs with a zero column added (manifold._packed).
  pr_k, dc_k = ks
  generated, reference = _integers(d=d)
  assert np.mean(np.asarray(jnp.asarray(generated, jnp.bfloat16), np.float32) != generated) > 0.2
  assert 4 * np.max(np.sum(np.concatenate([generated, reference]) ** 2, axis=1)) < 2**24
  *got, overflows = _evaluate(generated, reference, pr_k=pr_k, dc_k=dc_k, block_size=32,
                              screen=True)
  assert overflows == 0
  for a, expected in zip(got, _float64_decisions(generated, reference, pr_k, dc_k)):
    np.testing.assert_array_equal(a, expected)


def test_screened_cross_pass_on_continuous_features():
  # Inception-like float32 features, d = 2048, which bfloat16 rounds: the screen decides most
  # pairs from bfloat16 products and recomputes those near a radius (the overflow test below shows
  # that such pairs exist here). Every decision that float32 round-off cannot flip (_robust) must
  # be the float64 one, as the float32 pass's must; density may differ by the pairs in doubt.
  generated = _inception_like(700, 2048, seed=1, shift=0.05)
  reference = _inception_like(650, 2048, seed=2)
  precision_ok, recall_ok, coverage_ok, in_doubt = _robust(generated, reference)
  inside64, balls64, ref_inside64, covered64 = _float64_decisions(generated, reference)
  for screen in (True, False):
    inside, balls, ref_inside, covered, overflows = _evaluate(
        generated, reference, block_size=64, screen=screen)
    assert overflows == 0
    np.testing.assert_array_equal(inside[precision_ok], inside64[precision_ok])
    np.testing.assert_array_equal(ref_inside[recall_ok], ref_inside64[recall_ok])
    np.testing.assert_array_equal(covered[coverage_ok], covered64[coverage_ok])
    assert abs(int(balls.sum()) - int(balls64.sum())) <= in_doubt
  assert precision_ok.mean() > 0.9 and recall_ok.mean() > 0.9 and coverage_ok.mean() > 0.9


@pytest.mark.parametrize("devices", [1, 2])
def test_screen_overflow_falls_back_to_float32(devices, monkeypatch):
  # One slot per tile: most tiles have more pairs in doubt, so their results come from the
  # float32 tile, and each device (on 2: 384 generated rows each, 6 blocks) stops screening after
  # _SCREEN_MAX_OVERFLOWS such tiles. Exact arithmetic (the integer data above): the per-sample
  # results must be exactly the float64 ones all the same.
  generated, reference = _integers()
  mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
  monkeypatch.setattr(manifold, "_screen_slots", lambda rows: 1)
  manifold._manifold.clear_cache()
  try:
    *got, overflows = _evaluate(generated, reference, block_size=64, mesh=mesh, screen=True)
  finally:
    manifold._manifold.clear_cache()
  assert overflows == manifold._SCREEN_MAX_OVERFLOWS * devices
  for a, expected in zip(got, _float64_decisions(generated, reference)):
    np.testing.assert_array_equal(a, expected)


def test_screen_skips_tiles_of_huge_norms():
  # Integer rows times 2⁵²: squared norms up to ~2¹²⁵·⁹, below the 2¹²⁶ that _check_finite
  # allows, distances below 2¹²⁸ and exact in float32; with norms from 2⁶² on bfloat16 products
  # could overflow, so tiles are computed in float32 (overflow: 4 tiles, then no screen) and the
  # results are exact.
  generated, reference = _integers(scale=2.0**52)
  manifold._check_finite(generated, "generated")
  manifold._check_finite(reference, "reference")
  *got, overflows = _evaluate(generated, reference, block_size=64, mesh=Mesh(
      np.array(jax.devices()[:1]), ("data",)), screen=True)
  assert overflows == manifold._SCREEN_MAX_OVERFLOWS
  for a, expected in zip(got, _float64_decisions(generated, reference)):
    np.testing.assert_array_equal(a, expected)


def test_screen_is_on_where_it_pays(monkeypatch):
  mesh = manifold._check_mesh(None)
  monkeypatch.setattr(manifold, "_cpu_bfloat16", lambda: True)
  assert manifold._screen(mesh, 1008, 10080)
  assert not manifold._screen(mesh, 1008, 7056)  # 7 reference blocks
  assert not manifold._screen(mesh, 1000, 10000)  # blocks of 1000 are not whole chunks of 16
  monkeypatch.setattr(manifold, "_cpu_bfloat16", lambda: False)
  assert not manifold._screen(mesh, 1008, 10080)
  with pytest.raises(ValueError, match="whole chunks of 16"):
    _evaluate(FEATURES, FEATURES, pr_k=1, dc_k=None, block_size=8, screen=True)


class _count_calls:
  """Counts the calls (at tracing) of ``manifold.<name>``, which it wraps for one test."""

  def __init__(self, monkeypatch, name):
    self.count = 0
    function = getattr(manifold, name)

    def counted(*args, **kwargs):
      self.count += 1
      return function(*args, **kwargs)

    monkeypatch.setattr(manifold, name, counted)


def test_default_tiles_pad_little():
  # Explicit sizes are kept (capped at the rows); the default splits the rows into the fewest equal
  # tiles of at most 1024 (CPU) / 4096 rows, rounded up to 16 rows from 256 on when aligned.
  assert manifold._tile_rows(10000, 7, "cpu") == 7 and manifold._tile_rows(5, 7, "cpu") == 5
  expected = {1: 1, 255: 255, 256: 256, 1000: 1008, 1024: 1024, 1025: 528, 10000: 1008,
              20000: 1008}
  assert {n: manifold._tile_rows(n, None, "cpu") for n in expected} == expected
  assert manifold._tile_rows(10000, None, "cpu", align=False) == 1000
  assert manifold._tile_rows(10000, None, "gpu") == 3344
  for platform, limit in (("cpu", 1024), ("tpu", 4096)):
    for align in (True, False):
      for n in range(1, 20000, 7):
        block = manifold._tile_rows(n, None, platform, align=align)
        tiles = -(-n // block)
        assert 1 <= block <= limit and tiles == -(-n // limit), (n, block)
        assert tiles * block - n < tiles * (_ALIGN if align else 1), (n, block)


@pytest.mark.parametrize("columns", [False, True])
def test_chunked_selection_is_exact(columns):
  # The CPU k-NN passes search only the k + 1 chunks of 16 with the smallest minima. Values from
  # 0..40 with +inf sprinkled in (padding) make ties within and across chunks and whole chunks of
  # inf: the kept values must still be exactly the k smallest of the running best and the row
  # (the column when ``columns``), as a full sort gives them.
  # Rows and columns are cut into chunks differently (manifold._smallest); lines with a single
  # finite value, or two equal ones, leave fewer finite chunks than are picked: the remaining picks
  # are then among all-inf chunks and must not repeat a chunk already taken.
  rng = np.random.default_rng(0)
  tile = rng.integers(0, 40, (192, 256)).astype(np.float32)
  tile[rng.random(tile.shape) < 0.3] = np.inf
  tile[32:48, :] = np.inf  # an all-inf chunk of every column
  tile[:, 5::16] = np.inf  # an all-inf chunk of every row
  lines = tile.T if columns else tile
  lines[:3] = np.inf
  lines[0, 100], lines[1, [7, 150]], lines[2, [20, 21]] = 3, 5, 0
  for kk in (1, 2, 6):
    best = np.sort(rng.integers(0, 40, (lines.shape[0], kk)).astype(np.float32), axis=1)
    best[::5] = np.inf  # rows seen for the first time
    expected = np.sort(np.concatenate([best, lines], axis=1), axis=1)[:, :kk]
    # 64: 4 chunks per row, 3 per column: chunked for kk = 1 (and rows at 2), else lax.top_k.
    for chunk in (16, None, 64):
      got = jax.jit(manifold._smallest, static_argnums=(2, 3), static_argnames="columns")(
          best, tile, kk, chunk, columns=columns)
      np.testing.assert_array_equal(got, expected)


def test_chunked_passes_match_peers(capsys, monkeypatch):
  # Tiles of 192 rows (12 chunks of 16) on 2 devices: the chunked k-NN passes run (asserted), with
  # padding in the last tile of each device (601 and 487 rows padded to 768), on exact arithmetic,
  # so radii and counts must equal the float64 references exactly.
  generated, reference = _quantised(601, 64, seed=1, shift=0.08), _quantised(487, 64, seed=2)
  reference[400:420] = reference[:20]  # duplicates: radii of 0 at k = 1, ties across tiles
  _assert_exact_arithmetic(generated, reference)
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  picks = _count_calls(monkeypatch, "_picks")
  manifold._radii.clear_cache()
  manifold._manifold.clear_cache()
  for k in (1, 3, 5):
    np.testing.assert_array_equal(
        manifold.knn_radii(reference, k, block_size=192, mesh=mesh),
        np.partition(_sq_distances(reference, reference), k, axis=1)[:, k])
  result = manifold.manifold_metrics(generated, reference, block_size=192, mesh=mesh)
  inside, ref_inside, balls, covered = _counts(result)
  assert (inside, ref_inside) == _adm(generated, reference, 3)
  peer = _prdc(generated, reference, 5)
  assert (balls, covered) == (peer["density_total"], peer["coverage"])
  assert picks.count > 0 and manifold._chunk(mesh) == 16
  capsys.readouterr()


@pytest.mark.parametrize("populate", [True, False])
def test_host_arrays_are_page_aligned(populate, monkeypatch):
  # The padded NumPy sets are handed to the CPU devices in place only if page-aligned: on Linux
  # from a populated mmap, elsewhere (no MAP_POPULATE) from an over-allocated NumPy buffer.
  if not populate:
    monkeypatch.delattr(manifold.mmap, "MAP_POPULATE", raising=False)
  for shape, dtype in (((1000, 7), np.float32), ((3, 5), np.float64)):
    a = manifold._host_array(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.ctypes.data % 4096 == 0
    a[...] = 2
    assert a.sum() == 2 * a.size
  # The CPU devices use it in place (the point of the alignment)...
  a = manifold._host_array((1000, 7), np.float32)
  a[...] = 1
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  on_devices = manifold._replicated(a, mesh)
  assert all(s.data.unsafe_buffer_pointer() == a.ctypes.data for s in on_devices.addressable_shards)
  # ...and _padded writes the padding itself: garbage in a fallback array changes nothing.
  generated, reference = _quantised(100, 16, seed=12), _quantised(90, 16, seed=13)
  expected = manifold.manifold_metrics(generated, reference)
  host_array = manifold._host_array

  def garbage(shape, dtype):
    out = host_array(shape, dtype)
    out.fill(np.nan)
    return out

  monkeypatch.setattr(manifold, "_host_array", garbage)
  got = manifold.manifold_metrics(generated, reference)
  for field in dataclasses.fields(got):
    np.testing.assert_array_equal(getattr(got, field.name), getattr(expected, field.name))


def test_jax_inputs_and_no_recompilation():
  generated, reference = _quantised(100, 64, seed=8), _quantised(90, 64, seed=9)
  expected = manifold.precision_recall(generated, reference)
  size = manifold._manifold._cache_size()
  assert manifold.precision_recall(jnp.asarray(generated), jnp.asarray(reference)) == expected
  other = manifold.precision_recall(_quantised(100, 64, seed=10), _quantised(90, 64, seed=11))
  assert manifold._manifold._cache_size() == size and other != expected


FEATURES = np.ones((10, 4), np.float32)
NAN = np.where(np.eye(10, 4, dtype=bool), np.nan, 1).astype(np.float32)
# Finite, but squared norms beyond float32 (1e20² = inf) or above FLT_MAX/4 (4 · (5e18)² = 1e38):
# their distances could be inf − inf = NaN.
HUGE = np.concatenate([FEATURES[:8], np.full((1, 4), 1e20), np.full((1, 4), 5e18)]).astype(
    np.float32)


@pytest.mark.parametrize("call, message", [
    (lambda: manifold.precision_recall(FEATURES, FEATURES, k=10),
     r"^pr_k: expected fewer than the 10 samples of reference \(a radius is the distance to the "
     r"k-th nearest other point\), got 10$"),
    (lambda: manifold.precision_recall(FEATURES[:4], FEATURES, k=4),
     r"^pr_k: expected fewer than the 4 samples of generated .*, got 4$"),
    (lambda: manifold.density_coverage(FEATURES, FEATURES, k=0),
     r"^dc_k: expected an integer >= 1, got 0$"),
    (lambda: manifold.precision_recall(FEATURES, np.ones((10, 5), np.float32)),
     r"^reference: expected 4 features per row like generated, got shape \(10, 5\)$"),
    (lambda: manifold.precision_recall(FEATURES.ravel(), FEATURES),
     r"^generated: expected features of shape \(N, d\), got shape \(40,\)$"),
    (lambda: manifold.density_coverage(FEATURES, FEATURES[:1]),
     r"^reference: expected at least 2 samples \(a k-NN ball needs another point\), got shape "
     r"\(1, 4\)$"),
    (lambda: manifold.precision_recall(NAN, FEATURES),
     r"^generated: expected finite features, got NaN or inf in 4 row\(s\)$"),
    (lambda: manifold.precision_recall(FEATURES, jnp.asarray(NAN)),
     r"^reference: expected finite features, got NaN or inf in 4 row\(s\)$"),
    (lambda: manifold.density_coverage(HUGE, FEATURES),
     r"^generated: expected squared norms of at most 8.51e\+37 \(float32 distances would "
     r"overflow\), got 2 row\(s\) above$"),
    (lambda: manifold.knn_radii(jnp.asarray(HUGE), 3),
     r"^features: expected squared norms of at most 8.51e\+37 .*, got 2 row\(s\) above$"),
    (lambda: manifold.precision_recall(FEATURES.astype(np.int32), FEATURES),
     r"^generated: expected a floating array, got int32$"),
    (lambda: manifold.precision_recall(FEATURES, FEATURES, block_size=0),
     r"^block_size: expected a positive integer or None, got 0$"),
    (lambda: manifold.precision_recall(FEATURES, FEATURES, mesh="gpu"),
     r"^mesh: expected a 1-D jax.sharding.Mesh or None, got 'gpu'$"),
    (lambda: jax.jit(lambda x: manifold.knn_radii(x, 3))(FEATURES),
     r"^features: expected a concrete array, got a tracer"),
], ids=["k_ge_n_reference", "k_ge_n_generated", "k_zero", "dims_differ", "not_2d",
        "one_sample", "nan_numpy", "nan_jax", "huge_numpy", "huge_jax", "integer", "block_size", "mesh", "tracer"])
def test_bad_input(call, message):
  with pytest.raises(InputError, match=message):
    call()
