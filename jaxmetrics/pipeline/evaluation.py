"""Metrics of image sources in one call: from two folders of images to the numbers.

A source is an image folder, an ``.npy``/``.npz`` image array (guided-diffusion's ``arr_0`` batches
too), an in-memory ``(N, H, W, 3)`` array, an iterable of batches, or a saved statistics file
(``.npz`` with ``mu`` and ``sigma``: pytorch-fid's, clean-fid's, guided-diffusion's reference
batches, or ``jaxmetrics stats``; ``mu_s`` and ``sigma_s`` too for sFID). One feature pass per
source feeds every requested metric.

Metrics (:data:`METRICS`), each asking the pass for what it needs of each source: the Gaussian
statistics of a feature (``fid``: ``pool3``; ``sfid``: ``spatial``, guided-diffusion's
``mixed_6/conv`` feature), the Inception Score state (``is``, of the first source), or every row of
a feature (``kid``, ``precision``, ``recall``, ``density``, ``coverage``: ``pool3``). The first
source is the generated set and the second the reference (torch-fidelity's input1/input2 order):
precision is the share of generated samples inside the reference manifold, recall the share of
reference samples inside the generated one (:mod:`jaxmetrics.metrics.manifold`).

Statistics cache. What a pass computed for a source is kept in ``cache_dir()/stats`` under a key
made of the source's *content* (the sha256 of every file's bytes and relative path for a folder, of
the file for an array file, of the data for an in-memory array), of the network and its weights'
sha256, and of every setting that changes the numbers: the resize mode, the precision, the sample
count, the host-side image size and the IS splits. Re-running against the same reference therefore
skips extraction; a changed file or setting makes a new entry. Iterables are never cached (their
content is not known in advance). In a multi-process run the processes decide together: the cache
is used only when every process finds the entry (per-host caches may differ), and every process
writes its own.

Example::

  import jaxmetrics
  jaxmetrics.fid("real/", "fake/")                        # one number
  jaxmetrics.evaluate("fake/", "ref.npz", metrics=("fid", "sfid", "precision", "recall"))
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import warnings

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxmetrics.pipeline import extract as _extract
from jaxmetrics.networks import inception
from jaxmetrics.pipeline import sources
from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import InputError
from jaxmetrics._io import save_npz_atomic
from jaxmetrics.metrics import manifold
from jaxmetrics.metrics.frechet import frechet_distance
from jaxmetrics.metrics.inception_score import InceptionScoreState
from jaxmetrics.metrics.kid import kid as _kid
from jaxmetrics.metrics.statistics import FeatureStats
from jaxmetrics.metrics.statistics import load_stats


@dataclasses.dataclass(frozen=True)
class Metric:
  """What a metric needs of each source's feature pass.

  Attributes:
    name: the key in :func:`evaluate`'s result and on the command line.
    gaussian: the feature whose mean and covariance both sources need, or ``None``.
    rows: the feature whose every row both sources need, or ``None``.
    scores: whether it needs the first source's Inception Score state.
    two_sources: whether it compares two sources.
  """
  name: str
  gaussian: str | None = None
  rows: str | None = None
  scores: bool = False
  two_sources: bool = True


METRICS = {m.name: m for m in (
    Metric("fid", gaussian="pool3"),
    Metric("sfid", gaussian="spatial"),
    Metric("is", scores=True, two_sources=False),
    Metric("kid", rows="pool3"),
    Metric("precision", rows="pool3"),
    Metric("recall", rows="pool3"),
    Metric("density", rows="pool3"),
    Metric("coverage", rows="pool3"),
)}
# Below this many samples the 2048×2048 covariance is singular and FID strongly biased; the
# literature reports FID on 10k–50k samples.
TRUSTWORTHY_SAMPLES = 2048
# Saved-statistics keys of each Gaussian feature: pytorch-fid's mu/sigma and guided-diffusion's
# reference batches' mu_s/sigma_s (evaluations/evaluator.py: read_statistics).
SAVED_KEYS = {"pool3": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
_CACHE_FORMAT = 2


@dataclasses.dataclass(frozen=True)
class Needs:
  """What one source's pass must produce: Gaussian statistics, kept rows, the IS state."""
  gaussians: frozenset = frozenset()
  rows: frozenset = frozenset()
  scores: bool = False

  def __or__(self, other):
    return Needs(self.gaussians | other.gaussians, self.rows | other.rows,
                 self.scores or other.scores)

  def __le__(self, other):
    return (self.gaussians <= other.gaussians and self.rows <= other.rows
            and (other.scores or not self.scores))

  @classmethod
  def of(cls, metrics, first):
    """The needs of ``metrics`` on the first source (``first``) or the second."""
    return cls(frozenset(m.gaussian for m in metrics if m.gaussian),
               frozenset(m.rows for m in metrics if m.rows),
               first and any(m.scores for m in metrics))


@dataclasses.dataclass(frozen=True)
class SourceStatistics:
  """What one source contributes to the metrics.

  Attributes:
    name: how the source was given (a path, or a description of an array).
    count: number of images, or ``None`` for saved statistics (their files do not record it).
    gaussians: feature → ``(mu (d,), sigma (d, d))``, float64 (mean and unbiased covariance).
    rows: feature → ``(count, d)`` float32 rows, for the metrics that need them.
    inception_score: ``(mean, std)`` when the pass computed it, else ``None``.
    cached: whether the numbers came from the statistics cache.
  """
  name: str
  count: int | None
  gaussians: dict
  rows: dict = dataclasses.field(default_factory=dict)
  inception_score: tuple | None = None
  cached: bool = False

  @property
  def mu(self):
    """The pool3 mean (FID)."""
    return self.gaussians["pool3"][0]

  @property
  def sigma(self):
    """The pool3 covariance (FID)."""
    return self.gaussians["pool3"][1]

  @property
  def features(self):
    """The pool3 rows (KID and the k-NN metrics), or ``None``."""
    return self.rows.get("pool3")

  def holds(self):
    """The :class:`Needs` these statistics satisfy."""
    return Needs(frozenset(self.gaussians), frozenset(self.rows), self.inception_score is not None)


class Evaluator:
  """Loads the weights once and computes (or reads from the cache) the statistics of sources.

  Args:
    weights: an Inception checkpoint path; ``None`` uses (and downloads once) the official file.
    check_hash: verify the weights' sha256 against the registry; ``False`` for custom weights.
    params: parameters already loaded (:func:`jaxmetrics.load_params`), used instead of
      ``weights``; the cache then keys them by the sha256 of their arrays.
    resize, precision, batch_size, num_samples, image_size, splits, split_size: as in
      :func:`jaxmetrics.pipeline.extract.extract`.
    cache: read and write the statistics cache (see the module docstring).
    progress: show progress bars.
  """

  def __init__(self, *, weights=None, check_hash=True, params=None, resize="tf1",
               precision="highest", batch_size=None, num_samples=None, image_size=None, splits=10,
               split_size=None, cache=True, progress=True):
    # The weights are resolved (downloaded, hashed) when first needed, by a feature pass or a
    # cache key: FID between two saved statistics files needs no network and works offline.
    self.network = inception.NETWORK
    self._weights, self._check_hash = weights, check_hash
    self.weights_path = None
    self._sha256 = None if params is None else "params:" + _params_digest(params)
    self._params = params
    self.settings = dict(resize=self.network.check_resize(resize), precision=precision,
                         num_samples=num_samples,
                         image_size=None if image_size is None else list(image_size),
                         splits=splits, split_size=split_size)
    self._batch_size = batch_size
    self._cache = cache
    self._progress = progress
    self._saved = {}

  @property
  def weights_sha256(self):
    """sha256 of the weights file (``"params:<digest>"`` for given params); resolves it once."""
    if self._sha256 is None:
      self.weights_path, self._sha256 = self.network.weights_file(
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
      self._params = self.network.load_weights_file(self.weights_path, sha256)
    return self._params

  def check(self, source, needs=Needs(), *, why=None):
    """Cheap checks before any feature pass: a path exists, saved statistics hold what is needed.

    Args:
      source: the source.
      needs: the :class:`Needs` of the metrics asked for.
      why: metric name per need, for messages (e.g. ``{"rows:pool3": "precision"}``).

    Returns:
      The saved statistics (``SourceStatistics``, with ``rows`` empty) and whether the file also
      holds images (``arr_0``), or ``None`` for a source that is not a statistics file.
    """
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
      raise InputError(f"{os.fspath(source)}: no such file or folder")
    # evaluate() checks every source before any pass and statistics() checks again: read and
    # validate a saved .npz (a 2048×2048 float64 matrix) once per path.
    key = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if key is not None and key in self._saved:
      saved = self._saved[key]
    else:
      saved = _saved_statistics(source, self.network)
      if key is not None:
        self._saved[key] = saved
    if saved is not None and not saved[1] and not needs <= saved[0].holds():
      missing = _missing(needs, saved[0].holds(), why or {})
      raise InputError(f"{_describe(source)}: {missing}, but the file holds only saved statistics "
                       f"({', '.join(_saved_names(saved[0]))}) and no images (arr_0)")
    return saved

  def statistics(self, source, needs=Needs(frozenset({"pool3"})), **legacy):
    """The :class:`SourceStatistics` of ``source``, from a saved file, the cache or a pass."""
    if legacy:  # statistics(source, need_features=..., need_inception_score=...)
      needs = needs | Needs(frozenset(), frozenset({"pool3"} if legacy.get("need_features") else ()),
                            bool(legacy.get("need_inception_score")))
    name = _describe(source)
    saved = self.check(source, needs)
    if saved is not None and needs <= saved[0].holds():
      return saved[0]
    key = self._cache_key(source)
    if saved is not None:
      source = sources.open_source(source, key="arr_0")  # guided-diffusion's reference batch
    entry = self._cache_dir() / f"{key}.npz" if key else None
    cached = _read_entry(entry, name) if entry is not None and entry.is_file() else None
    hit = cached is not None and needs <= cached.holds()
    if _agree_all(hit) if key is not None else hit:
      return _prefer_saved(cached, saved)
    if cached is not None:
      needs = needs | cached.holds()  # the new entry keeps what the old one had
    out = self._pass(source, name, needs)
    if entry is not None:
      _write_entry(entry, out)
    return _prefer_saved(out, saved)

  def _pass(self, source, name, needs):
    """One feature pass computing ``needs`` (and the IS state, cheap, whenever it is defined)."""
    network, splits = self.network, self.settings["splits"]
    states = {f"gaussian:{f}": (f, FeatureStats.empty(network.features[f]))
              for f in sorted(needs.gaussians | {"pool3"})}
    if self.settings["split_size"] is not None:
      n = self.settings["num_samples"] or _known_rows(source)
      if n is None:
        raise InputError(f"{name}: an Inception Score over parts of {self.settings['split_size']} "
                         "images needs a known number of images: pass num_samples")
      splits = -(-n // self.settings["split_size"])
    states["inception_score"] = ("logits_unbiased",
                                 InceptionScoreState.empty(inception.NUM_CLASSES, splits))
    result = _extract.extract(
        source, self.params, network=network, states=states, batch_size=self._batch_size,
        resize=self.settings["resize"], precision=self.settings["precision"],
        num_samples=self.settings["num_samples"], keep_features=tuple(sorted(needs.rows)) or False,
        split_size=self.settings["split_size"], image_size=self.settings["image_size"],
        progress=self._progress)
    if result.count < 2:
      raise InputError(f"{name}: expected at least 2 images for feature statistics, got "
                       f"{result.count}")
    score_state = result.states["inception_score"]
    if needs.scores and result.count < score_state.splits:
      raise InputError(f"{name}: the Inception Score needs at least {score_state.splits} images "
                       f"(one per split), got {result.count}")
    # The IS state comes with every pass: keep its result in the cache whenever it is defined
    # (unreadable files can leave a split empty).
    score = score_state.compute() if np.all(np.asarray(score_state.num) > 0) else None
    gaussians = {key.split(":", 1)[1]: (np.asarray(s.mean, np.float64),
                                        np.asarray(s.covariance(), np.float64))
                 for key, s in result.states.items() if key.startswith("gaussian:")}
    return SourceStatistics(name, result.count, gaussians,
                            {f: result.outputs[f] for f in needs.rows},
                            None if score is None else tuple(float(v) for v in score))

  def _cache_dir(self):
    return weights.cache_dir() / "stats"

  def _cache_key(self, source):
    if not self._cache:
      return None
    content = _content_digest(source)
    if content is None:
      return None
    _agree_on_content(content, _describe(source))
    settings = dict(self.settings, content=content, network=self.network.name,
                    weights=self.weights_sha256, format=_CACHE_FORMAT)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def evaluate(a, b=None, *, metrics=("fid",), params=None, weights=None, check_hash=True,
             resize="tf1", precision="highest", batch_size=None, num_samples=None,
             image_size=None, splits=10, is_split_size=None, kid_subsets=100, kid_subset_size=1000,
             pr_k=3, dc_k=5, cache=True, progress=False):
  """Computes several metrics from one feature pass per source.

  Args:
    a: the first source: the generated images (IS is of ``a``; precision is the share of ``a``
      inside ``b``'s manifold).
    b: the second source, the reference (real images or reference statistics), for the metrics
      that compare two sources.
    metrics: names from :data:`METRICS` (``"fid"``, ``"sfid"``, ``"is"``, ``"kid"``,
      ``"precision"``, ``"recall"``, ``"density"``, ``"coverage"``), a tuple or a comma-separated
      string.
    params, weights, check_hash, resize, precision, batch_size, num_samples, image_size, splits,
      cache, progress: see :class:`Evaluator`.
    is_split_size: IS over parts of this many images in source order, the last one shorter
      (guided-diffusion's evaluator: 5000), instead of ``splits`` equal parts.
    kid_subsets, kid_subset_size: see :func:`jaxmetrics.kid`.
    pr_k: neighbours for precision/recall (3, as guided-diffusion and torch-fidelity).
    dc_k: neighbours for density/coverage (5, as the ``prdc`` package's example).

  Returns:
    A dict: ``fid``, ``sfid``, ``precision``, ``recall``, ``density``, ``coverage`` as floats;
    ``is_mean``/``is_std``; ``kid_mean``/``kid_std``, as asked, with the sample counts ``n1`` (and
    ``n2``; ``None`` for saved statistics), the weights' sha256 (``None`` when every source was
    saved statistics, which needs no weights), the resize mode and, per source, whether the
    statistics cache was used. Fréchet distances and KID are computed in float64 on the host CPU
    (:func:`host_frechet_distance`, :func:`float64_kid`) from statistics accumulated in float32 on
    the devices.

  Raises:
    InputError: bad options, or sources that cannot give what is asked (a statistics file without
      images for a metric that needs rows, too few images for IS splits, KID subsets or k
      neighbours), before any feature pass.
  """
  chosen = _check_metrics(metrics, two_sources=b is not None)
  for name, value in (("pr_k", pr_k), ("dc_k", dc_k)):
    _extract._check_positive(name, value)
  evaluator = Evaluator(weights=weights, check_hash=check_hash, params=params, resize=resize,
                        precision=precision, batch_size=batch_size, num_samples=num_samples,
                        image_size=image_size, splits=splits, split_size=is_split_size,
                        cache=cache, progress=progress)
  why = {}
  for m in chosen:
    why.setdefault(f"gaussian:{m.gaussian}", m.name)
    why.setdefault(f"rows:{m.rows}", m.name)
    why.setdefault("scores", m.name)
  needs = [(a, Needs.of(chosen, first=True))]
  if b is not None:
    needs.append((b, Needs.of(chosen, first=False)))
  minimum = _minimum_counts(chosen, splits, is_split_size, kid_subset_size, pr_k, dc_k)
  for source, need in needs:  # fail on bad input before any feature pass: files first, then counts
    evaluator.check(source, need, why=why)
  for source, need in needs:
    _check_count(source, need, minimum, num_samples)
  first = evaluator.statistics(a, needs[0][1])
  results = {"n1": first.count, "resize": evaluator.settings["resize"], "cached": [first.cached]}
  names = {m.name for m in chosen}
  if "is" in names:
    results["is_mean"], results["is_std"] = first.inception_score
  if b is not None:
    second = evaluator.statistics(b, needs[1][1])
    results["n2"] = second.count
    results["cached"].append(second.cached)
    for m in chosen:
      if m.gaussian is not None:
        if m.gaussian == "pool3":
          _warn_if_few(first, second)
        results[m.name] = host_frechet_distance(*first.gaussians[m.gaussian],
                                                *second.gaussians[m.gaussian])
    if "kid" in names:
      results["kid_mean"], results["kid_std"] = float64_kid(
          first.features, second.features, subsets=kid_subsets, subset_size=kid_subset_size)
    knn = names & {"precision", "recall", "density", "coverage"}
    if knn:
      # One cross pass serves all four (generated first, reference second).
      found = manifold.manifold_metrics(
          first.features, second.features, pr_k=pr_k if knn & {"precision", "recall"} else None,
          dc_k=dc_k if knn & {"density", "coverage"} else None)
      results.update({name: getattr(found, name) for name in sorted(knn)})
  # None when every source was saved statistics: no weights were needed, none are reported.
  results["weights_sha256"] = evaluator.weights_sha256 if evaluator.weights_resolved else None
  return results


def _prefer_saved(stats, saved):
  """A reference batch's saved statistics win over those of its images, as in guided-diffusion's
  ``Evaluator.read_statistics`` (it reads ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` when present)."""
  if saved is None:
    return stats
  return dataclasses.replace(stats, gaussians={**stats.gaussians, **saved[0].gaussians})


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
  """Computes the FID and sFID statistics of ``source`` and writes them as an ``.npz``.

  ``mu``, ``sigma`` (pool3: pytorch-fid's, clean-fid's and TTUR's format) and ``mu_s``,
  ``sigma_s`` (the sFID feature, as guided-diffusion's reference batches hold them), float64.
  Keyword arguments are those of :class:`Evaluator`. Returns the :class:`SourceStatistics`.
  """
  from jaxmetrics.metrics.statistics import save_stats
  stats = Evaluator(**kwargs).statistics(source, Needs(frozenset(SAVED_KEYS)))
  save_stats(path, stats.mu, stats.sigma, extra={
      key: value for feature, (mu_key, sigma_key) in SAVED_KEYS.items() if feature != "pool3"
      for key, value in zip((mu_key, sigma_key), stats.gaussians[feature])})
  return stats


def _check_metrics(metrics, two_sources):
  if isinstance(metrics, str):
    metrics = tuple(m.strip() for m in metrics.split(","))
  metrics = tuple(dict.fromkeys(metrics))
  unknown = [m for m in metrics if m not in METRICS]
  if unknown or not metrics:
    raise InputError(f"metrics: expected some of {', '.join(METRICS)}, got "
                     f"{', '.join(map(str, metrics)) or 'none'}")
  chosen = tuple(METRICS[m] for m in metrics)
  pairwise = [m.name for m in chosen if m.two_sources]
  if not two_sources and pairwise:
    raise InputError(f"metrics: {', '.join(sorted(pairwise))} compare two sources, got one")
  return chosen


def _minimum_counts(chosen, splits, split_size, kid_subset_size, pr_k, dc_k):
  """The fewest images each source needs, per reason: ``[(count, reason, first_only)]``."""
  names = {m.name for m in chosen}
  minimum = [(2, "feature statistics need at least 2 images", False)]
  if "is" in names and split_size is None:
    minimum.append((splits, f"the Inception Score needs at least {splits} images (one per split)",
                    True))
  if "kid" in names:
    minimum.append((kid_subset_size, f"KID draws subsets of {kid_subset_size} images (a smaller "
                    "kid_subset_size draws fewer)", False))
  if names & {"precision", "recall"}:
    minimum.append((pr_k + 1, f"precision/recall need more than k = {pr_k} images (the k-th "
                    "neighbour of each)", False))
  if names & {"density", "coverage"}:
    minimum.append((dc_k + 1, f"density/coverage need more than k = {dc_k} images (the k-th "
                    "neighbour of each)", False))
  return minimum


def _check_count(source, needs, minimum, num_samples):
  """Checks a source's known image count, and ``num_samples`` against it, before its pass."""
  known = _known_rows(source)
  if (num_samples is not None and known is not None and num_samples > known
      and not getattr(source, "per_process", False)):
    raise InputError(f"num_samples: expected at most {known}, the images of {_describe(source)}, "
                     f"got {num_samples}")
  n = num_samples if num_samples is not None else known
  if n is None:
    return
  first = needs.scores
  for count, reason, first_only in minimum:
    if (first or not first_only) and n < count:
      raise InputError(f"{_describe(source)}: {reason}, got {n}")


def _known_rows(source):
  """The number of images of a source when it is known without reading the images, else None."""
  if isinstance(source, sources.Source):
    return source.num_samples
  if isinstance(source, (str, os.PathLike)):
    text = os.fspath(source)
    if text.startswith("tfds:"):
      return None
    path = pathlib.Path(text)
    if path.is_dir():
      return len(sources.list_images(path))
    if path.suffix.lower() in (".npy", ".npz") and path.is_file():
      try:
        with sources.open_source(path) as opened:
          return opened.num_samples
      except InputError:
        return None  # a statistics file without images; check() has reported what it lacks
    return None
  shape = getattr(source, "shape", None)
  return int(shape[0]) if shape is not None and len(shape) == 4 else None


_LABELS = {"fid": "FID", "sfid": "sFID", "is": "IS", "kid": "KID"}


def _missing(needs, held, why):
  label = lambda key, default: _LABELS.get(why.get(key), why.get(key, default))
  missing = [f"{label(f'gaussian:{f}', 'a Fréchet distance')} needs the statistics of {f}"
             for f in sorted(needs.gaussians - held.gaussians)]
  missing += [f"{label(f'rows:{f}', 'a k-NN or kernel metric')} needs {f} features of every image"
              for f in sorted(needs.rows - held.rows)]
  if needs.scores and not held.scores:
    missing.append(f"{label('scores', 'IS')} needs logits of every image")
  return "; ".join(missing)


def _saved_names(saved):
  return [key for feature in saved.gaussians for key in SAVED_KEYS[feature]]


def _warn_if_few(*stats):
  for s in stats:
    if s.count is not None and s.count < TRUSTWORTHY_SAMPLES:
      warnings.warn(f"{s.name}: {s.count} samples is fewer than the 2048 feature dimensions: the "
                    "covariance is singular and FID is strongly biased upwards; use 10,000 or more "
                    "samples for numbers comparable with published ones", stacklevel=3)


def _agree_all(flag):
  """Whether ``flag`` holds on every process (a collective in a multi-process run)."""
  if jax.process_count() == 1:
    return flag
  flags = np.asarray(multihost_utils.process_allgather(np.int32(bool(flag))))
  return bool(flags.all())


def _agree_on_content(content, name):
  """Every process must have the same data under one source name: compares the digests."""
  if jax.process_count() == 1:
    return
  digest = np.frombuffer(hashlib.sha256(content.encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  differs = np.flatnonzero((digests != digests[0]).any(axis=1))
  if differs.size:
    raise InputError(f"{name}: every process must see the same data, but the content of process "
                     f"{int(differs[0])} (sha256 {digests[differs[0]].tobytes().hex()[:12]}…) differs "
                     f"from that of process 0 ({digests[0].tobytes().hex()[:12]}…)")


def _saved_statistics(source, network):
  """``(SourceStatistics, has_images)`` if ``source`` is an ``.npz`` holding ``mu`` and ``sigma``."""
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
  gaussians = {}
  for feature, (mu_key, sigma_key) in SAVED_KEYS.items():
    if {mu_key, sigma_key} <= files:
      mu, sigma = load_stats(path, keys=(mu_key, sigma_key))
      if mu.shape != (network.features[feature],):
        raise InputError(f"{path}: expected {mu_key} of the {network.features[feature]}-d "
                         f"{feature} features, got {mu_key} of shape {mu.shape}")
      gaussians[feature] = (mu, sigma)
  return SourceStatistics(os.fspath(source), None, gaussians), "arr_0" in files


def _describe(source):
  if isinstance(source, (str, os.PathLike)):
    return os.fspath(source)
  shape = getattr(source, "shape", None)
  if shape is not None:
    return f"array{tuple(shape)}"
  return type(source).__name__


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


def _read_entry(entry, name):
  """The cached :class:`SourceStatistics` in ``entry``, or ``None`` if it cannot be read."""
  try:
    with np.load(entry, allow_pickle=False) as data:
      files = set(data.files)
      gaussians = {key[:-3]: (data[key], data[key[:-3] + ".sigma"]) for key in files
                   if key.endswith(".mu")}
      rows = {key[:-5]: data[key] for key in files if key.endswith(".rows")}
      score = (tuple(float(v) for v in data["inception_score"]) if "inception_score" in files
               else None)
      return SourceStatistics(name, int(data["count"]), gaussians, rows, score, cached=True)
  except (OSError, ValueError, KeyError):
    return None  # a damaged entry is recomputed and overwritten


def _write_entry(entry, stats):
  arrays = {"count": np.int64(stats.count)}
  for feature, (mu, sigma) in stats.gaussians.items():
    arrays[f"{feature}.mu"], arrays[f"{feature}.sigma"] = mu, sigma
  for feature, rows in stats.rows.items():
    arrays[f"{feature}.rows"] = rows
  if stats.inception_score is not None:
    arrays["inception_score"] = np.asarray(stats.inception_score)
  try:
    entry.parent.mkdir(parents=True, exist_ok=True)
    save_npz_atomic(entry, **arrays)
  except OSError as e:
    warnings.warn(f"{entry}: cannot write the statistics cache ({e.strerror or e})", stacklevel=3)
