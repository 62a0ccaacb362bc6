"""Sharded extraction on 8 forced CPU devices against the single-device network and NumPy float64.

The network runs at 299×299 whatever the input size (~0.3 s per image on a CPU here), so the tests
use ~20 tiny images; all of them share one image size (16×16), one global batch (8) and one set of
kept outputs, so the whole file compiles the sharded step once.
"""

import dataclasses
import functools
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from PIL import Image

from jaxmetrics.pipeline import extract
from jaxmetrics.networks import inception
from jaxmetrics._errors import InputError
from jaxmetrics.metrics.inception_score import InceptionScoreState
from jaxmetrics.metrics.inception_score import inception_score
from jaxmetrics.metrics.statistics import FeatureBuffer
from jaxmetrics.metrics.statistics import FeatureStats
from tests import _inception_fixtures as fixtures

N, SIDE, BATCH = 21, 16, 8
IMAGES = fixtures.test_images(11, N, SIDE, SIDE)
KEEP = ("pool3", "logits_unbiased")


@functools.lru_cache(maxsize=None)
def load_params(path):
  return inception.load_params(path, check_hash=False, cache=False, progress=False)


@functools.lru_cache(maxsize=None)
def reference(path):
  """Single-device features of IMAGES (the existing jitted forward), as NumPy float64."""
  out = inception.features(load_params(path), IMAGES, batch_size=BATCH)
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def assert_close(got, expected, tolerance):
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  assert got.shape == expected.shape
  error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
  assert error <= tolerance, f"relative error {error:.3g} > {tolerance}"


def assert_scores_close(got, expected, rtol=1e-5):
  """Inception Score ``(mean, std)``: the mean to ``rtol``, the std to ``rtol`` of the mean.

  Float32 scores carry ~1e-6 relative round-off per split (``_inception_score``'s docstring), and
  features from other batch compositions ~1e-6 more. The std over 3 splits is a difference of
  near-equal scores (std/mean ~1e-2 here), so its error is that round-off times the scores, not a
  fraction of the std itself: relative to the std it reached 1.3e-5 on an AVX2 AMD machine.
  """
  got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
  np.testing.assert_allclose(got[0], expected[0], rtol=rtol)
  np.testing.assert_allclose(got[1], expected[1], rtol=0, atol=rtol * abs(expected[0]))


def assert_matches_reference(result, expected_pool3):
  """Statistics against NumPy float64 mean and unbiased covariance of the reference features.

  Tolerance 1e-5: the same float32 network on other batch compositions and devices differs by
  round-off (~1e-6 relative on features), and float32 statistics add ~1e-7.
  """
  assert result.count == len(expected_pool3)
  assert_close(result.stats.mean, expected_pool3.mean(axis=0), 1e-5)
  assert_close(result.stats.covariance(), np.cov(expected_pool3, rowvar=False), 1e-5)


@pytest.fixture(scope="module")
def params_path(inception_checkpoints):
  return inception_checkpoints["legacy"]


def test_eight_devices_match_one_and_compile_once(params_path):
  assert len(jax.devices()) == 8  # conftest forces 8 CPU devices
  params = load_params(params_path)
  expected = reference(params_path)
  before = extract._step._cache_size()
  # 21 rows, global batch 8 (one row per device): 3 steps, the last one padded with 3 masked rows.
  result = extract.extract(IMAGES, params, batch_size=BATCH, keep_features=KEEP, splits=3,
                           progress=False)
  assert extract._step._cache_size() - before <= 1  # the whole run: at most one compilation
  compiled = extract._step._cache_size()

  # 1e-5 relative L2 (~80 ε), here and below: the float32 network on other batch compositions and
  # devices sums in other orders (see assert_matches_reference).
  assert_close(result.features, expected["pool3"], 1e-5)
  assert_close(result.outputs["logits_unbiased"], expected["logits_unbiased"], 1e-5)
  np.testing.assert_array_equal(result.index, np.arange(N))
  assert_matches_reference(result, expected["pool3"])
  # Contiguous splits from the global row index: the streamed score is the batch score.
  streamed = np.array(result.inception_score.compute())
  assert_scores_close(streamed, inception_score(result.outputs["logits_unbiased"], 3))
  assert_scores_close(streamed, inception_score(expected["logits_unbiased"], 3))
  assert isinstance(result.stats.mean, jax.Array) and result.stats.mean.sharding.is_fully_addressable

  # Another source and length, a batch size rounded up to the device count (5 -> 8): no new
  # compilation. A generator with num_samples gets contiguous splits too; 13 rows: 2 steps.
  def generator():
    for start in range(0, 20, 4):
      yield IMAGES[start:start + 4]

  result = extract.extract(generator(), params, batch_size=5, num_samples=13, keep_features=KEEP,
                           splits=3, progress=False)
  assert extract._step._cache_size() == compiled
  assert result.index is None
  assert_close(result.features, expected["pool3"][:13], 1e-5)
  assert_matches_reference(result, expected["pool3"][:13])
  assert_scores_close(result.inception_score.compute(),
                      inception_score(result.outputs["logits_unbiased"], 3))


def _adm_inception_score(logits, split_size):
  """guided-diffusion's Evaluator.compute_inception_score in float64: parts of ``split_size`` rows
  in order (the last one shorter), mean over parts (evaluations/evaluator.py)."""
  logits = np.asarray(logits, np.float64)
  preds = np.exp(logits - logits.max(axis=1, keepdims=True))
  preds /= preds.sum(axis=1, keepdims=True)
  scores = []
  for i in range(0, len(preds), split_size):
    part = preds[i:i + split_size]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(scores))


def test_any_feature_into_any_state(params_path):
  """One sharded pass (8 devices) feeding sFID's spatial feature to FeatureStats, pool3 rows to a
  FeatureBuffer and logits to an IS state with guided-diffusion's fixed-size parts."""
  params = load_params(params_path)
  expected = reference(params_path)
  result = extract.extract(IMAGES, params, batch_size=BATCH, keep_features=KEEP, split_size=5,
                           states={
                               "sfid": ("spatial", FeatureStats.empty(inception.SPATIAL_DIM)),
                               "rows": ("pool3", FeatureBuffer.empty(N, inception.POOL3_DIM)),
                               "is": ("logits_unbiased",
                                      InceptionScoreState.empty(inception.NUM_CLASSES, 5))},
                           progress=False)
  assert set(result.states) == {"sfid", "rows", "is"} and result.count == N
  sfid = result.states["sfid"]
  assert_close(sfid.mean, expected["spatial"].mean(axis=0), 1e-5)  # as assert_matches_reference
  assert_close(sfid.covariance(), np.cov(expected["spatial"], rowvar=False), 1e-5)
  # The buffer's slots are the global row indices: the kept outputs of the same step, bit for bit.
  np.testing.assert_array_equal(result.states["rows"].compute(), result.features)
  # 21 rows in parts of 5: 5, 5, 5, 5 and 1, as guided-diffusion cuts them. float32 IS: 1e-5
  # (assert_scores_close).
  np.testing.assert_array_equal(np.asarray(result.states["is"].num), [5, 5, 5, 5, 1])
  mean, _ = result.states["is"].compute()
  np.testing.assert_allclose(float(mean), _adm_inception_score(expected["logits_unbiased"], 5),
                             rtol=1e-5)


def test_folder_counts_each_readable_file_once(params_path, tmp_path):
  """Mixed formats, grayscale, RGBA, a nested folder and a corrupt file, through extraction."""
  (tmp_path / "nested").mkdir()
  Image.fromarray(IMAGES[0]).save(tmp_path / "a.png")
  Image.fromarray(IMAGES[1]).save(tmp_path / "b.jpg", quality=95)
  Image.fromarray(IMAGES[2]).save(tmp_path / "c.webp", lossless=True)
  Image.fromarray(IMAGES[3]).save(tmp_path / "d.bmp")
  (tmp_path / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
  Image.fromarray(IMAGES[4]).convert("L").save(tmp_path / "nested" / "f_gray.png")
  rgba = np.dstack([IMAGES[5], np.full((SIDE, SIDE), 9, np.uint8)])
  Image.fromarray(rgba, "RGBA").save(tmp_path / "nested" / "g_rgba.png")

  params = load_params(params_path)
  with pytest.warns(UserWarning, match="e_corrupt.png") as record:
    result = extract.extract(tmp_path, params, batch_size=BATCH, keep_features=KEEP, splits=3,
                             progress=False)
  assert sum("skipped" in str(w.message) for w in record) == 1
  assert result.count == 6
  np.testing.assert_array_equal(result.index, [0, 1, 2, 3, 5, 6])
  files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
  decoded = np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in result.index])
  # The reference pads to the same batch shape (8) so that it reuses its compilation.
  padded = np.concatenate([decoded, np.zeros((2, SIDE, SIDE, 3), np.uint8)])
  expected = np.asarray(inception.features(params, padded)["pool3"], np.float64)[:6]
  assert_close(result.features, expected, 1e-5)
  assert_matches_reference(result, expected)


def test_a_folder_of_mixed_sizes_without_an_input_size_fails_before_any_step(params_path, tmp_path):
  """Mixed sizes are resized to the network's input size on the host (tests/test_sources.py); a
  network without one cannot take them, and says so before compiling anything."""
  Image.fromarray(IMAGES[0]).save(tmp_path / "a.png")
  Image.fromarray(IMAGES[1][:, :12]).save(tmp_path / "b.png")
  sizeless = dataclasses.replace(inception.NETWORK, input_size=None)
  before = extract._step._cache_size()
  with pytest.raises(InputError, match=r"several sizes, 16x16 \(a.png\) and 12x16 \(b.png\)"):
    extract.extract(tmp_path, load_params(params_path), network=sizeless, batch_size=BATCH,
                    progress=False)
  assert extract._step._cache_size() == before


@pytest.mark.parametrize("options, match", [
    ({"batch_size": 0}, "batch_size: expected a positive integer, got 0"),
    ({"splits": 0}, "splits: expected a positive integer"),
    ({"resize": "bicubic"}, "resize: expected one of tf1, pytorch, clean, torchmetrics, got"),
    ({"precision": "fast"}, "precision: expected one of"),
    ({"keep_features": ("pool4",)}, "keep_features: expected True or names among"),
    ({"num_samples": 22}, "num_samples: expected at most 21, the rows of array, got 22"),
    ({"mesh": "data"}, "mesh: expected a jax.sharding.Mesh"),
    ({"image_size": 8}, "image_size: applies to image folders only"),
])
def test_bad_options_are_one_line_errors(options, match):
  with pytest.raises(InputError, match=match) as info:
    extract.extract(IMAGES, {}, **options)
  assert "\n" not in str(info.value)


def test_a_network_of_the_older_forward_protocol_is_refused_in_one_line():
  old = lambda params, images, *, resize, precision, shards: {}
  with pytest.raises(InputError, match=r"^forward: expected forward\(params, images, \*, resize, "
                     r"precision, shards, mask, host_resized\), got old's without mask, "
                     r"host_resized$"):
    dataclasses.replace(inception.NETWORK, name="old", forward=old)
  # A forward taking **kwargs accepts whatever the protocol passes.
  dataclasses.replace(inception.NETWORK, forward=lambda params, images, **kwargs: {})


def test_initialize_is_a_no_op_for_one_process(monkeypatch):
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(key, raising=False)
  assert extract.initialize() is False
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(InputError, match="JAX_NUM_PROCESSES: expected an integer, got 'two'"):
    extract.initialize()
  mesh = extract.default_mesh()
  assert mesh.axis_names == ("data",) and mesh.size == len(jax.devices())


def _stand_in_forward(params, images, *, resize="tf1", precision="highest", shards=1, mask=None,
                      host_resized=False):
  """A network-sized output at almost no cost: the memory test is about the host pipeline."""
  del params, resize, precision, shards, mask, host_resized
  x = jnp.mean(images.astype(jnp.float32), axis=(1, 2)) / 255.0
  pool3 = jnp.tile(x, (1, 683))[:, :inception.POOL3_DIM] * jnp.linspace(0.5, 1.5, inception.POOL3_DIM)
  logits = jnp.tile(x, (1, 336)) * 4.0
  return {"pool3": pool3, "logits_unbiased": logits, "logits": logits}


def test_host_memory_stays_flat_as_the_stream_grows():
  """Peak NumPy/Python allocations for 1536 vs 6144 images of 64×64 from a generator.

  Holding the extra 4608 images would take 57 MB more. Streaming holds a bounded number of 3 MB
  batches (the generator's, the one being assembled, ``prefetch`` queued, the one in the step):
  measured 16–26 MB whatever the length, the spread depending on how far the producer thread runs
  ahead. One device: the pipeline, not the sharding, is what is measured, and it is 5× faster.
  """
  stand_in = dataclasses.replace(inception.NETWORK, name="stand-in", forward=_stand_in_forward)
  block = np.random.default_rng(0).integers(0, 256, (256, 64, 64, 3), dtype=np.uint8)
  one_device = Mesh(np.array(jax.devices()[:1]), ("data",))

  def generator(n):
    for start in range(0, n, 256):
      yield block[:min(256, n - start)].copy()  # a fresh batch, as a sampler would make

  peaks = {}
  try:
    for n in (1536, 6144):
      tracemalloc.start()
      result = extract.extract(generator(n), {}, network=stand_in, batch_size=256, mesh=one_device,
                               progress=False)
      peaks[n] = tracemalloc.get_traced_memory()[1]
      tracemalloc.stop()
      assert result.count == n
  finally:
    extract._step.clear_cache()
  assert peaks[6144] - peaks[1536] < 0.3 * 4608 * block[0].nbytes, peaks
