"""Semantic similarity and CLIP score: hand-checkable embeddings, then end to end against the peers.

End to end, the CLIP is a small random ``transformers.CLIPModel`` saved in the Hugging Face format
(see ``tests/test_clip.py``); the CLIP score peer is torchmetrics' own ``clip_score`` on that model.
"""

import itertools
import json

import numpy as np
import pytest
import torch

from jaxmetrics.networks import clip
from jaxmetrics._errors import InputError
from jaxmetrics.metrics.semantic import clip_score
from jaxmetrics.metrics.semantic import mean_pairwise_cosine
from jaxmetrics.metrics.semantic import semantic_similarity
from tests._clip_fixtures import TEXTS
from tests._clip_fixtures import make_checkpoint
from tests._inception_fixtures import test_images
from tests._peers import torchmetrics_module

# Hand-checkable cases are computed in float64 on both sides: agreement to rounding.
EXACT = 1e-12
# End to end on the 0..100 scale: embeddings agree to ~5e-7 relative (test_clip), so cosines to
# ~1e-6 and scores to ~1e-4; 1e-3 leaves a margin and is far below any meaningful difference.
ATOL_SCORE = 1e-3


def _torchmetrics_clip_score():
  return torchmetrics_module("functional.multimodal").clip_score


def _pairwise_mean(embeddings):
  # The definition, pair by pair: every distinct unordered pair i < j once.
  u = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  return np.mean([u[i] @ u[j] for i, j in itertools.combinations(range(len(u)), 2)])


# ------------------------------------------------------------------------ hand-checkable embeddings


def test_identical_directions_score_100():
  v = np.random.default_rng(0).normal(size=16)
  group = np.stack([v, 2.0 * v, 0.1 * v, 7.0 * v])  # scale does not matter: cosines are all 1
  out = semantic_similarity({"p": group})
  assert abs(out.score - 100.0) < EXACT
  assert abs(out.mean_cosine["p"] - 1.0) < EXACT


def test_orthogonal_directions_score_0():
  out = semantic_similarity({"p": 3.0 * np.eye(5, 8)})
  assert abs(out.score) < EXACT
  assert abs(out.mean_cosine["p"]) < EXACT


def test_known_mix():
  # u1 = e1, u2 at 60° from u1 in the (e1, e2) plane, u3 = e3: cosines 1/2, 0, 0 over the three
  # pairs, mean 1/6, score 100/6. Norms are arbitrary.
  third = np.sqrt(3.0) / 2.0
  group = np.array([[2.0, 0, 0, 0], [0.5 * 3, third * 3, 0, 0], [0, 0, 0.7, 0]])
  out = semantic_similarity({"p": group})
  assert abs(out.per_prompt["p"] - 100.0 / 6.0) < EXACT
  # A fourth vector at 90° from u1 and u3 and 30° from u2 adds cosines 0, cos 30°, 0: the mean of
  # the six pairs is (1/2 + √3/2) / 6.
  group = np.vstack([group, [0, 5.0, 0, 0]])
  assert abs(mean_pairwise_cosine(group) - (0.5 + third) / 6.0) < EXACT


def test_sum_identity_matches_pairwise_definition():
  rng = np.random.default_rng(1)
  for n, d in [(2, 3), (7, 32), (50, 512)]:
    group = rng.normal(size=(n, d)) + rng.normal(size=d)  # a common direction: mean cosine > 0
    assert abs(mean_pairwise_cosine(group) - _pairwise_mean(group)) < EXACT


def test_negative_mean_clamps_to_zero():
  group = np.array([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]])
  out = semantic_similarity({"p": group, "q": np.ones((2, 2))})
  assert out.mean_cosine["p"] == pytest.approx(_pairwise_mean(group), abs=EXACT)
  assert out.mean_cosine["p"] < 0
  assert out.per_prompt == {"p": 0.0, "q": pytest.approx(100.0, abs=EXACT)}
  # The average is over prompts, clamped scores included.
  assert out.score == pytest.approx(50.0, abs=EXACT)


def test_groups_of_different_sizes_weigh_equally():
  out = semantic_similarity({"a": np.ones((2, 4)), "b": np.eye(9, 4)[[0, 1, 2, 3] * 2]})
  expected_b = 100.0 * _pairwise_mean(np.eye(9, 4)[[0, 1, 2, 3] * 2])
  assert out.per_prompt["b"] == pytest.approx(expected_b, abs=EXACT)
  assert out.score == pytest.approx((100.0 + expected_b) / 2, abs=EXACT)


def test_clip_score_matches_float64_numpy():
  rng = np.random.default_rng(2)
  images, texts = rng.normal(size=(6, 32)), rng.normal(size=(6, 32))
  images[:3] += 2 * texts[:3]  # some agreement, some not
  out = clip_score(images.astype(np.float32), texts.astype(np.float32))
  i = images.astype(np.float32).astype(np.float64)
  t = texts.astype(np.float32).astype(np.float64)
  expected = 100 * np.sum(i * t, 1) / (np.linalg.norm(i, axis=1) * np.linalg.norm(t, axis=1))
  np.testing.assert_allclose(out.per_pair, expected, rtol=0, atol=EXACT)
  assert out.score == pytest.approx(max(expected.mean(), 0.0), abs=EXACT)


def test_clip_score_clamps_the_mean_as_torchmetrics():
  # Pairs at cos 0.5 and cos −0.8: torchmetrics' compute gives max(100 · mean, 0) = 0, not the
  # mean of per-pair clamps (25). The per-pair values stay unclamped.
  images = np.array([[1.0, 0.0], [1.0, 0.0]])
  texts = np.array([[0.5, np.sqrt(0.75)], [-0.8, 0.6]])
  out = clip_score(images, texts)
  np.testing.assert_allclose(out.per_pair, [50.0, -80.0], atol=EXACT)
  assert out.score == 0.0


# ---------------------------------------------------------------------------------- bad inputs


def test_bad_groups():
  with pytest.raises(InputError, match="at least 2 samples.*got 1: the similarity of a single"):
    semantic_similarity({"alone": np.ones((1, 8))})
  with pytest.raises(InputError, match="got 0"):
    semantic_similarity({"empty": np.zeros((0, 8))})
  with pytest.raises(InputError, match="at least one prompt"):
    semantic_similarity({})
  with pytest.raises(InputError, match="expected a dict"):
    semantic_similarity([np.ones((2, 8))])
  with pytest.raises(InputError, match="embedding 1 has zero norm"):
    semantic_similarity({"p": np.array([[1.0, 0], [0, 0]])})
  with pytest.raises(InputError, match="finite"):
    semantic_similarity({"p": np.array([[1.0, np.nan], [0, 1]])})
  with pytest.raises(InputError, match="embeddings of size 4, but another prompt has 8"):
    semantic_similarity({"a": np.ones((2, 8)), "b": np.ones((2, 4))})
  with pytest.raises(InputError, match="images need a CLIP model"):
    semantic_similarity({"a": np.zeros((2, 16, 16, 3), np.uint8)})
  with pytest.raises(InputError, match=r"images \(N, H, W, 3\) or embeddings \(N, D\), got shape"):
    semantic_similarity({"a": np.zeros((2, 16, 3))})


def test_bad_clip_score_inputs():
  with pytest.raises(InputError, match=r"texts: expected embeddings of shape \(2, 4\)"):
    clip_score(np.ones((2, 4)), np.ones((3, 4)))
  with pytest.raises(InputError, match="strings need a CLIP model"):
    clip_score(np.ones((2, 4)), ["a", "b"])
  with pytest.raises(InputError, match="images need a CLIP model"):
    clip_score(np.zeros((2, 8, 8, 3), np.uint8), np.ones((2, 4)))


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  folder = tmp_path_factory.mktemp("clip-semantic")
  torch_model, processor = make_checkpoint(folder, "quick_gelu", seed=5)
  return {"torch": torch_model, "processor": processor, "model": clip.load(folder)}


def test_semantic_similarity_of_images_end_to_end(tiny_clip):
  # Different sizes per prompt; the reference embeds with transformers' processor and CLIPModel and
  # applies the definition pair by pair.
  groups = {"cat": test_images(20, 4, 40, 52), "dog": test_images(21, 3, 64, 36)}
  out = semantic_similarity(groups, model=tiny_clip["model"], batch_size=2)
  for prompt, images in groups.items():
    pixels = tiny_clip["processor"](images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
      features = tiny_clip["torch"].get_image_features(pixel_values=pixels).pooler_output.numpy()
    expected = _pairwise_mean(features.astype(np.float64))
    assert out.mean_cosine[prompt] == pytest.approx(expected, abs=ATOL_SCORE / 100)
  assert out.score == pytest.approx(np.mean(list(out.per_prompt.values())), abs=EXACT)
  # Precomputed embeddings give the same numbers as images.
  embedded = {p: clip.image_embeddings(tiny_clip["model"], x) for p, x in groups.items()}
  again = semantic_similarity(embedded)
  assert again.score == pytest.approx(out.score, abs=ATOL_SCORE)


class _TensorFeatures:
  """transformers 5's ``get_*_features`` return a ``ModelOutput``; torchmetrics 1.9 divides the
  result by its norm, as with transformers 4, which returned the projected tensor. This restores
  the 4.x return value; the model itself is unchanged."""

  def __init__(self, model):
    self.model, self.config = model, model.config

  def to(self, device):
    del device
    return self

  def get_image_features(self, *args, **kwargs):
    return self.model.get_image_features(*args, **kwargs).pooler_output

  def get_text_features(self, *args, **kwargs):
    return self.model.get_text_features(*args, **kwargs).pooler_output


def test_clip_score_matches_torchmetrics(tiny_clip):
  # Captions within the context length: for longer ones torchmetrics slices input_ids after
  # tokenizing, which cuts off <|endoftext|> (CLIPTokenizer(truncation=True) and we keep it).
  texts = TEXTS[:3] + ["of the dog"]
  images = test_images(30, len(texts), 48, 40)
  out = clip_score(images, texts, model=tiny_clip["model"])
  with torch.no_grad():
    expected = _torchmetrics_clip_score()(
        [torch.from_numpy(image).permute(2, 0, 1) for image in images], texts,
        model_name_or_path=lambda: (_TensorFeatures(tiny_clip["torch"]), tiny_clip["processor"]))
  assert out.score == pytest.approx(float(expected), abs=ATOL_SCORE)
  assert out.per_pair.shape == (len(texts),)
  # The same pairs from token ids and from embeddings.
  tokens = clip.tokenize(tiny_clip["model"].tokenizer, texts, length=16)
  assert clip_score(images, tokens, model=tiny_clip["model"]).score == pytest.approx(out.score,
                                                                                   abs=EXACT)


def _semsim_cli(*args):
  from tests import _cli  # in-process: tests/_cli.py says why
  return _cli.run("semsim", *args, "--json")


def test_semsim_command_equals_the_python_api(tmp_path):
  from PIL import Image
  make_checkpoint(tmp_path / "clip", "quick_gelu", seed=3)
  images = {"a cat": test_images(1, 3, 40, 40),
            "a dog": np.concatenate([test_images(2, 2, 40, 40)])}
  odd = test_images(3, 1, 30, 50)[0]  # a second size inside one prompt
  for prompt, group in images.items():
    (tmp_path / "prompts" / prompt).mkdir(parents=True)
    for i, image in enumerate(group):
      Image.fromarray(image).save(tmp_path / "prompts" / prompt / f"{i}.png")
  Image.fromarray(odd).save(tmp_path / "prompts" / "a dog" / "odd.png")
  result = _semsim_cli(tmp_path / "prompts", "--clip", tmp_path / "clip")
  assert result.returncode == 0, result.stderr
  got = json.loads(result.stdout)
  assert got["counts"] == {"a cat": 3, "a dog": 3}

  model = clip.load(tmp_path / "clip")
  dog = [*images["a dog"], odd]
  expected = semantic_similarity({
      "a cat": images["a cat"],
      "a dog": np.concatenate([np.asarray(clip.image_embeddings(model, image[None])) for image in dog])},
      model=model)
  for prompt in expected.per_prompt:
    # Same network; only batch composition differs: float32 round-off on the 0..100 scale.
    assert got["per_prompt"][prompt] == pytest.approx(expected.per_prompt[prompt], abs=ATOL_SCORE)
  assert got["score"] == pytest.approx(expected.score, abs=ATOL_SCORE)


def test_semsim_command_rejects_a_prompt_with_one_image(tmp_path):
  from PIL import Image
  make_checkpoint(tmp_path / "clip", "quick_gelu", seed=3)
  for prompt, count in (("two", 2), ("one", 1)):
    (tmp_path / "prompts" / prompt).mkdir(parents=True)
    for i in range(count):
      Image.fromarray(test_images(i, 1, 20, 20)[0]).save(tmp_path / "prompts" / prompt / f"{i}.png")
  result = _semsim_cli(tmp_path / "prompts", "--clip", tmp_path / "clip")
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0 and "at least 2 images" in result.stderr
  result = _semsim_cli(tmp_path / "prompts" / "two", "--clip", tmp_path / "clip")
  assert result.returncode == 2 and "no sub-folder" in result.stderr
