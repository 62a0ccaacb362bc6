"""CLIP-based semantic metrics for text-to-image models: semantic similarity and CLIP score.

**Semantic similarity** measures how consistent a model is with itself: for each prompt, the CLIP
image embeddings of its N_p samples are L2-normalised to ``u_i`` and their mean cosine over the
N_p(N_p − 1)/2 distinct unordered pairs is taken::

  c_p = Σ_{i<j} u_i·u_j / (N_p(N_p − 1)/2) = (‖Σ_i u_i‖² − Σ_i ‖u_i‖²) / (N_p(N_p − 1))

The second form is an identity (``‖Σu‖² = Σ_i ‖u_i‖² + 2 Σ_{i<j} u_i·u_j``), so it is exact,
and it costs O(N_p·D) instead of the Gram matrix's O(N_p²·D). It is evaluated in float64 on the
host, where its one cancellation (``‖Σu‖²`` against ``Σ‖u_i‖²``, both ≤ N_p²) leaves ~1e-16 in
``c_p`` after the division: far below the float32 noise of the embeddings themselves. Subtracting
``Σ‖u_i‖²`` rather than ``N_p`` also cancels the rounding of the normalisation. The score of a
prompt is ``100 · max(c_p, 0)`` (0..100, higher = more consistent) and the reported score is its
mean over prompts, each prompt weighing the same. Because ``(count, Σu, Σ‖u‖²)`` add up across
batches, the per-prompt sums could be streamed; this module takes whole groups.

**CLIP score** (Hessel et al. 2021, as torchmetrics computes it) measures image–text agreement:
``100 · cos(E_image, E_text)`` per pair, averaged, then clamped: ``max(mean_i 100·cos_i, 0)``.
torchmetrics' docstring writes ``max(100·cos, 0)`` per pair, but its ``CLIPScore.compute`` and
``clip_score`` clamp the *mean*; we return that number, and the unclamped per-pair values. (The
paper's ``w = 2.5`` rescaling is a different quantity.)

Both accept images (embedded with :mod:`jaxmetrics.networks.clip`) or precomputed embeddings.

Example::

  model = jaxmetrics.networks.clip.load("clip-vit-base-patch32/")
  out = semantic_similarity({"a red cube": images_a, "a cat": images_b}, model=model)
  out.score, out.per_prompt["a cat"]
  clip_score(images, ["a red cube", ...], model=model).score
"""

from typing import NamedTuple

import numpy as np

from jaxmetrics.networks import clip as _clip
from jaxmetrics._errors import InputError

__all__ = ["ClipScore", "SemanticSimilarity", "clip_score", "mean_pairwise_cosine",
           "semantic_similarity"]


class SemanticSimilarity(NamedTuple):
  """Result of :func:`semantic_similarity`.

  Attributes:
    score: mean over prompts of ``per_prompt`` (0..100).
    per_prompt: ``100 · max(c_p, 0)`` for each prompt.
    mean_cosine: the unclamped mean pairwise cosine ``c_p`` (−1..1) for each prompt.
  """
  score: float
  per_prompt: dict
  mean_cosine: dict


class ClipScore(NamedTuple):
  """Result of :func:`clip_score`.

  Attributes:
    score: ``max(mean(per_pair), 0)``, torchmetrics' ``CLIPScore`` (0..100).
    per_pair: ``100 · cos(image_i, text_i)``, float64 ``(N,)``, unclamped.
  """
  score: float
  per_pair: np.ndarray


def _is_embeddings(x, name):
  """True for embeddings ``(N, D)``, False for images ``(N, H, W, 3)``; other ranks are errors."""
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) not in (2, 4):
    got = f"shape {tuple(shape)}" if shape is not None else type(x).__name__
    raise InputError(f"{name}: expected images (N, H, W, 3) or embeddings (N, D), got {got}")
  return len(shape) == 2


def _embed_images(images, model, name, batch_size, precision, crop):
  if model is None:
    raise InputError(f"{name}: images need a CLIP model: pass model=jaxmetrics.networks.clip.load(PATH), or "
                     "pass embeddings (N, D)")
  return _clip.image_embeddings(model, images, batch_size=batch_size, precision=precision,
                                crop=crop)


def _unit_rows(embeddings, name):
  """Rows of ``embeddings`` (N, D) as float64 unit vectors, with the checks that make them so."""
  e = np.asarray(embeddings, dtype=np.float64)
  if e.ndim != 2 or 0 in e.shape:
    raise InputError(f"{name}: expected images (N, H, W, 3) or embeddings (N, D), got shape "
                     f"{e.shape}")
  if not np.isfinite(e).all():
    raise InputError(f"{name}: embeddings must be finite, got NaN or inf values")
  norms = np.linalg.norm(e, axis=1, keepdims=True)
  if (zero := np.flatnonzero(norms[:, 0] == 0.0)).size:
    raise InputError(f"{name}: embedding {zero[0]} has zero norm: its cosine is undefined")
  return e / norms


def mean_pairwise_cosine(embeddings, name="embeddings"):
  """Mean cosine over the N(N − 1)/2 distinct pairs of rows of ``embeddings`` (N ≥ 2, D), float64:
  ``(‖Σu‖² − Σ‖u‖²) / (N(N − 1))`` with ``u`` the normalised rows (see the module docstring)."""
  u = _unit_rows(embeddings, name)
  n = u.shape[0]
  if n < 2:
    raise InputError(f"{name}: expected at least 2 samples to form a pair, got {n}")
  total = u.sum(axis=0)
  return float((total @ total - np.einsum("ij,ij->", u, u)) / (n * (n - 1)))


def semantic_similarity(images_by_prompt, *, model=None, batch_size=None, precision="highest",
                        crop="hf"):
  """Semantic similarity of each prompt's samples: ``100 · max(mean pairwise cosine, 0)``.

  Formula and exactness are in the module docstring. Host-only reduction (float64 NumPy) after the
  CLIP forward passes.

  Args:
    images_by_prompt: a dict from prompt (any hashable key) to that prompt's samples: images
      ``(N_p, H, W, 3)`` (uint8 or [0, 1] float, any size, sizes may differ between prompts) or
      precomputed CLIP image embeddings ``(N_p, D)`` (normalised or not). Every group needs
      N_p ≥ 2: one sample forms no pair, so its similarity is undefined. Such a group is an error,
      not skipped or scored 100, because either would silently change the average over prompts.
    model: a :class:`jaxmetrics.networks.clip.Model`; needed only for groups of images.
    batch_size, precision, crop: passed to :func:`jaxmetrics.networks.clip.image_embeddings`. With a
      batch size, groups of different N_p (and equal H, W) share one compilation.

  Returns:
    :class:`SemanticSimilarity` with the mean over prompts (0..100; higher = more consistent),
    the per-prompt scores and the unclamped mean cosines.
  """
  if not isinstance(images_by_prompt, dict):
    raise InputError(f"images_by_prompt: expected a dict from prompt to images or embeddings, got "
                     f"{type(images_by_prompt).__name__}")
  if not images_by_prompt:
    raise InputError("images_by_prompt: expected at least one prompt, got an empty dict")
  cosines, dims = {}, set()
  for prompt, samples in images_by_prompt.items():
    name = f"images_by_prompt[{prompt!r}]"
    embeddings = _is_embeddings(samples, name)
    if samples.shape[0] < 2:
      raise InputError(f"{name}: expected at least 2 samples to form a pair, got "
                       f"{samples.shape[0]}: the similarity of a single sample is undefined")
    if not embeddings:
      samples = _embed_images(samples, model, name, batch_size, precision, crop)
    dims.add(samples.shape[1])
    if len(dims) > 1:
      raise InputError(f"{name}: embeddings of size {samples.shape[1]}, but another prompt has "
                       f"{min(dims - {samples.shape[1]})}: one CLIP model for all prompts")
    cosines[prompt] = mean_pairwise_cosine(samples, name)
  per_prompt = {p: 100.0 * max(c, 0.0) for p, c in cosines.items()}
  return SemanticSimilarity(float(np.mean(list(per_prompt.values()))), per_prompt, cosines)


def clip_score(images, texts, *, model=None, batch_size=None, precision="highest", crop="hf"):
  """CLIP score of image–text pairs: ``max(mean_i 100 · cos(image_i, text_i), 0)`` (torchmetrics).

  Equal to ``torchmetrics.functional.multimodal.clip_score(images, texts, model)`` given the same
  CLIP (Hugging Face ``CLIPModel`` + ``CLIPProcessor``); see the module docstring for where the
  clamp sits.

  Args:
    images: ``(N, H, W, 3)`` images (uint8 or [0, 1] float) or CLIP image embeddings ``(N, D)``.
    texts: N strings (tokenized with ``model.tokenizer``; longer ones truncated to the context
      length, keeping the end-of-text token), integer token ids ``(N, L)``, or float CLIP text
      embeddings ``(N, D)``.
    model: a :class:`jaxmetrics.networks.clip.Model`; needed unless both sides are embeddings.
    batch_size, precision: passed to the embedding functions; ``crop`` to the image one.

  Returns:
    :class:`ClipScore`: the score (0..100) and the unclamped per-pair ``100 · cos`` (float64).
  """
  if not _is_embeddings(images, "images"):
    images = _embed_images(images, model, "images", batch_size, precision, crop)
  token_ids = hasattr(texts, "dtype") and np.issubdtype(np.dtype(texts.dtype), np.integer)
  if isinstance(texts, (list, tuple, str)) or token_ids:
    if model is None:
      raise InputError("texts: strings need a CLIP model: pass model=jaxmetrics.networks.clip.load(PATH), "
                       "or pass embeddings (N, D)")
    if not isinstance(texts, str) and len(texts) != images.shape[0]:
      raise InputError(f"texts: expected one text per image ({images.shape[0]}), got {len(texts)}")
    texts = _clip.text_embeddings(model, texts, batch_size=batch_size, precision=precision)
  image_u = _unit_rows(images, "images")
  text_u = _unit_rows(texts, "texts")
  if text_u.shape != image_u.shape:
    raise InputError(f"texts: expected embeddings of shape {image_u.shape} like the images, got "
                     f"{text_u.shape}")
  per_pair = 100.0 * np.einsum("ij,ij->i", image_u, text_u)
  return ClipScore(max(float(per_pair.mean()), 0.0), per_pair)
