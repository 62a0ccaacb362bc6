"""CMMD: the biased RBF MMD² against a float64 NumPy computation and the clip-mmd package, and
CMMD's CLIP ViT-L/14@336 preprocessing and embeddings against Pillow and transformers.

google-research/cmmd itself cannot run here (it needs TensorFlow and scenic); the ``clip-mmd``
package carries its ``distance.mmd`` (as ``clip_mmd/calculation.py`` ``mmd`` and
``mmd_efficient``, torch), installed with ``--no-deps`` (``.ci/run``), and its file preprocessing
(``io_util._center_crop_and_resize``) is five lines of Pillow, written out below as the reference.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import Mesh
from PIL import Image

import jaxmetrics
from jaxmetrics.checkpoints import weights
from jaxmetrics.metrics import mmd
from jaxmetrics.networks import clip
from jaxmetrics._errors import CheckpointError, InputError, WeightsError
from tests._clip_fixtures import OPENAI_VARIANT, make_checkpoint, openai_module, save_openai_archive
from tests._inception_fixtures import test_images

clip_mmd = pytest.importorskip("clip_mmd.calculation",
                               reason="pip install --no-deps clip-mmd (see .ci/run)")

GAMMA = 1.0 / (2.0 * mmd.SIGMA**2)
U32, U64 = 2.0**-24, 2.0**-53
# Embeddings: as tests/test_clip.py, the float32 network against torch's float32 network.
RTOL_EMBEDDINGS = 1e-4
# Preprocessing: bit-exact resize, then float32 rounding of /255 and (x − mean)/std (values up to
# ~2.2, ulp 2.4e-7); one uint8 level is 1/255/0.27 ≈ 0.015, so this bar also proves the resize exact.
ATOL_PIXELS = 1e-6


def _embeddings(seed, n, d, shift=1.0, offset=0.0):
  """Unit rows clustered around a common direction (pairwise cosines ~0.5, like CLIP's), the
  second set optionally moved along a few axes."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, d)) + shift
  a[:, :3] += offset
  return a / np.linalg.norm(a, axis=1, keepdims=True)


def _numpy_cmmd(x, y, sigma=mmd.SIGMA, scale=mmd.SCALE):
  """cmmd's formula in float64 NumPy, full matrices: scale · (mean K_XX + mean K_YY − 2 mean K_XY)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  gamma = 1.0 / (2.0 * sigma**2)
  kernel = lambda a, b: np.exp(-gamma * (-2 * a @ b.T + (a * a).sum(1)[:, None]
                                         + (b * b).sum(1)[None, :]))
  return scale * (kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean())


def _bound(x, y, u, block, scale=mmd.SCALE, gamma=GAMMA):
  """The error bound of jaxmetrics.metrics.mmd's docstring for round-off unit ``u``."""
  d = x.shape[1]
  r2 = max(float(np.max(np.sum(np.square(a, dtype=np.float64), axis=1))) for a in (x, y))
  return scale * 4 * (4 * (d + 2) * u * gamma * r2 + (2 * block + 3) * u * min(1.0, 4 * gamma * r2))


def _numpy_bound(x, y, u=U64, scale=mmd.SCALE, gamma=GAMMA):
  """The float64 round-off of :func:`_numpy_cmmd` itself: the same squared distances, ``exp``
  within 2u, and three pairwise-summed means of values ≤ 1 (≤ log2(N)·u each), weights 4."""
  d, r2 = x.shape[1], max(float(np.max(np.sum(a * a, axis=1))) for a in (x, y))
  terms = max(x.shape[0], y.shape[0]) ** 2
  return scale * 4 * (4 * (d + 2) * u * gamma * r2 + (math.log2(terms) + 3) * u)


def _one_device_mesh():
  return Mesh(np.array(jax.devices()[:1]), ("data",))


# --------------------------------------------------------------------------------------- MMD²


@pytest.mark.parametrize("block_size", [None, 37])
def test_float64_matches_numpy_and_clip_mmd(block_size):
  # 300 and 250 rows: with 37-row tiles, padded last tiles on both sides and every device busy.
  x, y = _embeddings(0, 300, 64), _embeddings(1, 250, 64, offset=0.05)
  got = jaxmetrics.cmmd(x, y, block_size=block_size)
  assert isinstance(got, np.float64)
  expected = _numpy_cmmd(x, y)
  tol = _bound(x, y, U64, block_size or 300) + _numpy_bound(x, y)
  assert abs(got - expected) <= tol
  peer = clip_mmd.mmd(x, y).item()  # cmmd's formula, torch float64 on float64 inputs
  assert abs(got - peer) <= tol
  peer_blocks = clip_mmd.mmd_efficient(x, y, precision=torch.float64, low_mem=True, coeff_bs=64)
  assert abs(got - peer_blocks) <= tol
  assert got > 1e6 * tol  # a real difference of distributions, far above the bound


def test_float32_within_the_stated_bound():
  # Inputs rounded to float32 once; the reference is the float64 formula of those float32 values.
  x = _embeddings(2, 400, 96).astype(np.float32)
  y = _embeddings(3, 300, 96, offset=0.03).astype(np.float32)
  got = jaxmetrics.cmmd(x, y, block_size=64)
  assert isinstance(got, np.float64)
  expected = _numpy_cmmd(x, y)
  assert abs(got - expected) <= _bound(x, y, U32, 64) + _numpy_bound(x, y)
  # A jax.Array takes the same route and gives the same tile sums.
  assert jaxmetrics.cmmd(jnp.asarray(x), jnp.asarray(y), block_size=64) == got


def test_same_distribution_and_sigma_scale():
  # Two samples of one distribution: MMD² is small (≥ 0 in exact arithmetic for the biased
  # estimator), a cancellation of sums 1e3 times larger; and another sigma and scale.
  x, y = _embeddings(4, 200, 32), _embeddings(5, 180, 32)
  got = mmd.mmd_rbf(x, y, sigma=0.7, scale=1.0)
  expected = _numpy_cmmd(x, y, sigma=0.7, scale=1.0)
  gamma = 1.0 / (2 * 0.7**2)
  assert abs(got - expected) <= (_bound(x, y, U64, 200, scale=1.0, gamma=gamma)
                                 + _numpy_bound(x, y, scale=1.0, gamma=gamma))
  assert expected > 0
  cmmd_same = jaxmetrics.cmmd(x, y)
  assert abs(cmmd_same - _numpy_cmmd(x, y)) <= _bound(x, y, U64, 200) + _numpy_bound(x, y)


def test_eight_devices_equal_one_and_compile_once():
  # 8 forced devices (tests/conftest.py) and one: the same 16-row tiles, combined on the host with
  # exactly rounded sums. XLA compiles the tile differently inside each program (its CPU code
  # differs by a few ulps), so they agree within twice the float64 bound, not bit for bit.
  x, y = _embeddings(6, 100, 16), _embeddings(7, 90, 16, offset=0.1)
  eight = jaxmetrics.cmmd(x, y, block_size=16)
  one = jaxmetrics.cmmd(x, y, block_size=16, mesh=_one_device_mesh())
  assert abs(eight - one) <= 2 * _bound(x, y, U64, 16)
  assert abs(eight - _numpy_cmmd(x, y)) <= _bound(x, y, U64, 16) + _numpy_bound(x, y)
  before = mmd._tiles._cache_size()
  mmd.mmd_rbf(x, y, sigma=3.0, block_size=16)
  mmd.mmd_rbf(x, y, sigma=30.0, scale=1.0, block_size=16)
  assert mmd._tiles._cache_size() == before  # sigma and scale are arguments, not constants


def test_never_holds_a_full_kernel_matrix():
  # 4096 + 4096 rows in 256-row tiles on one device: XLA's own accounting of the step's temporaries
  # is a few tiles (256² float32 = 256 KiB each), not the 64 MiB of one 4096² kernel matrix.
  n, d, block = 4096, 8, 256
  rows, _, _, _ = mmd._schedule(n // block, n // block, 1)
  spec = jax.ShapeDtypeStruct
  compiled = mmd._tiles.lower(spec((2 * n, d), jnp.float32), spec((2 * n,), jnp.bool_),
                              spec(rows.shape, jnp.int32), spec(rows.shape, jnp.int32),
                              spec((), jnp.float32), block=block, mesh=_one_device_mesh()).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp <= 4 * block * block * 4
  # Symmetric sums visit each pair of tiles once: 2 · 16·17/2 + 16² tiles, not 3 · 16².
  assert rows.size == 2 * 136 + 256


def test_bad_input():
  x = _embeddings(8, 10, 4)
  with_nan, with_inf = x.copy(), x.astype(np.float32)
  with_nan[3, 1], with_inf[[2, 5], 0] = np.nan, np.inf
  x32 = x.astype(np.float32)
  with_huge = x32.copy()
  with_huge[4] = 1e20
  cases = [
      (lambda: jaxmetrics.cmmd(x[0], x), "x: expected embeddings of shape (N, d)"),
      (lambda: jaxmetrics.cmmd(x, x[:, :3]), "y: expected 4 features per row like x"),
      (lambda: jaxmetrics.cmmd(x, x[:0]), "y: expected at least one row"),
      (lambda: jaxmetrics.cmmd(x.astype(np.int32), x), "x: expected a floating array"),
      (lambda: jaxmetrics.cmmd(with_nan, x), "x: expected finite embeddings, got NaN or inf in 1"),
      (lambda: jaxmetrics.cmmd(x, jnp.asarray(with_inf)), "y: expected finite embeddings, got NaN "
       "or inf in 2"),
      # Finite, but 1e20² overflows float32: the distances would be inf − inf = NaN (float64
      # embeddings are computed in float64, where it does not).
      (lambda: jaxmetrics.cmmd(x32, with_huge), "y: expected squared norms of at most 8.51e+37 "
       "(float32 distances would overflow), got 1 row(s) above"),
      (lambda: jaxmetrics.cmmd(jnp.asarray(with_huge), x32), "x: expected squared norms of at "
       "most 8.51e+37"),
      (lambda: mmd.mmd_rbf(x, x, sigma=0), "sigma: expected a finite number > 0"),
      (lambda: mmd.mmd_rbf(x, x, scale=float("nan")), "scale: expected a finite number"),
      (lambda: jaxmetrics.cmmd(x, x, block_size=0), "block_size"),
      (lambda: jax.jit(jaxmetrics.cmmd)(x, x), "call it outside jit"),
  ]
  for call, expected in cases:
    with pytest.raises(InputError) as info:
      call()
    assert expected in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------- CLIP ViT-L/14@336


def test_registered_vit_l14_336():
  entry = weights.get(clip.CMMD_WEIGHTS)
  # OpenAI's clip/clip.py _MODELS["ViT-L/14@336px"]: the URL's folder is the file's sha256.
  assert entry.urls[0].split("/")[-2] == entry.sha256
  assert entry.urls[0].endswith("/ViT-L-14-336px.pt") and entry.filename == "ViT-L-14-336px.pt"
  assert (entry.format, entry.license, entry.size) == ("torchscript", "MIT", 934088680)
  assert clip.CMMD_WEIGHTS in clip.MODELS
  net = clip.CMMD_NETWORK
  assert (net.weights, net.name, dict(net.features)) == (
      clip.CMMD_WEIGHTS, "clip-vit-l-14-336-cmmd", {"clip_embedding": 768})
  assert net.check_resize(None) == "cmmd"
  assert clip.cmmd_network() is net


def _cmmd_file_preprocess(image, size=336):
  """google-research/cmmd's ``io_util._center_crop_and_resize`` and ``_read_image`` with PIL, then
  ``/ 255.0`` (``compute_embeddings_for_dir``) and scenic's ``normalize_image`` in float32."""
  im = Image.fromarray(image)
  w, h = im.size
  side = min(w, h)
  top, left = (h - side) // 2, (w - side) // 2
  im = im.crop((left, top, left + side, top + side)).resize((size, size), resample=Image.BICUBIC)
  pixels = np.asarray(im).astype(np.float32)
  x = pixels / 255.0
  mean, std = np.float32(clip.IMAGE_MEAN), np.float32(clip.IMAGE_STD)
  return pixels, (x - mean) / std


@pytest.mark.parametrize("size", [(400, 500), (200, 150), (336, 401), (337, 900), (1000, 703),
                                  (3, 5)])
def test_preprocess_is_cmmds_pil_route(size):
  # Shrinking (antialiased) and enlarging, a side already 336 (no resampling), odd margins, a
  # tall image, and one smaller than a 14-pixel patch (cmmd enlarges it like any other).
  image = test_images(size[0] + size[1], 1, *size)
  pixels, expected = _cmmd_file_preprocess(image[0])
  got = np.asarray(jax.jit(clip.cmmd_preprocess)(image))[0]
  recovered = np.rint((got * np.float32(clip.IMAGE_STD) + np.float32(clip.IMAGE_MEAN)) * 255)
  np.testing.assert_array_equal(recovered, pixels)
  np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL_PIXELS)


def test_float_images():
  # At 336 × 336 nothing is resampled: cmmd's embed() of [0, 1] floats, to float32 rounding.
  image = test_images(11, 2, 336, 336)
  as_uint8 = np.asarray(jax.jit(clip.cmmd_preprocess)(image))
  as_float = np.asarray(jax.jit(clip.cmmd_preprocess)(image.astype(np.float32) / 255))
  np.testing.assert_allclose(as_float, as_uint8, rtol=0, atol=ATOL_PIXELS)
  # Other sizes: the same filter without the two 8-bit roundings (≤ 0.5 level each, the first seen
  # through the second pass, whose absolute weights sum to ≤ ~1.13): within 1.2 levels.
  image = test_images(12, 2, 300, 420)
  as_uint8 = np.asarray(jax.jit(clip.cmmd_preprocess)(image))
  as_float = np.asarray(jax.jit(clip.cmmd_preprocess)(image.astype(np.float32) / 255))
  assert np.abs(as_float - as_uint8).max() * np.float32(clip.IMAGE_STD).min() * 255 <= 1.2


# ViT-L/14@336's geometry (patch 14 on a 24 × 24 grid, image 336) on a narrow, shallow random CLIP
# that follows OpenAI's size rule (64-wide heads, MLP 4 × width), so that its config is inferred.
CMMD_VARIANT = dict(OPENAI_VARIANT, vision=dict(OPENAI_VARIANT["vision"], image_size=336,
                                                patch_size=14))


@pytest.fixture(scope="module")
def archive_336(tmp_path_factory):
  folder = tmp_path_factory.mktemp("clip-336")
  torch_model, _ = make_checkpoint(folder / "hf", CMMD_VARIANT, seed=3)
  with torch.no_grad():
    for p in torch_model.parameters():
      p.copy_(p.half().float())  # what the float16 archive will hold
  path = save_openai_archive(openai_module(torch_model, CMMD_VARIANT), folder / "ViT-tiny-336.pt")
  return {"path": path, "torch": torch_model, "config": folder / "hf" / "config.json"}


def test_archive_config_inferred_at_336(archive_336):
  config = clip.load(archive_336["path"]).config
  assert (config.vision.image_size, config.vision.patch_size) == (336, 14)
  hf = clip.Config.from_hf(json.loads(archive_336["config"].read_text()))
  assert config.vision == hf.vision and config.projection_dim == hf.projection_dim
  # The real archive's shapes give the real model (the inference OpenAI's build_model makes).
  assert clip.VIT_L14_336.vision.image_size // clip.VIT_L14_336.vision.patch_size == 24


def _torch_cmmd_embeddings(torch_model, images):
  """cmmd's file route in PIL, transformers' CLIPModel image features, then e / ‖e‖ (float64)."""
  pixels = np.stack([_cmmd_file_preprocess(image)[1] for image in images]).transpose(0, 3, 1, 2)
  with torch.no_grad():
    out = torch_model.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output
  e = out.numpy().astype(np.float64)
  return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_network_matches_transformers_and_cmmd_matches_clip_mmd(archive_336):
  model_config = clip.load(archive_336["path"]).config
  network = clip.cmmd_network(model_config)
  assert network.features == {"clip_embedding": model_config.projection_dim}
  path, digest = network.weights_file(archive_336["path"], check_hash=False)
  params = network.load_weights_file(path, digest)
  assert set(params) == {"vision_model", "visual_projection"}
  a = np.concatenate([test_images(20, 3, 360, 480), test_images(21, 3, 360, 480)])
  b = test_images(22, 5, 360, 480)  # one shape and batch size: one compilation of the ViT
  ours_a = np.asarray(clip.cmmd_embeddings(params, a, network=network, batch_size=4))
  ours_b = np.asarray(clip.cmmd_embeddings(params, b, network=network, batch_size=4))
  ref_a = _torch_cmmd_embeddings(archive_336["torch"], a)
  ref_b = _torch_cmmd_embeddings(archive_336["torch"], b)
  for ours, ref in ((ours_a, ref_a), (ours_b, ref_b)):
    np.testing.assert_allclose(np.linalg.norm(ours.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= RTOL_EMBEDDINGS
  # CMMD of the two sets: clip-mmd's mmd (cmmd's formula, torch float64) on transformers'
  # embeddings against jaxmetrics' on its own float32 ones. Unit rows moved by δ move each squared
  # distance by ≤ 4δ + 2δ² and each kernel value by γ times that: weights 4, so the two differ by
  # ≤ scale · 4γ · (4δ + 2δ²) plus the float32 bound.
  delta = max(float(np.max(np.linalg.norm(o - r, axis=1))) for o, r in ((ours_a, ref_a),
                                                                         (ours_b, ref_b)))
  got = jaxmetrics.cmmd(ours_a, ours_b)
  peer = clip_mmd.mmd(ref_a, ref_b).item()
  tol = mmd.SCALE * 4 * GAMMA * (4 * delta + 2 * delta**2) + _bound(ours_a, ours_b, U32, 6)
  assert abs(got - peer) <= tol + _numpy_bound(ref_a, ref_b)
  assert peer > 10 * tol  # the sets differ: the comparison is not of two near-zeros


def test_network_refuses_another_clip(archive_336, tmp_path):
  with pytest.raises(CheckpointError) as info:
    clip.CMMD_NETWORK.load_weights_file(archive_336["path"], None)
  message = str(info.value)
  assert "\n" not in message and "clip-vit-l-14-336-cmmd" in message and "cmmd_network" in message
  with pytest.raises(WeightsError) as info:
    clip.CMMD_NETWORK.weights_file(archive_336["path"])
  message = str(info.value)
  assert "\n" not in message and "sha256 is" in message and "check_hash=False" in message
  other = tmp_path / "model.pt"
  other.write_bytes(b"not a checkpoint")
  with pytest.raises(CheckpointError) as info:
    clip.CMMD_NETWORK.load_weights_file(other, None)
  assert "\n" not in str(info.value)
  # A DINOv2 checkpoint (torch hub names) given for CLIP.
  dinov2 = tmp_path / "dinov2_vits14_pretrain.pth"
  torch.save({"cls_token": torch.zeros(1, 1, 64), "pos_embed": torch.zeros(1, 5, 64),
              "patch_embed.proj.weight": torch.zeros(64, 3, 14, 14),
              "blocks.0.norm1.weight": torch.ones(64)}, dinov2)
  with pytest.raises(CheckpointError) as info:
    clip.CMMD_NETWORK.load_weights_file(dinov2, None)
  message = str(info.value)
  assert "\n" not in message and "not a CLIP checkpoint (a DINOv2 checkpoint?" in message
  assert str(dinov2) in message and "'cls_token'" in message
  with pytest.raises(InputError, match="cmmd_network"):
    clip.cmmd_embeddings({}, test_images(0, 1, 8, 8), network=jaxmetrics.inception.NETWORK)
