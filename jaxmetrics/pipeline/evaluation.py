"""Metrics of image sources in one call: from two folders of images to the numbers.

A source is an image folder, an ``.npy``/``.npz`` image array (guided-diffusion's ``arr_0`` batches
too), an in-memory ``(N, H, W, 3)`` array, an iterable of batches, or a saved statistics file
(``.npz`` with ``mu`` and ``sigma``: pytorch-fid's, clean-fid's, guided-diffusion's reference
batches, or ``jaxmetrics stats``; ``mu_s`` and ``sigma_s`` too for sFID). One feature pass per
source feeds every requested metric, in every feature space they ask for.

Feature spaces (:data:`SPACES`): ``"inception"`` (the FID Inception-v3), ``"dinov2"`` (DINOv2
ViT-L/14, dgm-eval's FD_DINOv2 network) and ``"clip"`` (CLIP ViT-L/14@336px, CMMD's). Metrics
(:data:`METRICS`) each ask the pass for what they need of each source in one space: the Gaussian
statistics of a feature (``fid``: ``pool3``; ``sfid``: ``spatial``, guided-diffusion's
``mixed_6/conv`` feature; ``fd_dinov2``: DINOv2's ``cls``), the Inception Score state (``is``, of
the first source), or every row of a feature (``kid``, ``precision``, ``recall``, ``density``,
``coverage``: ``pool3``; their ``_dinov2`` variants: ``cls``; ``cmmd``: CLIP's
``clip_embedding``). When metrics of several spaces are asked for, their networks run together
on each batch (:func:`jaxmetrics.networks.base.combine`): every source is read once. The first
source is the generated set and the second the reference (torch-fidelity's input1/input2 order):
precision is the share of generated samples inside the reference manifold, recall the share of
reference samples inside the generated one (:mod:`jaxmetrics.metrics.manifold`).

Statistics cache. What a pass computed for a source in one space is kept in ``cache_dir()/stats``
under a key made of the source's *content* (the sha256 of every file's bytes and relative path for
a folder, of the file for an array file, of the data for an in-memory array), of the network and
its weights' sha256, of where it ran (JAX backend and device kind: ``precision="default"`` is
float32 on CPUs, TF32 on GPUs and bfloat16 passes on TPUs), of the jaxmetrics version, and of the
settings that change what is stored: the resize mode, the precision, the sample count, the
host-side image size, and for Inception the IS splits. Re-running against the same reference
therefore skips extraction; a changed file or setting makes a new entry (``jaxmetrics cache
info|clear`` show and empty it). Iterables are never cached (their content is not known in
advance). In a multi-process run the processes decide together: an entry is used only when every
process finds it (per-host caches may differ), and every process writes its own.

Example::

  import jaxmetrics
  jaxmetrics.fid("real/", "fake/")                        # one number
  jaxmetrics.evaluate("fake/", "ref.npz", metrics=("fid", "sfid", "precision", "recall"))
  jaxmetrics.evaluate("fake/", "real/", metrics=("fid", "fd_dinov2", "cmmd"),
                      dinov2="dinov2_vitl14_pretrain.pth")
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import warnings

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxmetrics.pipeline import extract as _extract
from jaxmetrics.networks import base
from jaxmetrics.networks import clip as _clip
from jaxmetrics.networks import dinov2 as _dinov2
from jaxmetrics.networks import inception
from jaxmetrics.pipeline import sources
from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import InputError
from jaxmetrics._io import save_npz_atomic
from jaxmetrics.metrics import manifold
from jaxmetrics.metrics.frechet import frechet_distance
from jaxmetrics.metrics.inception_score import InceptionScoreState
from jaxmetrics.metrics.kid import kid as _kid
from jaxmetrics.metrics.mmd import cmmd as _cmmd
from jaxmetrics.metrics.statistics import FeatureStats
from jaxmetrics.metrics.statistics import load_stats

SPACES = {"inception": inception.NETWORK, "dinov2": _dinov2.NETWORK, "clip": _clip.CMMD_NETWORK}
"""Feature space → the :class:`~jaxmetrics.networks.base.FeatureNetwork` that defines it."""
_SPACE_LABELS = {"inception": "Inception", "dinov2": "DINOv2", "clip": "CLIP"}


@dataclasses.dataclass(frozen=True)
class Metric:
  """What a metric needs of each source's feature pass.

  Attributes:
    name: the key in :func:`evaluate`'s result and on the command line.
    space: the feature space (:data:`SPACES`) whose network computes its feature.
    gaussian: the feature whose mean and covariance both sources need, or ``None``.
    rows: the feature whose every row both sources need, or ``None``.
    scores: whether it needs the first source's Inception Score state.
    two_sources: whether it compares two sources.
  """
  name: str
  space: str = "inception"
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
    Metric("fd_dinov2", space="dinov2", gaussian="cls"),
    Metric("kid_dinov2", space="dinov2", rows="cls"),
    Metric("precision_dinov2", space="dinov2", rows="cls"),
    Metric("recall_dinov2", space="dinov2", rows="cls"),
    Metric("density_dinov2", space="dinov2", rows="cls"),
    Metric("coverage_dinov2", space="dinov2", rows="cls"),
    Metric("cmmd", space="clip", rows=_clip.CMMD_FEATURE),
)}
# Saved-statistics keys of each Gaussian feature: pytorch-fid's mu/sigma and guided-diffusion's
# reference batches' mu_s/sigma_s (evaluations/evaluator.py: read_statistics).
SAVED_KEYS = {"pool3": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
_CACHE_FORMAT = 3


@dataclasses.dataclass(frozen=True)
class Needs:
  """What one source's pass must produce in one space: Gaussian statistics, kept rows, IS."""
  gaussians: frozenset = frozenset()
  rows: frozenset = frozenset()
  scores: bool = False

  def __or__(self, other):
    return Needs(self.gaussians | other.gaussians, self.rows | other.rows,
                 self.scores or other.scores)

  def __le__(self, other):
    return (self.gaussians <= other.gaussians and self.rows <= other.rows
            and (other.scores or not self.scores))

  def __bool__(self):
    return bool(self.gaussians or self.rows or self.scores)

  @classmethod
  def of(cls, metrics, first):
    """The needs of ``metrics`` on the first source (``first``) or the second."""
    return cls(frozenset(m.gaussian for m in metrics if m.gaussian),
               frozenset(m.rows for m in metrics if m.rows),
               first and any(m.scores for m in metrics))

  @classmethod
  def by_space(cls, metrics, first):
    """``{space: Needs}`` of ``metrics`` on one source, for the spaces it needs anything of (the
    second source needs no Inception pass for the Inception Score of the first)."""
    spaces = dict.fromkeys(m.space for m in metrics)
    needs = {space: cls.of([m for m in metrics if m.space == space], first) for space in spaces}
    return {space: need for space, need in needs.items() if need}


@dataclasses.dataclass(frozen=True)
class SourceStatistics:
  """What one source contributes to the metrics of one feature space.

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


class _Space:
  """One feature space of an :class:`Evaluator`: its network, weights and resize mode.

  The weights are resolved (downloaded, hashed) when first needed, by a feature pass or a cache
  key, then read once and replicated on every device once for all passes. The DINOv2 and CLIP
  spaces take the architecture of the checkpoint given (``load``: path → ``(network, params)``),
  as dgm-eval runs any DINOv2 size; their metrics are defined on ViT-L/14 and ViT-L/14@336px.
  """

  def __init__(self, key, network, weights_path, check_hash, resize, params, progress, load=None):
    self.key, self.network = key, network
    self._weights, self._check_hash, self._progress = weights_path, check_hash, progress
    self._load = load
    self.resize = network.check_resize(resize)
    self.weights_path = None
    self._sha256 = None if params is None else "params:" + _params_digest(params)
    self._params, self._placed = params, False

  @property
  def sha256(self):
    if self._sha256 is None:
      self.weights_path, self._sha256 = self.network.weights_file(
          self._weights, check_hash=self._check_hash, progress=self._progress)
    return self._sha256

  @property
  def resolved(self):
    return self._sha256 is not None

  @property
  def params(self):
    """The parameters (replicated); for a space with ``load``, ``network`` becomes the
    checkpoint's."""
    if self._params is None:
      sha256 = self.sha256  # resolves weights_path
      if self._load is None:
        self._params = self.network.load_weights_file(self.weights_path, sha256)
      else:
        self.network, self._params = self._load(self.weights_path)
    if not self._placed:
      self._params, self._placed = _extract.replicate(self._params), True
    return self._params


def _load_dinov2(path):
  model = _dinov2.load(path)
  return _dinov2.network_of(model.config), model.params


def _load_clip(path):
  model = _clip.load(path, check_hash=False, progress=False)  # weights_file checked it
  return _clip.cmmd_network(model.config), {key: model.params[key] for key in (
      "vision_model", "visual_projection")}


class Evaluator:
  """Loads each network's weights once and computes (or reads from the cache) the statistics of
  sources.

  Args:
    weights: an Inception checkpoint path; ``None`` uses (and downloads once) the official file.
    check_hash: verify the weights' sha256 against the registry (Inception and CLIP);
      ``False`` for custom weights.
    params: Inception parameters already loaded (:func:`jaxmetrics.load_params`), used instead of
      ``weights``; the cache then keys them by the sha256 of their arrays.
    resize: Inception's resize mode (``"tf1"``; see :mod:`jaxmetrics.networks.resize`).
    dinov2: the DINOv2 checkpoint for the ``"dinov2"`` space: a torch hub
      ``dinov2_vitl14_pretrain.pth`` or a Hugging Face folder (Meta publishes no sha256, so it is
      never downloaded: a path is needed). The space takes the checkpoint's architecture, as
      dgm-eval's ``--arch`` does; FD_DINOv2 as published is ViT-L/14's.
    dinov2_resize: DINOv2's preprocessing: ``"dgm-eval"`` (default), ``"edm2"`` or ``"clean"``
      (:mod:`jaxmetrics.networks.dinov2`).
    clip: the CLIP checkpoint for the ``"clip"`` space (CMMD): ``None`` downloads OpenAI's
      ``ViT-L-14-336px.pt`` once (CMMD's network), a file is checked against it unless
      ``check_hash=False``, and a Hugging Face or OpenCLIP folder is read as it is; the space
      takes the checkpoint's architecture.
    precision, batch_size, num_samples, image_size, splits, split_size: as in
      :func:`jaxmetrics.pipeline.extract.extract`.
    cache: read and write the statistics cache (see the module docstring).
    progress: show progress bars.
  """

  def __init__(self, *, weights=None, check_hash=True, params=None, resize="tf1",
               precision="highest", batch_size=None, num_samples=None, image_size=None, splits=10,
               split_size=None, cache=True, progress=True, dinov2=None, dinov2_resize="dgm-eval",
               clip=None):
    self.spaces = {
        "inception": _Space("inception", SPACES["inception"], weights, check_hash, resize, params,
                            progress),
        "dinov2": _Space("dinov2", SPACES["dinov2"], dinov2, check_hash, dinov2_resize, None,
                         progress, load=_load_dinov2),
        "clip": _Space("clip", SPACES["clip"], clip, check_hash, None, None, progress,
                       load=_load_clip)}
    self.network = self.spaces["inception"].network
    self.settings = dict(resize=self.spaces["inception"].resize, precision=precision,
                         num_samples=num_samples,
                         image_size=None if image_size is None else list(image_size),
                         splits=splits, split_size=split_size)
    self._batch_size = batch_size
    self._cache = cache
    self._progress = progress
    self._saved = {}

  @property
  def weights_sha256(self):
    """sha256 of the Inception weights file (``"params:<digest>"`` for given params)."""
    return self.spaces["inception"].sha256

  @property
  def weights_resolved(self):
    """Whether a feature pass or cache lookup needed the Inception weights (so far)."""
    return self.spaces["inception"].resolved

  @property
  def params(self):
    """The Inception parameters, read once and replicated on every device once."""
    return self.spaces["inception"].params

  def check(self, source, needs=Needs(), *, why=None):
    """Cheap checks before any feature pass: a path exists, saved statistics hold what is needed.

    Args:
      source: the source.
      needs: the Inception :class:`Needs` of the metrics asked for, or ``{space: Needs}``.
      why: metric name per need, for messages (e.g. ``{"inception:rows:pool3": "precision"}``).

    Returns:
      The saved statistics (``SourceStatistics``, with ``rows`` empty) and whether the file also
      holds images (``arr_0``), or ``None`` for a source that is not a statistics file.
    """
    needs = needs if isinstance(needs, dict) else {"inception": needs}
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
    if saved is not None and not saved[1]:
      held = {"inception": saved[0].holds()}
      missing = [_missing(space, need, held.get(space, Needs()), why or {})
                 for space, need in needs.items() if not need <= held.get(space, Needs())]
      if missing:
        raise InputError(f"{_describe(source)}: {'; '.join(missing)}, but the file holds only "
                         f"saved statistics ({', '.join(_saved_names(saved[0]))}) and no images "
                         "(arr_0)")
    return saved

  def statistics(self, source, needs=Needs(frozenset({"pool3"})), **legacy):
    """The statistics of ``source``, from a saved file, the cache or one pass.

    Args:
      source: the source.
      needs: the Inception :class:`Needs` (then the Inception :class:`SourceStatistics` is
        returned), or ``{space: Needs}`` (then ``{space: SourceStatistics}``).
    """
    if legacy:  # statistics(source, need_features=..., need_inception_score=...)
      needs = needs | Needs(frozenset(), frozenset({"pool3"} if legacy.get("need_features") else ()),
                            bool(legacy.get("need_inception_score")))
    if not isinstance(needs, dict):
      return self._statistics(source, {"inception": needs})["inception"]
    return self._statistics(source, needs)

  def _statistics(self, source, needs):
    name = _describe(source)
    saved = self.check(source, needs)
    out = {}
    if saved is not None and "inception" in needs and needs["inception"] <= saved[0].holds():
      out["inception"] = saved[0]
    wanted = {space: need for space, need in needs.items() if space not in out}
    if not wanted:
      return out
    content = self._content(source)
    entries, hits = {}, {}
    for space, need in wanted.items():
      entry = self._entry(space, content) if content is not None else None
      cached = _read_entry(entry, name) if entry is not None and entry.is_file() else None
      entries[space] = (entry, cached)
      hits[space] = cached is not None and need <= cached.holds()
    if content is not None:  # every process must take the same branch: a pass is collective
      hits = dict(zip(hits, _agree_all(list(hits.values()))))
    todo = {}
    for space, need in wanted.items():
      entry, cached = entries[space]
      if hits[space]:
        out[space] = cached
      elif cached is not None and jax.process_count() == 1:
        todo[space] = need | cached.holds()  # a new entry keeps what the old one had
      else:
        # With several processes each may hold another old entry, and the pass (its states and
        # kept features are compiled in) must be the same program on every process.
        todo[space] = need
    if todo:
      # A reference batch's images (guided-diffusion's arr_0), opened here and closed after.
      opened = sources.open_source(source, key="arr_0") if saved is not None else source
      try:
        computed = self._pass(opened, name, todo)
      finally:
        if opened is not source:
          opened.close()
      for space, stats in computed.items():
        entry = entries[space][0]
        if entry is not None:
          _write_entry(entry, stats)
        out[space] = stats
    if "inception" in out:
      out["inception"] = _prefer_saved(out["inception"], saved)
    return out

  def _pass(self, source, name, needs):
    """One feature pass computing ``needs`` (``{space: Needs}``) on every space's network
    together, and the Inception Score state (cheap) whenever Inception runs."""
    spaces = [self.spaces[space] for space in needs]
    params = {s.key: s.params for s in spaces}  # first: loading sets a space's network
    if len(spaces) == 1:
      network, resize, params = spaces[0].network, spaces[0].resize, params[spaces[0].key]
      feature = lambda space, f: f
    else:
      network = base.combine(tuple((s.key, s.network, s.resize) for s in spaces))
      resize = "parts"
      feature = lambda space, f: f"{space}/{f}"
    states, keep = {}, []
    for space, need in needs.items():
      dims = self.spaces[space].network.features
      gaussians = need.gaussians | ({"pool3"} if space == "inception" else set())
      for f in sorted(gaussians):
        states[f"{space}:gaussian:{f}"] = (feature(space, f), FeatureStats.empty(dims[f]))
      keep += [feature(space, f) for f in sorted(need.rows)]
    if "inception" in needs:
      splits = self.settings["splits"]
      if self.settings["split_size"] is not None:
        n = self.settings["num_samples"] or _known_rows(source)
        if n is None:
          raise InputError(f"{name}: an Inception Score over parts of "
                           f"{self.settings['split_size']} images needs a known number of "
                           "images: pass num_samples")
        splits = -(-n // self.settings["split_size"])
      states["inception:scores"] = (feature("inception", "logits_unbiased"),
                                    InceptionScoreState.empty(inception.NUM_CLASSES, splits))
    result = _extract.extract(
        source, params, network=network, states=states, batch_size=self._batch_size,
        resize=resize, precision=self.settings["precision"],
        num_samples=self.settings["num_samples"], keep_features=tuple(keep) or False,
        split_size=self.settings["split_size"] if "inception" in needs else None,
        image_size=self.settings["image_size"], progress=self._progress)
    if result.count < 2:
      raise InputError(f"{name}: expected at least 2 images for feature statistics, got "
                       f"{result.count}")
    out = {}
    for space, need in needs.items():
      score = None
      if space == "inception":
        score_state = result.states["inception:scores"]
        if need.scores and result.count < score_state.splits:
          raise InputError(f"{name}: the Inception Score needs at least {score_state.splits} "
                           f"images (one per split), got {result.count}")
        # The IS state comes with every Inception pass: keep its result in the cache whenever it
        # is defined (unreadable files can leave a split empty).
        if np.all(np.asarray(score_state.num) > 0):
          score = tuple(float(v) for v in score_state.compute())
      prefix = f"{space}:gaussian:"
      gaussians = {key[len(prefix):]: (np.asarray(s.mean, np.float64),
                                       np.asarray(s.covariance(), np.float64))
                   for key, s in result.states.items() if key.startswith(prefix)}
      rows = {f: result.outputs[feature(space, f)] for f in need.rows}
      out[space] = SourceStatistics(name, result.count, gaussians, rows, score)
    return out

  def _content(self, source):
    """The source's content digest, agreed by every process; ``None`` when not cached."""
    if not self._cache:
      return None
    content = _content_digest(source)
    if content is not None:
      _agree_on_content(content, _describe(source))
    return content

  def _entry(self, space, content):
    """The cache file of ``content``'s statistics in ``space``, under every setting that changes
    them (module docstring)."""
    s = self.spaces[space]
    settings = {key: self.settings[key] for key in ("precision", "num_samples", "image_size")}
    if space == "inception":
      settings.update(splits=self.settings["splits"], split_size=self.settings["split_size"])
    backend, device_kind = _device_identity()
    # The space's own network name: the weights' sha256 identifies the checkpoint's architecture.
    settings.update(content=content, network=SPACES[space].name, weights=s.sha256, resize=s.resize,
                    backend=backend, device_kind=device_kind, version=_version(),
                    format=_CACHE_FORMAT)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"{key}.npz"


def cache_dir():
  """Where statistics are cached: ``$JAXMETRICS_CACHE/stats`` (default ``~/.cache/jaxmetrics``)."""
  return weights.cache_dir() / "stats"


def cache_info():
  """``{"path", "entries", "bytes"}`` of the statistics cache (0 entries when it does not exist)."""
  folder = cache_dir()
  files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
  return {"path": str(folder), "entries": len(files),
          "bytes": sum(f.stat().st_size for f in files)}


def clear_cache():
  """Deletes the statistics cache (downloaded weights stay); returns what :func:`cache_info` said
  of it before."""
  info = cache_info()
  if cache_dir().is_dir():
    shutil.rmtree(cache_dir())
  return info


def _device_identity():
  """``(platform, device kind)`` of the devices a pass runs on, for cache keys."""
  device = jax.devices()[0]
  return device.platform, device.device_kind


def _version():
  from jaxmetrics import __version__  # pylint: disable=import-outside-toplevel  # a cycle
  return __version__


def evaluate(a, b=None, *, metrics=("fid",), params=None, weights=None, check_hash=True,
             resize="tf1", precision="highest", batch_size=None, num_samples=None,
             image_size=None, splits=10, is_split_size=None, kid_subsets=100, kid_subset_size=1000,
             pr_k=3, dc_k=5, dinov2=None, dinov2_resize="dgm-eval", clip=None, cache=True,
             progress=False):
  """Computes several metrics, in one or several feature spaces, from one pass per source.

  Args:
    a: the first source: the generated images (IS is of ``a``; precision is the share of ``a``
      inside ``b``'s manifold).
    b: the second source, the reference (real images or reference statistics), for the metrics
      that compare two sources.
    metrics: names from :data:`METRICS`, a tuple or a comma-separated string. Inception:
      ``"fid"``, ``"sfid"``, ``"is"``, ``"kid"``, ``"precision"``, ``"recall"``, ``"density"``,
      ``"coverage"``. DINOv2 ViT-L/14 (``dinov2=`` needed): ``"fd_dinov2"`` (dgm-eval's
      FD_DINOv2) and ``"kid_dinov2"``, ``"precision_dinov2"``, ``"recall_dinov2"``,
      ``"density_dinov2"``, ``"coverage_dinov2"``. CLIP ViT-L/14@336px: ``"cmmd"``
      (google-research/cmmd).
    params, weights, check_hash, resize, precision, batch_size, num_samples, image_size, splits,
      dinov2, dinov2_resize, clip, cache, progress: see :class:`Evaluator`.
    is_split_size: IS over parts of this many images in source order, the last one shorter
      (guided-diffusion's evaluator: 5000), instead of ``splits`` equal parts.
    kid_subsets, kid_subset_size: see :func:`jaxmetrics.kid` (KID in either space).
    pr_k: neighbours for precision/recall (3, as guided-diffusion and torch-fidelity).
    dc_k: neighbours for density/coverage (5, as the ``prdc`` package's example).

  Returns:
    A dict: each metric asked for by name as a float, except ``is_mean``/``is_std`` for ``is``
    and ``kid_mean``/``kid_std`` (``kid_dinov2_mean``/``kid_dinov2_std``) for KID; with the sample
    counts ``n1`` (and ``n2``; ``None`` for saved statistics), per space used the weights' sha256
    (``weights_sha256`` for Inception, ``None`` when every source was saved statistics, which
    needs no weights; ``dinov2_weights_sha256``, ``clip_weights_sha256``) and the resize mode
    (``resize``, ``dinov2_resize``), and, per source, whether the statistics cache was used for
    every space. Fréchet distances, KID and CMMD are computed in float64 (the metrics' float64
    route: on the host CPU, or the GPU where there is one) from statistics accumulated in
    float32 on the devices.

  Raises:
    InputError: bad options, or sources that cannot give what is asked (a statistics file without
      images for a metric that needs rows or another space, too few images for IS splits, KID
      subsets or k neighbours), before any feature pass.
    WeightsError: a space's weights cannot be had (DINOv2 without a path), before any pass.
  """
  chosen = _check_metrics(metrics, two_sources=b is not None)
  for name, value in (("pr_k", pr_k), ("dc_k", dc_k)):
    _extract._check_positive(name, value)
  evaluator = Evaluator(weights=weights, check_hash=check_hash, params=params, resize=resize,
                        precision=precision, batch_size=batch_size, num_samples=num_samples,
                        image_size=image_size, splits=splits, split_size=is_split_size,
                        cache=cache, progress=progress, dinov2=dinov2,
                        dinov2_resize=dinov2_resize, clip=clip)
  why = {}
  for m in chosen:
    why.setdefault(f"{m.space}:gaussian:{m.gaussian}", m.name)
    why.setdefault(f"{m.space}:rows:{m.rows}", m.name)
    why.setdefault(f"{m.space}:scores", m.name)
  needs = [(a, Needs.by_space(chosen, first=True))]
  if b is not None:
    needs.append((b, Needs.by_space(chosen, first=False)))
  minimum = _minimum_counts(chosen, splits, is_split_size, kid_subset_size, pr_k, dc_k)
  for source, need in needs:  # fail on bad input before any feature pass: files first, then counts
    evaluator.check(source, need, why=why)
  for source, need in needs:
    _check_count(source, need.get("inception", Needs()), minimum, num_samples)
  for space in {m.space for m in chosen} - {"inception"}:
    evaluator.spaces[space].sha256  # pylint: disable=pointless-statement  # weights, or fail now
  first = evaluator.statistics(a, needs[0][1])
  results = {"n1": _count_of(first), "resize": evaluator.settings["resize"],
             "cached": [all(s.cached for s in first.values())]}
  names = {m.name for m in chosen}
  if "is" in names:
    results["is_mean"], results["is_std"] = first["inception"].inception_score
  if b is not None and not needs[1][1]:  # e.g. metrics=("is",): nothing is needed of b
    results["n2"], results["cached"] = _known_rows(b), results["cached"] + [False]
  elif b is not None:
    second = evaluator.statistics(b, needs[1][1])
    results["n2"] = _count_of(second)
    results["cached"].append(all(s.cached for s in second.values()))
    for m in (m for m in chosen if m.two_sources):
      one, two = first[m.space], second[m.space]
      if m.gaussian is not None:
        _warn_if_few(m, one, two)
        results[m.name] = float(frechet_distance(*one.gaussians[m.gaussian],
                                                 *two.gaussians[m.gaussian]))
      elif m.name.startswith("kid"):
        mean, std = _kid(_float64(one.rows[m.rows]), _float64(two.rows[m.rows]),
                         subsets=kid_subsets, subset_size=kid_subset_size)
        results[f"{m.name}_mean"], results[f"{m.name}_std"] = float(mean), float(std)
      elif m.name == "cmmd":
        results["cmmd"] = float(_cmmd(_float64(one.rows[m.rows]), _float64(two.rows[m.rows])))
    for space in dict.fromkeys(m.space for m in chosen):
      suffix = "" if space == "inception" else f"_{space}"
      knn = {m.name.removesuffix(suffix) for m in chosen if m.space == space} & {
          "precision", "recall", "density", "coverage"}
      if knn:
        # One cross pass serves all four (generated first, reference second).
        feature = next(m.rows for m in chosen if m.space == space and m.rows)
        found = manifold.manifold_metrics(
            first[space].rows[feature], second[space].rows[feature],
            pr_k=pr_k if knn & {"precision", "recall"} else None,
            dc_k=dc_k if knn & {"density", "coverage"} else None)
        results.update({f"{name}{suffix}": getattr(found, name) for name in sorted(knn)})
  # None when every source was saved statistics: no weights were needed, none are reported.
  results["weights_sha256"] = evaluator.weights_sha256 if evaluator.weights_resolved else None
  for space in sorted({m.space for m in chosen} - {"inception"}):
    results[f"{space}_weights_sha256"] = evaluator.spaces[space].sha256
  if "dinov2" in {m.space for m in chosen}:
    results["dinov2_resize"] = evaluator.spaces["dinov2"].resize
  return results


def _float64(rows):
  return np.asarray(rows, np.float64)


def _count_of(stats):
  """The image count of a source: the same in every space of one pass; ``None`` for saved
  statistics (or when nothing was needed of the source)."""
  counts = [s.count for s in stats.values() if s.count is not None]
  return max(counts) if counts else None


def _prefer_saved(stats, saved):
  """A reference batch's saved statistics win over those of its images, as in guided-diffusion's
  ``Evaluator.read_statistics`` (it reads ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` when present)."""
  if saved is None:
    return stats
  return dataclasses.replace(stats, gaussians={**stats.gaussians, **saved[0].gaussians})


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
  # The _dinov2 variants need what their Inception namesakes need.
  names = {m.name.removesuffix("_dinov2") for m in chosen}
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


_LABELS = {"fid": "FID", "sfid": "sFID", "is": "IS", "kid": "KID", "fd_dinov2": "FD_DINOv2",
           "cmmd": "CMMD"}


def _missing(space, needs, held, why):
  """What ``held`` statistics lack of ``needs`` in ``space``, named by the metrics in ``why``."""
  label = lambda key, default: _LABELS.get(why.get(f"{space}:{key}"),
                                           why.get(f"{space}:{key}", default))
  of = "" if space == "inception" else f"{_SPACE_LABELS[space]} "
  missing = [f"{label(f'gaussian:{f}', 'a Fréchet distance')} needs the statistics of {of}{f}"
             for f in sorted(needs.gaussians - held.gaussians)]
  missing += [f"{label(f'rows:{f}', 'a k-NN or kernel metric')} needs {of}{f} features of every "
              "image" for f in sorted(needs.rows - held.rows)]
  if needs.scores and not held.scores:
    missing.append(f"{label('scores', 'IS')} needs logits of every image")
  return "; ".join(missing)


def _saved_names(saved):
  return [key for feature in saved.gaussians for key in SAVED_KEYS[feature]]


def _warn_if_few(metric, *stats):
  """Warns, for a Fréchet distance, of a source with fewer samples than feature dimensions."""
  label = _LABELS.get(metric.name, metric.name)
  for s in stats:
    dim = s.gaussians[metric.gaussian][0].shape[0]
    if s.count is not None and s.count < dim:
      warnings.warn(f"{s.name}: {s.count} samples is fewer than the {dim} feature dimensions: the "
                    f"covariance is singular and {label} is strongly biased upwards; use 10,000 or "
                    "more samples for numbers comparable with published ones", stacklevel=3)


def _agree_all(flags):
  """Which of ``flags`` hold on every process (a collective in a multi-process run)."""
  flags = [bool(f) for f in flags]
  if jax.process_count() == 1:
    return flags
  every = np.asarray(multihost_utils.process_allgather(np.asarray(flags, np.int32)))
  return [bool(v) for v in every.reshape(-1, len(flags)).all(axis=0)]


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
                         f"{feature} features, got {mu_key} of shape {mu.shape} (saved "
                         "statistics serve the Inception space only)")
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
