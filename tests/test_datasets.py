"""grain datasets and on-device samplers as sources (the real grain; TFDS is in test_tfds.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmetrics._errors import InputError
from jaxmetrics.pipeline import datasets
from jaxmetrics.pipeline import extract
from jaxmetrics.pipeline import sources
from tests import _inception_fixtures as fixtures
from tests import _optional
from tests import _pixel_network

grain = _optional.require("grain")

H, W = 6, 5
IMAGES = fixtures.test_images(5, 10, H, W)
NETWORK = _pixel_network.network(H, W)


def _extract(source, **kwargs):
  kwargs.setdefault("batch_size", 8)
  return extract.extract(source, {}, network=NETWORK, keep_features=("pixels",), progress=False,
                         **kwargs)


def _examples():
  return [{"image": image, "label": i % 3} for i, image in enumerate(IMAGES)]


# ------------------------------------------------------------------------------------- grain


def test_grain_map_dataset_is_read_by_row():
  dataset = grain.MapDataset.source(_examples()).map(lambda e: {**e, "image": e["image"] ^ 1})
  source = sources.open_source(dataset, workers=3)
  assert isinstance(source, datasets.SequenceSource) and not source.per_process
  assert (len(source), source.image_shape, source.dtype) == (10, (H, W, 3), np.uint8)
  images, valid = source.read(3, 7)
  np.testing.assert_array_equal(images, IMAGES[3:7] ^ 1)
  assert valid.all()
  result = _extract(dataset)
  assert result.count == 10
  np.testing.assert_array_equal(result.outputs["pixels"], _pixel_network.pixels(IMAGES ^ 1))
  np.testing.assert_array_equal(result.index, np.arange(10))


def test_grain_filtered_rows_are_masked_and_batched_elements_are_rows():
  # A filtered MapDataset returns None for a dropped index: that row is counted nowhere.
  kept = grain.MapDataset.source(_examples()).filter(lambda e: e["label"] != 1)
  result = _extract(kept)
  keep = np.array([i % 3 != 1 for i in range(10)])
  assert result.count == keep.sum()
  np.testing.assert_array_equal(result.index, np.flatnonzero(keep))
  np.testing.assert_array_equal(result.outputs["pixels"], _pixel_network.pixels(IMAGES[keep]))
  # .batch(4) over 10 examples: elements of 4, 4, 2 rows; a range across elements.
  batched = sources.open_source(grain.MapDataset.source(_examples()).batch(4))
  assert len(batched) == 10
  np.testing.assert_array_equal(batched.read(3, 9)[0], IMAGES[3:9])
  np.testing.assert_array_equal(batched.read(8, 12)[0], IMAGES[8:])


def test_grain_data_loader_and_iter_dataset_are_streams():
  loader = grain.DataLoader(
      data_source=_examples(),
      sampler=grain.samplers.IndexSampler(10, shard_options=grain.sharding.NoSharding(),
                                          shuffle=False, num_epochs=1),
      operations=[grain.transforms.Batch(3)], worker_count=0)
  source = sources.open_source(loader)
  assert isinstance(source, sources.IterableSource) and source.per_process
  assert source.name == "DataLoader"
  result = _extract(loader, num_samples=10)
  np.testing.assert_array_equal(result.outputs["pixels"], _pixel_network.pixels(IMAGES))
  stream = grain.MapDataset.source(_examples()).to_iter_dataset()
  result = _extract(stream)
  assert result.count == 10
  np.testing.assert_array_equal(np.sort(result.outputs["pixels"], axis=0),
                                np.sort(_pixel_network.pixels(IMAGES), axis=0))


def test_grain_bad_elements_are_one_line_errors():
  no_image = grain.MapDataset.source([{"label": 1}] * 3)
  with pytest.raises(InputError, match="element 0: expected an image array or a mapping with an "
                     "'image' entry, got keys label"):
    sources.open_source(no_image)
  odd = grain.MapDataset.source([IMAGES[0], IMAGES[1, :4]])
  with pytest.raises(InputError, match=r"element 1: expected uint8 images of shape \(6, 5, 3\)"):
    sources.open_source(odd).read(0, 2)
  with pytest.raises(InputError, match="workers: applies to image folders and random-access"):
    sources.open_source(IMAGES, workers=2)


# --------------------------------------------------------------------------- on the devices


def _sample(step, b):
  """Batch ``step`` of a deterministic sampler, computed on the device: (b, H, W, 3) uint8."""
  rows = step * b + jnp.arange(b, dtype=jnp.int32)
  pixels = rows[:, None, None, None] * 7 + jnp.arange(H * W * 3, dtype=jnp.int32).reshape(H, W, 3)
  return (pixels % 256).astype(jnp.uint8)


def _expected(n):
  rows = np.arange(n, dtype=np.int64)
  return ((rows[:, None, None, None] * 7 + np.arange(H * W * 3).reshape(H, W, 3)) % 256).astype(
      np.uint8)


def _recording(sampler):
  calls = []

  def record(step):
    calls.append((step, sampler(step)))
    return calls[-1][1]

  return record, calls


def test_sampler_batches_on_the_batch_sharding_are_used_as_they_are(monkeypatch):
  mesh = extract.default_mesh()
  b = mesh.size  # one sampler batch = one global batch of extraction
  sampler = jax.jit(lambda step: _sample(step, b), out_shardings=NamedSharding(mesh, P("data")))
  record, calls = _recording(sampler)
  fed = []
  step = extract._step

  def spy(states, params, batch, *args, **kwargs):
    fed.append(batch["images"])
    return step(states, params, batch, *args, **kwargs)

  monkeypatch.setattr(extract, "_step", spy)
  source = datasets.SamplerSource(record, num_samples=3 * b - 2)
  result = _extract(source, batch_size=b)
  assert [s for s, _ in calls] == [0, 1, 2]  # ceil(num_samples / b) calls, in order
  assert len(fed) == 3
  for (_, sampled), images in zip(calls, fed):
    assert images is sampled  # the device array itself: no copy, no trip through the host
  assert result.count == 3 * b - 2
  np.testing.assert_array_equal(result.outputs["pixels"],
                                _pixel_network.pixels(_expected(3 * b - 2)))


def test_sampler_batches_of_another_size_are_cut_and_joined_on_the_devices():
  mesh = extract.default_mesh()
  sharding = NamedSharding(mesh, P("data"))
  b, batch = 2 * mesh.size, 3 * mesh.size  # batches of 16 joined into global batches of 24
  n = 5 * mesh.size
  sampler = jax.jit(lambda step: _sample(step, b), out_shardings=sharding)
  source = datasets.SamplerSource(sampler, num_samples=n)
  assert source.steps == 3
  # No image moves to the host, nor even between devices, to make a batch (the only transfer
  # from the host is the sampler's argument, the step number).
  with jax.transfer_guard_device_to_host("disallow_explicit"), \
      jax.transfer_guard_device_to_device("disallow_explicit"):
    first = source.read_device(0, batch, batch, sharding)
    last = source.read_device(batch, n, batch, sharding)  # 16 rows, padded to 24
  assert first.sharding.is_equivalent_to(sharding, 4) and last.shape == (batch, H, W, 3)
  expected = _expected(n)
  np.testing.assert_array_equal(np.asarray(first), expected[:batch])
  np.testing.assert_array_equal(np.asarray(last)[:n - batch], expected[batch:])
  assert not np.asarray(last)[n - batch:].any()
  # A sampler jitted without out_shardings (its batch on one device), through extraction.
  plain = datasets.SamplerSource(jax.jit(lambda step: _sample(step, 5)), num_samples=13)
  result = _extract(plain, batch_size=mesh.size)
  np.testing.assert_array_equal(result.outputs["pixels"], _pixel_network.pixels(_expected(13)))


def test_sampler_bad_output_is_a_one_line_error():
  with pytest.raises(InputError, match="step 0: expected a jax.Array of images .* got ndarray"):
    datasets.SamplerSource(lambda step: np.zeros((2, H, W, 3), np.uint8), num_samples=4)
  with pytest.raises(InputError, match="num_samples: expected a positive integer"):
    datasets.SamplerSource(lambda step: _sample(step, 2), num_samples=0)
  with pytest.raises(InputError, match=r"step 0: float images must lie in \[0, 1\]"):
    datasets.SamplerSource(lambda step: jnp.full((2, H, W, 3), 2.0), num_samples=4)

  def drifting(step):  # in range at step 0, out of range later
    return jnp.full((4, H, W, 3), 0.5 + step, jnp.float32)

  with pytest.raises(InputError, match="float images must be finite and lie in .* after the first"):
    _extract(datasets.SamplerSource(jax.jit(drifting), num_samples=12), batch_size=8)
