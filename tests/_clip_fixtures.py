"""Small random CLIP checkpoints in the Hugging Face format, shared by the CLIP and semantic tests.

``CLIPModel(config).save_pretrained(dir, safe_serialization=True)`` writes the ``model.safetensors``
+ ``config.json`` a Hugging Face checkpoint folder holds, and a tiny byte-level BPE
``CLIPTokenizer`` writes its ``tokenizer.json`` beside them. The same weights can be renamed to the
OpenCLIP/OpenAI layout (:func:`to_open_clip`) and saved as a TorchScript archive of a module laid
out as OpenAI's ``clip/model.py`` (:func:`save_openai_archive`), the format of OpenAI's ``.pt``.
"""

import collections
import contextlib
import copy
import string
import warnings
from typing import Optional

import numpy as np
import torch
import transformers

# Casing and double spaces, an empty text, and one longer than both context lengths (12 and 16).
TEXTS = ["a photo of the cat", "The  DOG", "",
         "the cat the dog the cat the dog the cat the dog of an"]

VARIANTS = {
    # OpenAI style: quick_gelu in both towers, pooling at the first eos_token_id.
    "quick_gelu": dict(
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, image_size=32, patch_size=8, hidden_act="quick_gelu"),
        text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=16, hidden_act="quick_gelu"),
        eos="new", projection_dim=32),
    # LAION style: exact gelu; eos_token_id = 2 as in configs older than transformers PR 24773,
    # which makes CLIPTextModel pool at argmax(input_ids).
    "gelu": dict(
        vision=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=1,
                    num_attention_heads=3, image_size=48, patch_size=16, hidden_act="gelu"),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=12, hidden_act="gelu"),
        eos="legacy", projection_dim=24),
}


# OpenAI's models follow one size rule -- 64-wide attention heads, MLP 4 × width -- from which
# jaxmetrics.networks.clip infers the config of an archive that has none; this variant obeys it.
OPENAI_VARIANT = dict(
    vision=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                image_size=32, patch_size=8, hidden_act="quick_gelu"),
    text=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
              max_position_embeddings=16, hidden_act="quick_gelu"),
    eos="new", projection_dim=32)


def tiny_tokenizer():
  """A byte-level BPE ``CLIPTokenizer`` over lowercase letters with a few merges (62 tokens); the
  end-of-text token has the largest id, as in CLIP's real vocabulary."""
  letters = string.ascii_lowercase
  vocab = {c: i for i, c in enumerate(letters)}
  vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
  merges = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"),
            ("o", "f</w>"), ("a", "n")]
  for a, b in merges:
    vocab[a + b] = len(vocab)
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def _randomize(model, seed):
  # transformers' init (std 0.02) leaves attention nearly uniform and embeddings nearly constant,
  # where a wrong mask, head split or pooling index would go unnoticed. Unit-scale weights instead.
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name == "logit_scale":
        continue
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=generator))
      elif p.ndim >= 2 and "embedding" not in name:
        p.copy_(torch.randn(p.shape, generator=generator) / np.sqrt(np.prod(p.shape[1:])))
      else:
        p.copy_(0.5 * torch.randn(p.shape, generator=generator))


def make_checkpoint(folder, variant="quick_gelu", seed=0):
  """Writes a random CLIP checkpoint folder; returns the torch model and its processor.

  ``variant``: a name of :data:`VARIANTS`, ``"openai"`` (:data:`OPENAI_VARIANT`) or a spec dict
  of the same form."""
  if isinstance(variant, dict):
    spec = variant
  else:
    spec = OPENAI_VARIANT if variant == "openai" else VARIANTS[variant]
  tokenizer = tiny_tokenizer()
  eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
  config = transformers.CLIPConfig(
      text_config=dict(spec["text"], vocab_size=len(tokenizer), pad_token_id=eot,
                       bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                       eos_token_id=eot if spec["eos"] == "new" else 2),
      vision_config=spec["vision"], projection_dim=spec["projection_dim"])
  model = transformers.CLIPModel(config).eval()
  _randomize(model, seed)
  model.save_pretrained(folder, safe_serialization=True)
  tokenizer.save_pretrained(folder)
  size = spec["vision"]["image_size"]
  image_processor = transformers.CLIPImageProcessorPil(
      size={"shortest_edge": size}, crop_size={"height": size, "width": size})
  processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
  return model, processor


def to_open_clip(state_dict):
  """Hugging Face CLIPModel names → OpenCLIP's and OpenAI's (``visual.conv1.weight``, …), q/k/v
  re-stacked into ``attn.in_proj_*`` and the projections stored ``(width, embed)``, with
  OpenCLIP's ``attn_mask`` buffer."""
  rename = {"embeddings.patch_embedding.weight": "conv1.weight",
            "embeddings.class_embedding": "class_embedding",
            "embeddings.position_embedding.weight": "positional_embedding",
            "embeddings.token_embedding.weight": "token_embedding.weight",
            "pre_layrnorm": "ln_pre", "post_layernorm": "ln_post", "final_layer_norm": "ln_final",
            "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
            "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
            "encoder.layers": "transformer.resblocks"}
  out = {"logit_scale": state_dict["logit_scale"],
         "visual.proj": state_dict["visual_projection.weight"].T.contiguous(),
         "text_projection": state_dict["text_projection.weight"].T.contiguous(),
         "attn_mask": torch.full((4, 4), float("-inf")).triu(1)}
  for name, tensor in state_dict.items():
    tower = "visual." if name.startswith("vision_model.") else ""
    if not name.startswith(("vision_model.", "text_model.")) or name.endswith("position_ids"):
      continue
    rest = name.split(".", 1)[1]
    if ".self_attn.q_proj." in rest:
      k, v = (state_dict[name.replace(".q_proj.", f".{p}_proj.")] for p in "kv")
      rest = rest.replace("self_attn.q_proj.", "attn.in_proj_")
      tensor = torch.cat([tensor, k, v])
    elif ".self_attn.k_proj." in rest or ".self_attn.v_proj." in rest:
      continue
    for old, new in rename.items():
      rest = rest.replace(old, new)
    out[tower + rest] = tensor
  return out


# ------------------------------------------------------------------ OpenAI's module layout in torch


class _QuickGELU(torch.nn.Module):

  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class _Block(torch.nn.Module):
  """Pre-LN residual block: ``nn.MultiheadAttention`` (q, k, v stacked in ``in_proj_weight``)."""

  def __init__(self, width, mlp_width):
    super().__init__()
    self.attn = torch.nn.MultiheadAttention(width, width // 64)
    self.ln_1 = torch.nn.LayerNorm(width)
    self.mlp = torch.nn.Sequential(collections.OrderedDict(
        c_fc=torch.nn.Linear(width, mlp_width), gelu=_QuickGELU(),
        c_proj=torch.nn.Linear(mlp_width, width)))
    self.ln_2 = torch.nn.LayerNorm(width)

  def forward(self, x, mask: Optional[torch.Tensor] = None):
    h = self.ln_1(x)
    x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
    return x + self.mlp(self.ln_2(x))


class _Transformer(torch.nn.Module):

  def __init__(self, width, layers, mlp_width):
    super().__init__()
    self.resblocks = torch.nn.ModuleList([_Block(width, mlp_width) for _ in range(layers)])

  def forward(self, x, mask: Optional[torch.Tensor] = None):  # x: (length, batch, width)
    for block in self.resblocks:
      x = block(x, mask)
    return x


class _Visual(torch.nn.Module):

  def __init__(self, spec, embed_dim):
    super().__init__()
    width, patch = spec["hidden_size"], spec["patch_size"]
    grid = spec["image_size"] // patch
    self.conv1 = torch.nn.Conv2d(3, width, patch, stride=patch, bias=False)
    self.class_embedding = torch.nn.Parameter(torch.zeros(width))
    self.positional_embedding = torch.nn.Parameter(torch.zeros(grid * grid + 1, width))
    self.ln_pre = torch.nn.LayerNorm(width)
    self.transformer = _Transformer(width, spec["num_hidden_layers"], spec["intermediate_size"])
    self.ln_post = torch.nn.LayerNorm(width)
    self.proj = torch.nn.Parameter(torch.zeros(width, embed_dim))

  def forward(self, pixels):
    x = self.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1)
    x = self.ln_pre(x + self.positional_embedding)
    x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
    return self.ln_post(x[:, 0]) @ self.proj


class OpenAIClip(torch.nn.Module):
  """A ViT CLIP with the module tree, names and forward of OpenAI's ``clip/model.py``, plus the
  0-d ``input_resolution``, ``context_length`` and ``vocab_size`` buffers of its archives."""

  def __init__(self, spec, vocab_size):
    super().__init__()
    text, length = spec["text"], spec["text"]["max_position_embeddings"]
    width, embed = text["hidden_size"], spec["projection_dim"]
    self.visual = _Visual(spec["vision"], embed)
    self.token_embedding = torch.nn.Embedding(vocab_size, width)
    self.positional_embedding = torch.nn.Parameter(torch.zeros(length, width))
    self.transformer = _Transformer(width, text["num_hidden_layers"], text["intermediate_size"])
    self.ln_final = torch.nn.LayerNorm(width)
    self.text_projection = torch.nn.Parameter(torch.zeros(width, embed))
    self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))
    for name, value in (("input_resolution", spec["vision"]["image_size"]),
                        ("context_length", length), ("vocab_size", vocab_size)):
      self.register_buffer(name, torch.tensor(value))
    # A plain attribute, as in OpenAI's code: tracing turns it into a constant (constants.pkl).
    self.attn_mask = torch.full((length, length), float("-inf")).triu(1)

  def forward(self, pixels, tokens):
    length = tokens.shape[1]
    x = self.token_embedding(tokens) + self.positional_embedding[:length]
    x = self.transformer(x.transpose(0, 1), self.attn_mask[:length, :length]).transpose(0, 1)
    x = self.ln_final(x)
    # OpenAI pools at argmax(tokens): the end-of-text token has the largest id.
    text = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection
    return self.visual(pixels), text


def openai_module(hf_model, spec=OPENAI_VARIANT):
  """An :class:`OpenAIClip` holding ``hf_model``'s weights (float32, eval mode)."""
  state = {k: v for k, v in to_open_clip(hf_model.state_dict()).items() if k != "attn_mask"}
  model = OpenAIClip(spec, vocab_size=state["token_embedding.weight"].shape[0])
  model.load_state_dict(state, strict=False)
  missing = set(model.state_dict()) - set(state) - {"input_resolution", "context_length",
                                                     "vocab_size"}
  assert not missing, missing
  return model.eval()


@contextlib.contextmanager
def quiet_jit():
  """Silences torch.jit's deprecation notices and the tracer's warnings about shape checks inside
  ``nn.MultiheadAttention``: TorchScript is the format under test, not a choice made here."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    yield


def save_openai_archive(module, path, how="trace"):
  """Saves ``module`` (an :class:`OpenAIClip`) as OpenAI's archives are: traced (or scripted),
  weights in float16, ``torch.jit.save``. Returns ``path``; ``module`` is left as it was."""
  module = copy.deepcopy(module)  # a traced module shares the parameters that .half() converts
  with quiet_jit(), torch.no_grad():
    if how == "trace":
      grid = round((module.visual.positional_embedding.shape[0] - 1) ** 0.5)
      size = module.visual.conv1.stride[0] * grid
      pixels = torch.zeros(2, 3, size, size)
      tokens = torch.zeros(2, 5, dtype=torch.int64)
      scripted = torch.jit.trace(module, (pixels, tokens), check_trace=False)
    else:
      scripted = torch.jit.script(module)
    torch.jit.save(scripted.half(), str(path))
  return path
