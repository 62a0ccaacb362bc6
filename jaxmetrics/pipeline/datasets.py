"""Sources from the data ecosystem: TensorFlow Datasets, grain, and samplers on the devices.

:func:`jaxmetrics.pipeline.sources.open_source` is the one entry point; it hands these kinds to
this module:

==========================================  ===================================================
``open_source(x)``                          source
==========================================  ===================================================
``"tfds:NAME:SPLIT"``                       a TFDS split in ``$TFDS_DATA_DIR``, in order;
                                            ``SPLIT`` may be sliced (``train[:5000]``,
                                            ``test[10%:]``): :func:`open_tfds`
``tfds.data_source(NAME, split=...)``       random access by row (:class:`SequenceSource`)
``grain.MapDataset``                        random access by row (:class:`SequenceSource`)
``grain.DataLoader`` / ``IterDataset``      read once, in order (an iterable of batches)
``SamplerSource(sampler, num_samples)``     a jitted ``sampler(step)`` returning image batches
                                            as ``jax.Array``: fed to the devices as they are
==========================================  ===================================================

Examples, dictionaries and labels. An element or batch may be an image array or a mapping with an
``"image"`` entry, the key TFDS image datasets use (``tfds.features.Image`` under ``image``) and
grain pipelines built on them keep; every other entry (``label``, ``id``, ...) is ignored and, on
the TFDS ``tf.data`` route, dropped before batching. Pixels are uint8 (0..255), as TFDS stores
images, or float in [0, 1]; any other dtype (a ``uint16`` image feature) is an error naming the
source. A single-channel image (``(H, W, 1)``: MNIST) is repeated to RGB, as Pillow's
``convert("RGB")`` does for the grayscale files of a folder.

Multi-host. Row-addressable sources (a TFDS data source, a grain ``MapDataset``, a sampler) are
addressed globally, as files are: every process opens the same data and reads the rows its devices
hold in each global batch (``per_process = False``), so the result equals a one-host run.
Streams (``tf.data`` from ``tfds.load``, grain iterators) are per process: each process reads its
own share, ``tfds.split_for_jax_process(SPLIT)`` for a ``tfds:`` string, the shard grain's
``ShardByJaxProcess`` gives a ``DataLoader`` (``per_process = True``; see
:mod:`jaxmetrics.pipeline.extract`).
"""

import collections.abc
import concurrent.futures
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics._errors import InputError
from jaxmetrics.pipeline import sources

TFDS_BATCH = 256
IMAGE_KEY = "image"


# -------------------------------------------------------------------------- random access


class SequenceSource(sources.Source):
  """A random-access sequence of images (``len`` and ``[i]``), read by row range.

  For ``tfds.data_source(...)`` (TFDS's ``ArrayRecordDataSource``), a grain ``MapDataset``, or
  any sequence whose elements are ``(H, W, 3)`` images or mappings with an ``"image"`` entry.
  Elements that are batches (``(B, H, W, 3)``: a ``MapDataset`` after ``.batch(B)``) are rows
  ``[k·B, (k+1)·B)`` for element ``k``; every element but the last must hold ``B`` rows, the
  size of the first. An element that is ``None`` (what a filtered ``MapDataset`` returns for a
  dropped index) is a masked row, counted nowhere, as an undecodable file of a folder.

  Rows are addressed globally (``per_process = False``): on several processes each reads the
  rows its devices hold. Reading is thread-parallel: ``workers`` threads call ``[i]``, so grain
  maps and TFDS's image decoding run in them.

  Args:
    sequence: the sequence.
    name: how messages name it.
    workers: reading threads (default ``min(16, os.cpu_count())``).
  """

  def __init__(self, sequence, name=None, workers=None):
    self.name = name or type(sequence).__name__
    self._sequence = sequence
    try:
      self._elements = len(sequence)
    except TypeError as e:
      raise InputError(f"{self.name}: expected a sequence with a length, got {e}") from None
    if self._elements == 0:
      raise InputError(f"{self.name}: expected images, got an empty sequence")
    self._workers = workers or min(16, os.cpu_count() or 1)
    self._pool = None
    first = None
    for index in range(self._elements):
      first = self._element(index)
      if first is not None:
        break
    if first is None:
      raise InputError(f"{self.name}: expected images, but every element is None (filtered out)")
    self._batched = first.ndim == 4
    self._per_element = len(first) if self._batched else 1
    if self._batched and self._per_element == 0:
      raise InputError(f"{self.name}: element {index}: expected a non-empty batch, got "
                       f"{first.shape}")
    self.image_shape = tuple(first.shape[-3:])
    self.dtype = first.dtype
    self._last = None
    if self._batched:
      last = self._element(self._elements - 1)
      tail = self._per_element if last is None else len(last)
      self.num_samples = (self._elements - 1) * self._per_element + tail
    else:
      self.num_samples = self._elements

  def _element(self, index):
    """Element ``index`` as a checked ``(H, W, 3)`` or ``(B, H, W, 3)`` array, or ``None``."""
    item = self._sequence[index]
    if item is None:
      return None
    array = _image_array(item, f"{self.name} element {index}")
    batch = array if array.ndim == 4 else array[None]
    where = f"{self.name} element {index}"
    sources._check_array_header(batch, where)  # pylint: disable=protected-access
    if batch.dtype != np.uint8:
      batch = sources._checked_float(batch, where)  # pylint: disable=protected-access
    if getattr(self, "image_shape", None):
      expected = (self.image_shape, self.dtype)
      if (batch.shape[1:], batch.dtype) != expected:
        raise InputError(f"{where}: expected {self.dtype} images of shape {self.image_shape} like "
                         f"the first, got {batch.dtype} {array.shape}")
    return batch if array.ndim == 4 else batch[0]

  def read(self, start, stop):
    start, stop = max(0, start), min(stop, self.num_samples)
    if stop <= start:
      return np.zeros((0, *self.image_shape), self.dtype), np.zeros((0,), bool)
    b = self._per_element
    first, last = start // b, (stop - 1) // b + 1
    elements = self._read_elements(range(first, last))
    images = np.zeros((last * b - first * b, *self.image_shape), self.dtype)
    valid = np.zeros((len(images),), bool)
    for k, element in zip(range(first, last), elements):
      rows = slice((k - first) * b, (k - first + 1) * b)
      if element is None:
        continue
      if self._batched and len(element) != b and k != self._elements - 1:
        raise InputError(f"{self.name} element {k}: expected a batch of {b} rows like the first "
                         f"(only the last may be shorter), got {len(element)}")
      n = len(element) if self._batched else 1
      images[rows][:n], valid[rows][:n] = element, True
    cut = slice(start - first * b, stop - first * b)
    return images[cut], valid[cut]

  def _read_elements(self, indices):
    if len(indices) == 1 or self._workers == 1:
      return [self._element(i) for i in indices]
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, "jaxmetrics-sequence")
    return list(self._pool.map(self._element, indices))

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None


def _image_array(item, where):
  """The image of an element or batch: the array itself or its ``"image"`` entry, as NumPy RGB."""
  if isinstance(item, collections.abc.Mapping):
    if IMAGE_KEY not in item:
      raise InputError(f"{where}: expected an image array or a mapping with an {IMAGE_KEY!r} "
                       f"entry, got keys {', '.join(map(str, item))}")
    item = item[IMAGE_KEY]
  array = np.asarray(item)
  if array.ndim in (3, 4) and array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)  # grayscale to RGB, as Pillow's convert("RGB")
  return array


def is_sequence(source):
  """Whether ``open_source`` reads ``source`` as a :class:`SequenceSource`.

  A grain ``MapDataset`` and a TFDS data source (``tfds.data_source``), recognised by class
  without importing either package; other sequences (a list of batches) stay iterables.
  """
  for cls in type(source).__mro__:
    module = cls.__module__ or ""
    if cls.__name__ == "MapDataset" and module.startswith("grain"):
      return True
    if cls.__name__ == "BaseDataSource" and module.startswith("tensorflow_datasets"):
      return True
  return False


def is_stream(source):
  """Whether ``source`` is a grain ``IterDataset`` or ``DataLoader`` (read as an iterable)."""
  return any(cls.__name__ in ("IterDataset", "DataLoader") and (cls.__module__ or "").startswith(
      "grain") for cls in type(source).__mro__)


# ----------------------------------------------------------------------------------- tfds


def open_tfds(text, workers=None):
  """``tfds:NAME:SPLIT`` as a :class:`~jaxmetrics.pipeline.sources.Source`.

  ``NAME`` is what ``tfds.builder`` takes (``cifar10``, ``imagenet2012/...:5.1.0``); ``SPLIT``
  what ``tfds.load`` takes, slices included (``train[:5000]``, ``validation[10%:]``). Needs the
  ``tfds`` extra (tensorflow-datasets and TensorFlow). The data are read from
  ``$TFDS_DATA_DIR`` (default ``~/tensorflow_datasets``), where tfds downloads and prepares them
  first if they are not there (as ``tfds.load`` does). Only the ``image`` feature is read;
  examples come in the split's order.

  Two routes, by how the data was prepared (``builder.info.available_file_formats()``):

  * a random-access format (``array_record``): ``tfds.data_source``, read by row
    (:class:`SequenceSource`); on several processes each reads the rows its devices hold, so the
    result equals a one-host run;
  * otherwise (``tfrecord``, TFDS's default): ``tfds.load(..., shuffle_files=False)`` decoded by
    ``tf.data`` in batches of :data:`TFDS_BATCH`. The number of rows is the dataset's
    cardinality (for a TFDS split, the examples it holds). On several processes each process
    reads ``tfds.split_for_jax_process(SPLIT)``, its own contiguous share: a per-process stream,
    whose statistics equal a one-host run's up to summation order, and whose Inception Score
    splits are dealt round-robin.
  """
  _, name, split = (text.split(":", 2) + ["", ""])[:3]
  # "NAME:VERSION" is tfds's own syntax for a version: tfds:cifar10:3.0.2:train[:10].
  head, _, rest = split.partition(":")
  if rest and re.fullmatch(r"[0-9.*]+", head):
    name, split = f"{name}:{head}", rest
  if not name or not split:
    raise InputError(f"source: expected tfds:NAME:SPLIT (e.g. tfds:cifar10:train), got {text!r}")
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise InputError(f"source: {text!r} needs tensorflow-datasets and TensorFlow: "
                     "pip install 'jaxmetrics[tfds]'") from None
  try:
    builder = tfds.builder(name)  # $TFDS_DATA_DIR, else ~/tensorflow_datasets
    formats = {f.value for f in builder.info.available_file_formats()}
  except Exception as e:  # tfds raises many types (DatasetNotFoundError, AssertionError, ...)
    raise InputError(f"source: {text!r}: tfds cannot load it ({' '.join(str(e).split())})") from None
  random_access = {f.value for f in tfds.core.file_adapters.FileFormat.with_random_access()}
  try:
    if formats & random_access:
      return SequenceSource(tfds.data_source(name, split=split), name=text,
                            workers=workers)
    return _tfds_stream(tfds, name, split, text)
  except InputError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # as above
    raise InputError(f"source: {text!r}: tfds cannot load it ({' '.join(str(e).split())})") from None


def _tfds_stream(tfds, name, split, text):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    # tf.data decodes on the host; a GPU build of TensorFlow would otherwise reserve the memory of
    # the GPUs JAX computes on (TensorFlow allocates nothing on a device it does not see).
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TensorFlow's devices were initialised already, by the caller
  processes = jax.process_count()
  if processes > 1:
    split = tfds.split_for_jax_process(split)
  dataset = tfds.load(name, split=split, shuffle_files=False)
  spec = dataset.element_spec
  if not isinstance(spec, dict) or IMAGE_KEY not in spec:
    raise InputError(f"source: {text!r}: expected examples with an {IMAGE_KEY!r} feature, got "
                     f"{', '.join(spec) if isinstance(spec, dict) else type(spec).__name__}")
  shape = spec[IMAGE_KEY].shape
  if shape.rank != 3:
    raise InputError(f"source: {text!r}: expected an image feature of shape (H, W, 3), got "
                     f"{shape}")

  def image(example):
    pixels = example[IMAGE_KEY]
    return tf.repeat(pixels, 3, axis=-1) if shape[-1] == 1 else pixels

  dataset = dataset.map(image, num_parallel_calls=tf.data.AUTOTUNE)
  cardinality = int(dataset.cardinality())  # a TFDS split's examples; < 0 when unknown
  # Images of one declared size are batched by tf.data; a feature of unknown size (None, None, 3)
  # yields one image at a time, which must all have the first one's size.
  if shape.is_fully_defined():
    dataset = dataset.batch(TFDS_BATCH)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  source = sources.IterableSource(tfds.as_numpy(dataset), name=text)
  if processes == 1 and cardinality >= 0:
    source.num_samples = cardinality
    source.per_process = False
  return source


# --------------------------------------------------------------------------- on the devices


class SamplerSource(sources.Source):
  """Image batches made on the devices by ``sampler(step)``, fed to extraction as they are.

  ``sampler(step)`` (``step`` = 0, 1, 2, ... a Python int; fold it into a PRNG key:
  ``jax.random.fold_in(key, step)``) returns a ``jax.Array`` of ``b`` images ``(b, H, W, 3)``,
  uint8 or float in [0, 1], every call the same shape and dtype. The source takes
  ``ceil(num_samples / b)`` batches, calling the sampler with ``step`` = 0 ..
  ``ceil(num_samples / b) - 1`` once each, in order, and uses the first ``num_samples`` rows (the
  rest of the last batch is dropped). The first batch is sampled when the source is opened, to
  learn the shape.

  The images never go through the host. Where the sampler's batch is the extraction's global
  batch (``b == batch_size``) and already has its sharding (``jax.jit(sampler,
  out_shardings=NamedSharding(mesh, P("data")))`` with extract's mesh), the array is used as it
  is; otherwise rows are cut, joined and padded by a jitted function on the devices, and placed
  on the batch's sharding device to device. On several processes the sampler runs on every
  process (the same program) and must return the global batch with that sharding.

  Float samples are checked finite and in [0, 1] on the first batch on the host; later batches
  are checked on the devices, and the flag is read once, when the last rows are taken (reading
  it every step would stall the devices). uint8 needs no check: round in the sampler
  (``jnp.round(x * 255).astype(jnp.uint8)``, what saving samples to PNG does) to compare with
  stored images.

  Args:
    sampler: ``step -> jax.Array (b, H, W, 3)``, usually jitted.
    num_samples: images to take (the total over all processes).
    name: how messages name it.
  """

  on_device = True

  def __init__(self, sampler, num_samples, name="sampler"):
    if not callable(sampler):
      raise InputError(f"sampler: expected a function step -> (B, H, W, 3) images, got "
                       f"{type(sampler).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
        or num_samples < 1:
      raise InputError(f"num_samples: expected a positive integer, got {num_samples!r}")
    self.name = name
    self.num_samples = int(num_samples)
    self._sampler = sampler
    self._step = 0
    self._buffer = []  # [(first row, array)] sampled and not yet consumed
    self._taken = 0    # rows sampled so far
    self._bad = None   # device flag: a float batch outside [0, 1] or not finite
    first = self._sample()
    self.image_shape = tuple(first.shape[1:])
    self.dtype = np.dtype(first.dtype)
    self.batch = len(first)
    if self.dtype != np.uint8:
      sources._checked_float(np.asarray(first), f"{name} step 0")  # pylint: disable=protected-access

  @property
  def steps(self):
    """Sampler calls the source makes: ``ceil(num_samples / b)``."""
    return -(-self.num_samples // self.batch)

  def _sample(self):
    step = self._step
    batch = self._sampler(step)
    where = f"{self.name} step {step}"
    if not isinstance(batch, jax.Array):
      raise InputError(f"{where}: expected a jax.Array of images (B, H, W, 3) on the devices, got "
                       f"{type(batch).__name__}: pass host arrays as an iterable instead")
    sources._check_array_header(batch, where)  # pylint: disable=protected-access
    if step and (batch.shape[1:], np.dtype(batch.dtype)) != (self.image_shape, self.dtype):
      raise InputError(f"{where}: expected {self.dtype} images of shape (B, "
                       f"{', '.join(map(str, self.image_shape))}) like step 0, got {batch.dtype} "
                       f"{batch.shape}")
    if step and len(batch) != self.batch:
      raise InputError(f"{where}: expected {self.batch} images like step 0, got {len(batch)}")
    if step and self.dtype != np.uint8:
      bad = _out_of_range(batch)
      self._bad = bad if self._bad is None else self._bad | bad
    self._buffer.append((self._taken, batch))
    self._taken += len(batch)
    self._step += 1
    return batch

  def read(self, start, stop):
    raise InputError(f"{self.name}: an on-device source is read by extraction "
                     "(jaxmetrics.pipeline.extract), which places its batches as they are")

  def read_device(self, start, stop, size, sharding):
    """Rows ``[start, stop)`` as the first rows of a ``(size, H, W, 3)`` array on ``sharding``.

    The rows after them are zeros, or, where one sampler batch is the whole array, the rest of
    that batch: the caller masks them. Rows are taken in increasing order; each sampler batch is
    made once.
    """
    stop = min(stop, self.num_samples)
    if self._buffer and start < self._buffer[0][0]:
      raise InputError(f"{self.name}: rows are sampled once, in order: row {start} was already "
                       "used")
    while self._taken < stop:
      self._sample()
    parts, cuts = [], []
    for first, batch in self._buffer:
      lo, hi = max(start, first), min(stop, first + len(batch))
      if lo < hi:
        parts.append(batch)
        cuts.append((lo - first, hi - first))
    self._buffer = [(f, b) for f, b in self._buffer if f + len(b) > stop]
    if stop >= self.num_samples:
      self._check_flag()
    if (len(parts) == 1 and cuts[0][0] == 0 and len(parts[0]) == size
        and parts[0].sharding.is_equivalent_to(sharding, 4)):
      return parts[0]
    return _assemble(tuple(parts), cuts=tuple(cuts), size=size, sharding=sharding)

  def _check_flag(self):
    if self._bad is not None and bool(self._bad):
      self._bad = None
      raise InputError(f"{self.name}: float images must be finite and lie in [0, 1], got values "
                       "outside in a batch after the first: pass uint8 for 0..255 data")

  def close(self):
    self._buffer = []


@jax.jit
def _out_of_range(batch):
  return ~jnp.all(jnp.isfinite(batch) & (batch >= 0) & (batch <= 1))


@functools.partial(jax.jit, static_argnames=("cuts", "size", "sharding"))
def _assemble_jit(parts, *, cuts, size, sharding):
  rows = [part[lo:hi] for part, (lo, hi) in zip(parts, cuts)]
  count = sum(hi - lo for lo, hi in cuts)
  if count < size:
    rows.append(jnp.zeros((size - count, *parts[0].shape[1:]), parts[0].dtype))
  return jax.lax.with_sharding_constraint(jnp.concatenate(rows), sharding)


def _assemble(parts, *, cuts, size, sharding):
  """The rows ``parts[k][cuts[k][0]:cuts[k][1]]`` joined and zero-padded to ``size``, on device."""
  if any(p.sharding.device_set != sharding.device_set for p in parts):
    # A sampler jitted without out_shardings returns its batch on one device: copy it to every
    # device of the mesh (device to device), where the jitted join can cut it.
    everywhere = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    parts = tuple(jax.device_put(p, everywhere) for p in parts)
  return _assemble_jit(parts, cuts=cuts, size=size, sharding=sharding)
