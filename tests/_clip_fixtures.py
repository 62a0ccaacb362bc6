"""Small random CLIP checkpoints in the Hugging Face format, shared by the CLIP and semantic tests.

``CLIPModel(config).save_pretrained(dir, safe_serialization=True)`` writes the ``model.safetensors``
+ ``config.json`` a Hugging Face checkpoint folder holds, and a tiny byte-level BPE
``CLIPTokenizer`` writes its ``tokenizer.json`` beside them.
"""

import string

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
  """Writes a random CLIP checkpoint folder; returns the torch model and its processor."""
  spec = VARIANTS[variant]
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
