"""CLIP (Radford et al. 2021) in Flax: image and text embeddings as Hugging Face's ``CLIPModel``.

The image tower is a ViT: a patch convolution (no bias), a class token, learned position
embeddings, a LayerNorm *before* the transformer (``pre_layrnorm``, sic), pre-LN blocks
(``x + attn(ln1(x))``, ``x + mlp(ln2(x))``), a LayerNorm on the class token and a linear projection
without bias. The text tower adds token and position embeddings, runs the same blocks under a causal
mask, applies a final LayerNorm and pools the hidden state at the end-of-text token before its own
projection. These are ``CLIPModel.get_image_features`` / ``get_text_features`` of ``transformers``
(checked against 5.x): unnormalised embeddings of size ``projection_dim``.

* **Size** comes from the checkpoint's ``config.json`` (:class:`Config`); the defaults are
  ``openai/clip-vit-base-patch32`` (ViT-B/32: vision 768 × 12 layers × 12 heads, patch 32,
  image 224; text 512 × 12 × 8, 77 tokens, vocabulary 49408; projection 512; ``quick_gelu``,
  ``x·σ(1.702x)``; LayerNorm eps 1e-5).
* **End-of-text pooling** follows ``CLIPTextModel``: configs written before transformers PR 24773
  carry ``eos_token_id = 2`` and pool at ``argmax(input_ids)`` (the end-of-text token has the
  largest id in the CLIP vocabulary, as OpenAI's code assumes); newer ones pool at the first
  ``input_ids == eos_token_id``. :attr:`TextConfig.pooling` records which.
* **Checkpoints**: Hugging Face ``model.safetensors`` (or ``pytorch_model.bin``) with
  ``config.json``, OpenCLIP state dicts (``open_clip_model.safetensors`` /
  ``open_clip_pytorch_model.bin`` with ``open_clip_config.json``), and OpenAI's own TorchScript
  archives (``ViT-B-32.pt``: float16 weights, no config, no tokenizer), the ones :func:`load`
  downloads by name from the checkpoint registry (:data:`MODELS`, see ``weights/README.md``).
  OpenCLIP and OpenAI share one layout, mapped to the Hugging Face names (``attn.in_proj_weight``
  split into q, k, v; ``visual.proj`` and ``text_projection`` transposed); an OpenAI archive's
  config is inferred from its tensor shapes (:meth:`Config.from_openai`). Parameter paths follow
  the Hugging Face names (``vision_model/encoder/layers_0/self_attn/q_proj/kernel``).
* **Preprocessing** (:func:`preprocess`) runs on device and reproduces ``CLIPImageProcessor``'s
  PIL backend (``transformers`` 4's processor; ``CLIPImageProcessorPil`` in 5, whose default
  ``CLIPImageProcessor`` uses torchvision's own antialiased bicubic when torchvision is installed):
  bicubic resize of the shortest side to the model's image size with Pillow's antialiased filter
  *and its 8-bit fixed-point arithmetic* (the resized uint8 image is bit-identical to Pillow's),
  centre crop, ``/255``, then ``(x − mean) / std`` with OpenAI's mean
  ``(0.48145466, 0.4578275, 0.40821073)`` and std ``(0.26862954, 0.26130258, 0.27577711)``.
  OpenAI's ``clip.load`` and OpenCLIP resize the same way (torchvision ``Resize`` on a PIL image)
  and differ only in the centre crop's rounding (``crop="openai"``).
* **CMMD** (:data:`CMMD_NETWORK`, :func:`cmmd_network`): google-research/cmmd's feature network,
  OpenAI's ViT-L/14@336px (``ViT-L-14-336px.pt``, registry name :data:`CMMD_WEIGHTS`), fed as cmmd
  reads image files (:func:`cmmd_preprocess`: centre square crop *then* Pillow's bicubic resize to
  336, ``/255``, the same mean/std), its feature the L2-normalised image embedding
  (:func:`cmmd_embeddings`); the distance itself is :func:`jaxmetrics.cmmd`.
* **Tokens** come from the checkpoint's ``tokenizer.json`` through the ``tokenizers`` library
  (:func:`load_tokenizer`, :func:`tokenize`), truncated to the context length with the end-of-text
  token kept, as ``CLIPTokenizer(truncation=True)`` and OpenAI's ``clip.tokenize(truncate=True)``.
  OpenAI's archives carry no tokenizer: pass ``load(tokenizer=...)`` the ``tokenizer.json`` of a
  Hugging Face CLIP (all OpenAI CLIPs share one vocabulary) to embed strings, or pass token ids.

Matmuls and the patch convolution run at ``Precision.HIGHEST`` unless asked otherwise: on GPUs the
default float32 precision is TF32, which moves embeddings by far more than the 1e-4 the tests hold
them to against ``transformers``.

Example::

  model = jaxmetrics.networks.clip.load("clip-vit-base-patch32/")  # model.safetensors, config.json, ...
  img = jaxmetrics.networks.clip.image_embeddings(model, images)   # uint8 (N, H, W, 3), any size: (N, 512)
  txt = jaxmetrics.networks.clip.text_embeddings(model, ["a photo of a cat"])            # (1, 512)

  # OpenAI's ViT-B/32, downloaded once and checked against its sha256; text needs a tokenizer.
  model = jaxmetrics.networks.clip.load(tokenizer="clip-vit-base-patch32/tokenizer.json")
"""

import dataclasses
import functools
import importlib
import json
import pathlib
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxmetrics.checkpoints import _params
from jaxmetrics.networks import resize as _resize
from jaxmetrics.checkpoints import torch_checkpoint
from jaxmetrics.checkpoints import weights
from jaxmetrics.networks.base import FeatureNetwork
from jaxmetrics._errors import CheckpointError, InputError, WeightsError
from jaxmetrics._inputs import PRECISIONS, batched, check_batch_size, check_images, check_precision

__all__ = [
    "CLIP",
    "CMMD_NETWORK",
    "CMMD_WEIGHTS",
    "Config",
    "DEFAULT",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "MODELS",
    "Model",
    "TextConfig",
    "VisionConfig",
    "CMMD_FEATURE",
    "ImageTower",
    "VIT_L14_336",
    "cmmd_embeddings",
    "cmmd_network",
    "cmmd_preprocess",
    "convert_state_dict",
    "crop_offset",
    "image_embeddings",
    "load",
    "load_tokenizer",
    "param_shapes",
    "preprocess",
    "read_tensors",
    "resized_size",
    "text_embeddings",
    "tokenize",
]

DEFAULT = "openai-clip-vit-b-32"
# Registry names (weights/manifest.json) of OpenAI's CLIP TorchScript archives load() can download.
MODELS = ("openai-clip-vit-b-32", "openai-clip-vit-b-16", "openai-clip-vit-l-14",
          "openai-clip-vit-l-14-336")
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
CROPS = ("hf", "openai")
# Files looked for in a checkpoint folder, most preferred first.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                "open_clip_pytorch_model.bin")
TOKENIZER_FILE = "tokenizer.json"

ACTIVATIONS = {
    # transformers' QuickGELUActivation: the sigmoid approximation OpenAI trained with.
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
}
_LEGACY_EOS_TOKEN_ID = 2


# ----------------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The image tower; field names follow ``CLIPVisionConfig`` (``num_layers`` is its
  ``num_hidden_layers``, ``num_heads`` its ``num_attention_heads``, ``activation`` its
  ``hidden_act``)."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  activation: str = "quick_gelu"
  layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The text tower; ``max_length`` is ``max_position_embeddings`` (the context length).

  ``pooling`` is ``"eos"`` (first ``input_ids == eos_token_id``) or ``"argmax"``
  (``argmax(input_ids)``: OpenAI, OpenCLIP and Hugging Face configs with ``eos_token_id = 2``).
  """
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_layers: int = 12
  num_heads: int = 8
  max_length: int = 77
  activation: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407
  pooling: str = "eos"


@dataclasses.dataclass(frozen=True)
class Config:
  """A CLIP model's size; the defaults are ``openai/clip-vit-base-patch32``. Hashable (a static
  argument of the jitted forward passes)."""
  vision: VisionConfig = VisionConfig()
  text: TextConfig = TextConfig()
  projection_dim: int = 512

  @classmethod
  def from_hf(cls, config, source="config.json"):
    """From a Hugging Face ``CLIPConfig`` dict (``config.json``); missing fields take
    ``transformers``' defaults, and ``text_config_dict`` / ``vision_config_dict`` override
    ``text_config`` / ``vision_config`` as ``CLIPConfig`` does."""
    if not isinstance(config, dict):
      raise CheckpointError(f"{source}: expected a CLIP config object, got "
                            f"{type(config).__name__}")
    if config.get("model_type", "clip") != "clip":
      raise CheckpointError(f"{source}: expected model_type 'clip' (a CLIPModel config), got "
                            f"{config['model_type']!r}")
    text = {**(config.get("text_config") or {}), **(config.get("text_config_dict") or {})}
    vision = {**(config.get("vision_config") or {}), **(config.get("vision_config_dict") or {})}
    try:
      eos = _field(text, "eos_token_id", 49407, minimum=0)
      vision_cfg = VisionConfig(
          hidden_size=_field(vision, "hidden_size", 768),
          intermediate_size=_field(vision, "intermediate_size", 3072),
          num_layers=_field(vision, "num_hidden_layers", 12),
          num_heads=_field(vision, "num_attention_heads", 12),
          image_size=_field(vision, "image_size", 224),
          patch_size=_field(vision, "patch_size", 32),
          activation=vision.get("hidden_act", "quick_gelu"),
          layer_norm_eps=float(vision.get("layer_norm_eps", 1e-5)))
      text_cfg = TextConfig(
          vocab_size=_field(text, "vocab_size", 49408),
          hidden_size=_field(text, "hidden_size", 512),
          intermediate_size=_field(text, "intermediate_size", 2048),
          num_layers=_field(text, "num_hidden_layers", 12),
          num_heads=_field(text, "num_attention_heads", 8),
          max_length=_field(text, "max_position_embeddings", 77),
          activation=text.get("hidden_act", "quick_gelu"),
          layer_norm_eps=float(text.get("layer_norm_eps", 1e-5)),
          eos_token_id=eos,
          # CLIPTextModel keeps argmax pooling for the eos_token_id = 2 of older configs.
          pooling="argmax" if eos == _LEGACY_EOS_TOKEN_ID else "eos")
      out = cls(vision=vision_cfg, text=text_cfg,
                projection_dim=_field(config, "projection_dim", 512))
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"{source}: {e}") from None
    return out._validated(source)

  @classmethod
  def from_open_clip(cls, config, source="open_clip_config.json"):
    """From OpenCLIP's ``open_clip_config.json`` (``{"model_cfg": {...}}``) or its ``model_cfg``.

    OpenCLIP's defaults apply: ``head_width`` 64, ``mlp_ratio`` 4, text heads 8, 77 tokens,
    vocabulary 49408, ``quick_gelu`` false (``nn.GELU``, exact), argmax pooling.
    """
    cfg = config.get("model_cfg", config) if isinstance(config, dict) else None
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
      raise CheckpointError(f"{source}: expected an OpenCLIP model_cfg with vision_cfg and "
                            "text_cfg")
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    activation = "quick_gelu" if cfg.get("quick_gelu", False) else "gelu"
    try:
      v_width = _field(v, "width", 768)
      t_width = _field(t, "width", 512)
      out = cls(
          vision=VisionConfig(
              hidden_size=v_width,
              intermediate_size=int(v_width * float(v.get("mlp_ratio", 4.0))),
              num_layers=_field(v, "layers", 12),
              num_heads=v_width // _field(v, "head_width", 64),
              image_size=_field(v, "image_size", 224),
              patch_size=_field(v, "patch_size", 32),
              activation=activation),
          text=TextConfig(
              vocab_size=_field(t, "vocab_size", 49408),
              hidden_size=t_width,
              intermediate_size=int(t_width * float(t.get("mlp_ratio", 4.0))),
              num_layers=_field(t, "layers", 12),
              num_heads=_field(t, "heads", 8),
              max_length=_field(t, "context_length", 77),
              activation=activation,
              pooling="argmax"),
          projection_dim=_field(cfg, "embed_dim", 512))
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"{source}: {e}") from None
    if t.get("pool_type", "argmax") != "argmax" or v.get("pool_type", "tok") != "tok":
      raise CheckpointError(f"{source}: only OpenCLIP's default argmax text pooling and "
                            "class-token image pooling are supported")
    return out._validated(source)

  @classmethod
  def from_openai(cls, state_dict, source="state dict"):
    """From the tensor shapes of a state dict in OpenAI's layout, as OpenAI's ``build_model``.

    OpenAI's archives hold no config. As ``clip/model.py``'s ``build_model`` (ViT models): vision
    width = ``visual.conv1.weight`` output channels, patch = its kernel size, layers = the number of
    ``visual.transformer.resblocks``, image size = patch × √(``visual.positional_embedding``
    rows − 1); text width = ``ln_final.weight`` size, layers = the number of
    ``transformer.resblocks``, context length = ``positional_embedding`` rows, vocabulary =
    ``token_embedding.weight`` rows; projection = ``text_projection`` columns; heads = width // 64
    in both towers; ``quick_gelu``; LayerNorm eps 1e-5 (torch's default); argmax pooling (the
    end-of-text token has the largest id, ``vocab_size − 1``). The MLP widths are read from
    ``mlp.c_fc`` (4 × width in every OpenAI model).
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if "visual.proj" not in sd and any(k.startswith("visual.layer1.") for k in sd):
      raise CheckpointError(f"{source}: a ResNet CLIP (visual.layer1...): only ViT image towers "
                            "are supported")
    shapes = {}
    for name, rank in (("visual.conv1.weight", 4), ("visual.positional_embedding", 2),
                       ("visual.proj", 2), ("text_projection", 2), ("positional_embedding", 2),
                       ("token_embedding.weight", 2), ("ln_final.weight", 1)):
      shape = tuple(np.shape(sd[name])) if name in sd else None
      if shape is None or len(shape) != rank:
        found = "no such tensor" if shape is None else f"shape {shape}"
        raise CheckpointError(f"{source}: cannot infer the CLIP config: expected a rank-{rank} "
                              f"tensor {name!r} (OpenAI's ViT CLIP layout), found {found}")
      shapes[name] = shape
    v_width, _, patch, patch_w = shapes["visual.conv1.weight"]
    positions = shapes["visual.positional_embedding"][0]
    grid = round(max(positions - 1, 0) ** 0.5)
    if patch != patch_w or grid * grid + 1 != positions:
      raise CheckpointError(f"{source}: cannot infer the CLIP config: expected a square patch "
                            f"kernel and 1 + grid² vision positions, got kernel "
                            f"{patch}×{patch_w} and {positions} positions")
    t_width = shapes["ln_final.weight"][0]

    def layers(prefix):
      return len({k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)})

    def mlp_width(prefix, width):
      fc = sd.get(f"{prefix}0.mlp.c_fc.weight")
      return int(np.shape(fc)[0]) if fc is not None and np.ndim(fc) == 2 else 4 * width

    for tower, width in (("vision", v_width), ("text", t_width)):
      if width < 64:
        raise CheckpointError(f"{source}: cannot infer the CLIP config: {tower} width {width} is "
                              "below the 64 of one OpenAI attention head")
    v_blocks, t_blocks = "visual.transformer.resblocks.", "transformer.resblocks."
    vocab = shapes["token_embedding.weight"][0]
    return cls(
        vision=VisionConfig(
            hidden_size=v_width, intermediate_size=mlp_width(v_blocks, v_width),
            num_layers=layers(v_blocks), num_heads=v_width // 64, image_size=patch * grid,
            patch_size=patch, activation="quick_gelu", layer_norm_eps=1e-5),
        text=TextConfig(
            vocab_size=vocab, hidden_size=t_width, intermediate_size=mlp_width(t_blocks, t_width),
            num_layers=layers(t_blocks), num_heads=t_width // 64,
            max_length=shapes["positional_embedding"][0], activation="quick_gelu",
            layer_norm_eps=1e-5, eos_token_id=vocab - 1, pooling="argmax"),
        projection_dim=shapes["text_projection"][1])._validated(source)

  def _validated(self, source):
    for tower, cfg in (("vision", self.vision), ("text", self.text)):
      if cfg.activation not in ACTIVATIONS:
        raise CheckpointError(f"{source}: {tower} hidden_act must be one of "
                              f"{', '.join(ACTIVATIONS)}, got {cfg.activation!r}")
      if cfg.hidden_size % cfg.num_heads:
        raise CheckpointError(f"{source}: {tower} hidden_size {cfg.hidden_size} is not a multiple "
                              f"of num_attention_heads {cfg.num_heads}")
    if self.vision.image_size % self.vision.patch_size:
      raise CheckpointError(f"{source}: image_size {self.vision.image_size} is not a multiple of "
                            f"patch_size {self.vision.patch_size}")
    return self


def _field(config, key, default, minimum=1):
  value = config.get(key, default)
  if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
    value = value[0]  # image_size / patch_size may be given as a square pair
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"expected {key} to be an integer >= {minimum}, got {value!r}")
  return value


# ------------------------------------------------------------------------------------------ model


class MLP(nn.Module):
  intermediate_size: int
  activation: str
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.intermediate_size, precision=self.precision, name="fc1")(x)
    h = ACTIVATIONS[self.activation](h)
    return nn.Dense(x.shape[-1], precision=self.precision, name="fc2")(h)


class Attention(nn.Module):
  """Multi-head self-attention with separate q/k/v projections (``CLIPAttention``)."""
  num_heads: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x, mask=None):
    n, length, width = x.shape
    head_dim = width // self.num_heads
    dense = functools.partial(nn.Dense, width, precision=self.precision)
    split = lambda t: t.reshape(n, length, self.num_heads, head_dim)
    q = split(dense(name="q_proj")(x))
    k = split(dense(name="k_proj")(x))
    v = split(dense(name="v_proj")(x))
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k, precision=self.precision) * head_dim**-0.5
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights_ = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("nhqk,nkhd->nqhd", weights_, v, precision=self.precision)
    return dense(name="out_proj")(out.reshape(n, length, width))


class EncoderLayer(nn.Module):
  """Pre-LN block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""
  num_heads: int
  intermediate_size: int
  activation: str
  layer_norm_eps: float
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x, mask=None):
    # Two-pass variance, as torch's LayerNorm: CLIP's residual stream has large-mean channels.
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, use_fast_variance=False)
    attention = Attention(self.num_heads, self.precision, name="self_attn")
    x = x + attention(norm(name="layer_norm1")(x), mask)
    h = norm(name="layer_norm2")(x)
    return x + MLP(self.intermediate_size, self.activation, self.precision, name="mlp")(h)


class Encoder(nn.Module):
  config: Any  # VisionConfig or TextConfig
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x, mask=None):
    c = self.config
    for i in range(c.num_layers):
      x = EncoderLayer(c.num_heads, c.intermediate_size, c.activation, c.layer_norm_eps,
                       self.precision, name=f"layers_{i}")(x, mask)
    return x


class VisionEmbeddings(nn.Module):
  config: VisionConfig
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    p = c.patch_size
    x = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                precision=self.precision, name="patch_embedding")(pixels)
    n = x.shape[0]
    x = x.reshape(n, -1, c.hidden_size)  # row-major patches, as torch's flatten(2)
    cls = self.param("class_embedding", nn.initializers.normal(1.0), (c.hidden_size,))
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c.hidden_size)), x], axis=1)
    positions = nn.Embed(x.shape[1], c.hidden_size, name="position_embedding")
    return x + positions(jnp.arange(x.shape[1]))


class VisionTransformer(nn.Module):
  """``CLIPVisionModel``: returns the post-LayerNorm class token (``pooler_output``)."""
  config: VisionConfig
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    norm = functools.partial(nn.LayerNorm, epsilon=c.layer_norm_eps, use_fast_variance=False)
    x = VisionEmbeddings(c, self.precision, name="embeddings")(pixels)
    x = norm(name="pre_layrnorm")(x)
    x = Encoder(c, self.precision, name="encoder")(x)
    return norm(name="post_layernorm")(x[:, 0])


class TextEmbeddings(nn.Module):
  config: TextConfig

  @nn.compact
  def __call__(self, tokens):
    c = self.config
    x = nn.Embed(c.vocab_size, c.hidden_size, name="token_embedding")(tokens)
    positions = nn.Embed(c.max_length, c.hidden_size, name="position_embedding")
    return x + positions(jnp.arange(tokens.shape[1]))


class TextTransformer(nn.Module):
  """``CLIPTextModel``: returns the final-LayerNorm state at the end-of-text token."""
  config: TextConfig
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, tokens):
    c = self.config
    length = tokens.shape[1]
    x = TextEmbeddings(c, name="embeddings")(tokens)
    causal = jnp.tril(jnp.ones((length, length), bool))
    x = Encoder(c, self.precision, name="encoder")(x, causal)
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, use_fast_variance=False,
                     name="final_layer_norm")(x)
    if c.pooling == "argmax":
      eos = jnp.argmax(tokens, axis=-1)
    else:
      # The first end-of-text token: padding may reuse its id.
      eos = jnp.argmax(tokens == c.eos_token_id, axis=-1)
    return jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]


class CLIP(nn.Module):
  """Both towers and their projections; :meth:`encode_image` takes preprocessed
  ``(N, S, S, 3)`` pixels, :meth:`encode_text` int token ids ``(N, L)``, ``L ≤ max_length``."""
  config: Config
  precision: Any = jax.lax.Precision.HIGHEST

  def setup(self):
    c = self.config
    self.vision_model = VisionTransformer(c.vision, self.precision)
    self.text_model = TextTransformer(c.text, self.precision)
    self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, precision=self.precision)
    self.text_projection = nn.Dense(c.projection_dim, use_bias=False, precision=self.precision)
    # exp(logit_scale) multiplies cosines into logits; unused by embeddings, kept for completeness.
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(2.6592), ())

  def encode_image(self, pixels):
    return self.visual_projection(self.vision_model(pixels))

  def encode_text(self, tokens):
    return self.text_projection(self.text_model(tokens))

  def __call__(self, pixels, tokens):
    return self.encode_image(pixels), self.encode_text(tokens)


# --------------------------------------------------------------------------- checkpoint conversion


@functools.lru_cache(maxsize=16)
def param_shapes(config=Config()):
  """The parameter tree of :class:`CLIP` for ``config`` as ``jax.ShapeDtypeStruct`` leaves."""
  s = config.vision.image_size
  pixels = jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, config.text.max_length), jnp.int32)
  return jax.eval_shape(CLIP(config).init, jax.random.key(0), pixels, tokens)["params"]


def _hf_name_to_path(name, shapes):
  """``vision_model.encoder.layers.3.mlp.fc1.weight`` → ``(…, "layers_3", "mlp", "fc1", "kernel")``;
  ``None`` for a name :class:`CLIP` has no parameter for."""
  parts, path = name.split("."), []
  i = 0
  while i < len(parts):
    if parts[i] == "layers" and i + 1 < len(parts) and parts[i + 1].isdigit():
      path.append(f"layers_{parts[i + 1]}")
      i += 2
    else:
      path.append(parts[i])
      i += 1
  if path[-1] == "weight":
    # torch calls every learned matrix "weight"; Flax names it by the layer kind.
    for leaf in ("kernel", "scale", "embedding"):
      if (*path[:-1], leaf) in shapes:
        return (*path[:-1], leaf)
    return None
  path = tuple(path)
  return path if path in shapes else None


def _hf_name(path):
  """The inverse of :func:`_hf_name_to_path`, for messages."""
  leaf = "weight" if path[-1] in ("kernel", "scale", "embedding") else path[-1]
  return ".".join([p.replace("layers_", "layers.") for p in path[:-1]] + [leaf])


def _to_flax(path, array):
  if path[-1] == "kernel":  # conv OIHW → HWIO; linear (out, in) → (in, out)
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T
  return array


def _torch_shape(path, shape):
  if path[-1] == "kernel":
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape[::-1])
  return tuple(shape)


def _summary(config):
  v, t = config.vision, config.text
  return (f"vision {v.num_layers}×{v.hidden_size}, patch {v.patch_size}, image {v.image_size}; "
          f"text {t.num_layers}×{t.hidden_size}, vocabulary {t.vocab_size}, {t.max_length} tokens; "
          f"projection {config.projection_dim}")


def _open_clip_to_hf(state_dict):
  """Renames an OpenCLIP state dict to Hugging Face ``CLIPModel`` names (unknown names are kept).

  ``attn.in_proj_weight`` / ``in_proj_bias`` (q, k, v stacked on the first axis) are split, and
  ``visual.proj`` / ``text_projection``, stored ``(width, embed)`` for ``x @ proj``, are transposed
  to the ``(embed, width)`` of ``nn.Linear``.
  """
  out = {}
  for name, array in state_dict.items():
    name = name.removeprefix("module.")  # DistributedDataParallel training checkpoints
    if name == "attn_mask":  # the text tower's causal mask buffer
      continue
    if name in _OPENAI_SCALARS and np.ndim(array) == 0:
      continue  # 0-d sizes in OpenAI's TorchScript archives; build_model drops them too
    tower, rest = (("vision_model", name[len("visual."):]) if name.startswith("visual.")
                   else ("text_model", name))
    head, _, leaf = rest.partition(".")
    if name in ("logit_scale", "text_projection.weight"):
      out[name] = array
    elif name == "visual.proj":
      out["visual_projection.weight"] = array.T
    elif name == "text_projection":
      out["text_projection.weight"] = array.T
    elif rest in _OPEN_CLIP_EMBEDDINGS:
      out[f"{tower}.{_OPEN_CLIP_EMBEDDINGS[rest]}"] = array
    elif head in _OPEN_CLIP_NORMS:
      out[f"{tower}.{_OPEN_CLIP_NORMS[head]}.{leaf}"] = array
    elif rest.startswith("transformer.resblocks."):
      index, sub = rest[len("transformer.resblocks."):].split(".", 1)
      prefix = f"{tower}.encoder.layers.{index}"
      module, leaf = sub.rsplit(".", 1)
      if module == "attn" and leaf in ("in_proj_weight", "in_proj_bias"):
        kind = leaf.rsplit("_", 1)[1]
        for part, chunk in zip("qkv", np.split(np.asarray(array), 3, axis=0)):
          out[f"{prefix}.self_attn.{part}_proj.{kind}"] = chunk
      elif module in _OPEN_CLIP_BLOCK:
        out[f"{prefix}.{_OPEN_CLIP_BLOCK[module]}.{leaf}"] = array
      else:
        out[name] = array  # e.g. LayerScale (ls_1): reported as unexpected under its own name
    else:
      out[name] = array
  return out


_OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")
_OPEN_CLIP_EMBEDDINGS = {"conv1.weight": "embeddings.patch_embedding.weight",
                         "class_embedding": "embeddings.class_embedding",
                         "positional_embedding": "embeddings.position_embedding.weight",
                         "token_embedding.weight": "embeddings.token_embedding.weight"}
_OPEN_CLIP_NORMS = {"ln_pre": "pre_layrnorm", "ln_post": "post_layernorm",
                    "ln_final": "final_layer_norm"}
_OPEN_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2",
                    "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1",
                    "mlp.c_proj": "mlp.fc2"}


def _layer_counts(names, tower):
  prefix = f"{tower}.encoder.layers."
  return len({n[len(prefix):].split(".", 1)[0] for n in names if n.startswith(prefix)})


def convert_state_dict(state_dict, config=Config(), source="state dict"):
  """Maps a CLIP state dict (Hugging Face ``CLIPModel`` or OpenCLIP/OpenAI names) to :class:`CLIP`
  params.

  Linear weights are transposed, the patch convolution goes from OIHW to HWIO, every tensor becomes
  float32 (exactly, from OpenAI's float16) and the ``position_ids`` buffers of older checkpoints,
  the ``attn_mask`` buffer of OpenCLIP and the 0-d ``input_resolution``, ``context_length`` and
  ``vocab_size`` of OpenAI's archives are dropped. Every parameter that ``config`` implies must be
  present with its shape, and no tensor may be left over; otherwise :class:`CheckpointError` says
  what differs (layer counts first, then shapes, then names).
  """
  if any(name.removeprefix("module.").startswith("visual.") for name in state_dict):
    state_dict = _open_clip_to_hf(state_dict)
  state_dict = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
  for tower, cfg in (("vision_model", config.vision), ("text_model", config.text)):
    found = _layer_counts(state_dict, tower)
    if found and found != cfg.num_layers:
      raise CheckpointError(f"{source}: the config has {cfg.num_layers} {tower} layers, the "
                            f"checkpoint {found}")
  shapes = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(param_shapes(config)).items()}
  flat, unknown = {}, []
  for name, array in state_dict.items():
    path = _hf_name_to_path(name, shapes)
    if path is None:
      unknown.append(name)
      continue
    array = _to_flax(path, np.asarray(array, dtype=np.float32))
    if array.shape != shapes[path]:
      raise CheckpointError(
          f"{source}: tensor {name!r} has shape {_torch_shape(path, array.shape)}, expected "
          f"{_torch_shape(path, shapes[path])} for the config ({_summary(config)})")
    flat[path] = np.array(array, order="C")  # not ascontiguousarray: it makes logit_scale 1-d
  return _params.assemble(flat, shapes, unknown, source,
                          f"a CLIPModel state dict for the config ({_summary(config)})", name=_hf_name)


# ----------------------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """A loaded CLIP: its :class:`Config`, its parameter tree (NumPy or JAX arrays, any placement)
  and its ``tokenizers.Tokenizer``, or ``None`` when there is none (then text must be token ids)."""
  config: Config
  params: Any
  tokenizer: Any = None


def _require(module, package):
  # Optional dependencies (the "clip" extra), imported on first use: jaxmetrics works without them.
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ImportError(f"{module}: the CLIP models need the {package!r} package: pip install "
                      f"'jaxmetrics[clip]'") from None


def read_tensors(path):
  """Reads a ``.safetensors`` file (with the ``safetensors`` package) or a torch ``.bin``/``.pt``/
  ``.pth`` state dict (with :mod:`jaxmetrics.checkpoints.torch_checkpoint`, no torch) into NumPy arrays."""
  path = pathlib.Path(path)
  if path.suffix != ".safetensors":
    return torch_checkpoint.load_state_dict(path)
  safetensors = _require("safetensors", "safetensors")
  safetensors_numpy = _require("safetensors.numpy", "safetensors")
  # ml_dtypes (a JAX dependency) registers bfloat16 with NumPy; BF16 tensors need it.
  importlib.import_module("ml_dtypes")
  try:
    return dict(safetensors_numpy.load_file(path))
  except (safetensors.SafetensorError, OSError, ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})"
                          ) from None


# Tensor names that only an image model of another kind has: DINOv2 (torch hub: cls_token,
# patch_embed.*, blocks.*; Hugging Face Dinov2Model: embeddings.cls_token, encoder.layer.*).
_DINOV2_NAMES = ("cls_token", "patch_embed.proj.weight", "embeddings.cls_token",
                 "embeddings.mask_token", "mask_token")


def _check_is_clip(state_dict, source):
  """A one-line ``CheckpointError`` for a state dict with neither CLIP layout's image tower."""
  names = [k.removeprefix("module.") for k in state_dict]
  if any(n.startswith(("visual.", "vision_model.")) for n in names):
    return
  hint = ""
  if any(n in _DINOV2_NAMES or n.startswith("blocks.0.") for n in names):
    hint = " (a DINOv2 checkpoint? load it with the DINOv2 network)"
  shown = ", ".join(repr(n) for n in names[:3]) or "no tensors"
  raise CheckpointError(f"{source}: not a CLIP checkpoint{hint}: expected image-tower tensors "
                        f"named visual.* (OpenAI, OpenCLIP) or vision_model.* (Hugging Face), got "
                        f"{shown}{', ...' if len(names) > 3 else ''}")


def _read_json(path):
  try:
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read the config ({e.strerror or e})") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _find(folder, names, what):
  for name in names:
    if (folder / name).is_file():
      return folder / name
  raise CheckpointError(f"{folder}: no {what}; expected one of {', '.join(names)}")


def _parse_config(config):
  """A :class:`Config` from a path to a Hugging Face or OpenCLIP config file, its dict, or itself."""
  source = str(config) if isinstance(config, (str, pathlib.Path)) else "config"
  if isinstance(config, (str, pathlib.Path)):
    config = _read_json(config)
  if isinstance(config, dict):
    is_open_clip = "model_cfg" in config or "vision_cfg" in config
    config = (Config.from_open_clip if is_open_clip else Config.from_hf)(config, source)
  if not isinstance(config, Config):
    raise InputError(f"config: expected a path, a dict or a jaxmetrics.networks.clip.Config, got "
                     f"{type(config).__name__}")
  return config


def load(path=None, *, name=None, config=None, tokenizer=None, check_hash=True, progress=True):
  """Loads a CLIP checkpoint: OpenAI's (a registered TorchScript ``.pt``, downloaded by name),
  Hugging Face (``model.safetensors`` / ``pytorch_model.bin`` + ``config.json``) or OpenCLIP
  (``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` + ``open_clip_config.json``).

  Args:
    path: a checkpoint folder (the files above, and ``tokenizer.json`` for text) or a weights file
      (its config and ``tokenizer.json`` are looked for beside it; a TorchScript archive such as
      OpenAI's ``ViT-B-32.pt`` needs no config). ``None`` uses the registered checkpoint ``name``
      from the cache (``$JAXMETRICS_CACHE``, default ``~/.cache/jaxmetrics``), downloading it and
      checking its size and sha256 on first use.
    name: a registered CLIP checkpoint, one of :data:`MODELS`: ``"openai-clip-vit-b-32"``
      (:data:`DEFAULT` when ``path`` is ``None``), ``"openai-clip-vit-b-16"``,
      ``"openai-clip-vit-l-14"`` or ``"openai-clip-vit-l-14-336"`` (ViT-L/14@336px, CMMD's network:
      :data:`CMMD_NETWORK`). With a ``path`` to a file, that file is a local copy of it and its
      sha256 is checked (unless ``check_hash=False``).
    config: overrides the config file, or the config inferred from an OpenAI archive
      (:meth:`Config.from_openai`): a path to one, its parsed dict (Hugging Face or OpenCLIP
      format) or a :class:`Config`.
    tokenizer: overrides ``tokenizer.json`` beside the weights: a path or a
      ``tokenizers.Tokenizer``. OpenAI's archives carry none: without one, :func:`text_embeddings`
      accepts token ids only. Every OpenAI CLIP uses the same BPE vocabulary, so the
      ``tokenizer.json`` of Hugging Face's ``openai/clip-vit-base-patch32`` serves all three.
    check_hash: verify the registered file's sha256 (an error if it differs): a file already in
      the cache is hashed again on each load (a download is checked while it streams), and a local
      ``path`` given with ``name`` is checked against that entry. Pass ``False`` for custom weights
      in a registered model's place. Files loaded by ``path`` alone are never checked.
    progress: show a progress bar while downloading.

  Returns:
    A :class:`Model`. Parameters are NumPy float32 arrays; place them with ``jax.device_put``.

  Raises:
    CheckpointError: a file is missing or unreadable, or the config and the tensors disagree.
    WeightsError: a registered checkpoint cannot be downloaded, or its size or sha256 differs.
    InputError: ``name`` is not a registered CLIP checkpoint, or is given with a folder.
  """
  if name is not None and name not in MODELS:
    raise InputError(f"name: expected a registered CLIP checkpoint ({', '.join(MODELS)}), got "
                     f"{name!r}")
  if path is None:
    name = name or DEFAULT
    # A download is hashed while it streams; a file found in the cache is hashed here.
    reused = weights.cached_path(name).is_file()
    folder, weights_file = None, weights.fetch(name, progress=progress)
    if check_hash and reused:
      weights.verify(name)
  else:
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
      if name is not None:
        raise InputError(f"name: {name!r} is one file, but path {path} is a folder; pass the "
                         "file's path (or no path to use the cache)")
      folder, weights_file = path, _find(path, WEIGHT_FILES, "CLIP weights file")
    elif path.is_file():
      folder, weights_file = path.parent, path
      if name is not None:
        weights.fetch(name, path, check_hash=check_hash)
    else:
      raise CheckpointError(f"{path}: no such file or folder; expected a CLIP checkpoint")
  if (config is None and folder is not None and weights_file.name in WEIGHT_FILES[:2]
      and (folder / "config.json").is_file()):
    # A Hugging Face folder's config names its model: another kind (a DINOv2 folder) is refused
    # from its config.json before gigabytes of weights are read.
    config = folder / "config.json"
  if config is not None:
    config = _parse_config(config)
  state_dict = read_tensors(weights_file)
  _check_is_clip(state_dict, weights_file)
  if config is None and (path is None or torch_checkpoint.is_torchscript(weights_file)):
    config = Config.from_openai(state_dict, source=str(weights_file))
  elif config is None:
    open_clip = any(k.removeprefix("module.").startswith("visual.") for k in state_dict)
    names = ("open_clip_config.json",) if open_clip else ("config.json",)
    config = _parse_config(_find(folder, names, "CLIP config beside the weights"))
  params = convert_state_dict(state_dict, config, source=str(weights_file))
  if tokenizer is None and folder is not None and (folder / TOKENIZER_FILE).is_file():
    tokenizer = folder / TOKENIZER_FILE
  if isinstance(tokenizer, (str, pathlib.Path)):
    tokenizer = load_tokenizer(tokenizer, length=config.text.max_length)
  return Model(config, params, tokenizer)


# ---------------------------------------------------------------------------------- preprocessing


def resized_size(height, width, size=224):
  """``(height, width)`` after resizing the shortest side to ``size``, the other to
  ``int(size · long / short)`` (truncated), as ``CLIPImageProcessor`` and torchvision's
  ``Resize``."""
  if width <= height:
    return int(size * height / width), size
  return size, int(size * width / height)


def crop_offset(resized, size, crop="hf"):
  """First row/column of the centre crop: ``(resized − size) // 2`` for Hugging Face's
  ``center_crop``, ``int(round((resized − size) / 2))`` (round half to even) for torchvision's
  ``CenterCrop`` (OpenAI's ``clip.load`` and OpenCLIP). They differ when
  ``resized − size ≡ 3 (mod 4)``."""
  if crop == "hf":
    return (resized - size) // 2
  return int(round((resized - size) / 2.0))


def preprocess(images, *, size=224, crop="hf"):
  """CLIP's image preprocessing on device: ``(N, H, W, 3)`` → normalised ``(N, size, size, 3)``.

  Shortest side resized to ``size`` with PIL's bicubic filter (antialiased when shrinking; the
  other side to ``int(size · long / short)``), centre crop ``size × size`` (see
  :func:`crop_offset`), ``x / 255``, then ``(x − IMAGE_MEAN) / IMAGE_STD`` per channel.

  * uint8 images take Pillow's 8-bit path exactly (fixed-point coefficients, rounding and
    clipping after each pass, passes in Pillow's order): the resized image equals
    ``Image.resize((w, h), BICUBIC)`` of Pillow ≥ 13 bit for bit, so the output matches
    ``CLIPImageProcessor`` (PIL backend) to float32 rounding of the last two steps. Pillow ≤ 12
    always resampled horizontally first; for images more than twice as tall as wide that are
    shrunk, it differs from Pillow 13 (and from us) by one level in some pixels.
  * float images in [0, 1] use the same filter in float32 on ``255 x``, clipped to [0, 255] after
    each pass, without the 8-bit rounding. (``CLIPImageProcessor`` has no faithful float path: it
    truncates to uint8 and rescales twice.)

  Only the output rows and columns the crop keeps are computed. ``crop="openai"`` selects
  torchvision's centre crop (OpenAI's ``clip.load`` and OpenCLIP); everything else is shared.
  """
  if crop not in CROPS:
    raise InputError(f"crop: expected one of {', '.join(CROPS)}, got {crop!r}")
  _, height, width, _ = images.shape
  out_h, out_w = resized_size(height, width, size)
  top, left = crop_offset(out_h, size, crop), crop_offset(out_w, size, crop)
  if images.dtype == jnp.uint8:
    x = images.astype(jnp.int32)
    resample = _resize.pil_pass_8bpc
  else:
    x = images.astype(jnp.float32) * 255.0
    resample = _resize.pil_pass_float
  for axis, out, start in _resize.pil_pass_order(height, width, out_h, out_w, top, left):
    if out != x.shape[axis]:
      x = resample(x, axis, out, start, size)
    elif start or size != out:
      x = jax.lax.slice_in_dim(x, start, start + size, axis=axis)
  x = x.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGE_MEAN, jnp.float32)) / jnp.asarray(IMAGE_STD, jnp.float32)


# ---------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(path, *, length=77):
  """Reads a ``tokenizer.json`` (Hugging Face ``tokenizers`` format) and sets truncation to
  ``length`` tokens, the special tokens of its post-processor included."""
  tokenizers = _require("tokenizers", "tokenizers")
  try:
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises plain Exception for unreadable or malformed files
    raise CheckpointError(f"{path}: not a tokenizers tokenizer.json ({' '.join(str(e).split())})"
                          ) from None
  tokenizer.enable_truncation(max_length=length)
  tokenizer.no_padding()
  return tokenizer


def tokenize(tokenizer, texts, *, length=77):
  """Token ids ``(N, length)`` int32 of ``texts``, host-only.

  Each text is encoded with the tokenizer's post-processor (CLIP: ``<|startoftext|> …
  <|endoftext|>``), truncated to ``length`` keeping the end-of-text token, and padded with 0 (as
  OpenAI's ``clip.tokenize``). The padding value never reaches the embedding: the causal mask stops
  later positions from affecting the end-of-text token, and pooling picks the first end-of-text.
  """
  if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
    raise InputError(f"texts: expected a list of strings, got {type(texts).__name__}")
  if not texts:
    raise InputError("texts: expected at least one text, got an empty list")
  if bad := [i for i, t in enumerate(texts) if not isinstance(t, str)]:
    raise InputError(f"texts: expected strings, got {type(texts[bad[0]]).__name__} at index "
                     f"{bad[0]}")
  truncation = tokenizer.truncation
  if (truncation is None or truncation.get("max_length") != length or tokenizer.padding is not None
      or truncation.get("direction", "right") != "right"):
    tokenizer = type(tokenizer).from_str(tokenizer.to_str())  # a copy: leave the caller's alone
    tokenizer.enable_truncation(max_length=length)
    tokenizer.no_padding()
  ids = np.zeros((len(texts), length), np.int32)
  for row, encoding in zip(ids, tokenizer.encode_batch(list(texts))):
    row[:len(encoding.ids)] = encoding.ids
  return ids


# ------------------------------------------------------------------------------------- embeddings


@functools.partial(jax.jit, static_argnames=("config", "precision", "crop"))
def _image_forward(params, images, config, precision="highest", crop="hf"):
  x = preprocess(images, size=config.vision.image_size, crop=crop)
  model = CLIP(config, PRECISIONS[precision])
  return model.apply({"params": params}, x, method=CLIP.encode_image)


@functools.partial(jax.jit, static_argnames=("config", "precision"))
def _text_forward(params, tokens, config, precision="highest"):
  return CLIP(config, PRECISIONS[precision]).apply({"params": params}, tokens,
                                                     method=CLIP.encode_text)


def _check_model(model):
  if not isinstance(model, Model):
    raise InputError(f"model: expected a jaxmetrics.networks.clip.Model from jaxmetrics.networks.clip.load(...), got "
                     f"{type(model).__name__}")


def _check_options(precision, batch_size):
  check_precision(precision)
  check_batch_size(batch_size)


def image_embeddings(model, images, *, batch_size=None, precision="highest", crop="hf"):
  """CLIP image embeddings ``(N, projection_dim)`` float32, unnormalised
  (``CLIPModel.get_image_features`` on ``CLIPImageProcessor`` output).

  Args:
    model: from :func:`load`.
    images: ``(N, H, W, 3)`` uint8 (0..255) or float ([0, 1]) images of any size; preprocessing
      (:func:`preprocess`) runs on device inside the same ``jit``.
    batch_size: evaluate in chunks of this many images, padding the last, so any N compiles once
      per (batch_size, H, W). ``None``: one chunk.
    precision: ``"highest"`` (default; full float32), ``"high"`` or ``"default"`` (TF32/bfloat16
      passes on accelerators).
    crop: ``"hf"`` (default) or ``"openai"``; see :func:`crop_offset`.
  """
  _check_model(model)
  check_images(images)
  _check_options(precision, batch_size)
  if crop not in CROPS:
    raise InputError(f"crop: expected one of {', '.join(CROPS)}, got {crop!r}")
  if isinstance(images, np.ndarray) and images.dtype == np.float64:
    images = images.astype(np.float32)
  forward = functools.partial(_image_forward, config=model.config, precision=precision, crop=crop)
  return batched(forward, model.params, images, batch_size)


def text_embeddings(model, texts, *, batch_size=None, precision="highest"):
  """CLIP text embeddings ``(N, projection_dim)`` float32, unnormalised
  (``CLIPModel.get_text_features``).

  Args:
    model: from :func:`load`.
    texts: a list of strings (tokenized with ``model.tokenizer`` to the context length, see
      :func:`tokenize`), or integer token ids ``(N, L)``, ``L ≤ max_length``, that end in the
      end-of-text token.
    batch_size: as in :func:`image_embeddings`.
    precision: as in :func:`image_embeddings`.
  """
  _check_model(model)
  _check_options(precision, batch_size)
  config = model.config.text
  if isinstance(texts, (list, tuple, str)):
    if model.tokenizer is None:
      raise InputError("texts: this model has no tokenizer (OpenAI's .pt archives carry none, and "
                       "no tokenizer.json was beside the weights); pass jaxmetrics.networks.clip.load(..., "
                       "tokenizer='tokenizer.json') (Hugging Face's openai/clip-vit-base-patch32 "
                       "has the one every OpenAI CLIP uses), or pass integer token ids")
    tokens = tokenize(model.tokenizer, texts, length=config.max_length)
  else:
    tokens = np.asarray(texts)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or 0 in tokens.shape:
      raise InputError(f"texts: expected a list of strings or integer token ids (N, L), got "
                       f"{tokens.dtype} {tokens.shape}")
    if tokens.shape[1] > config.max_length:
      raise InputError(f"texts: expected at most {config.max_length} tokens per text (the context "
                       f"length), got {tokens.shape[1]}")
    tokens = tokens.astype(np.int32)
  if tokens.min() < 0 or tokens.max() >= config.vocab_size:
    raise InputError(f"texts: token ids must lie in [0, {config.vocab_size}) (the vocabulary), got "
                     f"[{tokens.min()}, {tokens.max()}]: is the tokenizer the model's?")
  forward = functools.partial(_text_forward, config=model.config, precision=precision)
  return batched(forward, model.params, tokens, batch_size)


# --------------------------------------------------------------------------------------------- CMMD


CMMD_WEIGHTS = "openai-clip-vit-l-14-336"
"""Registry name of CMMD's network: OpenAI's ``ViT-L-14-336px.pt`` (``clip.load("ViT-L/14@336px")``)."""
CMMD_FEATURE = "clip_embedding"
CMMD_RESIZE = "cmmd"
VIT_L14_336 = Config(
    vision=VisionConfig(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16,
                        image_size=336, patch_size=14),
    text=TextConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12,
                    pooling="argmax"),
    projection_dim=768)
"""OpenAI's ViT-L/14@336px as :meth:`Config.from_openai` reads it from ``ViT-L-14-336px.pt``: vision
1024 × 24 layers × 16 heads, patch 14 on a 24 × 24 grid (577 positions), image 336; text 768 × 12 ×
12; projection 768. scenic's ``CONFIGS['vit_l14_336px']``, which google-research/cmmd loads, is the
same model."""


def cmmd_preprocess(images, *, size=336):
  """CMMD's image preprocessing on device: ``(N, H, W, 3)`` → normalised ``(N, size, size, 3)``.

  As google-research/cmmd reads an image file (``io_util.py``: ``_center_crop_and_resize``, then
  ``/ 255.0`` of the float32 array) and embeds it (``embedding.py``: ``_clip_preprocess``):

  1. centre crop to the largest square, side ``l = min(H, W)``, first row ``(H − l) // 2`` and
     column ``(W − l) // 2`` (PIL's ``crop((left, top, left + l, top + l))``);
  2. PIL's ``resize((size, size), BICUBIC)`` of the square (antialiased when shrinking; nothing
     when ``l == size``, as Pillow returns a copy);
  3. ``x / 255`` in float32, then ``(x − IMAGE_MEAN) / IMAGE_STD`` in float32 (scenic's CLIP
     ``normalize_image``). cmmd's second resize, ``jax.image.resize`` to the same 336 × 336, is the
     identity (it skips dimensions whose size does not change).

  Unlike :func:`preprocess` (Hugging Face's processor: resize the shortest side, then crop), the
  crop comes first. uint8 images take Pillow's 8-bit path exactly (see :func:`preprocess`): the
  resized image is bit-identical to Pillow's, and the output equals cmmd's to float32 rounding.
  Float images in [0, 1] (cmmd reads only 8-bit files) get the same filter in float32 on
  ``255 x``, clipped to [0, 255] after each pass so that they stay in the [0, 1] cmmd checks for.
  """
  _, height, width, _ = images.shape
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  x = jax.lax.slice(images, (0, top, left, 0), (images.shape[0], top + side, left + side, 3))
  if images.dtype == jnp.uint8:
    x = x.astype(jnp.int32)
    resample = _resize.pil_pass_8bpc
  else:
    x = x.astype(jnp.float32) * 255.0
    resample = _resize.pil_pass_float
  if side != size:
    for axis, out, _ in _resize.pil_pass_order(side, side, size, size, 0, 0):
      x = resample(x, axis, out, 0, size)
  x = x.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGE_MEAN, jnp.float32)) / jnp.asarray(IMAGE_STD, jnp.float32)


def cmmd_host_resize(image, resize=CMMD_RESIZE, size=336):
  """Steps 1–2 of :func:`cmmd_preprocess` on the host with Pillow itself, as cmmd reads a file: one
  uint8 image ``(H, W, 3)`` → ``(size, size, 3)`` float32 values in [0, 255] (integers), for
  folders of several image sizes. The device's 8-bit route is bit-identical to it, and
  :func:`cmmd_preprocess` of the square result resizes nothing."""
  if resize != CMMD_RESIZE:
    raise InputError(f"resize: expected {CMMD_RESIZE!r}, got {resize!r}")
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  square = Image.fromarray(np.asarray(image, np.uint8)).crop((left, top, left + side, top + side))
  if side != size:
    square = square.resize((size, size), Image.Resampling.BICUBIC)
  return np.asarray(square, np.float32)


class ImageTower(nn.Module):
  """The image half of :class:`CLIP` (``vision_model`` and ``visual_projection``, same parameter
  paths): preprocessed pixels → unnormalised image embeddings."""
  config: Config
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, pixels):
    x = VisionTransformer(self.config.vision, self.precision, name="vision_model")(pixels)
    return nn.Dense(self.config.projection_dim, use_bias=False, precision=self.precision,
                    name="visual_projection")(x)


def _network_name(config):
  if config == VIT_L14_336:
    return "clip-vit-l-14-336-cmmd"
  v = config.vision
  return (f"clip-vit-w{v.hidden_size}-l{v.num_layers}-p{v.patch_size}-s{v.image_size}"
          f"-e{config.projection_dim}-cmmd")


def cmmd_network(config=VIT_L14_336, weights_name=CMMD_WEIGHTS):
  """CMMD's feature network for a CLIP of ``config`` (default ViT-L/14@336px), as a
  :class:`~jaxmetrics.networks.base.FeatureNetwork`; one instance per ``(config, weights_name)``.

  Its one feature, ``"clip_embedding"`` (``config.projection_dim``, 768), is the L2-normalised
  image embedding ``e / ‖e‖`` of :func:`cmmd_preprocess`'d images, as scenic's CLIP
  ``encode_image(normalize=True)`` that google-research/cmmd calls. Its one resize mode,
  ``"cmmd"``, is that preprocessing. Its parameters are the image tower only (``vision_model``,
  ``visual_projection``): ``load_weights_file`` reads a checkpoint as :func:`load` does (OpenAI
  archive, Hugging Face or OpenCLIP) and refuses one whose image tower is not ``config``'s.
  """
  return _cmmd_network(config, weights_name)


@functools.lru_cache(maxsize=None)
def _cmmd_network(config, weights_name):
  name = _network_name(config)

  def forward(params, images, *, resize=CMMD_RESIZE, precision="highest", shards=1, mask=None,
              host_resized=False):
    # One mode; the ViT's matrix products batch well on every backend, masked rows too. Rows
    # resized on the host are square at the input size, where cmmd_preprocess is the identity.
    del resize, shards, mask, host_resized
    pixels = cmmd_preprocess(images, size=config.vision.image_size)
    embeddings = ImageTower(config, PRECISIONS[precision]).apply({"params": params}, pixels)
    return {CMMD_FEATURE: embeddings / jnp.linalg.norm(embeddings, axis=-1, keepdims=True)}

  def weights_file(path=None, *, check_hash=True, progress=True):
    """``(path, sha256)`` of the checkpoint (downloaded if ``path`` is None), hashed once: a file
    is checked against the registered one unless ``check_hash=False``; a Hugging Face or OpenCLIP
    folder, which has no registered sha256, is identified by its weights file's."""
    if path is not None and pathlib.Path(path).expanduser().is_dir():
      folder = pathlib.Path(path).expanduser()
      return folder, weights.sha256_file(_find(folder, WEIGHT_FILES, "CLIP weights file"))
    entry = weights.get(weights_name)
    source = weights.fetch(weights_name, path, check_hash=False, progress=progress)
    digest = weights.sha256_file(source)
    if check_hash and digest != entry.sha256:
      raise WeightsError(f"{source}: sha256 is {digest}, expected {entry.sha256} ({weights_name}); "
                         "pass check_hash=False (--no-hash-check on the command line) to use "
                         "custom weights")
    return source, digest

  def load_weights_file(source, digest):
    """The image tower's parameters (NumPy float32) from a file resolved by ``weights_file``."""
    del digest
    model = load(source, check_hash=False, progress=False)
    found = model.config
    if found.vision != config.vision or found.projection_dim != config.projection_dim:
      raise CheckpointError(f"{source}: expected the CLIP image tower of {name} "
                            f"({_summary(config)}), got {_summary(found)}; for another CLIP use "
                            "jaxmetrics.networks.clip.cmmd_network(config)")
    return {"vision_model": model.params["vision_model"],
            "visual_projection": model.params["visual_projection"]}

  size = config.vision.image_size
  return FeatureNetwork(name=name, weights=weights_name,
                        features={CMMD_FEATURE: config.projection_dim},
                        resize_modes=(CMMD_RESIZE,), forward=forward, weights_file=weights_file,
                        load_weights_file=load_weights_file, input_size=(size, size),
                        host_resize=functools.partial(cmmd_host_resize, size=size))


CMMD_NETWORK = cmmd_network()
"""CMMD's network: CLIP ViT-L/14@336px (:data:`CMMD_WEIGHTS`), feature ``"clip_embedding"`` (768)."""


@functools.partial(jax.jit, static_argnames=("network", "precision"))
def _cmmd_forward(params, images, network, precision="highest"):
  return network.forward(params, images, precision=precision)[CMMD_FEATURE]


def cmmd_embeddings(params, images, *, network=CMMD_NETWORK, batch_size=None, precision="highest"):
  """L2-normalised CLIP image embeddings ``(N, projection_dim)`` float32, as google-research/cmmd's
  ``ClipEmbeddingModel`` computes them from image files: :func:`cmmd_preprocess`, the image tower,
  ``e / ‖e‖``. Feed them to :func:`jaxmetrics.cmmd`.

  Args:
    params: the image tower's parameters: ``network.load_weights_file(*network.weights_file())``
      (downloads ``ViT-L-14-336px.pt`` once), or ``load(...).params`` of a CLIP of the network's
      config (the text tower's entries are ignored).
    images: ``(N, H, W, 3)`` uint8 (0..255) or float ([0, 1]) images of any size.
    network: from :func:`cmmd_network`; default :data:`CMMD_NETWORK` (ViT-L/14@336px).
    batch_size: as in :func:`image_embeddings`.
    precision: as in :func:`image_embeddings` (cmmd itself runs at JAX's default precision, which
      is bfloat16 passes on its TPUs; ``"highest"`` is full float32).
  """
  check_images(images)
  _check_options(precision, batch_size)
  if not isinstance(network, FeatureNetwork) or CMMD_FEATURE not in network.features:
    raise InputError(f"network: expected a network from jaxmetrics.networks.clip.cmmd_network(), "
                     f"got {network!r}")
  if isinstance(params, dict) and "text_model" in params:
    params = {k: params[k] for k in ("vision_model", "visual_projection")}
  if isinstance(images, np.ndarray) and images.dtype == np.float64:
    images = images.astype(np.float32)
  forward = functools.partial(_cmmd_forward, network=network, precision=precision)
  return batched(forward, params, images, batch_size)
