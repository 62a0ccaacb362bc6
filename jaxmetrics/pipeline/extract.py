"""Feature extraction over every device and host: any network, any metric states, one pass.

:func:`extract` streams a source (:func:`jaxmetrics.pipeline.sources.open_source`: a folder, an
``.npy`` / ``.npz`` file, an array, an iterable of batches) through a feature network (a
:class:`~jaxmetrics.networks.base.FeatureNetwork`; default the FID Inception-v3) and folds the
named features it returns into metric states: by default
:class:`~jaxmetrics.metrics.statistics.FeatureStats` of ``pool3`` (FID) and an
:class:`~jaxmetrics.InceptionScoreState` of ``logits_unbiased`` (IS); any mapping
``{name: (feature, state)}`` instead (``FeatureStats`` of ``spatial`` for sFID, a
:class:`~jaxmetrics.metrics.statistics.FeatureBuffer` for k-NN metrics, or any state with
``update(features, mask)``), plus, on request, the features themselves gathered on the host.

Example::

  params = jaxmetrics.load_params()
  result = jaxmetrics.extract.extract("samples/", params)
  fid = jaxmetrics.frechet_distance(result.stats.mean, result.stats.covariance(),
                                    *jaxmetrics.load_stats("reference.npz"))
  is_mean, is_std = result.inception_score.compute()

  sfid = jaxmetrics.extract.extract("samples/", params, states={
      "sfid": ("spatial", jaxmetrics.FeatureStats.empty(2023))}).states["sfid"]

How it runs. One compiled step takes ``(states, params, batch)`` and returns the new states: uint8
images → the network's preprocessing (resize, :mod:`jaxmetrics.networks.resize`, then its
normalisation) → network → each state's update with its feature and the batch mask
(``InceptionScoreState`` also gets each row's split, ``FeatureBuffer`` each row's global index).
The batch is sharded on
its leading axis over a 1-D :class:`~jax.sharding.Mesh` of every device of every process (axis
``"data"``); parameters and state are replicated, so XLA inserts the cross-device all-reduce and
every device ends with the same state. The state's buffers are donated. Every batch has the same
global shape: the last one is padded with masked rows, so a run compiles once (and two sources of
the same image size and dtype share the compilation). The host decodes batches on threads and
places them on the devices (uint8: a quarter of the float32 transfer; resizing runs on device)
while the devices work on earlier ones: ``prefetch`` ready batches wait in a bounded queue, so host
memory stays bounded whatever the number of images — except for ``keep_features``, which gathers
``(N, 2048)`` float32 on every host.

Inception Score splits. With a known number of rows ``N`` (arrays, files, folders, or
``num_samples=``), row ``i`` goes to split ``contiguous_split(i, N, splits)``: the streamed score
equals :func:`jaxmetrics.inception_score` of the logits in source order (improved-gan's splits).
For an iterable of unknown length, rows are dealt round-robin in the order they are processed
(the default of :class:`~jaxmetrics.InceptionScoreState`); pass ``num_samples`` to
get contiguous splits. ``split_size`` instead puts row ``i`` into split ``i // split_size``
(guided-diffusion's evaluator: parts of 5000 in source order, the last one shorter).

Multi-host. The same program runs on every host (process); call :func:`initialize` first. Each
process reads a disjoint share of the rows: in step ``k`` (global batch ``B``) a process reads the
rows ``[k·B + r0, k·B + r1)`` that its devices hold in the global batch, so the global batches are
the source's rows in order, exactly as on one host with the same devices, and every process runs
the same number of steps (``ceil(N / B)``; a process whose share ends early feeds masked rows).
Global batches are assembled with :func:`jax.make_array_from_process_local_data`. Each process
must see the same data: the same folder or file (a shared file system, or a copy per host), or an
iterable of its own (a sampler seeded by ``jax.process_index()``); before the first step the
processes check that they agree on the number of rows, the batch and the image shape. The row
``i`` of process ``p``'s iterable takes the place that row of a file would have in the global
batches (``num_samples`` is the total over all processes). With an iterable of unknown length,
each step carries a "this process has run out" flag, read one step late (no stall), and the
processes stop together one (all-masked) step after the last of them ran out. The final state is
replicated: every process returns the same statistics. Bad input met by one process (a file of
another size, a short iterable) stops every process within two steps: that process raises its
error, the others an :class:`InputError` naming it.

Launching (paste into the README)
---------------------------------

The evaluation script is the same on every host; only the launcher differs::

  # evaluate.py
  import jax
  import jaxmetrics
  from jaxmetrics.pipeline import extract

  extract.initialize()          # before any other JAX call; a no-op on a single machine
  params = jaxmetrics.load_params()
  result = extract.extract("/shared/samples", params, batch_size=1024)
  if jax.process_index() == 0:
    print(result.count, result.inception_score.compute())

*TPU pod slice* (every worker of the slice runs the script; JAX finds the coordinator itself)::

  gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=all \\
    --command "cd ~/project && python evaluate.py"

*Several GPU hosts* (one process per host, all of its GPUs; the same command on each host with
its own ``JAX_PROCESS_ID``; host 0 must accept connections on the port)::

  JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=0 python evaluate.py  # host0
  JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=1 python evaluate.py  # host1
  ...

*SLURM or Open MPI* (detected by JAX; under them JAX gives each task one GPU, so start one task
per GPU)::

  srun --nodes=4 --ntasks-per-node=8 --gpus-per-task=1 python evaluate.py

Data must be readable at the same path on every host. The global batch is rounded up to a multiple
of the number of devices; pick it so that each device gets 32–128 images.
"""

import dataclasses
import functools
import itertools
import os
import queue
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jaxmetrics.networks import inception
from jaxmetrics.networks.base import FeatureNetwork
from jaxmetrics.pipeline import sources
from jaxmetrics._errors import InputError
from jaxmetrics._inputs import check_precision
from jaxmetrics.metrics.inception_score import InceptionScoreState
from jaxmetrics.metrics.inception_score import contiguous_split
from jaxmetrics.metrics.statistics import FeatureBuffer
from jaxmetrics.metrics.statistics import FeatureStats

PER_DEVICE_BATCH = 32


@dataclasses.dataclass(frozen=True)
class Extraction:
  """What :func:`extract` returns; identical on every process of a multi-host run.

  Attributes:
    states: the final metric states by name (as passed to :func:`extract`, or the defaults
      ``"stats"`` and ``"inception_score"``), on the first local device.
    count: number of images that went into the states (unreadable files excluded).
    outputs: the kept network outputs by name (``"pool3"``, ``"logits_unbiased"``, ...), float32
      NumPy arrays ``(count, d)`` in source order; empty unless ``keep_features``.
    index: for each row of ``outputs``, the source row it came from (``paths[index]`` names the
      files of a folder, where unreadable ones are missing); ``None`` without ``keep_features``
      or for iterables, whose rows are in the order they were processed.
  """

  states: dict
  count: int
  outputs: dict
  index: np.ndarray | None

  @property
  def stats(self):
    """The default ``FeatureStats`` of pool3 (``stats.mean``, ``stats.covariance()``: FID)."""
    return self.states.get("stats")

  @property
  def inception_score(self):
    """The default streamed Inception Score state; ``.compute()`` gives ``(mean, std)``."""
    return self.states.get("inception_score")

  @property
  def features(self):
    """The kept pool3 features ``(count, 2048)``, or ``None``."""
    return self.outputs.get("pool3")


def default_states(network, splits=10):
  """``{name: (feature, state)}`` that :func:`extract` fills when given no ``states``.

  The FID Inception-v3: ``"stats"`` (``FeatureStats`` of ``pool3``) and ``"inception_score"``
  (``InceptionScoreState`` of ``logits_unbiased`` over ``splits`` parts). Another network: the
  ``FeatureStats`` of its first feature, as ``"stats"``.
  """
  if network is inception.NETWORK:
    return {"stats": ("pool3", FeatureStats.empty(inception.POOL3_DIM)),
            "inception_score": ("logits_unbiased",
                                InceptionScoreState.empty(inception.NUM_CLASSES, splits))}
  feature, dim = next(iter(network.features.items()))
  return {"stats": (feature, FeatureStats.empty(dim))}


def default_mesh():
  """A 1-D mesh (axis ``"data"``) of every device of every process, ordered by process.

  Ordering by process puts each process's devices, and so its rows of a global batch, in one
  contiguous block.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices), ("data",))


def replicate(params, mesh=None):
  """``params`` replicated on every device of ``mesh`` (default :func:`default_mesh`).

  :func:`extract` replicates host (NumPy) parameters at the start of every call; replicate them
  once with this and pass the result to every call (a training loop's evaluation, several
  sources) to copy them to the devices once. Arrays already replicated on the mesh are kept.
  """
  mesh = default_mesh() if mesh is None else mesh
  return _replicate(params, NamedSharding(mesh, P()))


def initialize(**kwargs):
  """Joins the processes of a multi-host run (``jax.distributed.initialize``); call it first.

  Coordinator settings come from, in order: ``kwargs`` (those of ``jax.distributed.initialize``),
  the environment variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``, and JAX's own detection of Cloud TPU pods, SLURM, Open MPI and Kubernetes.
  Without any of these it does nothing: a single process. Call it before any other JAX call.

  Returns:
    Whether this is a multi-process run.
  """
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  for name, key in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if key in os.environ and name not in kwargs:
      try:
        kwargs[name] = int(os.environ[key])
      except ValueError:
        raise InputError(f"{key}: expected an integer, got {os.environ[key]!r}") from None
  requested = bool(kwargs) or "JAX_COORDINATOR_ADDRESS" in os.environ
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError):
    # ValueError: no coordinator given or detected; RuntimeError: JAX already started. Either is
    # a single process, unless settings asked for several.
    if requested:
      raise
  return jax.process_count() > 1


def extract(source, params, *, network=None, states=None, batch_size=None, resize=None,
            precision="highest", num_samples=None, keep_features=False, splits=10,
            split_size=None, mesh=None, image_size=None, prefetch=2, progress=True):
  """Metric states (and optionally features) of every image of a source, on all devices.

  Args:
    source: anything :func:`jaxmetrics.pipeline.sources.open_source` accepts (a folder, an ``.npy`` or
      ``.npz`` path, an ``(N, H, W, 3)`` uint8 or [0, 1] float array, an iterable of batches) or
      an opened :class:`~jaxmetrics.pipeline.sources.Source` (not closed here). A folder of
      images of several sizes is resized to the network's ``input_size`` on the host, with the
      filter of ``resize`` (see :func:`~jaxmetrics.pipeline.sources.open_source`).
    params: the network's parameters (:func:`jaxmetrics.load_params` for Inception); host arrays
      are replicated onto the mesh once, arrays already replicated there are used as they are.
    network: a :class:`~jaxmetrics.networks.base.FeatureNetwork`; default
      :data:`jaxmetrics.networks.inception.NETWORK`.
    states: ``{name: (feature, state)}``: each state is updated with the named feature of every
      batch (``state.update(features, mask)``; ``InceptionScoreState`` with its split,
      ``FeatureBuffer`` with each row's global index). Default :func:`default_states`; ``{}``
      with ``keep_features`` gathers the features alone.
    batch_size: global images per step, over all devices and processes; rounded up to a multiple
      of the number of devices. Default ``32 ×`` the number of devices.
    resize: one of the network's resize modes; default its first (Inception: ``"tf1"``, or
      ``"pytorch"``, ``"clean"``, ``"torchmetrics"``; see :mod:`jaxmetrics.networks.resize`).
    precision: ``"highest"`` (default), ``"high"`` or ``"default"``; see
      :func:`jaxmetrics.networks.inception.features`.
    num_samples: use only the first ``num_samples`` rows (an error if the source has fewer). For
      an iterable it is the total over all processes, and gives contiguous IS splits.
    keep_features: ``True`` keeps the pool3 features, or name the outputs to keep
      (``("pool3", "logits_unbiased", "logits", "spatial")``); they are gathered on every process.
    splits: Inception Score splits of the default states (default 10).
    split_size: instead of contiguous splits, row ``i`` goes to IS split ``i // split_size``
      (guided-diffusion: 5000); needs a known number of rows, and sets the default IS state's
      number of splits to ``ceil(N / split_size)``.
    mesh: a :class:`~jax.sharding.Mesh`; the batch is sharded over all its axes. Default
      :func:`default_mesh`: every device.
    image_size: folders only: ``(H, W)`` to center-crop and resize other-sized images to.
    prefetch: batches prepared ahead of the devices (default 2).
    progress: show a progress bar (images/s) on process 0.

  Returns:
    An :class:`Extraction`.

  Raises:
    InputError: for bad options or input, named in one line; in a multi-host run every process
      raises when one meets bad input.
  """
  network = inception.NETWORK if network is None else network
  if not isinstance(network, FeatureNetwork):
    raise InputError(f"network: expected a FeatureNetwork, got {type(network).__name__}")
  resize = network.check_resize(resize)
  check_precision(precision)
  _check_positive("splits", splits)
  _check_positive("prefetch", prefetch)
  if num_samples is not None:
    _check_positive("num_samples", num_samples)
  if split_size is not None:
    _check_positive("split_size", split_size)
  keep = _check_keep(keep_features, network)
  if states is not None:
    states = _check_states(states, network, keep)
  mesh = default_mesh() if mesh is None else mesh
  if not isinstance(mesh, Mesh):
    raise InputError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
  if batch_size is None:
    batch_size = PER_DEVICE_BATCH * mesh.size
  _check_positive("batch_size", batch_size)
  batch_size = -(-batch_size // mesh.size) * mesh.size

  source_given = isinstance(source, sources.Source)
  source = sources.open_source(source, image_size=image_size, network=network, resize=resize)
  try:
    return _Run(source, params, network, states, mesh, batch_size, num_samples, splits, split_size,
                keep, dict(resize=resize, precision=precision), prefetch, progress).run()
  finally:
    if not source_given:
      source.close()


# --------------------------------------------------------------------------------- the step


@functools.partial(jax.jit, donate_argnums=(0,),
                   static_argnames=("mesh", "network", "feeds", "resize", "precision", "keep",
                                    "split_size", "host_resized"))
def _step(states, params, batch, num_samples, *, mesh, network, feeds, resize, precision, keep,
          split_size, host_resized):
  """One global batch: network, states and (replicated) outputs; ``num_samples`` 0: unknown.

  ``feeds``: ``((state name, feature name), ...)``, static so that the step is compiled per set of
  states. Masked rows' features are never read (every state and the kept outputs take the mask),
  so the network may skip them.
  """
  mask = batch["mask"]
  out = network.forward(params, batch["images"], resize=resize, precision=precision,
                        shards=mesh.size, mask=mask, host_resized=host_resized)
  states = {name: _feed(states[name], out[feature], mask, batch["index"], num_samples, split_size)
            for name, feature in feeds}
  info = {"rows": jnp.sum(mask, dtype=jnp.int32), "failed": jnp.max(batch["failed"]),
          "done": jnp.min(batch["done"])}
  kept = {name: out[name] for name in keep}
  if keep:
    kept.update(mask=mask, index=batch["index"])
  return jax.lax.with_sharding_constraint((states, info, kept), NamedSharding(mesh, P()))


def _feed(state, features, mask, index, num_samples, split_size):
  """``state.update`` with what the state needs to know of the rows' places in the source."""
  if isinstance(state, InceptionScoreState):
    if split_size is not None:
      split = index // split_size
    else:
      # Round-robin over the rows in processing order: InceptionScoreState's default assignment,
      # written out so that one compiled step serves known and unknown lengths.
      round_robin = (state.seen + jnp.cumsum(mask, dtype=jnp.int32) - 1) % state.splits
      contiguous = contiguous_split(index, jnp.maximum(num_samples, 1), state.splits)
      split = jnp.where(num_samples > 0, contiguous, round_robin)
    return state.update(features, mask, split=split)
  if isinstance(state, FeatureBuffer):
    return state.update(features, mask, index=index)
  return state.update(features, mask)


# ---------------------------------------------------------------------------------- the loop


class _Run:
  """One extraction: plans the rows of each process, feeds the step, collects the results."""

  def __init__(self, source, params, network, states, mesh, batch_size, num_samples, splits,
               split_size, keep, options, prefetch, progress):
    self.source, self.mesh, self.batch, self.keep = source, mesh, batch_size, keep
    self.network, self.split_size = network, split_size
    self.options, self.prefetch = options, prefetch
    self.options["host_resized"] = source.host_resize is not None
    self.processes = jax.process_count()
    self.process = jax.process_index()
    self.failed_process = None  # set when a finished step reports a process's bad input
    known = source.num_samples
    if num_samples is not None and known is not None and not source.per_process:
      if num_samples > known:
        raise InputError(f"num_samples: expected at most {known}, the rows of {source.name}, got "
                         f"{num_samples}")
    self.n = num_samples if num_samples is not None else (None if source.per_process else known)
    if self.n is not None and self.n < batch_size:
      # A source smaller than the batch: one step of the source's size (rounded up to the
      # devices) instead of computing mostly padding.
      batch_size = self.batch = -(-self.n // mesh.size) * mesh.size
    if self.n is not None and self.n * splits >= 2**31:
      raise InputError(f"num_samples: expected num_samples * splits < 2**31, got {self.n} * "
                       f"{splits}")
    if split_size is not None and self.n is None:
      raise InputError(f"split_size: needs a known number of rows, but {source.name} is an "
                       "iterable of unknown length: pass num_samples")
    if states is None:
      if split_size is not None:
        splits = -(-self.n // split_size)
      states = default_states(network, splits)
    self.feeds = tuple((name, feature) for name, (feature, _) in states.items())
    self.steps = None if self.n is None else -(-self.n // batch_size)
    self.sharding = NamedSharding(mesh, P(mesh.axis_names))
    rows = set()
    for index in self.sharding.addressable_devices_indices_map((batch_size,)).values():
      rows.update(range(batch_size)[index[0]])
    # This process's positions in every global batch, in the order make_array_from_process_local
    # _data lays out local data, and as runs [lo, hi) to read with one call each.
    self.rows = np.array(sorted(rows), np.int64)
    breaks = np.flatnonzero(np.diff(self.rows) != 1) + 1
    self.runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(self.rows, breaks)] if rows else []
    self._agree()
    replicated = NamedSharding(mesh, P())
    self.params = _replicate(params, replicated)
    # Fresh buffers for every leaf: the state is donated, and empty() may share one zero array.
    self.state = _replicate({name: state for name, (_, state) in states.items()}, replicated,
                            copy=True)
    self.count = 0
    self.num_samples_arg = _replicate(np.int32(self.n or 0), replicated)
    self.bar = tqdm(total=self.n, unit="img", desc=os.path.basename(source.name) or source.name,
                    disable=not progress or self.process != 0, dynamic_ncols=True)

  def _agree(self):
    """Every process must plan the same run; a mismatch would hang in a collective instead."""
    if self.processes == 1:
      return
    plan = np.array([self.n if self.n is not None else -1, self.batch, *self.source.image_shape,
                     self.source.dtype == np.uint8], np.int64)
    plans = np.asarray(multihost_utils.process_allgather(plan))
    differs = np.flatnonzero((plans != plans[0]).any(axis=1))
    if differs.size:
      raise InputError(
          f"{self.source.name}: every process must see the same data, but process "
          f"{int(differs[0])} plans (rows, batch, H, W, 3, uint8) = {plans[differs[0]].tolist()} "
          f"and process 0 {plans[0].tolist()}")

  # -- host side: runs on the prefetch thread

  def _host_batches(self):
    """Local batches ``(images, mask, index, done)`` of every step, in step order.

    ``done``: this process's data has ended (only tracked for per-process sources of unknown
    length, where the processes must agree on the last step).
    """
    if getattr(self.source, "on_device", False):
      yield from self._sampler_batches()
      return
    source, b = self.source, len(self.rows)
    position = 0  # rows consumed from a per-process source
    for step in itertools.count() if self.steps is None else range(self.steps):
      images = np.zeros((b, *source.image_shape), source.dtype)
      mask = np.zeros((b,), bool)
      index = step * self.batch + self.rows
      wanted = index < self.n if self.n is not None else np.ones((b,), bool)
      if source.per_process:
        count = int(wanted.sum())
        got, valid = source.read(position, position + count)
        position += len(got)
        if self.n is not None and len(got) < count:
          raise InputError(f"{source.name}: num_samples={self.n} but the iterable of process "
                           f"{self.process} ended after {position} rows")
        images[:len(got)], mask[:len(got)] = got, valid
        exhausted = len(got) < count
      else:
        offset = 0
        for lo, hi in self.runs:
          start, stop = step * self.batch + lo, step * self.batch + hi
          if self.n is not None:
            stop = min(stop, self.n)
          if stop > start:
            got, valid = source.read(start, stop)
            images[offset:offset + len(got)], mask[offset:offset + len(got)] = got, valid
          offset += hi - lo
        exhausted = False
      if exhausted and self.processes == 1:
        if len(got):
          yield images, mask, index.astype(np.int32), True
        return
      yield images, mask, index.astype(np.int32), exhausted
      if exhausted:
        # Other processes may still have data: keep feeding masked rows until all agree to stop.
        yield from self._empty_batches(step + 1)
        return

  def _sampler_batches(self):
    """Global batches that a :class:`~jaxmetrics.pipeline.datasets.SamplerSource` makes on the
    devices, already on the batch's sharding: the images never go through the host."""
    for step in range(self.steps):
      start = step * self.batch
      images = self.source.read_device(start, min(start + self.batch, self.n), self.batch,
                                       self.sharding)
      index = start + self.rows
      yield images, index < self.n, index.astype(np.int32), False

  def _empty_batches(self, first):
    b = len(self.rows)
    images = np.zeros((b, *self.source.image_shape), self.source.dtype)
    for step in itertools.count(first):
      yield images, np.zeros((b,), bool), (step * self.batch + self.rows).astype(np.int32), True

  def _device_batch(self, images, mask, index, done, failed=0):
    local = {"images": images, "mask": mask, "index": index,
             "done": np.full((len(self.rows),), done, np.int32),
             "failed": np.full((len(self.rows),), failed, np.int32)}
    on_device = local.pop("images") if isinstance(images, jax.Array) else None
    batch = jax.make_array_from_process_local_data(
        self.sharding, local, jax.tree.map(lambda x: (self.batch, *x.shape[1:]), local))
    if on_device is not None:
      batch["images"] = on_device  # global and on self.sharding already (a SamplerSource)
    return batch

  def _device_batches(self):
    for batch in self._host_batches():
      yield self._device_batch(*batch)

  # -- device side: the main thread

  def run(self):
    collected = _Collector(self.keep, self.n, self.network)
    feed = _Prefetcher(self._device_batches(), self.prefetch)
    failure = failed_batches = None
    pending = None
    stop = False
    try:
      for step in itertools.count():
        if self.steps is not None and step >= self.steps:
          break
        if failed_batches is None:
          batch = feed.get()
          if batch is _Prefetcher.END:
            break
          if isinstance(batch, _Failure):
            if self.processes == 1:
              raise batch.error
            # Stay in step with the other processes until all of them have seen the failure.
            failure = batch.error
            feed.close()
            failed_batches = (self._device_batch(*b, failed=self.process + 1)
                              for b in self._empty_batches(step))
        if failed_batches is not None:
          batch = next(failed_batches)
        self.state, info, kept = _step(
            self.state, self.params, batch, self.num_samples_arg, mesh=self.mesh,
            network=self.network, feeds=self.feeds, keep=self.keep, split_size=self.split_size,
            **self.options)
        if pending is not None:
          stop = self._finish_step(*pending, collected)
        pending = (info, kept)
        if stop:
          break
      if pending is not None and not stop:
        stop = self._finish_step(*pending, collected)
    finally:
      feed.close()
      self.bar.close()
    if failure is not None:
      raise failure
    if self.failed_process is not None:
      raise InputError(f"{self.source.name}: process {self.failed_process} stopped the run on bad "
                       "input (its output names it)")
    states = jax.tree.map(lambda x: x.addressable_data(0), self.state)
    if self.count == 0:
      raise InputError(f"{self.source.name}: expected readable images, but none could be read")
    outputs, index = collected.result()
    return Extraction(states=states, count=self.count, outputs=outputs,
                      index=None if self.source.per_process or not self.keep else index)

  def _finish_step(self, info, kept, collected):
    """Reads a finished step's replicated results; returns whether every process should stop."""
    rows, failed, done = (int(_local(info[k])) for k in ("rows", "failed", "done"))
    self.count += rows
    self.bar.update(rows)
    if kept:
      collected.add({k: _local(v) for k, v in kept.items()})
    if failed:
      self.failed_process = failed - 1
      return True
    return self.steps is None and self.processes > 1 and bool(done)


class _Collector:
  """Gathers kept outputs on the host, by source row when the number of rows is known."""

  def __init__(self, keep, n, network):
    self.keep, self.n = keep, n
    self.chunks = []
    if keep and n is not None:
      self.arrays = {k: np.zeros((n, network.features[k]), np.float32) for k in keep}
      self.seen = np.zeros((n,), bool)

  def add(self, kept):
    mask = kept["mask"]
    index = kept["index"][mask]
    if self.n is None:
      self.chunks.append((index, {k: kept[k][mask] for k in self.keep}))
      return
    for k in self.keep:
      self.arrays[k][index] = kept[k][mask]
    self.seen[index] = True

  def result(self):
    if not self.keep:
      return {}, None
    if self.n is not None:
      if self.seen.all():
        return self.arrays, np.arange(self.n)
      index = np.flatnonzero(self.seen)
      return {k: v[index] for k, v in self.arrays.items()}, index
    index = np.concatenate([i for i, _ in self.chunks]).astype(np.int64)
    order = np.argsort(index, kind="stable")
    outputs = {k: np.concatenate([c[k] for _, c in self.chunks])[order] for k in self.keep}
    return outputs, index[order]


class _Failure:
  def __init__(self, error):
    self.error = error


class _Prefetcher:
  """Runs an iterator on a thread, ``depth`` items ahead; its exception comes out as a _Failure."""

  END = object()

  def __init__(self, iterator, depth):
    self._queue = queue.Queue(maxsize=depth)
    self._closed = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True,
                                    name="jaxmetrics-prefetch")
    self._thread.start()

  def _run(self, iterator):
    try:
      for item in iterator:
        if not self._put(item):
          return
    except BaseException as e:  # pylint: disable=broad-except  # re-raised by the consumer
      self._put(_Failure(e))
    else:
      self._put(self.END)

  def _put(self, item):
    while not self._closed.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def get(self):
    item = self._queue.get()
    if item is self.END or isinstance(item, _Failure):
      self._queue.put(item)  # later calls see the end again
    return item

  def close(self):
    self._closed.set()
    self._thread.join()
    while not self._queue.empty():
      self._queue.get_nowait()


# ------------------------------------------------------------------------------------ helpers


def _local(x):
  """A replicated array's value on this process, as NumPy."""
  return np.asarray(x.addressable_data(0))


def _replicate(tree, sharding, copy=False):
  """Arrays replicated with ``sharding``: placed ones as they are unless ``copy``, others copied."""
  def put(x):
    if not copy and isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
      return x
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def _check_positive(name, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise InputError(f"{name}: expected a positive integer, got {value!r}")


def _check_keep(keep_features, network):
  if keep_features is False or keep_features is None:
    return ()
  if keep_features is True:
    return (next(iter(network.features)),)
  names = (keep_features,) if isinstance(keep_features, str) else tuple(keep_features)
  if not names or any(n not in network.features for n in names):
    raise InputError(f"keep_features: expected True or names among {', '.join(network.features)}, "
                     f"got {keep_features!r}")
  return tuple(n for n in network.features if n in names)


def _check_states(states, network, keep):
  """``{name: (feature, state)}`` with known features and dimensions that fit; empty only when
  ``keep`` names features to gather (a pass for the features alone)."""
  if not isinstance(states, dict) or not (states or keep):
    raise InputError(f"states: expected a non-empty dict {{name: (feature, state)}} (or empty with "
                     f"keep_features), got {type(states).__name__}")
  for name, entry in states.items():
    if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
      raise InputError(f"states[{name!r}]: expected a (feature name, state) pair, got "
                       f"{type(entry).__name__}")
    feature, state = entry
    if feature not in network.features:
      raise InputError(f"states[{name!r}]: expected a feature among {', '.join(network.features)} "
                       f"of {network.name}, got {feature!r}")
    if not hasattr(state, "update"):
      raise InputError(f"states[{name!r}]: expected a metric state with update(features, mask), "
                       f"got {type(state).__name__}")
    dim = _state_dim(state)
    if dim is not None and dim != network.features[feature]:
      raise InputError(f"states[{name!r}]: expected a state of dimension "
                       f"{network.features[feature]} for {feature} of {network.name}, got {dim}")
  return states


def _state_dim(state):
  if isinstance(state, FeatureStats):
    return state.mean.shape[0]
  if isinstance(state, FeatureBuffer):
    return state.features.shape[1]
  if isinstance(state, InceptionScoreState):
    return state.num_classes
  return None
