"""``tfds:NAME:SPLIT`` sources and TFDS data sources, against the real tensorflow-datasets.

Every TFDS test is in this module: importing TensorFlow costs seconds, once per session. Two
kinds of data, neither downloaded:

* a small image dataset defined here and prepared by tfds itself into a temporary folder, once
  as ``tfrecord`` (TFDS's default: the ``tf.data`` route) and once as ``array_record`` (the
  random-access route), whose stored images the tests know;
* catalogue datasets (``cifar10``, ``mnist``) under ``tfds.testing.mock_data``, which makes
  their examples from the builders' declared features.
"""

import sys

import numpy as np
import pytest

from jaxmetrics._errors import InputError
from jaxmetrics.pipeline import datasets
from jaxmetrics.pipeline import extract
from jaxmetrics.pipeline import sources
from tests import _inception_fixtures as fixtures
from tests import _optional
from tests import _pixel_network

tfds = _optional.require("tensorflow_datasets")

H, W = 6, 5
TRAIN = fixtures.test_images(11, 11, H, W)
TEST = fixtures.test_images(12, 3, H, W)


class JaxmetricsTinyImages(tfds.core.GeneratorBasedBuilder):
  """11 train and 3 test images of 6x5 with labels, stored as PNG by tfds (lossless).

  ``index`` is each example's row in ``TRAIN`` / ``TEST``: tfds stores a split's examples in the
  order of a hash of their keys, which is the order it reads them in.
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(H, W, 3)),
        "label": tfds.features.ClassLabel(num_classes=3),
        "index": tfds.features.Scalar(np.int64)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(TRAIN), "test": self._generate_examples(TEST)}

  def _generate_examples(self, images):
    for i, image in enumerate(images):
      yield i, {"image": image, "label": i % 3, "index": i}


class JaxmetricsTinyImagesRandomAccess(JaxmetricsTinyImages):
  """The same examples, to be prepared as array_record."""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Both datasets prepared in a temporary data dir that tfds searches (``add_data_dir``)."""
  data_dir = tmp_path_factory.mktemp("tfds")
  JaxmetricsTinyImages(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
  JaxmetricsTinyImagesRandomAccess(data_dir=data_dir,
                                   file_format="array_record").download_and_prepare()
  tfds.core.add_data_dir(str(data_dir))
  return data_dir


def _stored(name, split, images):
  """``images`` in the order tfds stored the examples of ``split`` (their ``index`` feature)."""
  if name.endswith("random_access"):
    order = [e["index"] for e in tfds.data_source(name, split=split)]
  else:
    order = [e["index"] for e in tfds.as_numpy(tfds.load(name, split=split, shuffle_files=False))]
  return images[np.array(order)]


def _extract(source, **kwargs):
  return extract.extract(source, {}, network=_pixel_network.network(H, W),
                         keep_features=("pixels",), batch_size=8, progress=False, **kwargs)


@pytest.mark.parametrize("name, kind", [
    ("jaxmetrics_tiny_images", sources.IterableSource),
    ("jaxmetrics_tiny_images_random_access", datasets.SequenceSource),
])
def test_prepared_split_is_read_in_order(prepared, name, kind):
  train = _stored(name, "train", TRAIN)
  source = sources.open_source(f"tfds:{name}:train")
  assert isinstance(source, kind) and not source.per_process
  assert (source.num_samples, source.image_shape, source.dtype) == (11, (H, W, 3), np.uint8)
  result = _extract(source)
  assert result.count == 11
  np.testing.assert_array_equal(result.outputs["pixels"], _pixel_network.pixels(train))
  np.testing.assert_array_equal(result.index, np.arange(11))
  # tfds's split slicing, and its NAME:VERSION syntax.
  sliced = sources.open_source(f"tfds:{name}:1.0.0:train[3:9]")
  assert sliced.num_samples == 6
  np.testing.assert_array_equal(_extract(sliced).outputs["pixels"],
                                _pixel_network.pixels(train[3:9]))
  test = sources.open_source(f"tfds:{name}:test")
  np.testing.assert_array_equal(test.read(0, 3)[0], _stored(name, "test", TEST))


def test_several_tfrecord_batches_and_random_access_reads(prepared, monkeypatch):
  monkeypatch.setattr(datasets, "TFDS_BATCH", 4)  # tf.data batches of 4, 4, 3
  stream = sources.open_source("tfds:jaxmetrics_tiny_images:train")
  got = [stream.read(0, 5), stream.read(5, 11)]
  np.testing.assert_array_equal(np.concatenate([g[0] for g in got]),
                                _stored("jaxmetrics_tiny_images", "train", TRAIN))
  train = _stored("jaxmetrics_tiny_images_random_access", "train", TRAIN)
  rows = sources.open_source("tfds:jaxmetrics_tiny_images_random_access:train")
  np.testing.assert_array_equal(rows.read(7, 11)[0], train[7:])
  np.testing.assert_array_equal(rows.read(2, 4)[0], train[2:4])  # any order
  # tfds.data_source itself, as an object.
  data_source = tfds.data_source("jaxmetrics_tiny_images_random_access", split="train")
  opened = sources.open_source(data_source)
  assert isinstance(opened, datasets.SequenceSource) and len(opened) == 11
  np.testing.assert_array_equal(opened.read(0, 11)[0], train)


def test_catalogue_datasets_under_mock_data():
  with tfds.testing.mock_data(num_examples=5):
    stored = np.stack([e["image"] for e in tfds.as_numpy(
        tfds.load("cifar10", split="train", shuffle_files=False))])
    source = sources.open_source("tfds:cifar10:train")
    assert (source.num_samples, source.image_shape) == (5, (32, 32, 3))
    np.testing.assert_array_equal(source.read(0, 5)[0], stored)
    # MNIST is (28, 28, 1): repeated to RGB, as a grayscale file of a folder.
    gray = np.stack([e["image"] for e in tfds.as_numpy(tfds.load("mnist", split="test"))])
    mnist = sources.open_source("tfds:mnist:test")
    assert mnist.image_shape == (28, 28, 3)
    np.testing.assert_array_equal(mnist.read(0, 5)[0], np.repeat(gray, 3, axis=-1))
    # tfds.data_source (random access; labels and ids ignored).
    data_source = tfds.data_source("cifar10", split="train")
    rows = sources.open_source(data_source)
    assert isinstance(rows, datasets.SequenceSource) and len(rows) == 5
    np.testing.assert_array_equal(rows.read(1, 4)[0],
                                  np.stack([data_source[i]["image"] for i in range(1, 4)]))


def test_tfds_errors_are_one_line(prepared, monkeypatch):
  with pytest.raises(InputError, match="expected tfds:NAME:SPLIT"):
    sources.open_source("tfds:cifar10")
  with pytest.raises(InputError, match="tfds cannot load it.*not found"):
    sources.open_source("tfds:jaxmetrics_no_such_dataset:train")
  with pytest.raises(InputError, match=r"tfds cannot load it.*Unknown split"):
    sources.open_source("tfds:jaxmetrics_tiny_images:validation")
  with pytest.raises(InputError, match="key: applies to .npz files only"):
    sources.open_source("tfds:jaxmetrics_tiny_images:train", key="arr_0")
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # not installed
  with pytest.raises(InputError, match=r"pip install 'jaxmetrics\[tfds\]'"):
    sources.open_source("tfds:cifar10:train")
