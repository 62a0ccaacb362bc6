"""DINOv2 (Oquab et al. 2023) in Flax: the ViT-S/14, B/14, L/14 and g/14 backbones of the torch hub.

The network behind FD_DINOv2 (Stein et al. 2023, ``layer6ai-labs/dgm-eval``; EDM2 reports it next to
FID) is ``torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")``: ``DinoVisionTransformer``
of ``dinov2/models/vision_transformer.py`` as ``dinov2/hub/backbones.py``'s ``_make_dinov2_model``
builds it — image size 518 (a 37 × 37 grid of position embeddings), patch 14, LayerScale
(``init_values=1.0``) in every block, no register tokens, ``interpolate_offset=0.1``,
``interpolate_antialias=False``. This module computes what its ``forward_features`` returns:

* a patch convolution (14 × 14, stride 14, with bias), a class token, learned position embeddings
  interpolated to the image's grid (below);
* pre-LN blocks ``x + ls1 · attn(norm1(x))``, ``x + ls2 · ffn(norm2(x))`` (``layers/block.py``),
  attention with one fused ``qkv`` projection (``layers/attention.py``), the FFN an MLP with exact
  GELU (``layers/mlp.py``) or, for ViT-g, ``SwiGLUFFNFused`` (``layers/swiglu_ffn.py``:
  ``w3(silu(x₁) · x₂)`` with ``x₁, x₂`` the halves of ``w12(x)``, hidden width
  ``(int(4d · 2/3) + 7) // 8 · 8`` = 4096 for d = 1536); every LayerNorm has eps 1e-6;
* the final LayerNorm ``norm``: ``"cls"`` is its class token (``x_norm_clstoken``, what the hub
  model's ``forward`` returns and dgm-eval uses), ``"patch"`` its patch tokens
  (``x_norm_patchtokens``).

The architectures (:data:`ARCHITECTURES`): S/14 384 wide, 12 layers, 6 heads; B/14 768, 12, 12;
L/14 1024, 24, 16; g/14 1536, 40, 24 with SwiGLU. All have 64-wide heads.

**Position embeddings.** At another grid size ``(h, w)`` the original interpolates its
``M × M`` table (``interpolate_pos_encoding``) with ``torch.nn.functional.interpolate(...,
mode="bicubic", antialias=False, scale_factor=((h + 0.1) / M, (w + 0.1) / M))``. Given a scale
factor, torch samples the source at ``(i + 0.5) / scale − 0.5`` (ATen's
``area_pixel_compute_scale`` uses ``1 / scale_factor``, not ``M / h``), so at 224 px (h = 16,
M = 37) the positions differ from those of ``size=(16, 16)``, which transformers'
``Dinov2Embeddings.interpolate_pos_encoding`` passes. ``positions="original"`` (default)
reproduces the hub model, ``positions="transformers"`` transformers' ``Dinov2Model``. Both use
torch's bicubic convolution (``a = −0.75``, ``align_corners=False``, taps clamped at the border);
the weights are formed on the host in float32 as ATen forms them (:func:`position_weights`) and
applied on device. The table is used as it is where ``h · w = M²`` and the image is square, as both
implementations do.

**Checkpoints** (:func:`load`): the torch hub files (``dinov2_vitl14_pretrain.pth``: a zip
``torch.save`` of the state dict, read by :mod:`jaxmetrics.checkpoints.torch_checkpoint` without
torch; its config is inferred from the tensor shapes, heads 64 wide) and Hugging Face folders
(``config.json`` with ``model_type`` ``"dinov2"`` + ``model.safetensors``, e.g.
``facebook/dinov2-large``; names as ``Dinov2Model.save_pretrained`` writes them, separate
``query``/``key``/``value`` projections concatenated into ``qkv``). The registry
(``weights/manifest.json``) lists the hub files' URLs; Meta publishes no sha256 for them, so they
are never downloaded here: pass the file you downloaded as ``path``.

**Preprocessing** (:func:`preprocess`, the :class:`~jaxmetrics.networks.base.FeatureNetwork`
resize modes), all to 224 × 224 then ``x / 255`` and ImageNet's mean ``(0.485, 0.456, 0.406)`` and
std ``(0.229, 0.224, 0.225)``:

``"dgm-eval"`` (default)
  dgm-eval's ``DINOv2Encoder.transform``: torchvision ``Resize((224, 224), BICUBIC)`` on the RGB
  PIL image, which is Pillow's antialiased bicubic on the uint8 image, no crop. uint8 input takes
  Pillow's 8-bit fixed-point path bit-exactly (:func:`jaxmetrics.networks.resize.pil_bicubic`).
  EDM2's ``resize_mode="pil"`` is the same.
``"edm2"``
  EDM2's default (``calculate_metrics.py``, ``DINOv2Detector``): ``interpolate(x.float(),
  size=(224, 224), mode="bicubic", antialias=True)`` on 0..255 values, no rounding, no clipping.
``"clean"``
  dgm-eval's ``clean_resize=True``: Pillow's bicubic on each float32 channel, clipped to [0, 255]
  (clean-fid's resize).

Matmuls and the patch convolution run at ``Precision.HIGHEST`` unless asked otherwise (TF32 on
GPUs moves features by far more than the 1e-4 the tests hold them to against the torch models).

Example::

  model = jaxmetrics.networks.dinov2.load("dinov2_vitl14_pretrain.pth")   # or an HF folder
  out = jaxmetrics.networks.dinov2.features(model, images)   # uint8 (N, H, W, 3), any size
  out["cls"].shape                                           # (N, 1024)
"""

import dataclasses
import functools
import json
import math
import pathlib
import re
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxmetrics.checkpoints import _params
from jaxmetrics.checkpoints import torch_checkpoint
from jaxmetrics.checkpoints import weights
from jaxmetrics.networks import clip as _clip
from jaxmetrics.networks import resize as _resize
from jaxmetrics.networks.base import FeatureNetwork
from jaxmetrics._errors import CheckpointError, InputError
from jaxmetrics._inputs import PRECISIONS, batched, check_batch_size, check_images, check_precision

__all__ = [
    "ARCHITECTURES",
    "Config",
    "DEFAULT",
    "DinoV2",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "INPUT_SIZE",
    "Model",
    "NETWORK",
    "NETWORKS",
    "POSITIONS",
    "RESIZE_MODES",
    "apply",
    "convert_state_dict",
    "feature_network",
    "features",
    "hf_to_hub",
    "host_resize",
    "interpolate_positions",
    "load",
    "network_of",
    "param_shapes",
    "position_weights",
    "preprocess",
]

DEFAULT = "dinov2-vitl14"
INPUT_SIZE = 224
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("dgm-eval", "edm2", "clean")
POSITIONS = ("original", "transformers")
FFNS = ("mlp", "swiglu")
# The hub model's interpolate_offset (dinov2/hub/backbones.py, _make_dinov2_model).
INTERPOLATE_OFFSET = 0.1
_HEAD_WIDTH = 64
_BICUBIC_A = -0.75  # torch's cubic convolution (ATen UpSample.h, get_cubic_upsample_coefficients)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# ----------------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class Config:
  """A DINOv2 backbone's size; the defaults are ViT-L/14 of the torch hub. Hashable (a static
  argument of the jitted forward).

  ``image_size // patch_size`` is the side of the position-embedding grid (518 // 14 = 37);
  ``intermediate_size`` is the FFN's hidden width (``4 · hidden_size`` for the MLP, the SwiGLU
  rule of the module docstring for ``ffn="swiglu"``).
  """
  hidden_size: int = 1024
  num_layers: int = 24
  num_heads: int = 16
  intermediate_size: int = 4096
  ffn: str = "mlp"
  patch_size: int = 14
  image_size: int = 518
  layer_norm_eps: float = 1e-6

  @property
  def grid(self):
    return self.image_size // self.patch_size

  @classmethod
  def from_hf(cls, config, source="config.json"):
    """From a Hugging Face ``Dinov2Config`` dict; missing fields take ``transformers``' defaults
    (which are ViT-B/14 at 224 px: 768 wide, 12 layers, 12 heads, ``mlp_ratio`` 4)."""
    if not isinstance(config, dict):
      raise CheckpointError(f"{source}: expected a DINOv2 config object, got "
                            f"{type(config).__name__}")
    kind = config.get("model_type")
    if kind != "dinov2":
      hint = "; a CLIP checkpoint is read by jaxmetrics.networks.clip.load" if kind == "clip" else ""
      raise CheckpointError(f"{source}: expected a Dinov2Model config (model_type 'dinov2'), got "
                            f"model_type {kind!r}{hint}")
    try:
      hidden = _field(config, "hidden_size", 768)
      ratio = config.get("mlp_ratio", 4)
      if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
        raise ValueError(f"expected mlp_ratio to be a positive number, got {ratio!r}")
      swiglu = bool(config.get("use_swiglu_ffn", False))
      inner = int(hidden * ratio)
      if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"expected hidden_act 'gelu' (the DINOv2 MLP's), got "
                         f"{config.get('hidden_act')!r}")
      if not config.get("layerscale_value", 1.0):
        raise ValueError("expected LayerScale (layerscale_value > 0), as every DINOv2 backbone")
      out = cls(hidden_size=hidden, num_layers=_field(config, "num_hidden_layers", 12),
                num_heads=_field(config, "num_attention_heads", 12),
                intermediate_size=(int(inner * 2 / 3) + 7) // 8 * 8 if swiglu else inner,
                ffn="swiglu" if swiglu else "mlp", patch_size=_field(config, "patch_size", 14),
                image_size=_field(config, "image_size", 224),
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-6)))
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"{source}: {e}") from None
    return out._validated(source)

  @classmethod
  def from_hub(cls, state_dict, source="state dict"):
    """From the tensor shapes of a torch hub state dict: width = ``cls_token`` size, layers = the
    number of ``blocks.N``, heads = width // 64 (all four released backbones), patch =
    ``patch_embed.proj.weight``'s kernel, image size = patch · √(``pos_embed`` rows − 1), FFN from
    ``mlp.fc1`` (MLP) or ``mlp.w12`` (SwiGLU, half its rows)."""
    if "register_tokens" in state_dict:
      raise CheckpointError(f"{source}: a DINOv2 with register tokens (a *_reg4 checkpoint); only "
                            "the backbones without registers are supported")
    shapes = {}
    for name, rank in (("cls_token", 3), ("pos_embed", 3), ("patch_embed.proj.weight", 4)):
      shape = tuple(np.shape(state_dict[name])) if name in state_dict else None
      if shape is None or len(shape) != rank:
        found = "no such tensor" if shape is None else f"shape {shape}"
        raise CheckpointError(f"{source}: not a DINOv2 torch hub state dict: expected a rank-{rank} "
                              f"tensor {name!r}, found {found}{_clip_hint(state_dict)}")
      shapes[name] = shape
    width = shapes["cls_token"][-1]
    _, _, patch, patch_w = shapes["patch_embed.proj.weight"]
    positions = shapes["pos_embed"][1]
    grid = math.isqrt(max(positions - 1, 0))
    if patch != patch_w or grid * grid + 1 != positions:
      raise CheckpointError(f"{source}: not a DINOv2 torch hub state dict: expected a square patch "
                            f"kernel and 1 + grid² positions, got kernel {patch}×{patch_w} and "
                            f"{positions} positions")
    if width < _HEAD_WIDTH or width % _HEAD_WIDTH:
      raise CheckpointError(f"{source}: cannot infer the heads: width {width} is not a multiple of "
                            f"the 64-wide heads of the released DINOv2 backbones; pass config=")
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    fc1, w12 = state_dict.get("blocks.0.mlp.fc1.weight"), state_dict.get("blocks.0.mlp.w12.weight")
    if fc1 is not None:
      ffn, inner = "mlp", int(np.shape(fc1)[0])
    elif w12 is not None:
      ffn, inner = "swiglu", int(np.shape(w12)[0]) // 2
    else:
      raise CheckpointError(f"{source}: not a DINOv2 torch hub state dict: no blocks.0.mlp.fc1 or "
                            "blocks.0.mlp.w12 weight")
    return cls(hidden_size=width, num_layers=len(layers), num_heads=width // _HEAD_WIDTH,
               intermediate_size=inner, ffn=ffn, patch_size=patch,
               image_size=patch * grid)._validated(source)

  def _validated(self, source):
    if self.ffn not in FFNS:
      raise CheckpointError(f"{source}: ffn must be one of {', '.join(FFNS)}, got {self.ffn!r}")
    if self.hidden_size % self.num_heads:
      raise CheckpointError(f"{source}: hidden_size {self.hidden_size} is not a multiple of "
                            f"num_attention_heads {self.num_heads}")
    if self.num_layers < 1 or self.grid < 1:
      raise CheckpointError(f"{source}: expected at least one layer and one patch per side, got "
                            f"{self.num_layers} layers, image {self.image_size}, patch "
                            f"{self.patch_size}")
    return self

  def summary(self):
    return (f"{self.num_layers}×{self.hidden_size}, {self.num_heads} heads, {self.ffn} "
            f"{self.intermediate_size}, patch {self.patch_size}, {self.grid}×{self.grid} positions")


def _field(config, key, default):
  value = config.get(key, default)
  if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
    value = value[0]
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"expected {key} to be a positive integer, got {value!r}")
  return value


def _clip_hint(state_dict):
  if any(k.startswith(("visual.", "vision_model.", "text_model.")) for k in state_dict):
    return " (its tensors are a CLIP's: read it with jaxmetrics.networks.clip.load)"
  return ""


ARCHITECTURES = {
    "dinov2-vits14": Config(hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536),
    "dinov2-vitb14": Config(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "dinov2-vitl14": Config(),
    "dinov2-vitg14": Config(hidden_size=1536, num_layers=40, num_heads=24, intermediate_size=4096,
                            ffn="swiglu"),
}
"""Registry name → :class:`Config` of the four torch hub backbones (``dinov2_vit{s,b,l,g}14``)."""


# ------------------------------------------------------------------------------ position embeddings


def _cubic_coefficients(t):
  """ATen's ``get_cubic_upsample_coefficients`` (a = −0.75) in float32 for fractions ``t``."""
  f, a = np.float32, np.float32(_BICUBIC_A)
  near = lambda x: ((a + f(2)) * x - (a + f(3))) * x * x + f(1)
  far = lambda x: ((a * x - f(5) * a) * x + f(8) * a) * x - f(4) * a
  s = f(1) - t
  return np.stack([far(t + f(1)), near(t), near(s), far(s + f(1))], axis=-1)


@functools.lru_cache(maxsize=None)
def position_weights(in_size, out_size, positions="original", offset=INTERPOLATE_OFFSET):
  """The ``(out_size, in_size)`` float32 matrix of torch's bicubic ``interpolate`` along one axis.

  ``positions="original"``: the hub model's call, ``scale_factor = (out_size + offset) / in_size``;
  ATen samples at ``src = (i + 0.5) · s − 0.5`` with ``s = float32(1 / scale_factor)``.
  ``positions="transformers"``: ``size=out_size``, so ``s = float32(in_size / out_size)``. Then
  (``upsample_bicubic2d``, ``align_corners=False``): ``k = floor(src)``, ``t = clip(src − k, 0,
  1)``, taps ``k − 1 … k + 2`` clamped to the table with the cubic-convolution weights of ``t``,
  all in float32. ``src`` is the float64 value of the expression rounded once to float32 (a fused
  multiply-add, as compiled).
  """
  if positions == "original":
    scale_factor = float(out_size + offset) / in_size
    if int(in_size * scale_factor) != out_size:
      raise InputError(f"positions: scale_factor {scale_factor!r} gives "
                       f"{int(in_size * scale_factor)} rows from {in_size}, not {out_size}")
    s = np.float32(1.0 / scale_factor)
  elif positions == "transformers":
    s = np.float32(np.float32(in_size) / np.float32(out_size))
  else:
    raise InputError(f"positions: expected one of {', '.join(POSITIONS)}, got {positions!r}")
  src = (np.float64(s) * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
  k = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  t = np.clip(src - k.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
  coeffs = _cubic_coefficients(t)
  matrix = np.zeros((out_size, in_size), np.float64)
  for j in range(4):
    np.add.at(matrix, (np.arange(out_size), np.clip(k - 1 + j, 0, in_size - 1)), coeffs[:, j])
  return matrix.astype(np.float32)


def interpolate_positions(pos_embed, grid_hw, *, image_square=True, positions="original",
                          precision=jax.lax.Precision.HIGHEST):
  """The position embeddings ``(1 + h · w, D)`` for a ``(h, w)`` patch grid, on device.

  ``pos_embed`` is the checkpoint's ``(1 + M², D)`` table (class token first, then the ``M × M``
  grid row-major). As ``interpolate_pos_encoding`` of both implementations, the table is returned
  as it is where ``h · w = M²`` and the image is square (``image_square``); otherwise the grid is
  resampled by :func:`position_weights` along the width, then the height (ATen's loop sums the
  width taps inside the height taps).
  """
  h, w = grid_hw
  count, dim = pos_embed.shape
  m = math.isqrt(count - 1)
  if h * w == m * m and image_square:
    return pos_embed
  table = pos_embed[1:].reshape(m, m, dim)
  rows = jnp.asarray(position_weights(m, h, positions))
  cols = jnp.asarray(position_weights(m, w, positions))
  table = jnp.einsum("wj,ijd->iwd", cols, table, precision=precision)
  table = jnp.einsum("hi,iwd->hwd", rows, table, precision=precision)
  return jnp.concatenate([pos_embed[:1], table.reshape(h * w, dim)], axis=0)


# ------------------------------------------------------------------------------------------ model


class LayerScale(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x * self.param("gamma", nn.initializers.ones, (x.shape[-1],), jnp.float32)


class Attention(nn.Module):
  """Multi-head self-attention with a fused ``qkv`` projection (``layers/attention.py``)."""
  num_heads: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    n, length, width = x.shape
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, precision=self.precision, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(n, length, 3, self.num_heads, head_dim), 2, 0)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k, precision=self.precision) * head_dim**-0.5
    out = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(logits, axis=-1), v,
                     precision=self.precision)
    return nn.Dense(width, precision=self.precision, name="proj")(out.reshape(n, length, width))


class FFN(nn.Module):
  """``fc2(gelu(fc1(x)))`` (exact GELU) or SwiGLU ``w3(silu(x₁) · x₂)``, ``x₁, x₂ = w12(x)``."""
  intermediate_size: int
  kind: str = "mlp"
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, precision=self.precision)
    if self.kind == "swiglu":
      x1, x2 = jnp.split(dense(2 * self.intermediate_size, name="w12")(x), 2, axis=-1)
      return dense(x.shape[-1], name="w3")(jax.nn.silu(x1) * x2)
    h = jax.nn.gelu(dense(self.intermediate_size, name="fc1")(x), approximate=False)
    return dense(x.shape[-1], name="fc2")(h)


class Block(nn.Module):
  """``x + ls1(attn(norm1(x)))`` then ``x + ls2(ffn(norm2(x)))`` (``layers/block.py``)."""
  config: Config
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = self.config
    # Two-pass variance, as torch's LayerNorm.
    norm = functools.partial(nn.LayerNorm, epsilon=c.layer_norm_eps, use_fast_variance=False)
    x = x + LayerScale(name="ls1")(Attention(c.num_heads, self.precision, name="attn")(
        norm(name="norm1")(x)))
    h = FFN(c.intermediate_size, c.ffn, self.precision, name="mlp")(norm(name="norm2")(x))
    return x + LayerScale(name="ls2")(h)


class DinoV2(nn.Module):
  """The backbone on normalised pixels ``(N, H, W, 3)``, H and W multiples of the patch size →
  ``{"cls": (N, D), "patch": (N, H/p · W/p, D)}`` after the final LayerNorm. Parameter names follow
  the torch hub's (``blocks_3/attn/qkv/kernel`` for ``blocks.3.attn.qkv.weight``)."""
  config: Config
  positions: str = "original"
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    n, height, width, _ = pixels.shape
    p = c.patch_size
    x = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", precision=self.precision,
                name="patch_embed")(pixels)
    grid = x.shape[1:3]
    x = x.reshape(n, -1, c.hidden_size)  # row-major patches, as torch's flatten(2)
    cls = self.param("cls_token", nn.initializers.zeros, (c.hidden_size,), jnp.float32)
    pos = self.param("pos_embed", nn.initializers.zeros, (1 + c.grid**2, c.hidden_size),
                     jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c.hidden_size)), x], axis=1)
    x = x + interpolate_positions(pos, grid, image_square=height == width,
                                  positions=self.positions, precision=self.precision)
    for i in range(c.num_layers):
      x = Block(c, self.precision, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False, name="norm")(x)
    return {"cls": x[:, 0], "patch": x[:, 1:]}


# --------------------------------------------------------------------------- checkpoint conversion


@functools.lru_cache(maxsize=16)
def param_shapes(config=Config()):
  """The parameter tree of :class:`DinoV2` for ``config`` as ``jax.ShapeDtypeStruct`` leaves."""
  s = config.image_size // config.patch_size * config.patch_size
  pixels = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  return jax.eval_shape(DinoV2(config).init, jax.random.key(0), pixels)["params"]


# Hugging Face Dinov2Model names (as save_pretrained writes them; transformers 5 renames q/k/v to
# q_proj/k_proj/v_proj/o_proj in memory) → torch hub names, per layer.
_HF_LAYER = {
    "norm1": "norm1", "norm2": "norm2", "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma", "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3", "mlp.down_proj": "mlp.w3",
}
_HF_QKV = {"attention.attention.query": 0, "attention.attention.key": 1,
           "attention.attention.value": 2, "attention.q_proj": 0, "attention.k_proj": 1,
           "attention.v_proj": 2}
_HF_SWIGLU = {"mlp.gate_proj": 0, "mlp.up_proj": 1}
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.mask_token": "mask_token",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}


def hf_to_hub(state_dict, source="state dict"):
  """Renames a Hugging Face ``Dinov2Model`` state dict to the torch hub's names.

  ``query``, ``key`` and ``value`` (each ``(D, D)``) are stacked into ``qkv`` ``(3D, D)`` in that
  order, the order in which the hub's ``qkv`` output is split (``reshape(B, N, 3, heads,
  head_dim)``); transformers' in-memory SwiGLU halves ``gate_proj`` / ``up_proj`` are stacked into
  ``w12`` likewise. A ``dinov2.`` prefix (``Dinov2For*`` models) is dropped; unknown names are kept
  and reported as unexpected by :func:`convert_state_dict`.
  """
  out, parts = {}, {}
  for name, array in state_dict.items():
    name = name.removeprefix("dinov2.")
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", name)
    if name in _HF_TOP:
      out[_HF_TOP[name]] = array
    elif m:
      index, module, leaf = m.groups()
      key = module if leaf != "lambda1" else f"{module}.lambda1"
      if key in _HF_QKV:
        parts.setdefault((index, "attn.qkv", leaf, 3), {})[_HF_QKV[key]] = array
      elif key in _HF_SWIGLU:
        parts.setdefault((index, "mlp.w12", leaf, 2), {})[_HF_SWIGLU[key]] = array
      elif key in _HF_LAYER:
        hub = _HF_LAYER[key]
        out[f"blocks.{index}.{hub}" if leaf == "lambda1" else f"blocks.{index}.{hub}.{leaf}"] = array
      else:
        out[name] = array
    else:
      out[name] = array
  for (index, module, leaf, count), chunks in parts.items():
    if sorted(chunks) != list(range(count)):
      raise CheckpointError(f"{source}: layer {index} has only part of its {module} projections")
    out[f"blocks.{index}.{module}.{leaf}"] = np.concatenate(
        [np.asarray(chunks[i]) for i in range(count)], axis=0)
  return out


def _hub_name_to_path(name, shapes):
  """``blocks.3.attn.qkv.weight`` → ``("blocks_3", "attn", "qkv", "kernel")``; ``None`` if the
  model has no such parameter."""
  if name in ("cls_token", "pos_embed"):
    return (name,)
  parts = name.split(".")
  if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
    parts = [f"blocks_{parts[1]}", *parts[2:]]
  if parts[:2] == ["patch_embed", "proj"]:
    parts = ["patch_embed", *parts[2:]]
  if parts[-1] == "weight":
    for leaf in ("kernel", "scale"):
      if (*parts[:-1], leaf) in shapes:
        return (*parts[:-1], leaf)
    return None
  path = tuple(parts)
  return path if path in shapes else None


def _hub_name(path):
  """The inverse of :func:`_hub_name_to_path`, for messages."""
  if path in (("cls_token",), ("pos_embed",)):
    return path[0]
  parts = [p.replace("blocks_", "blocks.") for p in path[:-1]]
  if parts[:1] == ["patch_embed"]:
    parts = ["patch_embed.proj", *parts[1:]]
  return ".".join(parts + ["weight" if path[-1] in ("kernel", "scale") else path[-1]])


def _to_flax(path, array):
  if path[-1] == "kernel":  # conv OIHW → HWIO; linear (out, in) → (in, out)
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
  if path in (("cls_token",), ("pos_embed",)):
    return array.reshape(array.shape[-2:] if path == ("pos_embed",) else array.shape[-1:])
  return array


def _torch_shape(path, shape):
  if path[-1] == "kernel":
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape[::-1])
  if path == ("cls_token",):
    return (1, 1, *shape)
  if path == ("pos_embed",):
    return (1, *shape)
  return tuple(shape)


def convert_state_dict(state_dict, config=Config(), source="state dict"):
  """Maps a DINOv2 state dict (torch hub or Hugging Face names) to :class:`DinoV2` params.

  Linear weights are transposed, the patch convolution goes from OIHW to HWIO, ``cls_token``
  ``(1, 1, D)`` and ``pos_embed`` ``(1, 1 + M², D)`` lose their unit axes, every tensor becomes
  float32, and ``mask_token`` (used only in training, for masked patches) is dropped. Every
  parameter that ``config`` implies must be present with its shape and no tensor may be left over;
  otherwise :class:`CheckpointError` says what differs.
  """
  if any(k.removeprefix("dinov2.").startswith(("embeddings.", "encoder.layer.")) for k in state_dict):
    state_dict = hf_to_hub(state_dict, source)
  layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
  if layers and len(layers) != config.num_layers:
    raise CheckpointError(f"{source}: the config has {config.num_layers} layers, the checkpoint "
                          f"{len(layers)}")
  shapes = {path: leaf.shape for path, leaf in
            traverse_util.flatten_dict(param_shapes(config)).items()}
  flat, unknown = {}, []
  for name, array in state_dict.items():
    if name == "mask_token":
      continue
    path = _hub_name_to_path(name, shapes)
    if path is None:
      unknown.append(name)
      continue
    array = np.asarray(array, dtype=np.float32)
    expected = _torch_shape(path, shapes[path])
    if tuple(array.shape) != expected:
      raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(array.shape)}, expected "
                            f"{expected} for the config ({config.summary()})")
    flat[path] = np.ascontiguousarray(_to_flax(path, array))
  return _params.assemble(flat, shapes, unknown, source,
                          f"a DINOv2 state dict for the config ({config.summary()})",
                          name=_hub_name)


# ----------------------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """A loaded DINOv2: its :class:`Config` and parameter tree (NumPy or JAX arrays, any placement)."""
  config: Config
  params: Any


def _read_json(path):
  try:
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read the config ({e.strerror or e})") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _weights_in(folder):
  for name in WEIGHT_FILES:
    if (folder / name).is_file():
      return folder / name
  if (folder / "open_clip_config.json").is_file():
    raise CheckpointError(f"{folder}: an OpenCLIP folder, not DINOv2; read it with "
                          "jaxmetrics.networks.clip.load")
  raise CheckpointError(f"{folder}: no DINOv2 weights; expected a torch hub .pth file or a Hugging "
                        f"Face folder with config.json and one of {', '.join(WEIGHT_FILES)}")


def _resolve_config(config, state_dict, weights_file, folder, is_folder):
  """The :class:`Config` of a checkpoint: ``config`` if given, else the folder's ``config.json``
  for a folder or Hugging Face names, else inferred from a torch hub state dict's shapes."""
  source = str(weights_file)
  hf_names = any(k.removeprefix("dinov2.").startswith("embeddings.") for k in state_dict)
  if config is None and (hf_names or is_folder):
    config = folder / "config.json"
    if not config.is_file():
      raise CheckpointError(f"{folder}: no config.json beside {weights_file.name}; expected the "
                            "Dinov2Config of a Hugging Face DINOv2 folder (or pass config=)")
  if config is None:
    return Config.from_hub(state_dict, source=source)
  if isinstance(config, (str, pathlib.Path)):
    source = str(config)
    config = _read_json(config)
  if isinstance(config, dict):
    config = Config.from_hf(config, source)
  if not isinstance(config, Config):
    raise InputError(f"config: expected a path, a dict or a jaxmetrics.networks.dinov2.Config, got "
                     f"{type(config).__name__}")
  return config


def _locate(path):
  """``(folder, weights file)`` of a checkpoint path (a file or a Hugging Face folder)."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    return path, _weights_in(path)
  if path.is_file():
    return path.parent, path
  raise CheckpointError(f"{path}: no such file or folder; expected a DINOv2 checkpoint (a torch "
                        "hub .pth or a Hugging Face folder)")


def _read(path, config=None):
  folder, weights_file = _locate(path)
  if torch_checkpoint.is_torchscript(weights_file):
    raise CheckpointError(f"{weights_file}: a TorchScript archive (OpenAI's CLIP .pt files are), "
                          "not a DINOv2 state dict; read CLIP with jaxmetrics.networks.clip.load")
  state_dict = _clip.read_tensors(weights_file)  # safetensors or torch state dicts, no torch
  config = _resolve_config(config, state_dict, weights_file, folder,
                           pathlib.Path(path).expanduser().is_dir())
  return Model(config, convert_state_dict(state_dict, config, source=str(weights_file)))


def load(path=None, *, name=None, config=None, check_hash=True, progress=True):
  """Loads a DINOv2 backbone: a torch hub ``.pth`` or a Hugging Face folder.

  Args:
    path: ``dinov2_vitl14_pretrain.pth`` and its siblings (the config is inferred from the tensor
      shapes), a Hugging Face folder (``config.json`` + ``model.safetensors`` or
      ``pytorch_model.bin``: ``facebook/dinov2-large`` and its siblings) or its weights file.
      ``None`` would take the registered file ``name`` from the cache, but Meta publishes no sha256
      for its files, so the registry does not download them: this raises ``WeightsError`` naming
      the URL to download from.
    name: a registered backbone (:data:`ARCHITECTURES`: ``"dinov2-vitl14"`` (:data:`DEFAULT`),
      ``"dinov2-vits14"``, ``"dinov2-vitb14"``, ``"dinov2-vitg14"``). With ``path``, the file
      must hold that architecture.
    config: overrides the inferred config or ``config.json``: a path, its dict or a
      :class:`Config`.
    check_hash: checks a registered file's sha256 where the registry has one (none of the DINOv2
      entries does).
    progress: show a progress bar while downloading.

  Returns:
    A :class:`Model` with NumPy float32 parameters.

  Raises:
    CheckpointError: the file is missing, unreadable, not a DINOv2 (e.g. a CLIP checkpoint), or
      its config and tensors disagree.
    WeightsError: ``path`` is ``None`` (no published sha256 to download against).
    InputError: ``name`` is not a registered DINOv2.
  """
  if name is not None and name not in ARCHITECTURES:
    raise InputError(f"name: expected a registered DINOv2 ({', '.join(ARCHITECTURES)}), got "
                     f"{name!r}")
  if path is None:
    path = weights.fetch(name or DEFAULT, check_hash=check_hash, progress=progress)
  elif name is not None:
    _, file = _locate(path)
    weights.fetch(name, file, check_hash=check_hash, progress=progress)
  model = _read(path, config)
  if name is not None and config is None and model.config != ARCHITECTURES[name]:
    raise CheckpointError(f"{path}: expected {name} ({ARCHITECTURES[name].summary()}), got "
                          f"{model.config.summary()}")
  return model


# ---------------------------------------------------------------------------------- preprocessing


def preprocess(images, resize="dgm-eval", size=INPUT_SIZE):
  """uint8 (0..255) or float ([0, 1]) images ``(N, H, W, 3)`` → the normalised ``(N, size, size,
  3)`` network input, on device: the resize of ``resize`` (module docstring), ``x / 255``, then
  ``(x − IMAGE_MEAN) / IMAGE_STD`` per channel, in float32 (torchvision's ``ToTensor`` and
  ``Normalize``; EDM2's ``x / 255 − mean) / std`` is the same)."""
  if resize == "dgm-eval":
    x = _resize.pil_bicubic(images, (size, size))
  else:
    x = images.astype(jnp.float32) * (1.0 if images.dtype == jnp.uint8 else 255.0)
    if resize == "clean":
      x = _resize.resize(x, (size, size), mode="clean")
    elif resize == "edm2":
      _, height, width, _ = images.shape
      rows = jnp.asarray(_resize.antialias_bicubic_matrix(height, size))
      cols = jnp.asarray(_resize.antialias_bicubic_matrix(width, size))
      # ATen's separable antialiased pass: width first, then height.
      x = jnp.einsum("pw,nhwc->nhpc", cols, x, precision=jax.lax.Precision.HIGHEST)
      x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=jax.lax.Precision.HIGHEST)
    else:
      raise InputError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
  x = x / 255.0
  return (x - jnp.asarray(IMAGE_MEAN, jnp.float32)) / jnp.asarray(IMAGE_STD, jnp.float32)


def host_resize(image, resize="dgm-eval", size=INPUT_SIZE):
  """One uint8 image ``(H, W, 3)`` → ``(size, size, 3)`` float32 values in [0, 255] on the host:
  the resize of :func:`preprocess` before ``x / 255``, for folders of several image sizes.

  ``"dgm-eval"`` is Pillow's own ``Image.resize((size, size), BICUBIC)``, exactly the transform of
  dgm-eval (the device's 8-bit route is bit-identical to it); ``"clean"`` is
  :func:`jaxmetrics.networks.resize.host_resize`; ``"edm2"`` applies the device's float32 matrices
  in NumPy. :func:`preprocess` of the result at ``size`` resizes nothing (Pillow's passes are
  skipped at an unchanged size; the other two filters are the identity there).
  """
  if resize == "dgm-eval":
    resized = Image.fromarray(np.asarray(image, np.uint8)).resize((size, size),
                                                                 Image.Resampling.BICUBIC)
    return np.asarray(resized, np.float32)
  if resize == "clean":
    return _resize.host_resize(image, (size, size), "clean")
  if resize == "edm2":
    height, width = image.shape[:2]
    x = np.asarray(image, np.float32)
    # ATen's separable antialiased pass: width first, then height, as on the device.
    x = np.einsum("pw,hwc->hpc", _resize.antialias_bicubic_matrix(width, size), x)
    return np.einsum("oh,hwc->owc", _resize.antialias_bicubic_matrix(height, size), x)
  raise InputError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")


# ------------------------------------------------------------------------------- forward passes


def _check_pixels(shape, config):
  _, height, width, _ = shape
  p = config.patch_size
  if height < p or width < p or height % p or width % p:
    raise InputError(f"pixels: expected height and width that are multiples of the patch size {p} "
                     f"(at least {p}), got {height}×{width}")


def apply(params, pixels, *, config=Config(), positions="original", precision="highest"):
  """The backbone on preprocessed pixels ``(N, H, W, 3)`` (H, W multiples of the patch size):
  ``{"cls": (N, D), "patch": (N, H/p · W/p, D)}``, traceable inside ``jit``."""
  _check_pixels(pixels.shape, config)
  model = DinoV2(config, positions, PRECISIONS[precision])
  return model.apply({"params": params}, pixels)


@functools.partial(jax.jit, static_argnames=("config", "resize", "size", "positions", "precision"))
def _features(params, images, config, resize, size, positions, precision):
  return apply(params, preprocess(images, resize, size), config=config, positions=positions,
               precision=precision)


def features(model, images, *, resize="dgm-eval", size=INPUT_SIZE, positions="original",
             precision="highest", batch_size=None):
  """DINOv2 features of images of any size: preprocessing and network on device, under ``jit``.

  Args:
    model: from :func:`load`.
    images: ``(N, H, W, 3)`` uint8 (0..255) or float ([0, 1]) images.
    resize: ``"dgm-eval"`` (default), ``"edm2"`` or ``"clean"``; see the module docstring.
    size: the side the images are resized to (224 in dgm-eval and EDM2); a multiple of the patch.
    positions: ``"original"`` (the hub model; default) or ``"transformers"`` (``Dinov2Model``).
    precision: ``"highest"`` (default; full float32), ``"high"`` or ``"default"``.
    batch_size: evaluate in chunks of this many images, padding the last. ``None``: one chunk.

  Returns:
    ``{"cls": (N, D), "patch": (N, (size / 14)², D)}`` float32, after the final LayerNorm.
  """
  if not isinstance(model, Model):
    raise InputError(f"model: expected a jaxmetrics.networks.dinov2.Model from "
                     f"jaxmetrics.networks.dinov2.load(...), got {type(model).__name__}")
  check_images(images)
  check_precision(precision)
  check_batch_size(batch_size)
  if resize not in RESIZE_MODES:
    raise InputError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
  if positions not in POSITIONS:
    raise InputError(f"positions: expected one of {', '.join(POSITIONS)}, got {positions!r}")
  if isinstance(size, bool) or not isinstance(size, int):
    raise InputError(f"size: expected an integer, got {size!r}")
  _check_pixels((1, size, size, 3), model.config)
  if isinstance(images, np.ndarray) and images.dtype == np.float64:
    images = images.astype(np.float32)
  forward = functools.partial(_features, config=model.config, resize=resize, size=size,
                              positions=positions, precision=precision)
  return batched(forward, model.params, images, batch_size)


# ---------------------------------------------------------------------------- as a FeatureNetwork


@functools.lru_cache(maxsize=None)
def feature_network(config=Config(), *, name="dinov2-vitl14", weights_name=DEFAULT,
                    positions="original"):
  """A :class:`~jaxmetrics.networks.base.FeatureNetwork` of the DINOv2 backbone ``config``.

  Its one feature is ``"cls"`` (``D`` = ``config.hidden_size``): the class token after the final
  LayerNorm, of the 224 × 224 input of its resize mode (:data:`RESIZE_MODES`, default
  ``"dgm-eval"``). Weights come from a ``path`` (a torch hub ``.pth`` or a Hugging Face folder)
  that must hold this architecture; the registry has no sha256 to download them against.
  :data:`NETWORKS` holds one per released backbone; call this for other sizes (one instance per
  set of arguments, so a network is compiled once).
  """

  def forward(params, images, *, resize, precision, shards=1, mask=None, host_resized=False):
    # A ViT is matrix products: the batch goes through whole on every platform, masked rows too.
    # Rows resized on the host are 224 × 224 already (host_resize).
    del shards, mask, host_resized
    out = apply(params, preprocess(images, resize), config=config, positions=positions,
                precision=precision)
    return {"cls": out["cls"]}

  def weights_file(path=None, *, check_hash=True, progress=True):
    if path is None:
      weights.fetch(weights_name, check_hash=check_hash, progress=progress)  # raises: no sha256
    folder, file = _locate(path)
    weights.fetch(weights_name, file, check_hash=check_hash, progress=progress)
    return (folder if pathlib.Path(path).expanduser().is_dir() else file), weights.sha256_file(file)

  def load_weights_file(path, sha256):
    del sha256  # identifies the weights in cache keys; the file is read as it is
    model = _read(path)
    if model.config != config:
      raise CheckpointError(f"{path}: expected the {name} backbone ({config.summary()}), got "
                            f"{model.config.summary()}")
    return model.params

  return FeatureNetwork(name=name, weights=weights_name, features={"cls": config.hidden_size},
                        resize_modes=RESIZE_MODES, forward=forward, weights_file=weights_file,
                        load_weights_file=load_weights_file, input_size=(INPUT_SIZE, INPUT_SIZE),
                        host_resize=host_resize)


NETWORKS = {key: feature_network(cfg, name=key, weights_name=key)
            for key, cfg in ARCHITECTURES.items()}
"""Registry name → :class:`~jaxmetrics.networks.base.FeatureNetwork` of the four hub backbones."""
NETWORK = NETWORKS[DEFAULT]
"""DINOv2 ViT-L/14, the FD_DINOv2 network of dgm-eval and EDM2, as a FeatureNetwork."""


def network_of(config):
  """The :class:`~jaxmetrics.networks.base.FeatureNetwork` of a backbone of ``config`` (a loaded
  checkpoint's): the registered one of that architecture (:data:`NETWORKS`), or one named after
  its size for others."""
  for network_name, known in ARCHITECTURES.items():
    if config == known:
      return NETWORKS[network_name]
  return feature_network(config, name=f"dinov2-{config.num_layers}x{config.hidden_size}-"
                         f"p{config.patch_size}-{config.ffn}")
