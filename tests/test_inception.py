"""The Flax FID Inception-v3 against torch-fidelity's own module on the same random weights."""

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from jaxmetrics.networks import inception
from jaxmetrics.networks import resize as resize_lib
from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import CheckpointError, InputError, WeightsError
from tests import _inception_fixtures as fixtures
from tests._peers import torch_fidelity_module

# Several sizes: upsampling (32×32), non-square (61×47), the native size (299×299, where the resize
# is the identity) and non-square downsampling (400×333).
SIZES = [(32, 32), (61, 47), (299, 299), (400, 333)]


@pytest.fixture(scope="module")
def checkpoints(inception_checkpoints):
  return inception_checkpoints


@pytest.fixture(scope="module")
def reference(checkpoints):
  """torch-fidelity's features for each test size, from the legacy file as the peer loads it."""
  extractor = fixtures.torch_fidelity_extractor(checkpoints["legacy"])
  out = {}
  for h, w in SIZES:
    images = fixtures.test_images(h * 1000 + w, 2, h, w)
    out[h, w] = images, fixtures.torch_fidelity_features(extractor, images)
  return out


def _leaves(tree):
  return sorted(traverse_util.flatten_dict(tree).items())


def _relative_l2(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_features_match_torch_fidelity(checkpoints, reference, fmt, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  params = inception.load_params(checkpoints[fmt], check_hash=False, progress=False)
  for (h, w), (images, expected) in reference.items():
    # Both sides run float32 through 94 conv layers with different summation orders; the TF
    # reference and torch-fidelity agree to ~1e-4 relative, the bar the issue sets. Seen: ~1e-6.
    got = inception.features(params, images)
    assert set(got) == {"pool3", "logits_unbiased", "logits", "spatial"}
    assert got["spatial"].shape == (len(images), 17 * 17 * 7)  # guided-diffusion's 2023-d sFID input
    for key in expected:
      assert got[key].shape == expected[key].shape
      assert _relative_l2(got[key], expected[key]) <= 1e-4, (fmt, (h, w), key)


def test_random_weights_keep_activations_healthy(reference):
  # A parity test on dead (all-zero) or exploded features proves nothing.
  for _, expected in reference.values():
    pool3 = expected["pool3"]
    assert np.isfinite(pool3).all()
    assert 1.0 < pool3.std() < 1e3
    assert (pool3 > 0).mean() > 0.5
    # Different images must give different features.
    assert np.abs(pool3[0] - pool3[1]).mean() > 0.05 * np.abs(pool3).mean()


def test_legacy_and_zip_files_give_identical_params(checkpoints, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  a = inception.load_params(checkpoints["legacy"], check_hash=False, cache=False)
  b = inception.load_params(checkpoints["zip"], check_hash=False, cache=False)
  for (path, x), (_, y) in zip(_leaves(a), _leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg="/".join(path))


def test_converted_params_are_cached_and_reused(checkpoints, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  first = inception.load_params(checkpoints["legacy"], check_hash=False)
  cached = list((tmp_path / "converted").glob("*.npz"))
  assert len(cached) == 1

  def fail(path):
    raise AssertionError("the checkpoint was parsed again instead of read from the cache")

  monkeypatch.setattr(inception.torch_checkpoint, "load_state_dict", fail)
  second = inception.load_params(checkpoints["legacy"], check_hash=False)
  for (path, x), (_, y) in zip(_leaves(first), _leaves(second)):
    np.testing.assert_array_equal(x, y, err_msg="/".join(path))


def test_load_params_checks_the_hash_by_default(checkpoints, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  with pytest.raises(WeightsError, match="check_hash=False") as err:
    inception.load_params(checkpoints["legacy"])
  assert weights.get(inception.WEIGHTS).sha256 in str(err.value)
  assert "\n" not in str(err.value)


def test_convert_rejects_a_state_dict_of_another_network(checkpoints):
  state_dict = {k: v.numpy() for k, v in checkpoints["state_dict"].items()}
  missing = {k: v for k, v in state_dict.items() if not k.startswith("Mixed_7c.branch_pool")}
  with pytest.raises(CheckpointError, match="missing.*Mixed_7c/branch_pool|missing.*Mixed_7c.branch_pool"):
    inception.convert_state_dict(missing)
  extra = dict(state_dict, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
  with pytest.raises(CheckpointError, match="unexpected.*AuxLogits"):
    inception.convert_state_dict(extra)
  torchvision_fc = dict(state_dict, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(CheckpointError, match=r"fc.weight.*\(1000, 2048\).*\(1008, 2048\)"):
    inception.convert_state_dict(torchvision_fc)


def test_same_shape_twice_compiles_once(checkpoints):
  params = inception.convert_state_dict({k: v.numpy() for k, v in checkpoints["state_dict"].items()})
  images = fixtures.test_images(7, 3, 20, 24)
  inception.features(params, images)
  size = inception._forward._cache_size()
  again = inception.features(params, fixtures.test_images(8, 3, 20, 24))
  assert inception._forward._cache_size() == size
  # Chunked evaluation pads the tail (5 = 2 + 2 + 1): one compilation for the chunk shape.
  five = fixtures.test_images(9, 5, 20, 24)
  chunked = inception.features(params, five, batch_size=2)
  assert inception._forward._cache_size() == size + 1
  whole = inception.features(params, five)
  for key in whole:
    assert chunked[key].shape == whole[key].shape
    # Same network, different batch composition: only float32 summation order differs, which 94
    # layers amplify to ~1e-6; 1e-5 is ~80 ε (ε = 1.2e-7) relative L2.
    assert _relative_l2(chunked[key], np.asarray(whole[key])) < 1e-5
  assert again["pool3"].shape == (3, 2048)


def test_cpu_lowering_equals_the_batched_network(checkpoints, monkeypatch):
  """The CPU path (1×1 convolutions as products, one row per shard at a time) vs the batched
  convolutions GPUs and TPUs run, and per-shard rows back in their places on 8 devices.

  The same sums in another order: float32 round-off, measured 3e-7 relative L2; 1e-5 is the bound
  the chunked-batch test above uses for the same reason. A row out of place would be off by O(1).
  """
  params = inception.convert_state_dict({k: v.numpy() for k, v in checkpoints["state_dict"].items()})
  images = fixtures.test_images(12, 16, 32, 32)
  cpu = inception._forward(params, images)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded = jax.jit(lambda p, x: inception.forward(p, x, shards=mesh.size))(
      jax.device_put(params, NamedSharding(mesh, P())),
      jax.device_put(images, NamedSharding(mesh, P("data"))))
  # Every platform's default branch: what a GPU or TPU compiles.
  monkeypatch.setattr(jax.lax, "platform_dependent", lambda *args, default, **_: default(*args))
  batched = jax.jit(lambda p, x: inception.forward(p, x))(params, images)
  assert mesh.size == 8
  for key in inception.OUTPUTS:
    reference = np.asarray(batched[key], np.float64)
    assert _relative_l2(cpu[key], reference) < 1e-5, key
    rows = np.linalg.norm(np.asarray(sharded[key], np.float64) - reference, axis=1)
    assert np.all(rows < 1e-5 * np.linalg.norm(reference, axis=1)), key


def test_cpu_skips_steps_whose_rows_are_all_masked(checkpoints):
  """A padded last batch: on a CPU, a step of the one-row-per-shard loop whose rows are all masked
  is skipped (its rows come back as zeros, which no network output is), and the valid rows are
  what the network gives without a mask."""
  params = inception.convert_state_dict({k: v.numpy() for k, v in checkpoints["state_dict"].items()})
  mesh = Mesh(np.array(jax.devices()), ("data",))
  n = 3 * mesh.size  # 3 rows per shard: 3 steps of one row per shard
  images = fixtures.test_images(13, n, 32, 32)
  mask = np.arange(n) < 2  # rows 0 and 1: steps 0 and 1 run, step 2 (rows 2, 5, 8, ...) not
  run = jax.jit(lambda p, x, m: inception.forward(p, x, shards=mesh.size, mask=m))
  place = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  masked = run(place(params, P()), place(images, P("data")), place(mask, P("data")))
  full = run(place(params, P()), place(images, P("data")), None)
  skipped = np.arange(n) % 3 == 2
  for key in inception.OUTPUTS:
    got, expected = np.asarray(masked[key], np.float64), np.asarray(full[key], np.float64)
    # The same network on the computed rows, compiled inside a conditional: at most float32
    # round-off of another fusion (the bound of the tests above); a skipped or misplaced row
    # would be off by O(1).
    rows = np.linalg.norm(got[~skipped] - expected[~skipped], axis=1)
    assert np.all(rows <= 1e-5 * np.linalg.norm(expected[~skipped], axis=1)), key
    assert np.all(got[skipped] == 0) and np.all(np.abs(expected[skipped]).max(axis=1) > 0), key


def test_features_place_the_parameters_once(checkpoints, monkeypatch):
  """Host (NumPy) parameters are put on the device once per call, not handed to every chunk's
  jitted call (which would copy ~95 MB per chunk): every chunk gets the same device arrays."""
  params = inception.convert_state_dict({k: v.numpy() for k, v in checkpoints["state_dict"].items()})
  seen = []
  forward = inception._forward  # pylint: disable=protected-access

  def recording(p, images, **kwargs):
    seen.append(jax.tree.leaves(p))
    return forward(p, images, **kwargs)

  monkeypatch.setattr(inception, "_forward", recording)
  out = inception.features(params, fixtures.test_images(14, 5, 32, 32), batch_size=2)
  assert out["pool3"].shape == (5, 2048) and len(seen) == 3
  assert all(isinstance(leaf, jax.Array) for leaf in seen[0])
  assert all(a is b for chunk in seen[1:] for a, b in zip(seen[0], chunk))


def test_float_images_equal_uint8_images(checkpoints):
  params = inception.convert_state_dict({k: v.numpy() for k, v in checkpoints["state_dict"].items()})
  images = fixtures.test_images(11, 2, 33, 35)
  as_uint8 = inception.features(params, images)
  as_float = inception.features(params, images.astype(np.float32) / 255.0)
  for key in as_uint8:
    # x/255·255 is exact to one float32 ulp of 0..255 values; the network carries that and its
    # own round-off (~1e-6, as above) to the features: the same 1e-5 (~80 ε) relative L2.
    assert _relative_l2(as_float[key], np.asarray(as_uint8[key])) < 1e-5


@pytest.mark.parametrize("in_hw", [(32, 32), (61, 47), (299, 299), (400, 333), (1, 1), (300, 7)])
def test_tf1_resize_matches_torch_fidelity(in_hw):
  interpolate = torch_fidelity_module("interpolate_compat_tensorflow").interpolate_bilinear_2d_like_tensorflow1x
  images = fixtures.test_images(in_hw[0] + in_hw[1], 2, *in_hw).astype(np.float32)
  expected = interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), size=(299, 299),
                         align_corners=False).permute(0, 2, 3, 1).numpy()
  got = np.asarray(resize_lib.resize(images, mode="tf1"))
  # Same float32 formula and operation order: seen ≤ 3.8e-6 on 0..255 (one ulp, from XLA's fused
  # multiply-adds); the bar is 1e-5 relative to the 0..255 range.
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * 255)


@pytest.mark.parametrize("in_hw", [(32, 32), (61, 47), (299, 299), (400, 333)])
def test_pytorch_resize_matches_torch_interpolate(in_hw):
  images = fixtures.test_images(in_hw[0] * in_hw[1], 2, *in_hw).astype(np.float32) / 255.0
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(images).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
      align_corners=False).permute(0, 2, 3, 1).numpy() * 2.0 - 1.0
  got = np.asarray(inception.normalise(resize_lib.resize(images * 255.0, mode="pytorch"), "pytorch"))
  # Same source coordinates (rounded once, as torch's fused multiply-add does); torch blends with
  # (1−λ)·a + λ·b, we with a + λ·(b − a): seen ≤ 2.4e-7 (2 ulps of 1.0), bar 1e-6.
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("in_hw", [(32, 32), (61, 47), (299, 299), (300, 299), (512, 384),
                                   (64, 1000), (1, 1)])
def test_torchmetrics_resize_matches_torch_antialiased_interpolate(in_hw):
  # torchmetrics' NoTrainInceptionV3 with its default antialias=True: this call on 0..255 floats,
  # then (x − 128) / 128.
  images = fixtures.test_images(in_hw[0] + 3 * in_hw[1], 2, *in_hw).astype(np.float32)
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(images).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
      align_corners=False, antialias=True).permute(0, 2, 3, 1).numpy()
  got = np.asarray(resize_lib.resize(images, mode="torchmetrics"))
  # The same float32 filter; torch accumulates tap by tap, we as matrix products: seen ≤ 4.6e-5 on
  # 0..255 (3 ulps of 255). A float64 filter would miss by up to 4e-3 (300 → 299), so 1e-4 tells
  # the two apart; one grey level is 1.
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("in_hw", [(32, 32), (61, 47), (299, 299), (400, 333), (1024, 700)])
def test_clean_resize_matches_pil_bicubic_on_float_channels(in_hw):
  images = fixtures.test_images(in_hw[0] + 7 * in_hw[1], 1, *in_hw).astype(np.float32)
  # clean-fid's resize: each channel as a PIL 'F' image, BICUBIC to 299×299, clipped to 0..255.
  channels = [np.asarray(Image.fromarray(images[0, :, :, c], mode="F").resize((299, 299), Image.BICUBIC))
              for c in range(3)]
  expected = (np.clip(np.stack(channels, axis=-1), 0, 255) - 128.0) / 128.0
  got = np.asarray(inception.normalise(resize_lib.resize(images, mode="clean"), "clean"))[0]
  # PIL accumulates in float64 with float64 weights; we multiply float32 matrices at HIGHEST
  # precision: ~1e-6 of the 0..255 range, far below one grey level (1/128 after normalising).
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("in_size, out_size", [(333, 224), (61, 224), (224, 224), (1000, 299), (50, 7)])
def test_pil_bicubic_matrix_is_pillows_own_filter(in_size, out_size):
  # Row r of an identity image is an impulse at column r; Pillow resizing only the width (mode F,
  # float64 accumulation, one float32 rounding) returns column r of the coefficient matrix.
  identity = Image.fromarray(np.eye(in_size, dtype=np.float32), mode="F")
  expected = np.asarray(identity.resize((out_size, in_size), Image.BICUBIC)).T
  np.testing.assert_allclose(resize_lib.pil_bicubic_matrix(in_size, out_size), expected,
                             rtol=0, atol=1e-7)  # float32 rounding of weights ≤ 1.25


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32), np.uint8), r"\(N, H, W, 3\).*rank 3"),
    (np.zeros((2, 3, 32, 32), np.uint8), "channels-last is required"),
    (np.zeros((2, 32, 32, 4), np.uint8), r"\(2, 32, 32, 4\)"),
    (np.zeros((2, 32, 32, 3), np.int32), "not an image dtype"),
    (np.zeros((2, 32, 32, 3), bool), "not an image dtype"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty batch"),
    (np.full((1, 8, 8, 3), 2.0, np.float32), r"must lie in \[0, 1\].*uint8"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), "finite"),
    ([[1, 2, 3]], "got list"),
])
def test_bad_images_get_a_one_line_error(images, message):
  with pytest.raises(InputError, match=message) as err:
    inception.features({}, images)
  assert "\n" not in str(err.value)
  assert str(err.value).startswith("images: ")


def test_bad_options_get_a_one_line_error():
  images = np.zeros((1, 8, 8, 3), np.uint8)
  with pytest.raises(InputError, match="resize: expected one of tf1, pytorch, clean, torchmetrics, got 'bicubic'"):
    inception.features({}, images, resize="bicubic")
  with pytest.raises(InputError, match="precision"):
    inception.features({}, images, precision="fp8")
  with pytest.raises(InputError, match="batch_size"):
    inception.features({}, np.zeros((3, 8, 8, 3), np.uint8), batch_size=0)
