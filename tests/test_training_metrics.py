"""Training-loop metric states against the peers, in the real clu and NNX, sharded over 8 devices.

Features are small random arrays (d = 16..32), fed in padded, masked batches as a jitted loop would.
Values are compared with the peers' own code on the float64 rows or statistics of all features:
pytorch-fid's ``calculate_frechet_distance`` (FID), torch-fidelity's ``kid_featuresdict_to_metric``,
``isc_featuresdict_to_metric`` and ``prc_features_to_metric``, prdc's ``compute_prdc``,
scikit-image's ``peak_signal_noise_ratio``, and NumPy float64 for the rest.
"""

import clu.metrics
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmetrics import training
from jaxmetrics._errors import InputError
from jaxmetrics.metrics import statistics
from tests._peers import pytorch_fid_frechet
from tests._peers import torch_fidelity_metric_module
from tests.test_manifold import _assert_exact_arithmetic
from tests.test_manifold import _prdc
from tests.test_manifold import _quantised
from tests.test_manifold import _torch_fidelity

D = 16
EPS32 = float(np.finfo(np.float32).eps)


def _features(n, d=D, seed=0, shift=0.0):
  """Correlated Gaussian features, mean ~shift, spread ~1."""
  rng = np.random.default_rng(seed)
  mixing = rng.standard_normal((d, d)) / np.sqrt(d)
  return (shift + rng.standard_normal((n, d)) @ mixing).astype(np.float32)


def _batches(x, batch):
  """Padded batches of ``batch`` rows and their masks; padding rows hold NaN (must not count)."""
  n = len(x)
  pad = -n % batch
  x = np.concatenate([x, np.full((pad, x.shape[1]), np.nan, np.float32)])
  mask = np.arange(n + pad) < n
  return [(x[i:i + batch], mask[i:i + batch]) for i in range(0, n + pad, batch)]


def _moments(x):
  x = x.astype(np.float64)
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _fid_scale(a, b):
  """tr Σ₁ + tr Σ₂ + ‖μ₁ − μ₂‖²: the size of the terms FID cancels (frechet.py's error scale)."""
  (mu1, s1), (mu2, s2) = _moments(a), _moments(b)
  return float(np.trace(s1) + np.trace(s2) + np.sum((mu1 - mu2) ** 2))


# Float32 statistics (mean, centred scatter) of spread-1 features carry ~ε of the spread per entry
# (test_statistics.py); FID, a smooth function of them with derivatives of order 1 in units of the
# scale, inherits at most ~d·ε of the scale, d = 16 (measured ≤ 2.8e-7 of the scale here, inside
# jit, where the distance itself is float32 too).
FID_TOL = D * EPS32


# ------------------------------------------------------------------------- values vs peers ---

def test_fid_against_a_reference_file_matches_pytorch_fid(tmp_path):
  generated, reference = _features(300, seed=1, shift=0.3), _features(500, seed=2)
  statistics.save_stats(tmp_path / "ref.npz", *_moments(reference))
  FID = training.FID.with_reference(tmp_path / "ref.npz")
  step = jax.jit(lambda m, x, mask: m.merge(FID.from_model_output(features=x, mask=mask)))
  state = FID.empty()
  for x, mask in _batches(generated, 64):
    state = step(state, x, mask)
  value = state.compute()
  assert isinstance(value, np.float64)
  peer, _ = pytorch_fid_frechet(*_moments(generated), *_moments(reference))
  assert abs(value - peer) <= FID_TOL * _fid_scale(generated, reference)
  # Inside jit: float32, the same value to float32 round-off of the distance (frechet.py: 3e-7
  # of the scale at d = 2048; the float32 statistics dominate here, as above).
  inside = jax.jit(lambda m: m.compute())(state)
  assert inside.dtype == jnp.float32
  assert abs(float(inside) - peer) <= FID_TOL * _fid_scale(generated, reference)


def test_two_sided_fid_and_sfid_match_pytorch_fid():
  generated, reference = _features(200, seed=3, shift=0.2), _features(250, seed=4)
  FID = training.FID.configure(dim=D)
  state = FID.empty()
  # The reference side arrives in other batches than the generated one (and some steps lack it).
  for (x, mask), (y, ref_mask) in zip(_batches(generated, 50), _batches(reference, 64)):
    state = state.merge(FID.from_model_output(features=x, mask=mask, reference_features=y,
                                              reference_mask=ref_mask))
  state = state.merge(FID.from_model_output(reference_features=reference[256:],
                                            mask=np.ones(0, bool)))
  peer, _ = pytorch_fid_frechet(*_moments(generated), *_moments(reference))
  assert int(state.reference_stats.count) == 250
  assert abs(state.compute() - peer) <= FID_TOL * _fid_scale(generated, reference)
  # sFID: the same state on the "spatial" output, a guided-diffusion batch's mu_s/sigma_s.
  SFID = training.SFID.with_reference(_moments(reference))
  sfid = SFID.from_model_output(spatial=generated, features=reference)  # "features" is ignored
  assert abs(sfid.compute() - peer) <= FID_TOL * _fid_scale(generated, reference)


def test_kid_matches_torch_fidelity():
  generated, reference = _features(120, seed=5, shift=0.2), _features(150, seed=6)
  KID = training.KID.configure(capacity=160, dim=D, subsets=20, subset_size=100, seed=7)
  state = KID.empty().merge(KID.from_model_output(features=generated, reference_features=reference))
  mean, std = state.compute()
  metric_kid = torch_fidelity_metric_module("metric_kid")
  out = metric_kid.kid_featuresdict_to_metric(
      {"f": torch.from_numpy(generated.astype(np.float64))},
      {"f": torch.from_numpy(reference.astype(np.float64))}, "f", verbose=False,
      kid_subsets=20, kid_subset_size=100, rng_seed=7)
  # Both float64 on the same rows and draws: kid.py's measured agreement is ~1e-14 relative;
  # 1e-10 of the kernel scale (~1) leaves room for summation order.
  assert abs(mean - out["kernel_inception_distance_mean"]) <= 1e-10
  assert abs(std - out["kernel_inception_distance_std"]) <= 1e-10
  # Against a fixed reference array: the same numbers.
  fixed = training.KID.configure(capacity=160, reference=reference, subsets=20, subset_size=100,
                                 seed=7)
  assert fixed.from_model_output(features=generated).compute() == (mean, std)


def test_kid_streamed_in_masked_batches_keeps_every_row_in_order():
  generated = _features(70, seed=8)
  KID = training.KID.configure(capacity=80, reference=_features(60, seed=9), subset_size=50,
                               subsets=3)
  step = jax.jit(lambda m, x, mask: m.merge(KID.from_model_output(features=x, mask=mask)))
  state = KID.empty()
  for x, mask in _batches(generated, 16):
    state = step(state, x, mask)
  np.testing.assert_array_equal(state.generated.compute(), generated)


def test_cmmd_matches_clip_mmd():
  """CMMD state, streamed in masked batches through a jitted merge, against clip-mmd's ``mmd``
  (google-research/cmmd's formula in torch float64) on the same unit rows."""
  clip_mmd = pytest.importorskip("clip_mmd.calculation",
                                 reason="clip-mmd (installed --no-deps by .ci/run) is CMMD's peer")
  unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  generated, reference = unit(_features(70, seed=21, shift=0.3)), unit(_features(50, seed=22))
  CMMD = training.CMMD.configure(capacity=80, dim=D)
  step = jax.jit(lambda m, x, mask: m.merge(CMMD.from_model_output(features=x, mask=mask)))
  state = CMMD.empty()
  for x, mask in _batches(generated, 16):
    state = step(state, x, mask)
  state = state.merge(CMMD.from_model_output(reference_features=reference))
  got = state.compute()
  peer = clip_mmd.mmd(generated.astype(np.float64), reference.astype(np.float64)).item()
  # Both float64 on the same rows: the kernel sums differ in order only, ~1e-15 of the kernel
  # means (≤ 1); × 1000 (cmmd's scale) leaves them ≤ 1e-10.
  assert isinstance(got, np.float64) and abs(got - peer) <= 1e-10 and peer > 1.0
  fixed = training.CMMD.configure(capacity=80, reference=reference)
  assert fixed.from_model_output(features=generated).compute() == got
  with pytest.raises(InputError, match="CMMD: expected at least 1 row on each side, got 70 "
                     "generated and 0 reference"):
    CMMD.from_model_output(features=generated).compute()


def test_inception_score_matches_torch_fidelity():
  rng = np.random.default_rng(10)
  logits = (3 * rng.standard_normal((240, 50))).astype(np.float32)
  IS = training.InceptionScore.configure(num_classes=50, splits=4)
  step = jax.jit(lambda m, l, i, mask: m.merge(IS.from_model_output(logits_unbiased=l, index=i,
                                                                    mask=mask)))
  state = IS.empty()
  for start in range(0, 240, 48):
    index = np.arange(start, start + 48, dtype=np.int32)
    state = step(state, logits[start:start + 48], index, np.ones(48, bool))
  mean, std = state.compute()
  assert isinstance(mean, np.float64)
  # Row i goes to split i % 4: torch-fidelity's contiguous splits of the interleaved order.
  interleaved = logits.reshape(60, 4, 50).swapaxes(0, 1).reshape(240, 50).astype(np.float64)
  metric_isc = torch_fidelity_metric_module("metric_isc")
  out = metric_isc.isc_featuresdict_to_metric(
      {"logits_unbiased": torch.from_numpy(interleaved)}, "logits_unbiased", isc_splits=4,
      samples_shuffle=False, verbose=False)
  # float32 per-row Σ p log p and Σ p (inception_score.py: ~1e-6 relative on the score).
  np.testing.assert_allclose(mean, out["inception_score_mean"], rtol=1e-6)
  # std of 4 scores ~ mean: the same relative rounding, on the scores' scale.
  assert abs(std - out["inception_score_std"]) <= 1e-6 * mean


def test_precision_recall_density_coverage_match_peers(capsys):
  # Quantised features: every squared distance is exact in float32 (test_manifold.py), so the
  # decisions, and the fractions, equal the peers' exactly.
  generated, reference = _quantised(150, 32, seed=11, shift=0.05), _quantised(130, 32, seed=12)
  _assert_exact_arithmetic(generated, reference)
  PR = training.PrecisionRecall.configure(capacity=192, dim=32)
  DC = training.DensityCoverage.configure(capacity=192, reference=reference)
  Metrics = clu.metrics.Collection.create(pr=PR, dc=DC)
  metrics = Metrics.empty()
  step = jax.jit(lambda m, x, y, mask, ref_mask: m.merge(Metrics.single_from_model_output(
      features=x, reference_features=y, mask=mask, reference_mask=ref_mask)))
  for (x, mask), (y, ref_mask) in zip(_batches(generated, 32), _batches(reference, 32)):
    metrics = step(metrics, x, y, mask, ref_mask)
  out = metrics.compute()
  precision_count, recall_count = _torch_fidelity(generated, reference, 3)
  assert out["pr"]["precision"] == precision_count / 150
  assert out["pr"]["recall"] == recall_count / 130
  peer = _prdc(generated, reference, 5)
  assert out["dc"]["coverage"] == peer["coverage"] / 130
  assert out["dc"]["density"] == (1 / 5) * (peer["density_total"] / 150)
  capsys.readouterr()


def test_reconstruction_mse_mae_psnr_match_references():
  import skimage.metrics  # pylint: disable=g-import-not-at-top  (a test-only peer)
  rng = np.random.default_rng(13)
  x = rng.uniform(0, 1, (20, 8, 8, 3)).astype(np.float32)
  x_hat = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  Metrics = clu.metrics.Collection.create(
      mse=training.Reconstruction.configure("mse"), mae=training.Reconstruction.configure("mae"),
      psnr=training.Reconstruction.configure("psnr", data_range=1.0))
  metrics = Metrics.empty()
  step = jax.jit(lambda m, a, b, mask: m.merge(Metrics.single_from_model_output(x=a, x_hat=b,
                                                                               mask=mask)))
  for start in range(0, 24, 8):
    pad = max(0, start + 8 - 20)
    a = np.concatenate([x[start:start + 8], np.zeros((pad, 8, 8, 3), np.float32)])
    b = np.concatenate([x_hat[start:start + 8], np.zeros((pad, 8, 8, 3), np.float32)])
    metrics = step(metrics, a, b, np.arange(8) < 8 - pad)
  out = metrics.compute()
  err = x.astype(np.float64) - x_hat.astype(np.float64)
  psnr = np.mean([skimage.metrics.peak_signal_noise_ratio(a, b, data_range=1.0)
                  for a, b in zip(x.astype(np.float64), x_hat.astype(np.float64))])
  # float32 per-sample values (a mean of 192 squares: ~192 ε relative), summed with compensation.
  np.testing.assert_allclose(out["mse"], np.mean(err**2), rtol=200 * EPS32)
  np.testing.assert_allclose(out["mae"], np.mean(np.abs(err)), rtol=200 * EPS32)
  # PSNR = 10 log10(1/mse): a relative mse error δ moves it by 4.34 δ dB.
  assert abs(out["psnr"] - psnr) <= 4.35 * 200 * EPS32


def test_clip_score_and_semantic_similarity_match_numpy():
  rng = np.random.default_rng(14)
  images = rng.standard_normal((30, 12)).astype(np.float32)
  texts = (images + rng.standard_normal((30, 12))).astype(np.float32)
  prompt = np.repeat(np.arange(3, dtype=np.int32), 10)
  images[prompt == 1] += 2 * rng.standard_normal(12).astype(np.float32)  # one consistent prompt
  Metrics = clu.metrics.Collection.create(
      clip=training.ClipScore, semantic=training.SemanticSimilarity.configure(num_prompts=3,
                                                                               dim=12))
  metrics = Metrics.empty()
  for start in range(0, 30, 10):
    sl = slice(start, start + 10)
    metrics = metrics.merge(Metrics.single_from_model_output(
        image_embeddings=images[sl], text_embeddings=texts[sl], prompt=prompt[sl]))
  out = metrics.compute()
  i64, t64 = images.astype(np.float64), texts.astype(np.float64)
  cos = np.sum(i64 * t64, axis=1) / np.linalg.norm(i64, axis=1) / np.linalg.norm(t64, axis=1)
  # float32 unit vectors and dot products of 12 terms: ~12 ε of 100 per pair.
  assert abs(out["clip"] - max(np.mean(100 * cos), 0)) <= 100 * 12 * EPS32 * 10
  scores = []
  for p in range(3):
    u = i64[prompt == p] / np.linalg.norm(i64[prompt == p], axis=1, keepdims=True)
    gram = u @ u.T
    scores.append(100 * max(gram[np.triu_indices(10, 1)].mean(), 0))
  # float32 sums of 10 unit vectors: ~10 ε relative to the N² terms c_p cancels, times 100.
  assert abs(out["semantic"] - np.mean(scores)) <= 100 * 10 * 10 * EPS32


# --------------------------------------------------------------------------------- clu, NNX ---

def test_clu_create_collection_merge_and_compute_values():
  generated, reference = _features(100, seed=15, shift=0.1), _features(120, seed=16)
  FID = training.FID.with_reference(_moments(reference))
  collection = clu.metrics.Collection.create_collection(
      fid=FID.empty(), loss=clu.metrics.Average.from_output("loss").empty())
  update = type(collection).single_from_model_output(features=generated, loss=jnp.ones(100))
  merged = collection.merge(update)
  with jax.numpy_dtype_promotion("standard"):  # clu's Average divides float32 by int32
    values = merged.compute_values()
  peer, _ = pytorch_fid_frechet(*_moments(generated), *_moments(reference))
  assert abs(float(values["fid"].value) - peer) <= FID_TOL * _fid_scale(generated, reference)
  assert float(values["loss"].value) == 1.0


def test_nnx_metric_update_reset_compute_and_multimetric():
  generated, reference = _features(90, seed=17, shift=0.1), _features(110, seed=18)
  metrics = nnx.MultiMetric(
      fid=training.NNXMetric(training.FID.with_reference(_moments(reference))),
      kid=training.KID.configure(capacity=96, reference=reference, subset_size=50,
                                 subsets=5).nnx(),
      loss=nnx.metrics.Average("loss"))

  @nnx.jit
  def step(metrics, x, mask):
    metrics.update(features=x, loss=jnp.sum(jnp.where(mask[:, None], x, 0), axis=1), mask=mask)

  for x, mask in _batches(generated, 32):
    step(metrics, x, mask)
  with jax.numpy_dtype_promotion("standard"):  # NNX's Average divides float32 by int32
    out = metrics.compute()
  peer, _ = pytorch_fid_frechet(*_moments(generated), *_moments(reference))
  assert abs(out["fid"] - peer) <= FID_TOL * _fid_scale(generated, reference)
  expected_kid = training.KID.configure(capacity=96, reference=reference, subset_size=50,
                                        subsets=5).from_model_output(features=generated).compute()
  assert out["kid"] == expected_kid
  metrics.reset()
  assert int(metrics.fid.state.get_value().stats.count) == 0
  with pytest.raises(InputError, match="at least 2 generated samples"):
    metrics.fid.compute()


# ---------------------------------------------------------------------------------- sharded ---

def _mesh():
  assert jax.device_count() == 8
  return Mesh(np.array(jax.devices()), ("data",))


def test_shard_map_reduce_over_the_axis_equals_one_device():
  mesh = _mesh()
  generated, reference = _features(256, seed=19, shift=0.2), _features(256, seed=20)
  mask = np.arange(256) < 250  # padding on the last device
  FID = training.FID.configure(dim=D)
  KID = training.KID.configure(capacity=512, dim=D, subset_size=100, subsets=5)
  IS = training.InceptionScore.configure(num_classes=D, splits=2)

  Semantic = training.SemanticSimilarity.configure(num_prompts=4, dim=D)
  prompt = np.arange(256, dtype=np.int32) % 4

  def others(x, y, m, p):
    # Embeddings with positive mean cosines, so that neither score is clamped to 0.
    outputs = dict(x=x, x_hat=y, image_embeddings=x + 1, text_embeddings=x + y + 1, prompt=p,
                   mask=m)
    return tuple(cls.from_model_output(**outputs) for cls in
                 (training.Reconstruction, training.ClipScore, Semantic))

  def per_device(x, y, m, p):
    fid = FID.from_model_output(features=x, reference_features=y, mask=m).reduce("data")
    kid = KID.from_model_output(features=x, reference_features=y, mask=m).reduce("data")
    inception = IS.from_model_output(logits_unbiased=x, mask=m).reduce("data")
    return (fid, kid, inception) + tuple(state.reduce("data") for state in others(x, y, m, p))

  # check_vma on (the default): every reduced state is typed as replicated, as out_specs=P() says.
  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P()))
  fid8, kid8, is8, *others8 = sharded(generated, reference, mask, prompt)
  fid1 = FID.from_model_output(features=generated, reference_features=reference, mask=mask)
  kid1 = KID.from_model_output(features=generated, reference_features=reference, mask=mask)
  assert int(fid8.stats.count) == 250
  # The psum fold is the k-way Chan merge: the same statistics as one device up to float32
  # round-off of the mean (ε·|x| ~ 1e-7) and of the scatter (~10 ε of its largest entry, ~250).
  np.testing.assert_allclose(fid8.stats.mean, fid1.stats.mean, rtol=0, atol=10 * EPS32)
  np.testing.assert_allclose(fid8.stats.scatter, fid1.stats.scatter, rtol=0,
                             atol=10 * EPS32 * float(np.abs(fid1.stats.scatter).max()))
  assert abs(fid8.compute() - fid1.compute()) <= FID_TOL * _fid_scale(generated[:250], reference)
  # Buffers: the same rows in the same (device) order.
  np.testing.assert_array_equal(kid8.generated.compute(), kid1.generated.compute())
  assert kid8.compute() == kid1.compute()
  # IS: per-device round-robin differs from one device's; the per-split row counts add up.
  assert int(is8.state.num.sum()) == 250
  # MSE and CLIP score (100·cos): row-local float32 values, compensated sums in another order: a
  # few ε of the value's scale. Semantic similarity: per-prompt float32 sums of ~64 unit vectors in
  # another order, ~64 ε of the N² terms c_p cancels, times 100.
  rec1, clip1, semantic1 = (state.compute() for state in others(generated, reference, mask, prompt))
  rec8, clip8, semantic8 = (state.compute() for state in others8)
  assert clip1 > 10 and semantic1 > 10
  assert abs(rec8 - rec1) <= 8 * EPS32 * rec1
  assert abs(clip8 - clip1) <= 8 * EPS32 * 100
  assert abs(semantic8 - semantic1) <= 64 * EPS32 * 100


def test_gather_from_model_output_under_shard_map_equals_one_device():
  mesh = _mesh()
  generated, reference = _features(128, seed=21, shift=0.2), _features(200, seed=22)
  Metrics = clu.metrics.Collection.create(
      fid=training.FID.with_reference(_moments(reference)),
      pr=training.PrecisionRecall.configure(capacity=128, reference=reference),
      mae=training.Reconstruction.configure("mae"), clip=training.ClipScore,
      inception=training.InceptionScore.configure(num_classes=D, splits=2))

  def per_device(x, index):
    return Metrics.gather_from_model_output(
        axis_name="data", features=x, x=x, x_hat=0.5 * x, image_embeddings=x + 1,
        text_embeddings=1 - x, logits_unbiased=x, index=index)

  # clu's all_gather is typed as varying over the axis: check_vma off, as clu's own metrics need.
  gathered = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P(),
                                   check_vma=False))(generated, np.arange(128, dtype=np.int32))
  one = Metrics.single_from_model_output(
      features=generated, x=generated, x_hat=0.5 * generated, image_embeddings=generated + 1,
      text_embeddings=1 - generated, logits_unbiased=generated,
      index=np.arange(128, dtype=np.int32))
  a, b = gathered.compute(), one.compute()
  assert abs(a["fid"] - b["fid"]) <= FID_TOL * _fid_scale(generated, reference)
  assert a["pr"] == b["pr"]
  # Row-local float32 values, compensated sums in another order: a few ε of the scale.
  assert abs(a["mae"] - b["mae"]) <= 8 * EPS32 * b["mae"]
  assert abs(a["clip"] - b["clip"]) <= 8 * EPS32 * 100
  # IS, split by the global index: the same rows per split, float32 sums of 64 rows in another
  # order (~64 ε relative), through entropy terms of size ≤ log 16 ≈ 2.8 in the exponent.
  np.testing.assert_allclose(a["inception"], b["inception"], rtol=64 * EPS32 * 3)


def test_jit_with_sharded_inputs_equals_one_device_and_compiles_once():
  mesh = _mesh()
  generated, reference = _features(320, seed=23, shift=0.2), _features(300, seed=24)
  Metrics = clu.metrics.Collection.create(
      fid=training.FID.with_reference(_moments(reference)),
      kid=training.KID.configure(capacity=320, reference=reference, subset_size=100, subsets=5),
      loss=clu.metrics.Average.from_output("loss"))
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def train_step(params, metrics, x, mask):
    # A gradient step and the metric updates of the same batch, in one compiled function.
    def loss_fn(p):
      out = x @ p
      return jnp.sum(jnp.where(mask[:, None], out - x, 0) ** 2), out
    (loss, features), grad = jax.value_and_grad(loss_fn, has_aux=True)(params)
    update = Metrics.single_from_model_output(features=features, mask=mask,
                                              loss=jnp.full(x.shape[:1], loss))
    return params - 1e-3 * grad, metrics.merge(update)

  # Parameters and metrics replicated, batches sharded over the 8 devices; the outputs are pinned
  # to the inputs' shardings, so that every call sees the same input shardings as the first.
  sharded_step = jax.jit(train_step, out_shardings=replicated)
  params = jax.device_put(0.9 * jnp.eye(D, dtype=jnp.float32), replicated)
  metrics = jax.device_put(Metrics.empty(), replicated)
  for x, mask in _batches(generated, 64):
    xs, ms = jax.device_put(x, batch_sharding), jax.device_put(mask, batch_sharding)
    assert len(xs.sharding.device_set) == 8
    params, metrics = sharded_step(params, metrics, xs, ms)
  assert sharded_step._cache_size() == 1  # five sharded steps: one compilation
  single_step = jax.jit(train_step)
  params1, metrics1 = 0.9 * jnp.eye(D, dtype=jnp.float32), Metrics.empty()
  for x, mask in _batches(generated, 64):
    params1, metrics1 = single_step(params1, metrics1, x, mask)
  assert single_step._cache_size() == 1
  # The parameters differ from one device's by the float32 summation order of the gradient only:
  # per step lr · 2 Σ over 64 rows of |x|·|residual| (≤ ~64 · 1.6 here) times ~64 ε.
  np.testing.assert_allclose(params, params1, rtol=0, atol=5 * 1e-3 * 2 * 64 * 1.6 * 64 * EPS32)
  with jax.numpy_dtype_promotion("standard"):  # clu's Average divides float32 by int32
    a, b = metrics.compute(), metrics1.compute()
  scale = _fid_scale(generated, reference)
  assert abs(a["fid"] - b["fid"]) <= FID_TOL * scale
  # KID of features that differ by float32 rounding of x @ p (a few ulps of |x| ~ 1) through
  # kernels of size ~1: ~10 ε absolute.
  np.testing.assert_allclose(a["kid"], b["kid"], rtol=0, atol=10 * EPS32)
  # The loss sums 64 × 16 float32 squares per step, in another order when sharded: ≤ 1024 ε.
  np.testing.assert_allclose(a["loss"], b["loss"], rtol=1024 * EPS32)


# ----------------------------------------------------------------------------------- errors ---

def _one_line_error(fn, match):
  with pytest.raises(InputError, match=match) as info:
    fn()
  assert "\n" not in str(info.value)


def test_errors_at_the_jit_boundary_say_what_to_do():
  reference = _features(80, seed=25)
  KID = training.KID.configure(capacity=64, reference=reference, subset_size=50)
  state = KID.from_model_output(features=reference[:60])
  _one_line_error(lambda: jax.jit(lambda s: s.compute())(state),
                  "KID.compute: expected a concrete state, got a traced one .* call compute\\(\\) "
                  "outside")
  FID = training.FID.with_reference(_moments(reference))
  step = jax.jit(lambda m, x: m.merge(FID.from_model_output(features=x)))
  _one_line_error(lambda: step(FID.empty(), jnp.zeros((8, 32))),
                  r"features: expected floating features of shape \(B, 16\) for FID, got float32 "
                  r"\(8, 32\)")
  _one_line_error(lambda: step(FID.empty(), jnp.zeros((8, 16), jnp.int32)),
                  r"expected floating features .* got int32")
  _one_line_error(lambda: step(FID.empty(), jnp.zeros((8, 4, 4))),
                  "flatten the spatial axes first")
  _one_line_error(lambda: FID.from_model_output(features=reference, mask=np.ones(3, bool)),
                  r"mask: expected a bool .* shape \(80,\)")
  two_sided = training.FID.configure(dim=D)
  _one_line_error(lambda: two_sided.from_model_output(features=reference, mask=np.ones(80, bool),
                                                      reference_features=reference[:50]),
                  r"mask \(applied to the reference features too: pass reference_mask .* \(50,\)")
  _one_line_error(lambda: FID.from_model_output(pool3=reference),
                  "expected a model output named 'features', got pool3")
  other = training.FID.configure(dim=8)
  _one_line_error(lambda: FID.empty().merge(other.empty()),
                  "states of different feature spaces or options cannot be merged")
  spatial = training.FID.with_reference(_moments(reference), features="spatial")
  _one_line_error(lambda: jax.jit(lambda a, b: a.merge(b))(FID.empty(), spatial.empty()),
                  "features='spatial'")
  _one_line_error(training.FID.empty, r"FID.with_reference\(reference\)")
  _one_line_error(lambda: training.NNXMetric(training.KID), r"KID.configure\(capacity=")


def test_too_few_samples_is_an_error_at_compute_and_nan_inside_jit():
  reference = _features(80, seed=26)
  FID = training.FID.with_reference(_moments(reference))
  one_row = FID.from_model_output(features=reference[:1])
  _one_line_error(one_row.compute, "expected at least 2 generated samples .* got 1")
  assert np.isnan(jax.jit(lambda s: s.compute())(one_row))
  two_sided = training.FID.configure(dim=D).from_model_output(features=reference)
  _one_line_error(two_sided.compute, "at least 2 reference samples .* got 0")
  KID = training.KID.configure(capacity=64, reference=reference, subset_size=50)
  _one_line_error(KID.from_model_output(features=reference[:40]).compute,
                  "subset_size=50 rows on each side, got 40 generated")
  overflow = KID.empty().merge(KID.from_model_output(features=reference))
  _one_line_error(overflow.compute, "16 row\\(s\\) did not fit in its capacity of 64")
  PR = training.PrecisionRecall.configure(capacity=8, reference=reference)
  _one_line_error(PR.from_model_output(features=reference[:3]).compute, "pr_k: expected fewer")
  IS = training.InceptionScore.configure(num_classes=D, splits=4)
  _one_line_error(IS.from_model_output(logits_unbiased=reference[:3]).compute,
                  "split 3 empty")
  _one_line_error(training.ClipScore.empty().compute, "at least one image-text pair")


# ------------------------------------------------------------------------- DINOv2 features ---

def test_fid_on_dinov2_cls_features_matches_pytorch_fid():
  """FD_DINOv2 in a loop: ``FID.configure(dim=D, features="cls")`` fed the class token of a tiny
  random DINOv2 (the hub layout of tests/_dinov2_fixtures.py: 128 wide, 2 layers, 70 px native)
  inside the jitted step, against pytorch-fid's code on the float64 moments of the same tokens."""
  from jaxmetrics.networks import dinov2
  from tests import _dinov2_fixtures as fx

  kw = fx.HUB_VARIANTS["mlp"]
  config = dinov2.Config(hidden_size=kw["embed_dim"], num_layers=kw["depth"],
                         num_heads=kw["num_heads"], intermediate_size=4 * kw["embed_dim"],
                         image_size=kw["img_size"])
  params = dinov2.convert_state_dict(fx.hub_state_dict(**kw), config)
  d = config.hidden_size
  FID = training.FID.configure(dim=d, features="cls", reference_features="reference_cls")

  @jax.jit
  def step(state, generated, real, mask):
    cls = lambda images: dinov2.apply(params, dinov2.preprocess(images, "edm2", size=70),
                                      config=config)["cls"]
    a, b = cls(generated), cls(real)
    update = FID.from_model_output(cls=a, reference_cls=b, mask=mask)
    return state.merge(update), a, b

  rng = np.random.default_rng(23)
  n, batch = 192, 64  # more rows than the 128 features: full-rank covariances
  real = rng.integers(0, 256, (n, 42, 42, 3), dtype=np.uint8)
  generated = np.clip(real.astype(np.int16) // 2 + 60, 0, 255).astype(np.uint8)
  state, rows = FID.empty(), {"a": [], "b": []}
  for start in range(0, n, batch):
    state, a, b = step(state, generated[start:start + batch], real[start:start + batch],
                       np.ones(batch, bool))
    rows["a"].append(np.asarray(a))
    rows["b"].append(np.asarray(b))
  a, b = np.concatenate(rows["a"]), np.concatenate(rows["b"])
  peer, _ = pytorch_fid_frechet(*_moments(a), *_moments(b))
  value = state.compute()
  assert isinstance(value, np.float64) and peer > 0
  # As FID_TOL, at d = 128: float32 statistics of LayerNorm outputs (entries of spread ~1).
  assert abs(value - peer) <= d * EPS32 * _fid_scale(a, b)
