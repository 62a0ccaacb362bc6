"""Image sources: memory-mapped .npy/.npz, iterables, folders, and one-line errors for bad input."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxmetrics.metrics.statistics import FeatureStats
from jaxmetrics.networks import inception
from jaxmetrics.networks import resize
from jaxmetrics.pipeline import extract
from jaxmetrics.pipeline import sources
from jaxmetrics._errors import InputError
from tests import _inception_fixtures as fixtures
from tests.test_resize_host import U, gamma, route_bound

IMAGES = fixtures.test_images(3, 10, 6, 5)


def _one_line_error(match, fn, *args, **kwargs):
  with pytest.raises(InputError, match=match) as info:
    fn(*args, **kwargs)
  assert "\n" not in str(info.value)
  return str(info.value)


def test_array_reads_row_ranges():
  source = sources.open_source(IMAGES)
  assert (len(source), source.image_shape, source.dtype) == (10, (6, 5, 3), np.uint8)
  images, valid = source.read(3, 7)
  np.testing.assert_array_equal(images, IMAGES[3:7])
  assert valid.all() and valid.shape == (4,)
  images, valid = source.read(8, 12)  # clipped at the end
  np.testing.assert_array_equal(images, IMAGES[8:])


def test_npy_is_memory_mapped(tmp_path):
  path = tmp_path / "images.npy"
  np.save(path, IMAGES)
  with sources.open_source(path) as source:
    assert isinstance(source._array, np.memmap)
    assert len(source) == 10 and source.name == str(path)
    np.testing.assert_array_equal(source.read(2, 5)[0], IMAGES[2:5])


def _rss_file_bytes():
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


def test_a_mapped_file_read_through_leaves_no_pages_resident(tmp_path):
  """A 48 MB .npy streamed in row ranges: without dropping the pages read, RSS would grow by 48 MB."""
  path = tmp_path / "big.npy"
  array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(4096, 64, 64, 3))
  array[:] = 7
  array.flush()
  del array
  with sources.open_source(path) as source:
    before = _rss_file_bytes()
    for start in range(0, 4096, 256):
      images, _ = source.read(start, start + 256)
      assert images[-1, -1, -1, -1] == 7
    assert _rss_file_bytes() - before < 8 * 2**20


def test_npz_stored_member_is_memory_mapped_at_its_zip_offset(tmp_path):
  # guided-diffusion's reference batches: np.savez (stored, not compressed) with images in arr_0.
  path = tmp_path / "VIRTUAL_ref.npz"
  np.savez(path, IMAGES, mu=np.zeros(4), sigma=np.eye(4))
  with sources.open_source(path) as source:
    assert isinstance(source._array, np.memmap)
    assert source.name.endswith("[arr_0]")
    np.testing.assert_array_equal(source.read(0, 10)[0], IMAGES)
    np.testing.assert_array_equal(source.read(4, 6)[0], IMAGES[4:6])
  # A single member of any name is taken; several without arr_0 need key=.
  np.savez(tmp_path / "one.npz", images=IMAGES)
  np.testing.assert_array_equal(sources.open_source(tmp_path / "one.npz").read(1, 3)[0], IMAGES[1:3])
  np.savez(tmp_path / "two.npz", a=IMAGES, b=IMAGES)
  _one_line_error("'arr_0'.*it has: a, b", sources.open_source, tmp_path / "two.npz")
  np.testing.assert_array_equal(sources.open_source(tmp_path / "two.npz", key="b").read(0, 2)[0],
                                IMAGES[:2])


def test_npz_compressed_member_streams_in_any_order(tmp_path):
  path = tmp_path / "compressed.npz"
  np.savez_compressed(path, arr_0=IMAGES)
  with sources.open_source(path) as source:
    assert not isinstance(source._array, np.ndarray)
    np.testing.assert_array_equal(source.read(2, 4)[0], IMAGES[2:4])
    np.testing.assert_array_equal(source.read(7, 10)[0], IMAGES[7:])
    np.testing.assert_array_equal(source.read(0, 3)[0], IMAGES[:3])  # backwards: starts over


def test_iterable_of_batches_is_rebatched_in_order():
  def batches():
    yield IMAGES[:3]
    yield IMAGES[3:3]      # empty batches are skipped
    yield IMAGES[3]        # a single (H, W, 3) image
    yield {"image": IMAGES[4:9]}  # tfds.as_numpy style
    yield IMAGES[9:]

  source = sources.open_source(batches())
  assert source.per_process and source.num_samples is None
  with pytest.raises(TypeError):
    len(source)
  got = [source.read(0, 4), source.read(4, 8), source.read(8, 12), source.read(12, 16)]
  np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), IMAGES)
  assert [len(g[0]) for g in got] == [4, 4, 2, 0]
  _one_line_error("read once, in order", source.read, 2, 4)


def test_iterable_batches_must_match_the_first():
  def batches():
    yield IMAGES[:2]
    yield IMAGES[:2, :4]

  source = sources.open_source(batches())
  _one_line_error(r"iterable batch 1: expected uint8 images of shape \(B, 6, 5, 3\) like the first",
                  source.read, 0, 4)
  _one_line_error("empty iterable", sources.open_source, iter([]))


def test_float_images_are_checked_batch_by_batch():
  floats = IMAGES.astype(np.float64) / 255
  source = sources.open_source(floats)
  assert source.dtype == np.float32
  # float64 rounded once to float32: within half an ulp, 2**-24 = 6e-8 relative.
  np.testing.assert_allclose(source.read(0, 2)[0], floats[:2], rtol=2**-24)
  floats[5, 0, 0, 0] = 2.0
  _one_line_error(r"rows \[4, 6\): float images must lie in \[0, 1\]", source.read, 4, 6)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 3, 8, 8), np.uint8), "channels-last is required"),
    (np.zeros((4, 8, 8), np.uint8), "rank 3"),
    (np.zeros((4, 8, 8, 3), np.int32), "not an image dtype"),
    (np.zeros((0, 8, 8, 3), np.uint8), "empty array"),
    (42, "got int"),
])
def test_bad_arrays_are_one_line_errors(bad, match):
  _one_line_error(match, sources.open_source, bad)


def test_bad_paths_are_one_line_errors(tmp_path):
  _one_line_error("no such file or folder", sources.open_source, tmp_path / "missing.npy")
  (tmp_path / "notes.txt").write_text("hello")
  _one_line_error(r"\.txt file", sources.open_source, tmp_path / "notes.txt")
  (tmp_path / "broken.npz").write_bytes(b"not a zip")
  _one_line_error("expected an .npz archive", sources.open_source, tmp_path / "broken.npz")
  np.save(tmp_path / "chw.npy", np.zeros((2, 3, 4, 4), np.uint8))
  _one_line_error("channels-last", sources.open_source, tmp_path / "chw.npy")
  np.save(tmp_path / "objects.npy", np.array([None, 1], object), allow_pickle=True)
  _one_line_error("cannot read it", sources.open_source, tmp_path / "objects.npy")
  (tmp_path / "empty").mkdir()
  _one_line_error("found none", sources.open_source, tmp_path / "empty")
  _one_line_error("applies to image folders only", sources.open_source, IMAGES, image_size=4)
  _one_line_error("image_size: expected a positive int", sources.open_source, tmp_path,
                  image_size=(4, 0))
  _one_line_error("key: applies to .npz files only", sources.open_source, IMAGES, key="arr_0")
  _one_line_error("image_size: expected a path to open, got the opened source array",
                  sources.open_source, sources.open_source(IMAGES), image_size=4)


@pytest.fixture()
def mixed_folder(tmp_path):
  """PNG, JPEG, WebP, BMP; grayscale and RGBA; a nested folder; a corrupt file; 6 x 5 pixels."""
  rgb = fixtures.test_images(7, 6, 6, 5)
  (tmp_path / "nested").mkdir()
  Image.fromarray(rgb[0]).save(tmp_path / "a.png")
  Image.fromarray(rgb[1]).save(tmp_path / "b.jpg", quality=95)
  Image.fromarray(rgb[2]).save(tmp_path / "c.webp", lossless=True)
  Image.fromarray(rgb[3]).save(tmp_path / "d.bmp")
  (tmp_path / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
  Image.fromarray(rgb[4]).convert("L").save(tmp_path / "nested" / "f_gray.png")
  rgba = np.dstack([rgb[5], np.full((6, 5), 7, np.uint8)])
  Image.fromarray(rgba, "RGBA").save(tmp_path / "nested" / "g_rgba.png")
  return tmp_path


def test_folder_reads_each_file_once_and_names_the_corrupt_one(mixed_folder):
  source = sources.open_source(mixed_folder, workers=3)
  assert len(source) == 7 and source.image_shape == (6, 5, 3)
  with pytest.warns(UserWarning, match="skipped .*e_corrupt.png: cannot decode") as record:
    chunks = [source.read(0, 3), source.read(3, 7)]
  assert len([w for w in record if "skipped" in str(w.message)]) == 1
  images = np.concatenate([c[0] for c in chunks])
  valid = np.concatenate([c[1] for c in chunks])
  names = [p.name for p in source.paths]
  assert names == ["a.png", "b.jpg", "c.webp", "d.bmp", "e_corrupt.png", "f_gray.png", "g_rgba.png"]
  assert valid.tolist() == [True, True, True, True, False, True, True]
  for i in np.flatnonzero(valid):
    expected = np.asarray(Image.open(source.paths[i]).convert("RGB"))
    np.testing.assert_array_equal(images[i], expected)
  gray = images[names.index("f_gray.png")]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  source.close()


def test_folder_of_mixed_sizes_needs_a_size_to_go_to(tmp_path):
  rgb = fixtures.test_images(8, 3, 8, 8)
  Image.fromarray(rgb[0]).save(tmp_path / "a.png")
  Image.fromarray(rgb[1]).save(tmp_path / "b.png")
  Image.fromarray(rgb[2][:, :6]).save(tmp_path / "c.png")
  message = _one_line_error(r"images of several sizes, 8x8 \(a.png\) and 6x8 \(c.png\)",
                            sources.open_source, tmp_path)
  assert "image_size=(H, W)" in message and "input_size" in message
  _one_line_error("resizing them on the host needs one of tf1, .*got resize='nearest'",
                  sources.open_source, tmp_path, input_size=(9, 9), resize="nearest")
  with sources.open_source(tmp_path, image_size=(4, 4), input_size=(9, 9), resize="tf1") as source:
    assert source.host_resize is None and source.dtype == np.uint8
    images, valid = source.read(0, 3)
  assert images.shape == (3, 4, 4, 3) and valid.all()
  # An explicit size applies to the first file too: every other-sized image is fitted to it.
  fitted = np.asarray(Image.fromarray(rgb[0]).resize((4, 4), Image.Resampling.BICUBIC))
  np.testing.assert_array_equal(images[0], fitted)


MIXED_SIZES = [(40, 48), (25, 17), (310, 300), (40, 48)]  # enlarged and shrunk to 299x299


@pytest.fixture(scope="module")
def mixed_size_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("mixed")
  for i, (height, width) in enumerate(MIXED_SIZES):
    Image.fromarray(fixtures.test_images(20 + i, 1, height, width)[0]).save(root / f"{i}.png")
  return root


def _device_resize(image, mode):
  return np.asarray(resize.resize(jnp.asarray(image[None], jnp.float32), (299, 299), mode))[0]


@pytest.mark.parametrize("mode", resize.RESIZE_MODES)
def test_a_folder_of_mixed_sizes_is_resized_on_the_host_image_by_image(mixed_size_folder, mode):
  with sources.open_source(mixed_size_folder, input_size=(299, 299), resize=mode,
                           workers=2) as source:
    assert source.host_resize == ((299, 299), mode) and source.dtype == np.float32
    assert source.image_shape == (299, 299, 3) and len(source) == 4
    rows, valid = source.read(0, 4)
  assert valid.all() and rows.dtype == np.float32
  for row, path, shape in zip(rows, source.paths, MIXED_SIZES):
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[:2] == shape
    # What the device's preprocessing sees: the row × 255 in float32 (its resize of 299 to 299
    # is the identity, tests/test_resize_host.py). The host/device bound of the resize, plus the
    # two roundings of / 255 and × 255 on values ≤ 255.
    pixels = (row * np.float32(255.0)).astype(np.float64)
    bound = route_bound(mode, shape, (299, 299)) + gamma(2) * 255.0
    assert np.max(np.abs(pixels - _device_resize(image, mode))) <= bound


@pytest.mark.parametrize("mode", resize.RESIZE_MODES)
def test_a_folder_of_one_size_keeps_the_device_route_which_the_host_route_equals(tmp_path, mode):
  images = fixtures.test_images(30, 3, 21, 34)
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f"{i}.png")
  with sources.open_source(tmp_path, input_size=(299, 299), resize=mode) as source:
    assert source.host_resize is None and source.dtype == np.uint8
    assert source.image_shape == (21, 34, 3)
    rows, valid = source.read(0, 3)
  np.testing.assert_array_equal(rows, images)
  device = np.asarray(resize.resize(jnp.asarray(rows, jnp.float32), (299, 299), mode))
  for row, expected in zip(rows, device):
    host = resize.host_resize(row, (299, 299), mode).astype(np.float64)
    assert np.max(np.abs(host - expected)) <= route_bound(mode, (21, 34), (299, 299))


def _preprocessed(params, images, *, resize="tf1", precision="highest", shards=1, mask=None,
                  host_resized=False):
  """A network whose feature is its input: the 299×299 normalised images, flattened."""
  del params, precision, shards, mask, host_resized
  x = inception.preprocess(images, resize)
  return {"input": x.reshape(x.shape[0], -1), "mean": jnp.mean(x, axis=(1, 2))}


INPUT_NETWORK = dataclasses.replace(
    inception.NETWORK, name="inception-input", forward=_preprocessed,
    features={"input": 299 * 299 * 3, "mean": 3})


@pytest.mark.parametrize("mode", ["tf1", "clean"])
def test_extracting_a_mixed_folder_equals_resizing_each_image_on_device(mixed_size_folder, mode):
  """The pipeline end to end (plumbing of the size and mode, no second resize, normalisation),
  with a network that returns what Inception would be fed."""
  result = extract.extract(mixed_size_folder, {}, network=INPUT_NETWORK, resize=mode,
                           states={"mean": ("mean", FeatureStats.empty(3))}, keep_features=("input",),
                           batch_size=8, progress=False)
  assert result.count == 4
  for got, path, shape in zip(result.outputs["input"], sorted(mixed_size_folder.iterdir()),
                              MIXED_SIZES):
    image = np.asarray(Image.open(path).convert("RGB"))
    expected = np.asarray(inception.preprocess(jnp.asarray(image[None]), mode), np.float64)
    # The pixel bound above through the normalisation (x − 128) / 128, a factor 1/128, plus one
    # float32 rounding of its output (|value| ≤ 1) on each route.
    bound = (route_bound(mode, shape, (299, 299)) + gamma(2) * 255.0) / 128.0 + 2 * U
    assert np.max(np.abs(got - expected.reshape(-1))) <= bound
  with sources.open_source(mixed_size_folder, input_size=299, resize="tf1") as opened:
    _one_line_error(r"resize: .* was opened to resize its images on the host to 299x299 with "
                    r"'tf1', got 'clean'", extract.extract, opened, {}, network=INPUT_NETWORK,
                    resize="clean", progress=False)
