"""The Flax CLIP against transformers' own torch ``CLIPModel``, processor and tokenizer.

Pretrained CLIP weights cannot be downloaded here, so parity is checked on small random models in
the official format: ``CLIPModel(config).save_pretrained(dir, safe_serialization=True)`` writes the
``model.safetensors`` + ``config.json`` a Hugging Face checkpoint folder holds, and a tiny
byte-level BPE ``CLIPTokenizer`` writes its ``tokenizer.json`` beside them. Two configurations
between them cover both activations (``quick_gelu``, ``gelu``), both end-of-text poolings
(``eos_token_id`` and the legacy ``argmax``), two patch sizes and non-default head counts. OpenAI's
own format is a float16 TorchScript archive of a module laid out as its ``clip/model.py``: a third
configuration (64-wide heads, as OpenAI's) is saved that way and served to the registry download.
"""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from PIL import Image

from jaxmetrics.networks import clip
from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import CheckpointError, InputError, WeightsError

# Both sides run float32 through the same few layers in different summation orders; the bar is the
# 1e-4 relative the FID Inception meets. Seen here: ~5e-7.
RTOL_EMBEDDINGS = 1e-4
# Preprocessing: the resized uint8 image is bit-exact, so only float32 rounding of ``/255`` and of
# ``(x − mean) / std`` remains (values up to ~2.2, ulp 2.4e-7). Seen: ≤ 4.8e-7. One uint8 level is
# 1/255/0.27 ≈ 0.015, so this bar also proves the resize exact.
ATOL_PIXELS = 1e-6

from tests._clip_fixtures import (TEXTS, VARIANTS, make_checkpoint, openai_module,
                                  save_openai_archive, tiny_tokenizer, to_open_clip)
from tests._inception_fixtures import test_images

@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(f"clip-{request.param}")
  torch_model, processor = make_checkpoint(folder, request.param)
  return {"folder": folder, "torch": torch_model, "processor": processor,
          "model": clip.load(folder), "variant": request.param}


def _relative_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _hf_image_features(ckpt, images):
  pixels = ckpt["processor"](images=list(images), return_tensors="pt")["pixel_values"]
  with torch.no_grad():
    return ckpt["torch"].get_image_features(pixel_values=pixels).pooler_output.numpy()


def _hf_text_features(ckpt, texts):
  tokens = ckpt["processor"](text=texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=ckpt["model"].config.text.max_length)
  with torch.no_grad():
    return ckpt["torch"].get_text_features(**tokens).pooler_output.numpy()


# ------------------------------------------------------------------------------------------- model


def test_config_read_from_config_json(checkpoint):
  spec = VARIANTS[checkpoint["variant"]]
  c = checkpoint["model"].config
  assert (c.vision.hidden_size, c.vision.num_layers, c.vision.num_heads, c.vision.patch_size,
          c.vision.image_size, c.vision.activation) == (
              spec["vision"]["hidden_size"], spec["vision"]["num_hidden_layers"],
              spec["vision"]["num_attention_heads"], spec["vision"]["patch_size"],
              spec["vision"]["image_size"], spec["vision"]["hidden_act"])
  assert c.text.activation == spec["text"]["hidden_act"]
  assert c.text.pooling == ("eos" if spec["eos"] == "new" else "argmax")
  assert c.projection_dim == spec["projection_dim"]


def test_default_config_is_vit_b32():
  c = clip.Config()
  assert (c.vision.hidden_size, c.vision.num_layers, c.vision.patch_size, c.vision.image_size) == (
      768, 12, 32, 224)
  assert (c.text.hidden_size, c.text.num_layers, c.text.max_length, c.projection_dim) == (
      512, 12, 77, 512)
  assert clip.Config.from_hf({}) == c


def test_model_matches_transformers_on_the_same_pixels(checkpoint):
  # The towers alone, on pixel values the HF processor made: no preprocessing difference.
  images = test_images(1, 3, 45, 70)
  pixels = checkpoint["processor"](images=list(images), return_tensors="np")["pixel_values"]
  got = clip.CLIP(checkpoint["model"].config).apply(
      {"params": checkpoint["model"].params}, pixels.transpose(0, 2, 3, 1),
      method=clip.CLIP.encode_image)
  assert _relative_l2(got, _hf_image_features(checkpoint, images)) <= RTOL_EMBEDDINGS


@pytest.mark.parametrize("size", [(45, 70), (20, 13), (130, 96)])
def test_image_embeddings_match_transformers(checkpoint, size):
  # End to end: our on-device preprocessing + model against CLIPImageProcessor + CLIPModel, on
  # images larger and smaller than the model's input, non-square both ways.
  images = test_images(size[0] + size[1], 3, *size)
  got = clip.image_embeddings(checkpoint["model"], images)
  assert got.shape == (3, checkpoint["model"].config.projection_dim)
  assert _relative_l2(got, _hf_image_features(checkpoint, images)) <= RTOL_EMBEDDINGS


def test_text_embeddings_match_transformers(checkpoint):
  got = clip.text_embeddings(checkpoint["model"], TEXTS)
  assert _relative_l2(got, _hf_text_features(checkpoint, TEXTS)) <= RTOL_EMBEDDINGS


def test_random_weights_keep_embeddings_healthy(checkpoint):
  # A parity test on constant or exploded embeddings proves nothing.
  for features in (_hf_image_features(checkpoint, test_images(5, 4, 40, 40)),
                   _hf_text_features(checkpoint, TEXTS)):
    assert np.isfinite(features).all()
    assert 0.1 < features.std() < 100
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosines = unit @ unit.T
    assert cosines[~np.eye(len(unit), dtype=bool)].max() < 0.99  # inputs stay distinguishable


def test_batches_pad_and_compile_once(checkpoint):
  model = checkpoint["model"]
  images = test_images(7, 5, 33, 41)
  full = clip.image_embeddings(model, images)
  size = clip._image_forward._cache_size()
  np.testing.assert_allclose(clip.image_embeddings(model, images), full, rtol=0, atol=0)
  assert clip._image_forward._cache_size() == size
  # 5 = 2 + 2 + 1: the padded tail reuses the chunk's compilation. Rows are independent, but XLA
  # may tile a batch of 2 differently from one of 5: float32 rounding only, which scales with the
  # activations rather than with each entry: 1e-5 (~80 ε, the suite's bar for a network summed in
  # another order) of the largest entry (~3).
  chunked = clip.image_embeddings(model, images, batch_size=2)
  assert clip._image_forward._cache_size() == size + 1
  np.testing.assert_allclose(chunked, full, rtol=0, atol=1e-5 * np.abs(full).max())
  texts, whole = clip.text_embeddings(model, TEXTS, batch_size=3), clip.text_embeddings(model, TEXTS)
  np.testing.assert_allclose(texts, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_token_ids_and_strings_agree(checkpoint):
  model = checkpoint["model"]
  ids = clip.tokenize(model.tokenizer, TEXTS, length=model.config.text.max_length)
  np.testing.assert_array_equal(clip.text_embeddings(model, ids),
                                clip.text_embeddings(model, TEXTS))


# -------------------------------------------------------------------------------------- OpenCLIP


def test_open_clip_checkpoint_loads(tmp_path):
  torch_model, processor = make_checkpoint(tmp_path / "hf", "quick_gelu", seed=3)
  spec = VARIANTS["quick_gelu"]
  folder = tmp_path / "open_clip"
  folder.mkdir()
  torch.save(to_open_clip(torch_model.state_dict()), folder / "open_clip_pytorch_model.bin")
  v, t = spec["vision"], spec["text"]
  (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
      "embed_dim": spec["projection_dim"], "quick_gelu": True,
      "vision_cfg": {"image_size": v["image_size"], "layers": v["num_hidden_layers"],
                     "width": v["hidden_size"], "patch_size": v["patch_size"],
                     "head_width": v["hidden_size"] // v["num_attention_heads"], "mlp_ratio": 2.0},
      "text_cfg": {"context_length": t["max_position_embeddings"], "vocab_size": 62,
                   "width": t["hidden_size"], "heads": t["num_attention_heads"],
                   "layers": t["num_hidden_layers"], "mlp_ratio": 2.0}}}))
  shutil.copy(tmp_path / "hf" / "tokenizer.json", folder)
  model = clip.load(folder)
  assert model.config.text.pooling == "argmax"
  ckpt = {"torch": torch_model, "processor": processor, "model": model}
  images = test_images(11, 2, 50, 40)
  assert _relative_l2(clip.image_embeddings(model, images),
                      _hf_image_features(ckpt, images)) <= RTOL_EMBEDDINGS
  assert _relative_l2(clip.text_embeddings(model, TEXTS),
                      _hf_text_features(ckpt, TEXTS)) <= RTOL_EMBEDDINGS


# ----------------------------------------------------------------------- OpenAI TorchScript archive


@pytest.fixture(scope="module")
def openai_archive(tmp_path_factory):
  """A random CLIP saved as OpenAI's ``.pt`` (traced, float16), and the same weights, rounded to
  float16, in transformers' ``CLIPModel``."""
  folder = tmp_path_factory.mktemp("clip-openai")
  torch_model, processor = make_checkpoint(folder / "hf", "openai", seed=5)
  with torch.no_grad():
    for p in torch_model.parameters():
      p.copy_(p.half().float())  # what the archive will hold
  module = openai_module(torch_model)
  (folder / "pt").mkdir()
  path = save_openai_archive(module, folder / "pt" / "ViT-tiny.pt")
  return {"path": path, "torch": torch_model, "processor": processor, "openai": module,
          "tokenizer": folder / "hf" / "tokenizer.json", "config": folder / "hf" / "config.json"}


def test_openai_archive_config_is_inferred_from_shapes(openai_archive):
  model = clip.load(openai_archive["path"])
  hf = clip.Config.from_hf(json.loads(openai_archive["config"].read_text()))
  # OpenAI pools at argmax(tokens); on the end-of-text token (the largest id) both pick the same.
  argmax = dataclasses.replace(hf.text, pooling="argmax")
  assert model.config == dataclasses.replace(hf, text=argmax)
  assert model.tokenizer is None
  with pytest.raises(InputError) as info:
    clip.text_embeddings(model, ["a cat"])
  message = str(info.value)
  assert "\n" not in message and "no tokenizer" in message and "tokenizer=" in message


def test_openai_archive_matches_transformers(openai_archive):
  ckpt = {**openai_archive,
          "model": clip.load(openai_archive["path"], tokenizer=openai_archive["tokenizer"])}
  images = test_images(7, 3, 45, 70)
  hf_images, hf_texts = _hf_image_features(ckpt, images), _hf_text_features(ckpt, TEXTS)
  tokens = clip.tokenize(ckpt["model"].tokenizer, TEXTS, length=16)
  # The torch module the archive was traced from agrees with CLIPModel: the OpenAI layout of the
  # fixture is right independently of jaxmetrics' own renaming.
  pixels = ckpt["processor"](images=list(images), return_tensors="pt")["pixel_values"]
  with torch.no_grad():
    openai_images, openai_texts = ckpt["openai"](pixels, torch.from_numpy(tokens).long())
  assert _relative_l2(openai_images.numpy(), hf_images) <= RTOL_EMBEDDINGS
  assert _relative_l2(openai_texts.numpy(), hf_texts) <= RTOL_EMBEDDINGS
  assert _relative_l2(clip.image_embeddings(ckpt["model"], images), hf_images) <= RTOL_EMBEDDINGS
  assert _relative_l2(clip.text_embeddings(ckpt["model"], TEXTS), hf_texts) <= RTOL_EMBEDDINGS
  np.testing.assert_array_equal(clip.text_embeddings(clip.load(openai_archive["path"]), tokens),
                                clip.text_embeddings(ckpt["model"], TEXTS))


@pytest.fixture
def registered(openai_archive, tmp_path, monkeypatch):
  """The archive served from a file:// URL under the registry entry of OpenAI's ViT-B/32, with
  its real size and sha256, and an empty cache."""
  served = tmp_path / "served" / "ViT-tiny.pt"
  served.parent.mkdir()
  shutil.copy(openai_archive["path"], served)
  entry = dataclasses.replace(weights.get(clip.DEFAULT), urls=(served.as_uri(),),
                              size=served.stat().st_size, sha256=weights.sha256_file(served))
  entries = {**weights.registry(), clip.DEFAULT: entry}
  monkeypatch.setattr(weights, "_registry", lambda: entries)
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path / "cache"))
  return {"served": served, "entries": entries, "cache": tmp_path / "cache" / clip.DEFAULT}


def test_default_load_downloads_verifies_and_caches(openai_archive, registered):
  model = clip.load(progress=False)
  cached = registered["cache"] / "ViT-B-32.pt"
  assert [p.name for p in registered["cache"].iterdir()] == ["ViT-B-32.pt"]
  assert cached.read_bytes() == registered["served"].read_bytes()
  assert model.tokenizer is None
  local = clip.load(openai_archive["path"])
  assert model.config == local.config
  jax.tree.map(np.testing.assert_array_equal, model.params, local.params)
  registered["served"].unlink()  # the cached copy is used, and hashed again
  clip.load(name=clip.DEFAULT, progress=False)
  data = bytearray(cached.read_bytes())
  data[100] ^= 0xFF
  cached.write_bytes(bytes(data))
  with pytest.raises(WeightsError) as info:
    clip.load(progress=False)
  message = str(info.value)
  assert "\n" not in message and "sha256 is" in message and "force=True" in message


def test_registry_refuses_a_download_with_the_wrong_sha256(registered):
  entry = registered["entries"][clip.DEFAULT]
  registered["entries"][clip.DEFAULT] = dataclasses.replace(entry, sha256="0" * 64)
  with pytest.raises(WeightsError) as info:
    clip.load(progress=False)
  message = str(info.value)
  assert "\n" not in message
  assert f"sha256 is {entry.sha256}, expected {'0' * 64}" in message
  assert list(registered["cache"].iterdir()) == []


def test_local_copy_of_a_registered_checkpoint(openai_archive, registered, tmp_path):
  path = openai_archive["path"]
  assert clip.load(path, name=clip.DEFAULT).config.vision.hidden_size == 128
  other = tmp_path / "tuned.pt"
  other.write_bytes(path.read_bytes() + b"\0")  # a zip reads the same with a trailing byte
  with pytest.raises(WeightsError, match="check_hash=False"):
    clip.load(other, name=clip.DEFAULT)
  assert clip.load(other, name=clip.DEFAULT, check_hash=False).config.text.num_layers == 2
  with pytest.raises(InputError, match="expected a registered CLIP checkpoint"):
    clip.load(path, name="openai-clip-rn50")
  with pytest.raises(InputError, match="is a folder"):
    clip.load(path.parent, name=clip.DEFAULT)
  assert not registered["cache"].exists()


def test_registered_clip_models():
  for name in clip.MODELS:
    entry = weights.get(name)
    assert entry.format == "torchscript" and entry.license == "MIT"
  assert clip.DEFAULT == clip.MODELS[0] == "openai-clip-vit-b-32"


# ---------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("size", [(100, 333), (300, 250), (37, 61), (224, 500), (481, 640),
                                  (229, 231), (700, 300)])
def test_preprocess_matches_clip_image_processor(size):
  # The processor's defaults (224, bicubic, OpenAI mean/std); sizes smaller and larger than 224,
  # non-square both ways, one side already 224, crops with odd margins, and a tall image that
  # Pillow ≥ 13 resamples vertically first.
  image = test_images(size[0], 1, *size)
  expected = transformers.CLIPImageProcessorPil()(images=image[0], return_tensors="np")
  got = jax.jit(clip.preprocess)(image)
  np.testing.assert_allclose(got[0], expected["pixel_values"][0].transpose(1, 2, 0), rtol=0,
                             atol=ATOL_PIXELS)


@pytest.mark.parametrize("size,out", [((13, 900), 224), ((1000, 61), 32), ((97, 97), 96)])
def test_uint8_resize_is_bit_exact_with_pil(size, out):
  # Extreme ratios: heavy upscaling of one side; 1.9× antialiased downscaling of both sides of a
  # tall image (Pillow ≥ 13 does the vertical pass first there); an identity side.
  image = test_images(size[1], 1, *size)
  got = jax.jit(lambda x: clip.preprocess(x, size=out))(image)[0]
  pixels = np.rint((np.asarray(got) * np.float32(clip.IMAGE_STD) + np.float32(clip.IMAGE_MEAN))
                   * 255)
  rh, rw = clip.resized_size(*size, out)
  resized = np.asarray(Image.fromarray(image[0]).resize((rw, rh), Image.BICUBIC))
  top, left = (rh - out) // 2, (rw - out) // 2
  np.testing.assert_array_equal(pixels, resized[top:top + out, left:left + out])


def test_float_images_follow_the_uint8_path():
  # Same filter without the two 8-bit roundings (≤ 0.5 level each, the first seen through the
  # second pass, whose absolute weights sum to ≤ ~1.13): within 1.2 levels; two independent
  # uniform roundings average 1/3 of a level.
  image = test_images(3, 2, 90, 150)
  as_uint8 = jax.jit(clip.preprocess)(image)
  as_float = jax.jit(clip.preprocess)(image.astype(np.float32) / 255)
  levels = np.abs(np.asarray(as_float) - np.asarray(as_uint8)) * np.float32(clip.IMAGE_STD) * 255
  assert levels.max() <= 1.2
  assert levels.mean() < 0.4


def test_crop_offsets():
  # A margin of 3 (227 → 224): Hugging Face floors (1), torchvision rounds half to even (2).
  assert clip.crop_offset(227, 224, "hf") == 1
  assert clip.crop_offset(227, 224, "openai") == 2
  assert clip.crop_offset(229, 224, "hf") == clip.crop_offset(229, 224, "openai") == 2
  assert clip.resized_size(100, 333) == (224, 745)  # int(224 · 333 / 100) = int(745.92)
  assert clip.resized_size(333, 100) == (745, 224)


# -------------------------------------------------------------------------------------- tokenizer


def test_tokenize_matches_clip_tokenizer(tmp_path):
  tokenizer = tiny_tokenizer()
  tokenizer.save_pretrained(tmp_path)
  ours = clip.tokenize(clip.load_tokenizer(tmp_path / "tokenizer.json", length=16), TEXTS,
                       length=16)
  theirs = tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True)
  for row, (ids, mask) in zip(ours, zip(theirs["input_ids"], theirs["attention_mask"])):
    n = sum(mask)
    np.testing.assert_array_equal(row[:n], ids[:n])
    assert (row[n:] == 0).all()
  # The long text is cut to 16 tokens and still ends with <|endoftext|>.
  assert ours[3, -1] == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_tokenize_leaves_the_callers_tokenizer_alone(tmp_path):
  tiny_tokenizer().save_pretrained(tmp_path)
  tokenizer = clip.load_tokenizer(tmp_path / "tokenizer.json", length=16)
  short = clip.tokenize(tokenizer, TEXTS, length=8)
  assert short.shape == (4, 8) and short[3, -1] == 61
  assert tokenizer.truncation["max_length"] == 16


# ------------------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("clip-files")
  make_checkpoint(folder, "quick_gelu")
  return folder


def _variant_folder(source, tmp_path, edit_config=None, edit_tensors=None):
  folder = tmp_path / "variant"
  folder.mkdir()
  config = json.loads((source / "config.json").read_text())
  if edit_config:
    edit_config(config)
  (folder / "config.json").write_text(json.dumps(config))
  tensors = safetensors.numpy.load_file(source / "model.safetensors")
  if edit_tensors:
    edit_tensors(tensors)
  safetensors.numpy.save_file(tensors, folder / "model.safetensors")
  return folder


def test_config_hidden_size_disagreeing_with_tensors(checkpoint_files, tmp_path):
  folder = _variant_folder(checkpoint_files, tmp_path,
                           edit_config=lambda c: c["vision_config"].update(hidden_size=32))
  with pytest.raises(CheckpointError, match=r"tensor 'vision_model\..*' has shape \(64,.*\), "
                     r"expected \(32,.*\) for the config \(vision 2×32, patch 8"):
    clip.load(folder)


def test_config_with_more_layers_than_the_checkpoint(checkpoint_files, tmp_path):
  folder = _variant_folder(checkpoint_files, tmp_path,
                           edit_config=lambda c: c["text_config"].update(num_hidden_layers=3))
  with pytest.raises(CheckpointError, match="the config has 3 text_model layers, the checkpoint 2"):
    clip.load(folder)


def test_missing_and_unexpected_tensors(checkpoint_files, tmp_path):
  def edit(tensors):
    del tensors["text_projection.weight"]
    tensors["vision_model.extra.weight"] = np.zeros(3, np.float32)
  folder = _variant_folder(checkpoint_files, tmp_path, edit_tensors=edit)
  with pytest.raises(CheckpointError, match="1 missing .*text_projection.weight.*1 unexpected .*"
                     "vision_model.extra.weight"):
    clip.load(folder)


def test_bad_files(checkpoint_files, tmp_path):
  with pytest.raises(CheckpointError, match="no CLIP weights file"):
    clip.load(tmp_path)
  (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
  with pytest.raises(CheckpointError, match="not a readable safetensors file"):
    clip.load(tmp_path)
  with pytest.raises(CheckpointError, match="no such file or folder"):
    clip.load(tmp_path / "absent")
  shutil.copy(checkpoint_files / "model.safetensors", tmp_path)
  with pytest.raises(CheckpointError, match="no CLIP config beside the weights"):
    clip.load(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(CheckpointError, match="expected model_type 'clip'"):
    clip.load(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"vision_config": {"hidden_act": "relu"}}))
  with pytest.raises(CheckpointError, match="hidden_act must be one of"):
    clip.load(tmp_path)


def test_bad_images_and_texts(checkpoint):
  model = checkpoint["model"]
  with pytest.raises(InputError, match="channels-last is required"):
    clip.image_embeddings(model, np.zeros((2, 3, 32, 32), np.uint8))
  with pytest.raises(InputError, match="rank 3"):
    clip.image_embeddings(model, np.zeros((32, 32, 3), np.uint8))
  with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
    clip.image_embeddings(model, np.full((1, 8, 8, 3), 255.0, np.float32))
  with pytest.raises(InputError, match="crop: expected one of hf, openai"):
    clip.image_embeddings(model, np.zeros((1, 8, 8, 3), np.uint8), crop="center")
  with pytest.raises(InputError, match=r"token ids must lie in \[0, 62\)"):
    clip.text_embeddings(model, np.array([[60, 99, 61]]))
  with pytest.raises(InputError, match="expected a list of strings, got str"):
    clip.text_embeddings(model, "a cat")
  with pytest.raises(InputError, match="at most"):
    clip.text_embeddings(model, np.zeros((1, 100), np.int32))
  no_tokenizer = clip.Model(model.config, model.params)
  with pytest.raises(InputError, match="no tokenizer"):
    clip.text_embeddings(no_tokenizer, ["a cat"])
