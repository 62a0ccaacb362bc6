"""The Flax DINOv2 against the original model, transformers' ``Dinov2Model``, torch and Pillow.

Pretrained weights cannot be downloaded here, so parity is checked on tiny random models in both
official formats (see ``tests/_dinov2_fixtures.py``): a torch hub state dict saved with
``torch.save`` against what the original ``DinoVisionTransformer`` computed for it (recorded from
facebookresearch/dinov2, whose code is not on PyPI), and a Hugging Face folder written by
``Dinov2Model.save_pretrained`` against that torch model itself. The position interpolation is
checked against ``torch.nn.functional.interpolate`` called with each implementation's arguments,
and the preprocessing against Pillow and torch.
"""

import functools
import json
import shutil

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from jaxmetrics.checkpoints import weights
from jaxmetrics.networks import clip
from jaxmetrics.networks import dinov2
from jaxmetrics.networks import resize as resize_lib
from jaxmetrics.pipeline import extract as extract_lib
from jaxmetrics._errors import CheckpointError, InputError, WeightsError
from tests import _dinov2_fixtures as fx
from tests._inception_fixtures import test_images

# Both sides run float32 through the same layers in different summation orders (XLA's matmuls vs
# torch's); the bar is the 1e-4 relative the FID Inception meets against its references, and the
# issue's. Seen here: ≤ 7e-7 on cls and patch tokens.
RTOL_TOKENS = 1e-4
# Position tables: a 4-tap × 4-tap float32 sum of unit-scale values with weights ≤ 1.2 in both;
# only the summation order differs (torch tap by tap, we as two matrix products). ~30 ulps of 1.
ATOL_POSITIONS = 5e-6
# Preprocessing: the resized uint8 image is bit-exact, so only float32 rounding of /255 and of
# (x − mean) / std remains (values up to ~2.7, ulp 2.4e-7). One grey level is 1/255/0.225 ≈ 0.017.
ATOL_PIXELS = 1e-6


# The network compiled once per shape: op-by-op dispatch of the unjitted Flax apply is slow here.
_apply = jax.jit(dinov2.apply, static_argnames=("config", "positions", "precision"))


def _relative_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _one_line(excinfo):
  message = str(excinfo.value)
  assert "\n" not in message
  return message


# ----------------------------------------------------------------------------------- torch hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
  folder = tmp_path_factory.mktemp("dinov2-hub")
  return {v: fx.save_hub(fx.hub_state_dict(**kw), folder / f"dinov2_tiny_{v}.pth")
          for v, kw in fx.HUB_VARIANTS.items()}


@pytest.fixture(scope="module")
def golden():
  with np.load(fx.GOLDEN) as data:
    return {k: data[k] for k in data.files}


@pytest.mark.parametrize("variant", list(fx.HUB_VARIANTS))
def test_hub_config_is_inferred_from_shapes(hub, variant):
  kw = fx.HUB_VARIANTS[variant]
  config = dinov2.load(hub[variant]).config
  inner = 4 * kw["embed_dim"] if kw["ffn_layer"] == "mlp" else fx.swiglu_hidden(kw["embed_dim"])
  assert config == dinov2.Config(
      hidden_size=kw["embed_dim"], num_layers=kw["depth"], num_heads=kw["num_heads"],
      intermediate_size=inner, ffn="mlp" if kw["ffn_layer"] == "mlp" else "swiglu",
      patch_size=14, image_size=kw["img_size"], layer_norm_eps=1e-6)


@pytest.mark.parametrize("variant", list(fx.HUB_VARIANTS))
@pytest.mark.parametrize("size", fx.HUB_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_hub_checkpoint_matches_the_original_model(hub, golden, variant, size):
  model = dinov2.load(hub[variant])
  pixels = fx.hub_pixels(variant, *size)
  out = _apply(model.params, pixels, config=model.config)
  for key in ("cls", "patch"):
    expected = golden[f"{variant}/{size[0]}x{size[1]}/{key}"]
    assert out[key].shape == expected.shape
    assert _relative_l2(out[key], expected) <= RTOL_TOKENS, key
  if size != (70, 70):
    # The grids that interpolate tell the two position routes apart: transformers' misses the
    # original model by far more than the bar.
    other = _apply(model.params, pixels, config=model.config, positions="transformers")
    assert _relative_l2(other["patch"], golden[f"{variant}/{size[0]}x{size[1]}/patch"]) > 1e-2


def test_golden_outputs_name_their_source(golden):
  assert str(golden["commit"]) == fx.GOLDEN_COMMIT


# -------------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module", params=list(fx.HF_VARIANTS))
def hf(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(f"dinov2-hf-{request.param}")
  torch_model = fx.hf_checkpoint(folder, request.param, seed=3)
  return {"folder": folder, "torch": torch_model, "model": dinov2.load(folder),
          "variant": request.param}


def test_hf_config_read_from_config_json(hf):
  spec = fx.HF_VARIANTS[hf["variant"]]
  config = hf["model"].config
  width = spec["hidden_size"]
  assert (config.hidden_size, config.num_layers, config.num_heads, config.image_size) == (
      width, spec["num_hidden_layers"], spec["num_attention_heads"], spec["image_size"])
  assert config.ffn == ("swiglu" if spec["use_swiglu_ffn"] else "mlp")
  assert config.intermediate_size == (fx.swiglu_hidden(width) if spec["use_swiglu_ffn"]
                                      else 4 * width)


@pytest.mark.parametrize("pixels_hw", [None, (28, 56)], ids=["native", "28x56"])
def test_hf_folder_matches_transformers(hf, pixels_hw):
  native = fx.HF_VARIANTS[hf["variant"]]["image_size"]
  h, w = pixels_hw or (native, native)
  pixels = np.random.RandomState(h * w).standard_normal((2, h, w, 3)).astype(np.float32)
  with torch.no_grad():
    ref = hf["torch"](pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
  hidden = ref.last_hidden_state.numpy()
  # transformers interpolates with size=(h, w): its route, asked for by name.
  out = _apply(hf["model"].params, pixels, config=hf["model"].config, positions="transformers")
  assert _relative_l2(out["cls"], ref.pooler_output.numpy()) <= RTOL_TOKENS
  assert _relative_l2(out["cls"], hidden[:, 0]) <= RTOL_TOKENS
  assert _relative_l2(out["patch"], hidden[:, 1:]) <= RTOL_TOKENS
  if pixels_hw is None:
    # At the native grid nothing is interpolated: both routes are the table itself.
    same = _apply(hf["model"].params, pixels, config=hf["model"].config)
    np.testing.assert_array_equal(same["patch"], out["patch"])


def test_hf_and_hub_names_give_the_same_parameters(hf, tmp_path):
  # The same tensors renamed by the library's own hf_to_hub and saved as a hub .pth load to the
  # same tree; the HF parity above and the golden test tie each naming to its own model.
  from safetensors.numpy import load_file
  sd = dinov2.hf_to_hub(load_file(hf["folder"] / "model.safetensors"))
  path = fx.save_hub(sd, tmp_path / "renamed.pth")
  config = hf["model"].config
  hub_model = dinov2.load(path, config=config)
  flat_a = dict(_flatten(hub_model.params))
  flat_b = dict(_flatten(hf["model"].params))
  assert flat_a.keys() == flat_b.keys()
  for key, value in flat_a.items():
    np.testing.assert_array_equal(value, flat_b[key])
  # transformers 5 names the same tensors q_proj/k_proj/v_proj/o_proj (and gate_proj/up_proj/
  # down_proj) in memory; a state dict saved from model.state_dict() has those names.
  in_memory = {k: v.numpy() for k, v in hf["torch"].state_dict().items()}
  assert any(".q_proj." in k for k in in_memory)
  flat_c = dict(_flatten(dinov2.convert_state_dict(in_memory, config)))
  for key, value in flat_c.items():
    np.testing.assert_array_equal(value, flat_b[key])


def _flatten(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, (*prefix, key))
    else:
      yield (*prefix, key), np.asarray(value)


# ------------------------------------------------------------------------- position embeddings


def _torch_interpolate(table, grid, h, w, positions):
  """``interpolate_pos_encoding``'s call: the original's (scale_factor with its 0.1 offset) or
  transformers' (size)."""
  patch = torch.from_numpy(table[1:]).reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
  if positions == "original":
    kwargs = dict(scale_factor=(float(h + 0.1) / grid, float(w + 0.1) / grid))
  else:
    kwargs = dict(size=(h, w), align_corners=False)
  out = torch.nn.functional.interpolate(patch, mode="bicubic", antialias=False, **kwargs)
  assert out.shape[-2:] == (h, w)
  out = out.permute(0, 2, 3, 1).reshape(h * w, -1).numpy()
  return np.concatenate([table[:1], out], axis=0)


@pytest.mark.parametrize("positions", dinov2.POSITIONS)
@pytest.mark.parametrize("grid,h,w", [(37, 16, 16), (37, 16, 23), (37, 40, 40), (5, 4, 4),
                                      (5, 3, 6), (16, 37, 37)])
def test_position_interpolation_matches_torch(positions, grid, h, w):
  table = np.random.RandomState(grid * 100 + h).standard_normal((1 + grid * grid, 32))
  table = table.astype(np.float32)
  expected = _torch_interpolate(table, grid, h, w, positions)
  got = np.asarray(dinov2.interpolate_positions(table, (h, w), image_square=False,
                                                positions=positions))
  np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL_POSITIONS)


def test_position_routes_differ_at_224():
  # 37 × 37 → 16 × 16 (518 → 224 px): the original samples at (i + 0.5) · 37/16.1 − 0.5, transformers
  # at (i + 0.5) · 37/16 − 0.5; on unit-scale random tables the two differ far above round-off.
  table = np.random.RandomState(0).standard_normal((1 + 37 * 37, 64)).astype(np.float32)
  original = _torch_interpolate(table, 37, 16, 16, "original")[1:]
  transformers_route = _torch_interpolate(table, 37, 16, 16, "transformers")[1:]
  assert _relative_l2(transformers_route, original) > 1e-2
  np.testing.assert_allclose(
      np.asarray(dinov2.interpolate_positions(table, (16, 16)))[1:], original, rtol=0,
      atol=ATOL_POSITIONS)


def test_native_square_grid_is_the_table_itself():
  table = np.random.RandomState(1).standard_normal((1 + 25, 8)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(dinov2.interpolate_positions(table, (5, 5))), table)


# ---------------------------------------------------------------------------------- preprocessing


def _dgm_eval_reference(images):
  """dgm-eval's transform without torchvision: PIL resize to 224 bicubic, ToTensor, Normalize."""
  resized = np.stack([np.asarray(Image.fromarray(x).resize((224, 224), Image.Resampling.BICUBIC))
                      for x in images])
  x = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div(255)
  mean = torch.tensor(dinov2.IMAGE_MEAN).reshape(1, 3, 1, 1)
  std = torch.tensor(dinov2.IMAGE_STD).reshape(1, 3, 1, 1)
  return resized, ((x - mean) / std).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("hw", [(300, 200), (100, 150), (224, 224), (512, 90), (37, 501), (1, 1)])
def test_dgm_eval_preprocessing_matches_pil(hw):
  images = test_images(hw[0] + 3 * hw[1], 2, *hw)
  resized, expected = _dgm_eval_reference(images)
  np.testing.assert_array_equal(np.asarray(resize_lib.pil_bicubic(images, (224, 224))), resized)
  got = np.asarray(dinov2.preprocess(images, "dgm-eval"))
  np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL_PIXELS)


@pytest.mark.parametrize("hw", [(300, 200), (100, 150), (224, 224), (64, 1000)])
def test_edm2_preprocessing_matches_torch(hw):
  images = test_images(hw[0] * 7 + hw[1], 2, *hw)
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  x = torch.nn.functional.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic",
                                      antialias=True)
  x = x / 255
  x = x - torch.tensor(dinov2.IMAGE_MEAN).reshape(1, -1, 1, 1)
  x = x / torch.tensor(dinov2.IMAGE_STD).reshape(1, -1, 1, 1)
  expected = x.permute(0, 2, 3, 1).numpy()
  got = np.asarray(dinov2.preprocess(images, "edm2"))
  # The same float32 filter, summed tap by tap by torch and as matrix products here: seen ≤ 2.6e-6
  # (1.5e-4 on 0..255, ~10 ulps of 255). One grey level is 1/255/0.225 ≈ 0.017, and torch's output
  # overshoots [0, 255] here (no clipping, as EDM2), which a clipped resize would miss.
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_clean_preprocessing_matches_pil_float_channels():
  # dgm-eval's clean_resize: Pillow mode "F" per channel, clipped to [0, 255], then /255.
  images = test_images(5, 2, 97, 61)
  expected = []
  for image in images.astype(np.float32):
    channels = [np.asarray(Image.fromarray(image[..., c], mode="F").resize(
        (224, 224), Image.Resampling.BICUBIC)).clip(0, 255) for c in range(3)]
    expected.append(np.stack(channels, axis=-1))
  expected = (np.stack(expected) / np.float32(255) - np.float32(dinov2.IMAGE_MEAN)) / np.float32(
      dinov2.IMAGE_STD)
  got = np.asarray(dinov2.preprocess(images, "clean"))
  # Float32 PIL filter as matrix products: ≤ ~1e-4 on 0..255 (see test_inception's clean test).
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 / 255 / 0.224)


# ---------------------------------------------------------------------------- as a FeatureNetwork


def test_registered_networks():
  for name, config in dinov2.ARCHITECTURES.items():
    network = dinov2.NETWORKS[name]
    assert network.weights == name and network.features == {"cls": config.hidden_size}
    assert network.default_resize == "dgm-eval" and set(network.resize_modes) == {
        "dgm-eval", "edm2", "clean"}
  assert dinov2.NETWORK.features == {"cls": 1024}
  assert dinov2.ARCHITECTURES["dinov2-vitg14"].intermediate_size == fx.swiglu_hidden(1536) == 4096
  for arch in ("vits14", "vitb14", "vitl14", "vitg14"):
    entry = weights.get(f"dinov2-{arch}")
    assert entry.urls == (
        f"https://dl.fbaipublicfiles.com/dinov2/dinov2_{arch}/dinov2_{arch}_pretrain.pth",)
    assert entry.filename == f"dinov2_{arch}_pretrain.pth"
    assert entry.sha256 is None and entry.size is None  # none is published; none is invented


def test_unpublished_hash_needs_a_path(hub, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  with pytest.raises(WeightsError, match="lists no sha256 for https://dl.fbaipublicfiles.com/"
                     "dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth") as excinfo:
    dinov2.load()
  _one_line(excinfo)
  with pytest.raises(WeightsError, match="lists no sha256"):
    dinov2.NETWORK.weights_file(None)
  assert not list(tmp_path.iterdir())  # nothing downloaded, nothing half-written
  # A file the user gives is read; its sha256 is recorded, as there is none to check it against.
  assert weights.fetch("dinov2-vits14", hub["mlp"]) == hub["mlp"]
  with pytest.raises(CheckpointError, match="expected dinov2-vits14"):
    dinov2.load(hub["mlp"], name="dinov2-vits14")


def test_feature_network_runs_through_extract(hub):
  model = dinov2.load(hub["mlp"])
  network = dinov2.feature_network(model.config, name="dinov2-tiny")
  path, digest = network.weights_file(hub["mlp"])
  assert digest == weights.sha256_file(hub["mlp"])
  params = network.load_weights_file(path, digest)
  images = test_images(11, 5, 40, 52)
  expected = dinov2.features(model, images)["cls"]
  assert expected.shape == (5, model.config.hidden_size)
  forward = jax.jit(functools.partial(network.forward, resize="dgm-eval", precision="highest"))
  got = forward(params, images)
  np.testing.assert_allclose(got["cls"], expected, rtol=0, atol=1e-5)
  run = extract_lib.extract(images, params, network=network, batch_size=8, progress=False,
                            keep_features=("cls",))
  # Same float32 network under another batch shape and sharding: round-off of unit-scale tokens.
  np.testing.assert_allclose(run.outputs["cls"], expected, rtol=0, atol=1e-5)
  with pytest.raises(CheckpointError, match="expected the dinov2-vitl14 backbone") as excinfo:
    dinov2.NETWORK.load_weights_file(path, digest)
  _one_line(excinfo)


# ------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
  from tests._clip_fixtures import make_checkpoint
  folder = tmp_path_factory.mktemp("clip-as-dinov2")
  make_checkpoint(folder, "gelu")
  return folder


def test_clip_checkpoint_passed_as_dinov2(clip_folder):
  with pytest.raises(CheckpointError, match=r"config.json: expected a Dinov2Model config "
                     r"\(model_type 'dinov2'\), got model_type 'clip'") as excinfo:
    dinov2.load(clip_folder)
  _one_line(excinfo)
  with pytest.raises(CheckpointError, match=r"model.safetensors: not a DINOv2 torch hub state "
                     r"dict: .*cls_token.* a CLIP's") as excinfo:
    dinov2.load(clip_folder / "model.safetensors")
  _one_line(excinfo)


def test_dinov2_checkpoint_passed_to_clip(hub, hf):
  with pytest.raises(CheckpointError, match=r"expected model_type 'clip'.*got 'dinov2'") as e:
    clip.load(hf["folder"])
  _one_line(e)
  # A torch hub file has no config to read first: its tensor names say what it is.
  with pytest.raises(CheckpointError, match=r"dinov2_tiny_mlp.pth: not a CLIP checkpoint \(a "
                     r"DINOv2 checkpoint\? load it with the DINOv2 network\)") as e:
    clip.load(hub["mlp"])
  _one_line(e)


def test_image_smaller_than_a_patch(hub):
  model = dinov2.load(hub["mlp"])
  with pytest.raises(InputError, match=r"multiples of the patch size 14 \(at least 14\), got "
                     r"10×10") as excinfo:
    dinov2.apply(model.params, np.zeros((1, 10, 10, 3), np.float32), config=model.config)
  _one_line(excinfo)
  with pytest.raises(InputError, match="got 20×20"):
    dinov2.apply(model.params, np.zeros((1, 20, 20, 3), np.float32), config=model.config)
  with pytest.raises(InputError, match="got 7×7"):
    dinov2.features(model, test_images(0, 1, 32, 32), size=7)
  # Source images of any size are resized to 224 first, even a 1×1 one.
  assert dinov2.features(model, test_images(0, 1, 1, 1))["cls"].shape == (1, 128)


def test_missing_config_and_files(hf, tmp_path):
  folder = tmp_path / "no-config"
  shutil.copytree(hf["folder"], folder)
  (folder / "config.json").unlink()
  with pytest.raises(CheckpointError, match=r"no-config: no config.json beside "
                     r"model.safetensors; expected the Dinov2Config") as excinfo:
    dinov2.load(folder)
  _one_line(excinfo)
  with pytest.raises(CheckpointError, match="no such file or folder; expected a DINOv2"):
    dinov2.load(tmp_path / "absent.pth")
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(CheckpointError, match="empty: no DINOv2 weights"):
    dinov2.load(empty)
  bad = tmp_path / "bad-config"
  shutil.copytree(hf["folder"], bad)
  config = json.loads((bad / "config.json").read_text())
  (bad / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
  with pytest.raises(CheckpointError, match="the config has 3 layers, the checkpoint 2"):
    dinov2.load(bad)


def test_missing_and_unexpected_tensors(tmp_path):
  sd = fx.hub_state_dict(**fx.HUB_VARIANTS["mlp"])
  del sd["blocks.1.ls2.gamma"]
  sd["head.weight"] = np.zeros((2, 2), np.float32)
  path = fx.save_hub(sd, tmp_path / "broken.pth")
  with pytest.raises(CheckpointError, match=r"1 missing \(e.g. blocks.1.ls2.gamma\); 1 "
                     r"unexpected \(e.g. head.weight\)") as excinfo:
    dinov2.load(path)
  _one_line(excinfo)
  sd = fx.hub_state_dict(**fx.HUB_VARIANTS["mlp"])
  sd["register_tokens"] = np.zeros((1, 4, 128), np.float32)
  with pytest.raises(CheckpointError, match="register tokens"):
    dinov2.load(fx.save_hub(sd, tmp_path / "reg4.pth"))
