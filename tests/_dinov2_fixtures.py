"""Small random DINOv2 checkpoints in both official formats, and the original model's outputs.

Pretrained DINOv2 weights cannot be downloaded here, so parity is checked on tiny random models:

* **torch hub format**: :func:`hub_state_dict` draws every tensor of the hub's
  ``DinoVisionTransformer`` state dict (``cls_token``, ``pos_embed``, ``mask_token``,
  ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
  mlp.fc2 | mlp.w12, mlp.w3, ls2.gamma}``, ``norm``) from ``numpy.random.RandomState(seed)``,
  which gives the same numbers on every machine, and :func:`save_hub` writes it with
  ``torch.save`` (zip format, as the released ``dinov2_vitl14_pretrain.pth``).
* **the original model's outputs**: the original code (facebookresearch/dinov2, not on PyPI) is not
  available in CI, so ``tests/data/dinov2_original.npz`` holds what its ``forward_features``
  returned for those state dicts on fixed pixels, at the native grid and at two grids that need
  the position interpolation. ``python -m tests._dinov2_fixtures /path/to/dinov2`` rebuilds it from
  a checkout of that repository: it builds ``DinoVisionTransformer`` with the hub's arguments
  (``dinov2/hub/backbones.py``: ``init_values=1.0``, ``block_chunks=0``,
  ``interpolate_offset=0.1``, ``interpolate_antialias=False``, ``MemEffAttention`` blocks, which
  fall back to plain attention without xformers) at the tiny sizes of :data:`HUB_VARIANTS`,
  loads the state dict with ``strict=True`` (so the names are the module's own) and records
  ``x_norm_clstoken`` and ``x_norm_patchtokens``.
* **Hugging Face format**: :func:`hf_checkpoint` builds transformers' ``Dinov2Model`` at the tiny
  sizes of :data:`HF_VARIANTS` with unit-scale random weights and writes the folder with
  ``save_pretrained`` (``config.json`` + ``model.safetensors``).
"""

import pathlib
import sys

import numpy as np

GOLDEN = pathlib.Path(__file__).parent / "data" / "dinov2_original.npz"
# The commit of facebookresearch/dinov2 the golden outputs were made with.
GOLDEN_COMMIT = "b8931f7bf91576930313be2c6d6af376033b35f0"

# 128 wide: the hub layout's config is inferred with 64-wide heads, so two heads here.
HUB_VARIANTS = {
    "mlp": dict(embed_dim=128, depth=2, num_heads=2, ffn_layer="mlp", img_size=70, seed=1),
    "swiglufused": dict(embed_dim=128, depth=2, num_heads=2, ffn_layer="swiglufused", img_size=70,
                        seed=2),
}
# Pixel sizes run through the original model: the native 5 × 5 grid, a smaller square grid and a
# non-square one (both interpolate the position table).
HUB_SIZES = ((70, 70), (56, 56), (42, 84))

HF_VARIANTS = {
    "mlp": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=70,
                patch_size=14, use_swiglu_ffn=False),
    "swiglu": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=3, image_size=56,
                   patch_size=14, use_swiglu_ffn=True),
}


def swiglu_hidden(width, mlp_ratio=4):
  """SwiGLUFFNFused's hidden width (``layers/swiglu_ffn.py``)."""
  return (int(int(width * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def hub_state_dict(embed_dim, depth, num_heads, ffn_layer, img_size, seed, patch_size=14):
  """A random state dict with the hub model's names and shapes (float32 NumPy arrays).

  Unit-scale weights (std ``1/√fan_in`` for matrices, norms ``1 ± 0.1``, LayerScale ``0.5 ± 0.2``)
  so that attention is far from uniform and a wrong head split or tap would show.
  """
  del num_heads  # not in the state dict
  rng = np.random.RandomState(seed)
  d, grid = embed_dim, img_size // patch_size

  def normal(*shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  def linear(prefix, out, inp):
    return {f"{prefix}.weight": normal(out, inp, scale=inp**-0.5),
            f"{prefix}.bias": normal(out, scale=0.1)}

  def norm(prefix):
    return {f"{prefix}.weight": 1.0 + normal(d, scale=0.1), f"{prefix}.bias": normal(d, scale=0.1)}

  sd = {"cls_token": normal(1, 1, d), "pos_embed": normal(1, 1 + grid * grid, d),
        "mask_token": normal(1, d),
        "patch_embed.proj.weight": normal(d, 3, patch_size, patch_size,
                                          scale=(3 * patch_size**2)**-0.5),
        "patch_embed.proj.bias": normal(d, scale=0.1)}
  for i in range(depth):
    b = f"blocks.{i}"
    sd.update(norm(f"{b}.norm1"))
    sd.update(linear(f"{b}.attn.qkv", 3 * d, d))
    sd.update(linear(f"{b}.attn.proj", d, d))
    sd[f"{b}.ls1.gamma"] = 0.5 + normal(d, scale=0.2)
    sd.update(norm(f"{b}.norm2"))
    if ffn_layer == "mlp":
      sd.update(linear(f"{b}.mlp.fc1", 4 * d, d))
      sd.update(linear(f"{b}.mlp.fc2", d, 4 * d))
    else:
      hidden = swiglu_hidden(d)
      sd.update(linear(f"{b}.mlp.w12", 2 * hidden, d))
      sd.update(linear(f"{b}.mlp.w3", d, hidden))
    sd[f"{b}.ls2.gamma"] = 0.5 + normal(d, scale=0.2)
  sd.update(norm("norm"))
  return sd


def hub_pixels(variant, height, width, count=2):
  """Fixed normalised pixels ``(count, height, width, 3)`` float32 for a variant and size."""
  seed = 1000 + 7 * height + width + (0 if variant == "mlp" else 500)
  return np.random.RandomState(seed).standard_normal((count, height, width, 3)).astype(np.float32)


def save_hub(state_dict, path):
  """``torch.save`` of the state dict (zip format), as the released hub files."""
  import torch  # noqa: PLC0415 -- the test extra's; only the fixtures write torch files
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
  return path


def _randomize(model, seed):
  # transformers' init (std 0.02, LayerScale 1) leaves attention nearly uniform; unit-scale weights
  # make a wrong head split, tap or residual show.
  import torch  # noqa: PLC0415
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
      elif "lambda1" in name:
        p.copy_(0.5 + 0.2 * torch.randn(p.shape, generator=generator))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=generator))
      elif p.ndim >= 2 and "embeddings" not in name.split(".")[-1]:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn(p.shape, generator=generator) / fan_in**0.5)
      else:
        p.copy_(torch.randn(p.shape, generator=generator))


def hf_checkpoint(folder, variant, seed=0):
  """Writes a random ``Dinov2Model`` of ``HF_VARIANTS[variant]`` to ``folder``; returns the model."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  config = transformers.Dinov2Config(**HF_VARIANTS[variant], attn_implementation="eager")
  torch.manual_seed(seed)
  model = transformers.Dinov2Model(config).eval()
  _randomize(model, seed)
  model.save_pretrained(folder)
  return model


def _build_golden(repo):
  """Runs the original DinoVisionTransformer of the checkout ``repo`` on the fixtures."""
  import functools  # noqa: PLC0415
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import warnings  # noqa: PLC0415
  import torch  # noqa: PLC0415

  os.environ["XFORMERS_DISABLED"] = "1"
  sys.path.insert(0, str(repo))
  warnings.filterwarnings("ignore", "xFormers")
  commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or GOLDEN_COMMIT
  from dinov2.layers import MemEffAttention, NestedTensorBlock  # noqa: PLC0415
  from dinov2.models.vision_transformer import DinoVisionTransformer  # noqa: PLC0415

  out = {"commit": np.array(commit)}
  for variant, kw in HUB_VARIANTS.items():
    model = DinoVisionTransformer(
        img_size=kw["img_size"], patch_size=14, embed_dim=kw["embed_dim"], depth=kw["depth"],
        num_heads=kw["num_heads"], mlp_ratio=4, init_values=1.0, ffn_layer=kw["ffn_layer"],
        block_chunks=0, num_register_tokens=0, interpolate_antialias=False,
        interpolate_offset=0.1,
        block_fn=functools.partial(NestedTensorBlock, attn_class=MemEffAttention)).eval()
    sd = hub_state_dict(**kw)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    for h, w in HUB_SIZES:
      pixels = torch.from_numpy(hub_pixels(variant, h, w)).permute(0, 3, 1, 2)
      with torch.no_grad():
        res = model.forward_features(pixels)
      out[f"{variant}/{h}x{w}/cls"] = res["x_norm_clstoken"].numpy()
      out[f"{variant}/{h}x{w}/patch"] = res["x_norm_patchtokens"].numpy()
  GOLDEN.parent.mkdir(exist_ok=True)
  np.savez(GOLDEN, **out)
  print(f"wrote {GOLDEN} from facebookresearch/dinov2 {commit}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python -m tests._dinov2_fixtures /path/to/facebookresearch/dinov2")
  _build_golden(pathlib.Path(sys.argv[1]))
