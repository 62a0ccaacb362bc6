"""FID, IS and KID of image sources in one call: the path from two folders of images to the numbers.

A source is an image folder, an ``.npy``/``.npz`` image array (guided-diffusion's ``arr_0`` batches
too), an in-memory ``(N, H, W, 3)`` array, an iterable of batches, or a saved statistics file
(``.npz`` with ``mu`` and ``sigma``: pytorch-fid's, clean-fid's, guided-diffusion's reference
batches, or ``jaxmetrics stats``). One feature pass per source feeds every requested metric.

Statistics cache. The statistics (and, when KID needs them, the pool3 features) of a source are
kept in ``cache_dir()/stats`` under a key made of the source's *content* (the sha256 of every file's
bytes and relative path for a folder, of the file for an array file, of the data for an in-memory
array) and of every setting that changes them: the weights file's sha256, the resize mode, the
precision, the sample count, the host-side image size and the IS splits. Re-running against the
same reference therefore skips extraction; a changed file or setting makes a new entry. Iterables
are never cached (their content is not known in advance).

Example::

  import jaxmetrics
  jaxmetrics.fid("real/", "fake/")                        # one number
  jaxmetrics.evaluate("fake/", "ref.npz", metrics=("fid", "is", "kid"))   # a dict
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import warnings

import jax
import numpy as np

from jaxmetrics.pipeline import extract as _extract
from jaxmetrics.networks import inception
from jaxmetrics.pipeline import sources
from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import InputError
from jaxmetrics._io import save_npz_atomic
from jaxmetrics.metrics.frechet import frechet_distance
from jaxmetrics.metrics.kid import kid as _kid
from jaxmetrics.metrics.statistics import load_stats

METRICS = ("fid", "is", "kid")
# Below this many samples the 2048×2048 covariance is singular and FID strongly biased; the
# literature reports FID on 10k–50k samples.
TRUSTWORTHY_SAMPLES = 2048
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SourceStatistics:
  """What one source contributes: FID statistics, and what IS and KID need when asked for.

  Attributes:
    name: how the source was given (a path, or a description of an array).
    count: number of images, or ``None`` for saved statistics (their files do not record it).
    mu, sigma: pool3 mean ``(2048,)`` and unbiased covariance ``(2048, 2048)``, float64.
    features: pool3 features ``(count, 2048)`` when KID needed them, else ``None``.
    inception_score: ``(mean, std)`` when IS was asked for, else ``None``.
    cached: whether the numbers came from the statistics cache.
  """
  name: str
  count: int | None
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray | None = None
  inception_score: tuple | None = None
  cached: bool = False


class Evaluator:
  """Loads the weights once and computes (or reads from the cache) the statistics of sources.

  Args:
    weights: an Inception checkpoint path; ``None`` uses (and downloads once) the official file.
    check_hash: verify the weights' sha256 against the registry; ``False`` for custom weights.
    params: parameters already loaded (:func:`jaxmetrics.load_params`), used instead of
      ``weights``; the cache then keys them by the sha256 of their arrays.
    resize, precision, batch_size, num_samples, image_size, splits: as in
      :func:`jaxmetrics.pipeline.extract.extract`.
    cache: read and write the statistics cache (see the module docstring).
    progress: show progress bars.
  """

  def __init__(self, *, weights=None, check_hash=True, params=None, resize="tf1",
               precision="highest", batch_size=None, num_samples=None, image_size=None, splits=10,
               cache=True, progress=True):
    # The weights are resolved (downloaded, hashed) when first needed, by a feature pass or a
    # cache key: FID between two saved statistics files needs no network and works offline.
    self._weights, self._check_hash = weights, check_hash
    self.weights_path = None
    self._sha256 = None if params is None else "params:" + _params_digest(params)
    self._params = params
    self.settings = dict(resize=resize, precision=precision, num_samples=num_samples,
                         image_size=None if image_size is None else list(image_size),
                         splits=splits)
    self._batch_size = batch_size
    self._cache = cache
    self._progress = progress
    self._saved = {}

  @property
  def weights_sha256(self):
    """sha256 of the weights file (``"params:<digest>"`` for given params); resolves it once."""
    if self._sha256 is None:
      self.weights_path, self._sha256 = inception.weights_file(
          self._weights, check_hash=self._check_hash, progress=self._progress)
    return self._sha256

  @property
  def weights_resolved(self):
    """Whether a feature pass or cache lookup needed the weights (so far)."""
    return self._sha256 is not None

  @property
  def params(self):
    if self._params is None:
      sha256 = self.weights_sha256
      self._params = inception.load_weights_file(self.weights_path, sha256)
    return self._params

  def check(self, source, *, need_features=False, need_inception_score=False):
    """Cheap checks before any feature pass: a path exists, saved statistics fit what is asked.

    Returns:
      ``(mu, sigma, has_images)`` for saved statistics, else ``None``.
    """
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
      raise InputError(f"{os.fspath(source)}: no such file or folder")
    # evaluate() checks every source before any pass and statistics() checks again: read and
    # validate a saved .npz (a 2048×2048 float64 matrix) once per path.
    key = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if key is not None and key in self._saved:
      saved = self._saved[key]
    else:
      saved = _saved_statistics(source)
      if key is not None:
        self._saved[key] = saved
    if saved is not None and (need_features or need_inception_score) and not saved[2]:
      wanted = "KID needs pool3 features" if need_features else "IS needs logits"
      raise InputError(f"{_describe(source)}: {wanted}, but the file holds only FID statistics "
                       "(mu, sigma)")
    return saved

  def statistics(self, source, *, need_features=False, need_inception_score=False):
    """The :class:`SourceStatistics` of ``source``, from a saved file, the cache or a pass."""
    name = _describe(source)
    saved = self.check(source, need_features=need_features,
                       need_inception_score=need_inception_score)
    if saved is not None:
      mu, sigma, _ = saved
      if not (need_features or need_inception_score):
        return SourceStatistics(name, None, mu, sigma)
    key = self._cache_key(source)
    if saved is not None:
      source = sources.open_source(source, key="arr_0")  # guided-diffusion's reference batch
    entry = self._cache_dir() / f"{key}.npz" if key else None
    if entry is not None and entry.is_file():
      cached = _read_entry(entry, name, need_features, need_inception_score)
      if cached is not None:
        return cached
    result = _extract.extract(
        source, self.params, batch_size=self._batch_size, resize=self.settings["resize"],
        precision=self.settings["precision"], num_samples=self.settings["num_samples"],
        keep_features=need_features, splits=self.settings["splits"],
        image_size=self.settings["image_size"], progress=self._progress)
    if result.count < 2:
      raise InputError(f"{name}: expected at least 2 images for FID statistics, got {result.count}")
    splits = self.settings["splits"]
    if need_inception_score and result.count < splits:
      raise InputError(f"{name}: the Inception Score needs at least {splits} images (one per "
                       f"split), got {result.count}")
    # The IS state comes with every pass: keep its result in the cache whenever it is defined.
    score = result.inception_score.compute() if result.count >= splits else None
    out = SourceStatistics(
        name, result.count, np.asarray(result.stats.mean, np.float64),
        np.asarray(result.stats.covariance(), np.float64), result.features,
        None if score is None else tuple(float(v) for v in score))
    if entry is not None and jax.process_index() == 0:
      _write_entry(entry, out)
    return out

  def _cache_dir(self):
    return weights.cache_dir() / "stats"

  def _cache_key(self, source):
    if not self._cache:
      return None
    content = _content_digest(source)
    if content is None:
      return None
    settings = dict(self.settings, content=content, weights=self.weights_sha256,
                    format=_CACHE_FORMAT)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def evaluate(a, b=None, *, metrics=("fid",), params=None, weights=None, check_hash=True,
             resize="tf1", precision="highest", batch_size=None, num_samples=None,
             image_size=None, splits=10, kid_subsets=100, kid_subset_size=1000, cache=True,
             progress=False):
  """Computes several metrics from one feature pass per source.

  Args:
    a: the first source (the generated images, for IS).
    b: the second source, for FID and KID (real images or reference statistics).
    metrics: any of ``"fid"``, ``"is"`` (of ``a``), ``"kid"``.
    params, weights, check_hash, resize, precision, batch_size, num_samples, image_size, splits,
      cache, progress: see :class:`Evaluator`.
    kid_subsets, kid_subset_size: see :func:`jaxmetrics.kid`.

  Returns:
    A dict: ``fid``; ``is_mean``/``is_std``; ``kid_mean``/``kid_std``, as asked, with the sample
    counts ``n1`` (and ``n2``; ``None`` for saved statistics), the weights' sha256 (``None`` when
    every source was saved statistics, which needs no weights), the resize mode and, per source,
    whether the statistics cache was used. FID is computed in float64 on the host CPU
    (:func:`host_frechet_distance`) from statistics accumulated in float32 on the devices.
  """
  metrics = _check_metrics(metrics, two_sources=b is not None)
  evaluator = Evaluator(weights=weights, check_hash=check_hash, params=params, resize=resize,
                        precision=precision,
                        batch_size=batch_size, num_samples=num_samples, image_size=image_size,
                        splits=splits, cache=cache, progress=progress)
  needs = [(a, dict(need_features="kid" in metrics, need_inception_score="is" in metrics))]
  if b is not None:
    needs.append((b, dict(need_features="kid" in metrics)))
  for source, need in needs:  # fail on bad input before any feature pass
    evaluator.check(source, **need)
  first = evaluator.statistics(a, **needs[0][1])
  results = {"n1": first.count, "resize": resize, "cached": [first.cached]}
  if "is" in metrics:
    results["is_mean"], results["is_std"] = first.inception_score
  if b is not None:
    second = evaluator.statistics(b, **needs[1][1])
    results["n2"] = second.count
    results["cached"].append(second.cached)
    if "fid" in metrics:
      _warn_if_few(first, second)
      results["fid"] = host_frechet_distance(first.mu, first.sigma, second.mu, second.sigma)
    if "kid" in metrics:
      results["kid_mean"], results["kid_std"] = float64_kid(
          first.features, second.features, subsets=kid_subsets, subset_size=kid_subset_size)
  # None when every source was saved statistics: no weights were needed, none are reported.
  results["weights_sha256"] = evaluator.weights_sha256 if evaluator.weights_resolved else None
  return results


def _host_device():
  """The host CPU device for float64 work; the default device where JAX_PLATFORMS has no "cpu"."""
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return jax.local_devices()[0]


def host_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """:func:`jaxmetrics.frechet_distance` in float64 on the host CPU, as the PyTorch peers compute it.

  The statistics are float64 host arrays here (accumulated in float32, which is accurate: 1.5e-7
  relative in FID on the case below), and the kernel costs ~2 s at d = 2048, so nothing is gained
  by running it in float32 on an accelerator, and float32 loses accuracy when a covariance's
  eigenvalues span more than ~1/eps: Inception features with dead (constant) channels and N close
  to d, measured in ``benchmarks/results/end_to_end.md``, give FID 575.97 in float32 for 561.64
  (float64; the peers agree to 1.3e-6).
  """
  with jax.enable_x64(True), jax.default_device(_host_device()):
    return float(frechet_distance(np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
                                  np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)))


def float64_kid(features1, features2, **kwargs):
  """:func:`jaxmetrics.kid` in float64: ``(mean, std)`` as floats, what ``evaluate`` and the CLI report.

  MMD² is a difference of kernel means hundreds to thousands of times its size, so float32 sums
  leave relative errors that grow with the subset size. Measured on an H100 with random-weight
  features, 2560 vs 2560 in one subset (``benchmarks/results/agreement_gpu.md``): float32 was 1.8e-3
  from the float64 textbook value, torchmetrics 3.7e-5. Runs on the GPU where JAX has one (float64
  products at tens of TFLOP/s on an H100), otherwise on the host CPU, like
  :func:`host_frechet_distance` (TPUs emulate float64). Keyword arguments are ``kid``'s.
  """
  device = jax.devices()[0]
  with jax.enable_x64(True), jax.default_device(device if device.platform == "gpu" else
                                                _host_device()):
    mean, std = _kid(np.asarray(features1, np.float64), np.asarray(features2, np.float64), **kwargs)
  return float(mean), float(std)


def fid(a, b, **kwargs):
  """FID between two sources (folders, arrays, array files, saved statistics).

  Keyword arguments are those of :func:`evaluate` (``params=``, ``weights=``, ``resize=``, …)::

    jaxmetrics.fid(real_images, fake_images, params=params)   # two (N, H, W, 3) arrays
  """
  return evaluate(a, b, metrics=("fid",), **kwargs)["fid"]


def save_statistics(source, path, **kwargs):
  """Computes the FID statistics of ``source`` and writes them as pytorch-fid's ``.npz``.

  Keyword arguments are those of :class:`Evaluator`. Returns the :class:`SourceStatistics`.
  """
  from jaxmetrics.metrics.statistics import save_stats
  stats = Evaluator(**kwargs).statistics(source)
  save_stats(path, stats.mu, stats.sigma)
  return stats


def _check_metrics(metrics, two_sources):
  if isinstance(metrics, str):
    metrics = tuple(m.strip() for m in metrics.split(","))
  unknown = [m for m in metrics if m not in METRICS]
  if unknown or not metrics:
    raise InputError(f"metrics: expected some of {', '.join(METRICS)}, got {', '.join(metrics) or 'none'}")
  if not two_sources and set(metrics) - {"is"}:
    raise InputError(f"metrics: {', '.join(sorted(set(metrics) - {'is'}))} compare two sources, "
                     "got one")
  return tuple(dict.fromkeys(metrics))


def _warn_if_few(*stats):
  for s in stats:
    if s.count is not None and s.count < TRUSTWORTHY_SAMPLES:
      warnings.warn(f"{s.name}: {s.count} samples is fewer than the 2048 feature dimensions: the "
                    "covariance is singular and FID is strongly biased upwards; use 10,000 or more "
                    "samples for numbers comparable with published ones", stacklevel=3)


def _describe(source):
  if isinstance(source, (str, os.PathLike)):
    return os.fspath(source)
  shape = getattr(source, "shape", None)
  if shape is not None:
    return f"array{tuple(shape)}"
  return type(source).__name__


def _saved_statistics(source):
  """``(mu, sigma, has_images)`` if ``source`` is an ``.npz`` holding ``mu`` and ``sigma``."""
  if not isinstance(source, (str, os.PathLike)):
    return None
  path = pathlib.Path(source)
  if path.suffix.lower() != ".npz" or not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as data:
      files = set(data.files)
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: expected an .npz of images or statistics, cannot read it ({e})") from None
  if not {"mu", "sigma"} <= files:
    return None
  mu, sigma = load_stats(path)
  if mu.shape != (inception.POOL3_DIM,):
    raise InputError(f"{path}: expected FID statistics of the {inception.POOL3_DIM}-d pool3 "
                     f"features, got mu of shape {mu.shape}")
  return mu, sigma, "arr_0" in files


def _content_digest(source):
  """sha256 of what a source holds, or ``None`` when it cannot be known in advance (iterables)."""
  digest = hashlib.sha256()
  if isinstance(source, sources.Source):
    return None
  if isinstance(source, (str, os.PathLike)):
    path = pathlib.Path(source)
    if path.is_dir():
      for file in sources.list_images(path):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        _hash_file(digest, file)
      return "folder:" + digest.hexdigest()
    if path.is_file():
      _hash_file(digest, path)
      return "file:" + digest.hexdigest()
    return None
  if isinstance(source, (np.ndarray, jax.Array)):
    array = np.ascontiguousarray(np.asarray(source))
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return "array:" + digest.hexdigest()
  return None


def _params_digest(params):
  """sha256 over the parameter paths, shapes, dtypes and bytes (host copies of device arrays)."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
  return digest.hexdigest()


def _hash_file(digest, path, chunk=1 << 20):
  with open(path, "rb") as f:
    while block := f.read(chunk):
      digest.update(block)


def _read_entry(entry, name, need_features, need_inception_score):
  try:
    with np.load(entry, allow_pickle=False) as data:
      if need_features and "features" not in data.files:
        return None
      if need_inception_score and "inception_score" not in data.files:
        return None
      return SourceStatistics(
          name, int(data["count"]), data["mu"], data["sigma"],
          data["features"] if need_features else None,
          tuple(float(v) for v in data["inception_score"]) if "inception_score" in data.files else None,
          cached=True)
  except (OSError, ValueError, KeyError):
    return None  # a damaged entry is recomputed and overwritten


def _write_entry(entry, stats):
  arrays = {"mu": stats.mu, "sigma": stats.sigma, "count": np.int64(stats.count)}
  if stats.features is not None:
    arrays["features"] = stats.features
  if stats.inception_score is not None:
    arrays["inception_score"] = np.asarray(stats.inception_score)
  try:
    entry.parent.mkdir(parents=True, exist_ok=True)
    save_npz_atomic(entry, **arrays)
  except OSError as e:
    warnings.warn(f"{entry}: cannot write the statistics cache ({e.strerror or e})", stacklevel=3)
