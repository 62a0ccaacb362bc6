"""The FID Inception-v3: a Flax port of TensorFlow's ``inception-2015-12-05`` graph.

This is the network behind FID, IS and KID as published (TTUR, improved-gan), in the layout of the
PyTorch port that pytorch-fid, torch-fidelity and torchmetrics load
(``pt_inception-2015-12-05-6726825d.pth``). It differs from torchvision's Inception3 in the ways
that decide parity with the TF graph:

* every convolution is conv (no bias) → BatchNorm (eps 1e-3, inference statistics) → ReLU;
* the pool branch of Mixed_5b/5c/5d, Mixed_6b–6e and Mixed_7b is a 3×3 average pool, stride 1,
  padding 1, that *excludes* the padding from the count (TF's ``avg_pool`` with SAME padding);
* the pool branch of Mixed_7c is a 3×3 *max* pool (a quirk of the TF graph);
* the classifier has 1008 classes; ``logits_unbiased`` is ``pool3 · Wᵀ`` without the bias, the
  quantity improved-gan's Inception Score uses.

Features (:data:`NETWORK`, a :class:`~jaxmetrics.networks.base.FeatureNetwork`): ``pool3`` (2048,
FID, KID, precision/recall), ``logits_unbiased`` and ``logits`` (1008, IS), and ``spatial`` (2023,
sFID): the TF tensor ``mixed_6/conv:0`` that guided-diffusion's evaluator reads
(``evaluations/evaluator.py``: ``FID_SPATIAL_NAME``, then ``spatial[..., :7]`` and a reshape per
image), which is the first 1×1 branch of the fourth 17×17 block after its ReLU — torch-fidelity's
weight converter (``utils/util_convert_inception_weights.py``) maps ``mixed_6/conv`` to
``Mixed_6d.branch1x1`` — cut to its first 7 channels and flattened in NHWC order (17·17·7).

Parameters are a plain nested dict of arrays whose paths follow the checkpoint's names
(``Mixed_5b/branch1x1/conv/kernel``), so they can be placed with any sharding and passed to ``jit``.
Every convolution and matmul runs at ``Precision.HIGHEST`` unless asked otherwise: on GPUs the
default float32 precision is TF32, which moves features by far more than the 1e-4 the references
agree to.

Input normalisation follows the reference each resize mode comes from: ``(x − 128) / 128`` on
0..255 values (the TF graph's ``Sub``/``Mul``; torch-fidelity, torchmetrics, clean-fid) for
``"tf1"``, ``"clean"`` and ``"torchmetrics"``; ``2·x/255 − 1`` for ``"pytorch"`` (pytorch-fid's
``normalize_input``), which maps pixel 255 to 1.0 instead of the graph's 0.9921875.

Example::

  params = jaxmetrics.inception.load_params()            # downloads + verifies sha256 once
  out = jaxmetrics.inception.features(params, images)    # uint8 (N, H, W, 3)
  out["pool3"].shape                                     # (N, 2048)
"""

import functools
import warnings
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxmetrics.checkpoints import _params
from jaxmetrics.networks.base import FeatureNetwork
from jaxmetrics.networks import resize as _resize
from jaxmetrics.checkpoints import torch_checkpoint
from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import CheckpointError, InputError, WeightsError
from jaxmetrics._inputs import PRECISIONS, batched, check_batch_size, check_images, check_precision
from jaxmetrics._io import save_npz_atomic

WEIGHTS = "inception-2015-12-05"
INPUT_SIZE = 299
NUM_CLASSES = 1008
POOL3_DIM = 2048
# guided-diffusion's sFID feature: mixed_6/conv (17×17 map), its first 7 channels.
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
FEATURES = {"pool3": POOL3_DIM, "logits_unbiased": NUM_CLASSES, "logits": NUM_CLASSES,
            "spatial": SPATIAL_DIM}
OUTPUTS = tuple(FEATURES)
_BN_EPS = 1e-3
# Bump when the converted-parameter layout changes, so stale cache files are not read.
_CONVERTED_FORMAT = 1



class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics: ``(x − mean) / √(var + eps) · scale + bias``."""
  eps: float = _BN_EPS

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class Conv2d(nn.Module):
  """Convolution without bias, NHWC with an HWIO ``kernel`` (``nn.Conv``'s parameter layout).

  On a CPU, XLA's convolution is 1.5-6x slower than its matrix product for a 1×1 kernel (Eigen's
  spatial convolution vs the XNNPACK/Eigen GEMM: 36 vs 7 ms for 32×35×35×288 → 48 channels on the
  2-core benchmark machine), and half of Inception's convolutions are 1×1. There a 1×1 convolution
  is lowered as the product it is, ``x @ kernel[0, 0]``: the same sums, in another order, so
  features move by float32 round-off only. Other platforms keep the convolution (cuDNN and TPU
  convolutions take 1×1 kernels at GEMM speed); :func:`jax.lax.platform_dependent` picks the
  lowering per platform, inside ``jit`` and under any sharding.
  """
  features: int
  kernel: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.kernel, x.shape[-1], self.features), jnp.float32)
    ph, pw = self.padding

    def convolution(x, kernel):
      return jax.lax.conv_general_dilated(
          x, kernel, self.strides, ((ph, ph), (pw, pw)), precision=self.precision,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    if tuple(self.kernel) != (1, 1) or tuple(self.strides) != (1, 1) or self.padding != (0, 0):
      return convolution(x, kernel)

    def product(x, kernel):
      return jnp.matmul(x, kernel[0, 0], precision=self.precision)

    return jax.lax.platform_dependent(x, kernel, cpu=product, default=convolution)


class BasicConv2d(Conv2d):
  """conv (no bias) → BatchNorm(eps=1e-3) → ReLU, with torch-style explicit padding.

  The convolution's hyperparameters are :class:`Conv2d`'s fields; its kernel lives in the
  submodule ``conv`` (``Mixed_5b/branch1x1/conv/kernel``), the BatchNorm in ``bn``.
  """

  @nn.compact
  def __call__(self, x):
    x = Conv2d(self.features, self.kernel, self.strides, self.padding, self.precision,
               name="conv")(x)
    return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_3x3(x):
  # TF's SAME average pool divides by the number of real pixels under the window.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride):
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b–6e; ``return_branch1x1`` also returns the first branch (sFID reads Mixed_6d's)."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST
  return_branch1x1: bool = False

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    out = jnp.concatenate([b1, b7, bd, bp], axis=-1)
    return (out, b1) if self.return_branch1x1 else out


class InceptionD(nn.Module):
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (average pool branch) and Mixed_7c (``max_pool=True``: the TF graph's quirk)."""
  max_pool: bool = False
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _max_pool_3x3(x, 1) if self.max_pool else _avg_pool_3x3(x)
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Inception(nn.Module):
  """The FID Inception-v3 on normalised 299×299 NHWC input; returns :data:`FEATURES` by name."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    p = {"precision": self.precision}
    x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = InceptionA(32, **p, name="Mixed_5b")(x)
    x = InceptionA(64, **p, name="Mixed_5c")(x)
    x = InceptionA(64, **p, name="Mixed_5d")(x)
    x = InceptionB(**p, name="Mixed_6a")(x)
    x = InceptionC(128, **p, name="Mixed_6b")(x)
    x = InceptionC(160, **p, name="Mixed_6c")(x)
    x, mixed_6_conv = InceptionC(160, **p, return_branch1x1=True, name="Mixed_6d")(x)
    x = InceptionC(192, **p, name="Mixed_6e")(x)
    x = InceptionD(**p, name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, **p, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, **p, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits_unbiased, logits = Classifier(**p, name="fc")(pool3)
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(mixed_6_conv.shape[0], -1)
    return {"pool3": pool3, "logits_unbiased": logits_unbiased, "logits": logits,
            "spatial": spatial}


class Classifier(nn.Module):
  """The 1008-way fc layer; returns the logits without and with its bias."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], NUM_CLASSES))
    bias = self.param("bias", nn.initializers.zeros, (NUM_CLASSES,))
    unbiased = jnp.dot(x, kernel, precision=self.precision)
    return unbiased, unbiased + bias


# --------------------------------------------------------------------------- checkpoint conversion


@functools.lru_cache(maxsize=1)
def param_shapes():
  """The parameter tree of :class:`Inception` as ``jax.ShapeDtypeStruct`` leaves (no compute)."""
  x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  variables = jax.eval_shape(Inception().init, jax.random.key(0), x)
  return variables["params"]


def _torch_name_to_path(name):
  """``Mixed_5b.branch1x1.bn.running_var`` → ``("Mixed_5b", "branch1x1", "bn", "var")``."""
  parts = name.split(".")
  leaf = {("conv", "weight"): "kernel", ("bn", "weight"): "scale", ("bn", "bias"): "bias",
          ("bn", "running_mean"): "mean", ("bn", "running_var"): "var",
          ("fc", "weight"): "kernel", ("fc", "bias"): "bias"}.get(tuple(parts[-2:]))
  if leaf is None:
    return None
  return (*parts[:-1], leaf)


def convert_state_dict(state_dict, source="state dict"):
  """Maps a torch FID-Inception state dict (pytorch-fid / torch-fidelity names) to Flax params.

  Conv weights go from OIHW to HWIO and the fc weight is transposed; ``num_batches_tracked`` is
  dropped. Every parameter of :class:`Inception` must be present with its exact shape, and no
  unknown tensor may be left over; otherwise :class:`CheckpointError` names what differs.
  """
  shapes = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(param_shapes()).items()}
  flat, unknown = {}, []
  for name, array in state_dict.items():
    if name.endswith("num_batches_tracked"):
      continue
    path = _torch_name_to_path(name)
    if path is None or path not in shapes:
      unknown.append(name)
      continue
    array = np.asarray(array, dtype=np.float32)
    if path[-1] == "kernel":
      array = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
    if array.shape != shapes[path]:
      raise CheckpointError(f"{source}: tensor {name!r} has shape {_torch_shape(path, array)}, "
                            f"expected {_torch_shape(path, np.empty(shapes[path]))} for the FID Inception-v3")
    flat[path] = np.ascontiguousarray(array)
  return _params.assemble(flat, shapes, unknown, source, "an FID Inception-v3 state dict")


def _torch_shape(path, array):
  if path[-1] == "kernel":
    return tuple(array.shape[i] for i in (3, 2, 0, 1)) if array.ndim == 4 else array.shape[::-1]
  return tuple(array.shape)


def load_params(path=None, *, check_hash=True, cache=True, progress=True):
  """Loads the FID Inception-v3 parameters as a nested dict of NumPy float32 arrays.

  Args:
    path: a torch checkpoint (legacy or zip format). ``None`` downloads the official
      ``pt_inception-2015-12-05-6726825d.pth`` into the cache (``$JAXMETRICS_CACHE``, default
      ``~/.cache/jaxmetrics``) on first use.
    check_hash: verify the file's sha256 against the registry (an error if it differs). Pass
      ``False`` for custom or fine-tuned weights of the same architecture.
    cache: keep the converted parameters as ``.npz`` in the cache, keyed by the file's sha256, so
      that later loads skip the pickle reader (well under a second).
    progress: show a progress bar while downloading.

  Returns:
    The parameter tree for :class:`Inception` (``{"Conv2d_1a_3x3": {"conv": {"kernel": …}}, …}``):
    place it with ``jax.device_put`` and any sharding, or pass it straight to :func:`features`.
  """
  return load_weights_file(*weights_file(path, check_hash=check_hash, progress=progress),
                           cache=cache)


def weights_file(path=None, *, check_hash=True, progress=True):
  """Resolves the checkpoint (downloading it if ``path`` is None) and hashes it once.

  Returns:
    ``(path, sha256)``. The digest identifies the weights in cache keys and reports.

  Raises:
    WeightsError: the file is missing, cannot be downloaded, or (with ``check_hash``) is not the
      official file.
  """
  entry = weights.get(WEIGHTS)
  source = weights.fetch(WEIGHTS, path, check_hash=False, progress=progress)
  digest = weights.sha256_file(source)
  if check_hash and digest != entry.sha256:
    raise WeightsError(f"{source}: sha256 is {digest}, expected {entry.sha256} ({WEIGHTS}); "
                       "pass check_hash=False (--no-hash-check on the command line) to use custom weights")
  return source, digest


def load_weights_file(source, digest, *, cache=True):
  """:func:`load_params` for a file already resolved by :func:`weights_file`."""
  converted = weights.cache_dir() / "converted" / f"{WEIGHTS}-{digest}-v{_CONVERTED_FORMAT}.npz"
  if cache and converted.is_file():
    with np.load(converted) as data:
      return traverse_util.unflatten_dict({tuple(k.split("/")): data[k] for k in data.files})
  params = convert_state_dict(torch_checkpoint.load_state_dict(source), source=str(source))
  if cache:
    try:
      converted.parent.mkdir(parents=True, exist_ok=True)
      save_npz_atomic(converted, **traverse_util.flatten_dict(params, sep="/"))
    except OSError as e:
      # The cache is an optimisation: a read-only cache folder must not stop evaluation.
      warnings.warn(f"{converted}: cannot cache the converted weights ({e.strerror or e})", stacklevel=2)
  return params


# ------------------------------------------------------------------------------- public forward


def _to_pixels(images):
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32)
  return images.astype(jnp.float32) * 255.0


def normalise(pixels, resize):
  """The network input from resized 0..255 pixels, as the reference of ``resize`` normalises."""
  if resize == "pytorch":
    return pixels * (2.0 / 255.0) - 1.0
  return (pixels - 128.0) / 128.0


def preprocess(images, resize="tf1"):
  """uint8 or [0, 1] float images of any size → the normalised 299×299 network input, on device."""
  pixels = _resize.resize(_to_pixels(images), (INPUT_SIZE, INPUT_SIZE), mode=resize)
  return normalise(pixels, resize)


@functools.partial(jax.jit, static_argnames=("resize", "precision"))
def _forward(params, images, resize="tf1", precision="highest"):
  return forward(params, images, resize=resize, precision=precision)


def forward(params, images, *, resize="tf1", precision="highest", shards=1, mask=None,
            host_resized=False):
  """Resize, normalisation and network on a batch, for use inside ``jit`` (no checks).

  On a CPU the images go through the network one per shard at a time (``lax.map``), not as one
  batch. XLA's CPU convolutions slow down per image as the batch grows: the 3×3 stem convolutions
  take half the time per image at batch 1 as at batch 32. On the 2-core benchmark machine the
  network runs at 11.3 images/s one image at a time against 9.7 as one batch of 32 (both with
  the 1×1 products of :class:`Conv2d`), and at ~12 images/s at every batch size from 32 to 512
  where the batched network fell to 4.75 at 512. Activations are held for one image, not the
  batch. No row depends on another, so the results are the same up to float32 round-off
  (bit-identical on that machine). GPUs and TPUs get the whole batch
  (:func:`jax.lax.platform_dependent` picks per platform).

  Args:
    shards: the number of devices the batch's leading axis is split over (contiguous blocks of
      ``N / shards`` rows, as ``NamedSharding(mesh, P("data"))`` places them); each step of the CPU
      loop takes one row per shard, so it slices no sharded axis and moves no data between devices.
    mask: ``(N,)`` bool, the rows that count. On a CPU a step whose rows are all masked is skipped
      (``lax.cond``) and gives zeros: the padding of a last batch, which sits at the end of the
      global batch and so in the last shards, costs nothing once the valid rows are done. GPUs and
      TPUs compute every row.
    host_resized: unused: rows resized on the host are 299 × 299, where every resize mode is the
      identity.
  """
  del host_resized
  model = Inception(precision=PRECISIONS[precision])

  def network(images):
    return model.apply({"params": params}, preprocess(images, resize))

  def one_per_shard(images, mask):
    n = images.shape[0]
    if n % shards:
      raise InputError(f"images: expected a multiple of shards={shards} rows, got {n}")
    # (N, ...) -> (N / shards, shards, ...): step k takes row k of every shard's block.
    per_step = lambda x: jnp.swapaxes(x.reshape(shards, n // shards, *x.shape[1:]), 0, 1)
    if mask is None:
      out = jax.lax.map(network, per_step(images))
    else:
      shapes = jax.eval_shape(network, per_step(images)[0])
      skip = lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      out = jax.lax.map(lambda step: jax.lax.cond(jnp.any(step[1]), network, skip, step[0]),
                        (per_step(images), per_step(mask)))
    return jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1).reshape(n, *y.shape[2:]), out)

  return jax.lax.platform_dependent(images, mask, cpu=one_per_shard,
                                    default=lambda images, _: network(images))


def features(params, images, *, resize="tf1", precision="highest", batch_size=None):
  """Inception features of a batch of images: resize and normalisation run on device, under jit.

  Args:
    params: from :func:`load_params`.
    images: ``(N, H, W, 3)`` uint8 (0..255) or float ([0, 1], not quantised) images, any size.
    resize: ``"tf1"`` (the TF reference; default), ``"pytorch"`` (pytorch-fid), ``"clean"``
      (clean-fid) or ``"torchmetrics"`` (its ``antialias=True`` default); see
      :mod:`jaxmetrics.networks.resize`.
    precision: ``"highest"`` (default; full float32), ``"high"`` or ``"default"`` (TF32 or
      bfloat16 passes on accelerators: faster, features move by ~1e-3).
    batch_size: evaluate in chunks of this many images, padding the last chunk, so any N
      compiles once per (batch_size, H, W). ``None``: one chunk of N.

  Returns:
    ``{"pool3": (N, 2048), "logits_unbiased": (N, 1008), "logits": (N, 1008), "spatial": (N,
    2023)}`` float32 arrays (see the module docstring).
  """
  check_images(images)
  NETWORK.check_resize(resize)
  check_precision(precision)
  check_batch_size(batch_size)
  if isinstance(images, np.ndarray) and images.dtype == np.float64:
    images = images.astype(np.float32)
  forward = functools.partial(_forward, resize=resize, precision=precision)
  return batched(forward, params, images, batch_size)


def host_resize(image, resize="tf1"):
  """One uint8 image ``(H, W, 3)`` → ``(299, 299, 3)`` float32 on the host, as :func:`preprocess`
  resizes it on the device (:func:`jaxmetrics.networks.resize.host_resize`)."""
  return _resize.host_resize(image, (INPUT_SIZE, INPUT_SIZE), resize)


NETWORK = FeatureNetwork(
    name="inception-v3-fid", weights=WEIGHTS, features=FEATURES, resize_modes=_resize.RESIZE_MODES,
    forward=forward, weights_file=weights_file, load_weights_file=load_weights_file,
    input_size=(INPUT_SIZE, INPUT_SIZE), host_resize=host_resize)
"""The FID Inception-v3 as a :class:`~jaxmetrics.networks.base.FeatureNetwork`."""
