"""Image sources: arrays, memory-mapped ``.npy``/``.npz``, image folders, iterables of batches.

Host-only (file I/O and decoding with Pillow). :func:`open_source` turns what a user has into a
:class:`Source`: rows of images of one shape, read by row range, so that extraction
(:mod:`jaxmetrics.pipeline.extract`) streams any number of them in fixed-size batches without holding them
all in memory.

==========================================  ===================================================
``open_source(x)``                          source
==========================================  ===================================================
``(N, H, W, 3)`` NumPy or JAX array         the array (a JAX array is copied to the host once)
``"images.npy"``                            memory-mapped (``np.load(mmap_mode="r")``)
``"batch.npz"``                             member ``key`` (default ``arr_0``, guided-diffusion's
                                            reference batches, or the only member): memory-mapped
                                            when stored uncompressed (``np.savez``), else
                                            decompressed as it is read (``np.savez_compressed``)
``"folder/"``                               every image file under it, recursively (see below)
an iterable of ``(B, H, W, 3)`` batches     read as it comes (a model sampling on the fly);
                                            each item may also be one ``(H, W, 3)`` image or a
                                            mapping with an ``"image"`` entry (what
                                            ``tfds.as_numpy(dataset.batch(n))`` yields)
==========================================  ===================================================

TensorFlow Datasets (``"tfds:NAME:SPLIT"``, ``tfds.data_source``), grain (``MapDataset``,
``DataLoader``, ``IterDataset``) and samplers that make batches on the devices
(:class:`~jaxmetrics.pipeline.datasets.SamplerSource`) are opened by
:mod:`jaxmetrics.pipeline.datasets`, whose docstring has their table.

Pixels are uint8 (0..255) or float in [0, 1] (float16/32/64, read as float32 and checked batch by
batch).
Memory stays bounded: files are read a row range at a time, and the pages of a memory-mapped file
are dropped from the process's resident memory once read (see :class:`ArraySource`).

Folders. A folder is searched recursively for PNG, JPEG, WebP, BMP, GIF (first frame) and TIFF
files, in sorted path order so every run and every host sees the same list. Grayscale, palette,
16-bit and RGBA images are converted to 8-bit RGB (alpha is dropped, as pytorch-fid and
torch-fidelity do by calling ``convert("RGB")``). A file that cannot be decoded is skipped with a
warning that names it (its row is marked invalid, so it is counted nowhere); a folder with no
readable image is an error. Files are decoded on a pool of threads (Pillow releases the GIL while
decoding).

Image sizes. When a folder is opened, the header of every file is read (on the same threads; no
pixels are decoded) and decides the route, the same on every host since it depends only on the
files:

* one size (most generated sets): the rows are the uint8 images, and the network's preprocessing
  resizes them on the device in batches, as for arrays;
* several sizes (ImageNet val, COCO, scraped photographs): each image goes straight to the
  network's input size on the host, with the exact filter of the resize mode
  (:func:`jaxmetrics.networks.resize.host_resize`: the device's tables and formulas in NumPy
  float32, so it agrees with the device route to float32 round-off). The rows are then float32
  ``pixel / 255`` at the input size (``Source.host_resize`` says so), and the device's resize of an
  image to the size it already has is the identity, exactly, in every mode. Each image is resized
  from its own size once, as clean-fid resizes every image on the host; nothing is cropped. The
  network's size and mode come from ``input_size`` and ``resize``, which
  :func:`jaxmetrics.pipeline.extract.extract` (and so ``evaluate`` and the command line) passes;
  a folder of several sizes opened without them is an error.

``image_size=(H, W)`` replaces both routes: every image of another size is center-cropped to the
aspect ratio of ``(H, W)`` and resized with PIL bicubic on uint8 on the host (``ImageOps.fit``),
then resized to the network's input on the device. It is a preprocessing step of its own that
changes the metric (a crop, and a second resize), so use it to match a pipeline that crops, not to
compare against published numbers.
"""

import collections.abc
import concurrent.futures
import functools
import mmap
import os
import pathlib
import struct
import warnings
import zipfile

import jax
import numpy as np
from PIL import Image
from PIL import ImageOps

from jaxmetrics._errors import InputError
from jaxmetrics.networks import resize as _resize

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_EXPECTED = "expected uint8 or float images of shape (N, H, W, 3)"


def list_images(folder):
  """Sorted paths of the image files under ``folder`` (recursive), by extension."""
  folder = pathlib.Path(folder)
  if not folder.exists():
    raise InputError(f"{folder}: no such file or folder")
  if not folder.is_dir():
    raise InputError(f"{folder}: expected a folder of images, got a file")
  paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
  if not paths:
    raise InputError(f"{folder}: expected image files ({', '.join(IMAGE_EXTENSIONS)}), found none")
  return paths


def read_image(path):
  """Decodes one file to a uint8 ``(H, W, 3)`` RGB array; raises ``InputError`` naming the file."""
  try:
    with Image.open(path) as image:
      if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (PNG opens as "I;16" or "I"): PIL's convert("RGB") clips at 255
        # instead of scaling, which would turn most of the image white.
        array = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(array * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
      return np.asarray(image.convert("RGB"), dtype=np.uint8)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise InputError(f"{path}: cannot decode as an image ({' '.join(str(e).split())})") from None


class Source:
  """Rows of images of one shape, read by row range. Host-only; abstract.

  Attributes:
    name: how messages name the source (a path, ``"array"``, ``"iterable"``).
    image_shape: ``(H, W, 3)`` of every row.
    dtype: ``uint8`` or ``float32``, the dtype :meth:`read` returns.
    num_samples: number of rows, or ``None`` when unknown until the data ends (iterables).
    per_process: ``False`` when rows are addressed globally: every process of a multi-host run
      opens the same data and reads the share it is given. ``True`` when each process supplies
      rows of its own (an iterable on each process, e.g. a sampler seeded per process).
    host_resize: ``((H, W), mode)`` when the rows were resized on the host to a network's input
      size with a resize mode's filter (a folder of mixed sizes), else ``None``.
  """

  name: str = "source"
  image_shape: tuple = ()
  dtype: np.dtype = np.dtype(np.uint8)
  num_samples: int | None = None
  per_process: bool = False
  host_resize: tuple | None = None

  def __len__(self):
    if self.num_samples is None:
      raise TypeError(f"{self.name}: the number of rows is not known before the data ends")
    return self.num_samples

  def read(self, start, stop):
    """Rows ``[start, stop)`` as ``(images, valid)``.

    ``images`` is ``(m, H, W, 3)`` of :attr:`dtype` and ``valid`` ``(m,)`` bool (False for a row
    that could not be read: it was reported and must be counted nowhere). ``m < stop - start``
    only where the data ends. Sequential sources (iterables, compressed ``.npz`` members) read
    fastest, or only, in increasing order.
    """
    raise NotImplementedError

  def close(self):
    """Releases files and threads; reading afterwards is an error."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class ArraySource(Source):
  """An ``(N, H, W, 3)`` array-like: NumPy (memory-mapped too), a JAX array or a sliceable reader.

  Args:
    array: the images.
    name: how messages name them.
    release_pages: for a read-only, C-ordered ``np.memmap``: drop the rows read from this
      process's resident memory. Pages of a file read through a map count in its RSS until
      unmapped, so a stream through a 100k-image file would otherwise end with the whole file
      resident (measured: 1.2 GB); the pages stay in the kernel's page cache. Set for the files
      :func:`open_source` maps itself.
  """

  def __init__(self, array, name="array", release_pages=False):
    if isinstance(array, jax.Array):
      array = np.asarray(array)
    self.name = name
    shape, dtype = _check_array_header(array, name)
    self._array = array
    self._release = (release_pages and isinstance(array, np.memmap) and array.mode == "r"
                     and array.flags.c_contiguous and hasattr(mmap, "MADV_DONTNEED")
                     and isinstance(getattr(array, "_mmap", None), mmap.mmap))
    self.num_samples = shape[0]
    self.image_shape = tuple(shape[1:])
    self.dtype = np.dtype(np.uint8) if dtype == np.uint8 else np.dtype(np.float32)

  def read(self, start, stop):
    start, stop = max(0, start), min(stop, self.num_samples)
    if stop <= start:
      return np.zeros((0, *self.image_shape), self.dtype), np.zeros((0,), bool)
    images = np.array(self._array[start:stop])  # a copy, not a view into a map
    if self._release:
      self._release_pages(start, stop)
    if self.dtype != np.uint8:
      images = _checked_float(images, f"{self.name} rows [{start}, {stop})")
    return images, np.ones((len(images),), bool)

  def _release_pages(self, start, stop):
    array = self._array
    # np.memmap maps from the allocation boundary below its offset; rows start this far in.
    first = array.offset % mmap.ALLOCATIONGRANULARITY + start * array.strides[0]
    last = array.offset % mmap.ALLOCATIONGRANULARITY + stop * array.strides[0]
    first -= first % mmap.PAGESIZE
    try:
      array._mmap.madvise(mmap.MADV_DONTNEED, first, last - first)  # pylint: disable=protected-access
    except (OSError, ValueError):
      self._release = False  # an optimisation only

  def close(self):
    close = getattr(self._array, "close", None)
    if close is not None:
      close()
    self._array = None


class FolderSource(Source):
  """Every image file under a folder (recursive, sorted); see the module docstring.

  Args:
    folder: the folder.
    image_size: ``None`` (default: see below), an int or ``(H, W)``: center-crop and resize every
      image of another size to it on the host (``ImageOps.fit``, PIL bicubic on uint8).
    workers: decoding threads; default ``min(16, os.cpu_count())``.
    input_size, resize: the network input ``(H, W)`` and its resize mode (one of
      :data:`jaxmetrics.networks.resize.RESIZE_MODES`), used when ``image_size`` is ``None`` and
      the images have several sizes: each is then resized to ``input_size`` on the host
      (:func:`jaxmetrics.networks.resize.host_resize`).
    host_resize: instead of that filter, ``host_resize(image)`` → ``(*input_size, 3)`` float32
      pixels in [0, 255] (a network's :attr:`~jaxmetrics.networks.base.FeatureNetwork.host_resize`
      in mode ``resize``).

  Attributes:
    paths: the files, one per row, in row order.
  """

  def __init__(self, folder, image_size=None, workers=None, input_size=None, resize=None,
               host_resize=None):
    self.name = str(folder)
    self._host_resize = host_resize
    self.paths = list_images(folder)
    self.num_samples = len(self.paths)
    self._workers = workers or min(16, os.cpu_count() or 1)
    self._pool = None
    self._fit = image_size is not None
    self.host_resize = None
    if self._fit:
      height, width = _check_image_size(image_size)
      self._first = None
    else:
      if input_size is not None:
        input_size = _check_image_size(input_size, "input_size")
      try:
        height, width, self._first = self._probe_sizes(folder, input_size, resize)
      except BaseException:
        self.close()
        raise
    self.image_shape = (height, width, 3)
    if self.host_resize is not None:
      self.dtype = np.dtype(np.float32)

  def _map(self, fn, items):
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(self._workers, "jaxmetrics-decode")
    return self._pool.map(fn, items)

  def _probe_sizes(self, folder, input_size, resize):
    """Reads every file's header (on the decode threads) to decide one size or a host resize.

    The decision depends only on the sorted files, so every process of a multi-host run makes
    the same one. A file whose header cannot be read is left to :meth:`read`, which skips it.
    """
    sizes = [(size, path) for size, path in zip(self._map(_header_size, self.paths), self.paths)
             if size is not None]
    if not sizes:
      raise InputError(f"{folder}: expected readable images, but none of the files could be "
                       "decoded")
    (height, width), first = sizes[0]
    other = next(((size, path) for size, path in sizes if size != (height, width)), None)
    if other is None:
      return height, width, first
    (other_h, other_w), other_path = other
    found = f"{width}x{height} ({first.name}) and {other_w}x{other_h} ({other_path.name})"
    if len({size for size, _ in sizes}) > 2:
      found += " among others"
    if input_size is None or resize is None:
      raise InputError(f"{folder}: images of several sizes, {found}: pass image_size=(H, W) to fit "
                       "them to one size, or the network's input_size and resize mode to resize "
                       "each to it")
    if self._host_resize is None and resize not in _resize.RESIZE_MODES:
      raise InputError(f"{folder}: images of several sizes, {found}: resizing them on the host "
                       f"needs one of {', '.join(_resize.RESIZE_MODES)}, got resize={resize!r}; "
                       "pass image_size=(H, W) to fit them to one size")
    if self._host_resize is None:  # a mode of jaxmetrics.networks.resize, checked above
      self._host_resize = functools.partial(_resize.host_resize, size=input_size, mode=resize)
    self.host_resize = (input_size, resize)
    return input_size[0], input_size[1], None

  def read(self, start, stop):
    paths = self.paths[max(0, start):min(stop, self.num_samples)]
    images = np.zeros((len(paths), *self.image_shape), self.dtype)
    valid = np.zeros((len(paths),), bool)
    for i, result in enumerate(self._map(self._load, paths)):
      if isinstance(result, InputError):
        warnings.warn(f"skipped {result}", stacklevel=2)
      else:
        images[i], valid[i] = result, True
    return images, valid

  def _load(self, path):
    try:
      image = read_image(path)
    except InputError as e:
      return e  # reported by the reading thread, in row order
    height, width, _ = self.image_shape
    if self.host_resize is not None:
      # [0, 1] floats, as the Source contract has them; the device's ×255 restores the 0..255
      # values to within 2 float32 roundings (≤ 255 · 2⁻²³), and its resize to the size they
      # have is the identity.
      return self._host_resize(image) / np.float32(255.0)
    if image.shape[:2] == (height, width):
      return image
    if self._fit:
      fitted = ImageOps.fit(Image.fromarray(image), (width, height), Image.Resampling.BICUBIC)
      return np.asarray(fitted, np.uint8)
    raise InputError(
        f"{path}: expected a {width}x{height} image like {self._first}, got "
        f"{image.shape[1]}x{image.shape[0]} (its header said otherwise): pass image_size=(H, W) "
        "to center-crop and resize on the host")

  def close(self):
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None


def _header_size(path):
  """``(height, width)`` from a file's header (Pillow decodes no pixels), or ``None``."""
  try:
    with Image.open(path) as image:
      width, height = image.size
    return height, width
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
    return None


class IterableSource(Source):
  """An iterable of image batches, read once, in order; each process iterates its own.

  The first batch is read when the source is opened, to learn the image shape and dtype; every
  later batch must match them. Empty batches are skipped.
  """

  per_process = True

  def __init__(self, iterable, name="iterable"):
    self.name = name
    self._iterator = iter(iterable)
    self._batches = 0
    self._buffer = None
    self._position = 0  # row index of self._buffer[0]
    first = self._next_batch(None)
    if first is None:
      raise InputError(f"{name}: expected batches of images (B, H, W, 3), got an empty iterable")
    self.image_shape = first.shape[1:]
    self.dtype = first.dtype
    self._buffer = first

  def _next_batch(self, like):
    for item in self._iterator:
      index = self._batches
      self._batches += 1
      if isinstance(item, collections.abc.Mapping):
        if "image" not in item:
          raise InputError(f"{self.name}: batch {index}: expected an array or a mapping with an "
                           f"'image' entry, got keys {', '.join(map(str, item))}")
        item = item["image"]
      batch = np.asarray(item)
      if batch.ndim == 3:
        batch = batch[None]
      where = f"{self.name} batch {index}"
      _check_array_header(batch, where, allow_empty=True)
      batch = batch if batch.dtype == np.uint8 else _checked_float(batch, where)
      if like is not None and (batch.shape[1:], batch.dtype) != like:
        raise InputError(f"{where}: expected {like[1]} images of shape (B, {like[0][0]}, "
                         f"{like[0][1]}, 3) like the first batch, got {batch.dtype} {batch.shape}")
      if len(batch):
        return batch
    return None

  def read(self, start, stop):
    if start < self._position:
      raise InputError(f"{self.name}: rows are read once, in order: row {start} was already "
                       "consumed")
    chunks, row = [], start
    while row < stop:
      if self._buffer is None:
        self._buffer = self._next_batch((self.image_shape, self.dtype))
        if self._buffer is None:
          break
      end = self._position + len(self._buffer)
      if row < end:
        chunks.append(self._buffer[row - self._position:stop - self._position])
        row += len(chunks[-1])
      if row >= end:
        self._position, self._buffer = end, None
    images = np.concatenate(chunks) if chunks else np.zeros((0, *self.image_shape), self.dtype)
    return images, np.ones((len(images),), bool)

  def close(self):
    close = getattr(self._iterator, "close", None)  # a generator's finally: blocks run now
    if close is not None:
      close()
    self._buffer = None


def open_source(source, *, image_size=None, key=None, workers=None, input_size=None, resize=None,
                network=None):
  """Opens images for streaming: a folder, ``.npy``/``.npz`` file, array or iterable of batches.

  See the module docstring for what each kind becomes, and :mod:`jaxmetrics.pipeline.datasets`
  for TFDS, grain and on-device samplers. A :class:`Source` is returned as is.

  Args:
    source: a path (``str`` or ``os.PathLike``), ``"tfds:NAME:SPLIT"``, an ``(N, H, W, 3)``
      array, an iterable of batches, a grain ``MapDataset`` or TFDS data source (read on
      ``workers`` threads too), or a :class:`Source`.
    image_size: folders only: ``(H, W)`` (or an int) to center-crop and resize images of other
      sizes to on the host; default ``None``: see ``input_size``.
    key: ``.npz`` only: the member holding the images; default ``arr_0``, or the only member.
    workers: folders only: decoding threads (default ``min(16, os.cpu_count())``).
    input_size, resize: the ``(H, W)`` input of the network that reads the rows and its resize
      mode (:func:`jaxmetrics.pipeline.extract.extract` passes its network's). A folder whose
      images have several sizes is resized image by image to ``input_size`` on the host with that
      mode's filter; a folder of one size, and every other source, is resized on the device
      instead, and ignores them. Without them (and without ``image_size``) a folder of several
      sizes is an error.
    network: instead of ``input_size``, the :class:`~jaxmetrics.networks.base.FeatureNetwork`
      that reads the rows: a folder of several sizes is resized to its ``input_size`` by its
      ``host_resize`` in mode ``resize`` (an error for a network without them).

  Raises:
    InputError: a missing path, an unknown file type, a wrong shape or dtype, no data.
  """
  host_resize = None
  if network is not None:
    if input_size is not None:
      raise InputError(f"input_size: given with network={network.name}, whose input size it is")
    if network.input_size is not None and network.host_resize is not None:
      input_size = network.input_size
      host_resize = functools.partial(network.host_resize, resize=resize)
  if input_size is not None:
    input_size = _check_image_size(input_size, "input_size")
  if isinstance(source, Source):
    given = [n for n, v in (("image_size", image_size), ("key", key), ("workers", workers))
             if v is not None]
    if given:
      raise InputError(f"{given[0]}: expected a path to open, got the opened source {source.name}")
    resized = source.host_resize
    if resized is not None and resize is not None and input_size is not None and (
        resized != (input_size, resize)):
      raise InputError(f"resize: {source.name} was opened to resize its images on the host to "
                       f"{resized[0][1]}x{resized[0][0]} with {resized[1]!r}, got {resize!r} at "
                       f"{input_size[1]}x{input_size[0]}: open it again")
    return source
  if image_size is not None:
    image_size = _check_image_size(image_size)
  if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                              or workers < 1):
    raise InputError(f"workers: expected a positive integer, got {workers!r}")
  if isinstance(source, (str, os.PathLike)):
    text = os.fspath(source)
    if isinstance(text, str) and text.startswith("tfds:"):
      _only_for(key, "key", ".npz files", text)
      _only_for(image_size, "image_size", "image folders", text)
      from jaxmetrics.pipeline import datasets  # pylint: disable=g-import-not-at-top
      return datasets.open_tfds(text, workers=workers)
    path = pathlib.Path(text)
    suffix = path.suffix.lower()
    if path.is_dir():
      _only_for(key, "key", ".npz files", path)
      return FolderSource(path, image_size, workers, input_size, resize, host_resize)
    _only_for(image_size, "image_size", "image folders", path)
    _only_for(workers, "workers", "image folders", path)
    if suffix != ".npz":
      _only_for(key, "key", ".npz files", path)
    if not path.exists():
      raise InputError(f"{path}: no such file or folder")
    if suffix == ".npy":
      return ArraySource(_load_npy(path), name=str(path), release_pages=True)
    if suffix == ".npz":
      member, name = _open_npz_member(path, key)
      return ArraySource(member, name=name, release_pages=True)
    raise InputError(f"{path}: expected an image folder, an .npy or an .npz file, got a "
                     f"{suffix or 'suffix-less'} file")
  kind = type(source).__name__
  _only_for(image_size, "image_size", "image folders", kind)
  _only_for(key, "key", ".npz files", kind)
  from jaxmetrics.pipeline import datasets  # pylint: disable=g-import-not-at-top
  if datasets.is_sequence(source):
    return datasets.SequenceSource(source, workers=workers)
  _only_for(workers, "workers", "image folders and random-access datasets", kind)
  if hasattr(source, "shape") and hasattr(source, "dtype"):
    return ArraySource(source)
  if isinstance(source, collections.abc.Iterable) and not isinstance(source, (bytes, dict)):
    return IterableSource(source, name=kind if datasets.is_stream(source) else "iterable")
  raise InputError(f"source: expected an image folder, an .npy/.npz file, an (N, H, W, 3) array "
                   f"or an iterable of batches, got {kind}")


# ------------------------------------------------------------------------------------ helpers


def _only_for(value, name, what, got):
  if value is not None:
    raise InputError(f"{name}: applies to {what} only, got {got}")


def _check_image_size(image_size, name="image_size"):
  size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
  try:
    height, width = (int(s) for s in size)
    ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
  except (TypeError, ValueError):
    ok = False
  if not ok or height < 1 or width < 1:
    raise InputError(f"{name}: expected a positive int or (height, width), got {image_size!r}")
  return height, width


def _check_array_header(array, name, allow_empty=False):
  """Shape and dtype checks that do not read pixel data; returns ``(shape, dtype)``."""
  shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
  if shape is None or dtype is None:
    raise InputError(f"{name}: {_EXPECTED}, got {type(array).__name__}")
  shape, dtype = tuple(shape), np.dtype(dtype)
  if len(shape) != 4:
    raise InputError(f"{name}: {_EXPECTED}, got {dtype} {shape}: rank {len(shape)}")
  if shape[-1] != 3:
    hint = ": channels-last is required" if shape[1] == 3 else ""
    raise InputError(f"{name}: {_EXPECTED}, got {dtype} {shape}{hint}")
  if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
    raise InputError(f"{name}: {_EXPECTED}, got {dtype} {shape}: not an image dtype")
  if (shape[0] == 0 and not allow_empty) or shape[1] == 0 or shape[2] == 0:
    raise InputError(f"{name}: {_EXPECTED}, got an empty array {shape}")
  return shape, dtype


def _checked_float(images, name):
  """Float images as float32, checked finite and in [0, 1] (as :func:`inception.check_images`)."""
  images = np.asarray(images, np.float32)
  if images.size and not np.isfinite(images).all():
    raise InputError(f"{name}: float images must be finite, got NaN or inf values")
  if images.size:
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
      raise InputError(f"{name}: float images must lie in [0, 1], got values in "
                       f"[{low:.4g}, {high:.4g}]: pass uint8 for 0..255 data")
  return images


def _load_npy(path):
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: expected an .npy array of images, cannot read it "
                     f"({' '.join(str(e).split())})") from None


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy_header(f, where):
  try:
    version = np.lib.format.read_magic(f)
    shape, fortran_order, dtype = _HEADER_READERS[version](f)
  except (KeyError, ValueError, OSError) as e:
    raise InputError(f"{where}: expected an .npy member, cannot read its header ({e})") from None
  if dtype.hasobject:
    raise InputError(f"{where}: expected an array of images, got pickled objects ({dtype})")
  return shape, fortran_order, dtype


def _open_npz_member(path, key):
  """The member's array: memory-mapped when stored uncompressed, else a sequential reader."""
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise InputError(f"{path}: expected an .npz archive, cannot read it ({e})") from None
  with archive:
    names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    if key is None:
      key = "arr_0" if "arr_0" in names or len(names) != 1 else names[0]
    if key not in names:
      raise InputError(f"{path}: expected an array {key!r} in the .npz (pass key=), it has: "
                       f"{', '.join(names) or 'nothing'}")
    info = archive.getinfo(key + ".npy")
  name = f"{path}[{key}]"
  if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
    return _CompressedMember(path, key + ".npy", name), name
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    signature, *_, name_length, extra_length = struct.unpack("<4s5H3I2H", f.read(30))
    if signature != b"PK\x03\x04":
      raise InputError(f"{name}: expected a zip local file header, the archive is damaged")
    f.seek(info.header_offset + 30 + name_length + extra_length)
    shape, fortran_order, dtype = _read_npy_header(f, name)
    offset = f.tell()
  if 0 in shape:
    return np.empty(shape, dtype), name  # np.memmap cannot map zero bytes; the checks report it
  array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                    order="F" if fortran_order else "C")
  return array, name


class _CompressedMember:
  """A compressed ``.npz`` member read row range by row range, decompressing as it goes.

  Forward reads stream; a read before the current position decompresses from the start again.
  """

  def __init__(self, path, member, name):
    self._archive = zipfile.ZipFile(path)
    self._file = self._archive.open(member)
    self.shape, fortran_order, self.dtype = _read_npy_header(self._file, name)
    if fortran_order and len(self.shape) > 1:
      raise InputError(f"{name}: expected a C-ordered array in a compressed .npz, got Fortran "
                       "order: save it with np.ascontiguousarray or uncompressed")
    self._start = self._file.tell()
    self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

  def __getitem__(self, rows):
    start, stop, _ = rows.indices(self.shape[0])
    self._file.seek(self._start + start * self._row_bytes)
    count = max(stop - start, 0)
    data = self._file.read(count * self._row_bytes)
    return np.frombuffer(data, self.dtype).reshape((count, *self.shape[1:]))

  def close(self):
    self._file.close()
    self._archive.close()
