"""Metrics of several feature spaces in one call: FID, FD_DINOv2 and CMMD, each source read once.

The references are the peers' own pipelines on the same random-weight checkpoints, image by image
from files of several sizes: torch-fidelity's Inception (TF1 resize from each image's own size);
dgm-eval's DINOv2 route (its ``transform``: ``Resize((224, 224), BICUBIC)`` on the PIL image,
``ToTensor``, ImageNet ``Normalize``) into transformers' ``Dinov2Model`` at its native 224 × 224
grid, where the original model and transformers use the position table as it is; cmmd's file
route (centre crop, PIL bicubic to 336) into transformers' ``CLIPModel`` and clip-mmd's ``mmd``
(cmmd's ``distance.mmd`` in torch). Fréchet distances of the peers' features are the float64
textbook formula of ``tests/_reference.py``, which is dgm-eval's ``compute_FD_with_reps`` without
``sqrtm``'s round-off.
"""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import jaxmetrics
from jaxmetrics.networks import base
from jaxmetrics.networks import clip
from jaxmetrics.networks import dinov2
from jaxmetrics.networks import inception
from jaxmetrics.pipeline import evaluation
from jaxmetrics.pipeline import sources
from jaxmetrics._errors import InputError, WeightsError
from tests import _cli
from tests import _dinov2_fixtures as dinov2_fixtures
from tests import _inception_fixtures as fixtures
from tests._clip_fixtures import OPENAI_VARIANT, make_checkpoint, openai_module, save_openai_archive
from tests._reference import reference_fid_of_features

clip_mmd = pytest.importorskip("clip_mmd.calculation",
                               reason="clip-mmd (installed --no-deps by .ci/run) is CMMD's peer")

# A DINOv2 whose native grid is the 16 × 16 of 224 px: no position interpolation in either model.
DINOV2_224 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=224,
                  patch_size=14, use_swiglu_ffn=False)
CLIP_336 = dict(OPENAI_VARIANT, vision=dict(OPENAI_VARIANT["vision"], image_size=336,
                                            patch_size=14))
SIZES_A = [(90, 120), (64, 64), (130, 80), (64, 64), (100, 100), (71, 200)]
SIZES_B = [(64, 64)] * 6


def _write(folder, sizes, seed):
  folder.mkdir()
  images = []
  for i, (h, w) in enumerate(sizes):
    image = fixtures.test_images(seed * 100 + i, 1, h, w)[0]
    Image.fromarray(image).save(folder / f"{i:02d}.png")
    images.append(image)
  return images


@pytest.fixture(scope="module")
def checkpoints(inception_checkpoints, tmp_path_factory):
  folder = tmp_path_factory.mktemp("spaces")
  config = transformers.Dinov2Config(**DINOV2_224, attn_implementation="eager")
  torch.manual_seed(4)
  dino = transformers.Dinov2Model(config).eval()
  dinov2_fixtures._randomize(dino, 4)  # pylint: disable=protected-access
  dino.save_pretrained(folder / "dinov2")
  clip_model, _ = make_checkpoint(folder / "clip-hf", CLIP_336, seed=5)
  with torch.no_grad():
    for p in clip_model.parameters():
      p.copy_(p.half().float())  # what the float16 archive holds
  archive = save_openai_archive(openai_module(clip_model, CLIP_336), folder / "ViT-tiny-336.pt")
  params = inception.load_params(inception_checkpoints["legacy"], check_hash=False,
                                 progress=False)
  return {"inception": inception_checkpoints["legacy"], "params": params, "dinov2": folder /
          "dinov2", "dinov2_torch": dino, "clip": archive, "clip_torch": clip_model}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("space-folders")
  return {"a": root / "a", "b": root / "b",
          "images_a": _write(root / "a", SIZES_A, 1), "images_b": _write(root / "b", SIZES_B, 2)}


def _inception_reference(path, images):
  """torch-fidelity's extractor per image: its TF1 resize from the image's own size to 299."""
  model = fixtures.torch_fidelity_extractor(path)
  return np.concatenate([fixtures.torch_fidelity_features(model, image[None])["pool3"]
                         for image in images]).astype(np.float64)


def _dgm_eval_reference(model, images):
  """dgm-eval's DINOv2Encoder.transform and forward (CLS after the final LayerNorm), per image."""
  mean = torch.tensor(dinov2.IMAGE_MEAN).reshape(1, 3, 1, 1)
  std = torch.tensor(dinov2.IMAGE_STD).reshape(1, 3, 1, 1)
  out = []
  for image in images:
    resized = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC))
    x = torch.from_numpy(resized).permute(2, 0, 1)[None].float().div(255)
    with torch.no_grad():
      out.append(model(pixel_values=(x - mean) / std).last_hidden_state[:, 0].numpy())
  return np.concatenate(out).astype(np.float64)


def _cmmd_reference(model, images):
  """cmmd's file route (centre crop, PIL bicubic to 336, /255, CLIP normalisation) and e / ‖e‖."""
  mean, std = np.float32(clip.IMAGE_MEAN), np.float32(clip.IMAGE_STD)
  pixels = []
  for image in images:
    im = Image.fromarray(image)
    side = min(im.size)
    left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((336, 336), Image.Resampling.BICUBIC)
    pixels.append((np.asarray(im, np.float32) / 255.0 - mean) / std)
  with torch.no_grad():
    e = model.get_image_features(pixel_values=torch.from_numpy(
        np.stack(pixels).transpose(0, 3, 1, 2))).pooler_output.numpy().astype(np.float64)
  return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_three_spaces_match_the_peers_from_mixed_size_folders(checkpoints, folders):
  """FID, FD_DINOv2 and CMMD of a folder of several image sizes and one of one size."""
  got = jaxmetrics.evaluate(folders["a"], folders["b"], metrics=("fid", "fd_dinov2", "cmmd"),
                            params=checkpoints["params"], dinov2=checkpoints["dinov2"],
                            clip=checkpoints["clip"], check_hash=False, cache=False)
  assert (got["n1"], got["n2"]) == (6, 6) and got["dinov2_resize"] == "dgm-eval"
  a, b = folders["images_a"], folders["images_b"]
  fid = reference_fid_of_features(_inception_reference(checkpoints["inception"], a),
                                  _inception_reference(checkpoints["inception"], b))
  fd = reference_fid_of_features(_dgm_eval_reference(checkpoints["dinov2_torch"], a),
                                 _dgm_eval_reference(checkpoints["dinov2_torch"], b))
  peer_cmmd = clip_mmd.mmd(_cmmd_reference(checkpoints["clip_torch"], a),
                           _cmmd_reference(checkpoints["clip_torch"], b)).item()
  # Each is a float64 distance of float32 features that agree with the peer's to ~1e-6 relative
  # (test_inception, test_dinov2 and test_cmmd hold them to 1e-4). With 6 samples in 2048 (64,
  # 32) dimensions the covariances have rank 5: both sides take the square root of the same 5
  # nonzero eigenvalues (the rest are round-off, zeroed by both), so the distance moves with the
  # features' error times the terms it cancels, a few times its size. The host route (Pillow's own
  # resize for DINOv2 and CMMD, the TF1 taps in NumPy for Inception) agrees with the device route
  # to float32 round-off. Measured 3.2e-7 (FID), 4.9e-7 (FD_DINOv2), 1.3e-6 (CMMD); 1e-4 leaves
  # BLAS room, and a wrong filter, crop or space moves them by > 1e-2.
  assert got["fid"] == pytest.approx(fid, rel=1e-4)
  assert got["fd_dinov2"] == pytest.approx(fd, rel=1e-4)
  assert got["cmmd"] == pytest.approx(peer_cmmd, rel=1e-4)
  assert got["weights_sha256"].startswith("params:")
  assert len(got["dinov2_weights_sha256"]) == len(got["clip_weights_sha256"]) == 64


def test_each_source_is_read_once(checkpoints):
  """A generator can be read once: three spaces from one pass over it equal three passes over an
  array of the same images, one space each."""
  images = fixtures.test_images(7, 10, 40, 48)
  reference = fixtures.test_images(8, 10, 40, 48)
  options = dict(params=checkpoints["params"], dinov2=checkpoints["dinov2"],
                 clip=checkpoints["clip"], check_hash=False, cache=False)
  once = jaxmetrics.evaluate((images[i:i + 4] for i in range(0, 10, 4)), reference,
                             metrics=("fid", "fd_dinov2", "precision_dinov2", "cmmd"), pr_k=3,
                             **options)
  for metric in ("fid", "fd_dinov2", "precision_dinov2", "cmmd"):
    alone = jaxmetrics.evaluate(images, reference, metrics=(metric,), pr_k=3, **options)
    # The same networks on the same rows under other batch shapes: float32 round-off of features
    # (~1e-6 relative), through float64 distances that cancel terms a few times their size.
    assert once[metric] == pytest.approx(alone[metric], rel=1e-4)
  assert once["n1"] == 10 and once["cached"] == [False, False]


def test_combined_network_is_one_instance_per_parts():
  parts = [("a", inception.NETWORK, None), ("b", clip.CMMD_NETWORK, "cmmd")]
  # A list, and a part's default resize spelled out or not: the same network (one compilation).
  assert base.combine(parts) is base.combine((("a", inception.NETWORK, "tf1"),
                                              ("b", clip.CMMD_NETWORK, "cmmd")))
  assert base.combine(parts).name == "a:inception-v3-fid:tf1+b:clip-vit-l-14-336-cmmd:cmmd"
  assert clip.cmmd_network(clip.VIT_L14_336) is clip.CMMD_NETWORK
  for bad, match in (([("a", inception.NETWORK)], "expected \\(key, network, resize\\) triples"),
                     ([("a", inception.NETWORK, None)] * 2, "distinct string keys"),
                     ([("a/b", inception.NETWORK, None)], "without '/'"),
                     ([("a", "inception", None)], r"parts\['a'\]: expected a FeatureNetwork"),
                     ([("a", inception.NETWORK, "bilinear")], "resize: expected one of")):
    with pytest.raises(InputError, match=match):
      base.combine(bad)


def test_combined_network_equals_its_parts(checkpoints):
  """combine() runs each part on the shared batch, and cuts host-resized rows back into each
  part's image: both equal each network alone."""
  model = dinov2.load(checkpoints["dinov2"])
  net = dinov2.network_of(model.config)
  parts = (("inception", inception.NETWORK, "tf1"), ("dinov2", net, "edm2"))
  combined = base.combine(parts)
  assert combined is base.combine(parts)  # one instance: one static jit argument
  assert combined.input_size == (299 * 299 + 224 * 224, 1)
  assert set(combined.features) == {"inception/pool3", "inception/logits_unbiased",
                                    "inception/logits", "inception/spatial", "dinov2/cls"}
  params = {"inception": checkpoints["params"], "dinov2": model.params}
  images = fixtures.test_images(3, 2, 50, 70)
  run = lambda host: jax.jit(lambda p, x: combined.forward(p, x, resize="parts",
                                                          precision="highest",
                                                          host_resized=host))
  shared = run(False)(params, images)
  alone = {"inception": inception.features(checkpoints["params"], images),
           "dinov2": dinov2.features(model, images, resize="edm2")}
  packed = np.stack([combined.host_resize(image, "parts") for image in images]) / np.float32(255)
  from_host = run(True)(params, packed)
  for name, parts_out in (("shared", shared), ("host", from_host)):
    for key, feature in (("inception", "pool3"), ("dinov2", "cls")):
      ours, theirs = np.asarray(parts_out[f"{key}/{feature}"]), np.asarray(alone[key][feature])
      # Host and device resizes agree to float32 round-off (≤ 1e-4 on 0..255); a network moves
      # its output by about that relative amount.
      assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-5, (name, key)


@pytest.mark.parametrize("mode", dinov2.RESIZE_MODES)
@pytest.mark.parametrize("hw", [(300, 200), (97, 61), (224, 224), (30, 500)])
def test_dinov2_host_resize_is_the_device_route(mode, hw):
  image = fixtures.test_images(hw[0] + hw[1], 1, *hw)
  device = np.asarray(dinov2.preprocess(image, mode))[0]
  host = dinov2.host_resize(image[0], mode)
  assert host.shape == (224, 224, 3) and host.dtype == np.float32
  # The device then preprocesses the host's [0, 1] rows at 224, which resizes nothing.
  again = np.asarray(dinov2.preprocess((host / np.float32(255))[None], mode))[0]
  if mode == "dgm-eval":
    # Pillow itself against the device's bit-exact 8-bit route: the same integers; then
    # ×255 of v/255 and /255 again round twice in float32 (≤ 2 ulps of 1/0.225).
    np.testing.assert_array_equal(host, np.asarray(
        Image.fromarray(image[0]).resize((224, 224), Image.Resampling.BICUBIC), np.float32))
    np.testing.assert_allclose(again, device, rtol=0, atol=4 * 2.0**-24 * 10)
  else:
    # The same float32 filters summed in another order (NumPy against XLA): within ~1e-4 on
    # 0..255, i.e. 1e-4 / 255 / 0.224 after normalisation.
    np.testing.assert_allclose(again, device, rtol=0, atol=1e-4 / 255 / 0.224)


@pytest.mark.parametrize("hw", [(400, 500), (200, 150), (336, 336), (1000, 703), (3, 5)])
def test_cmmd_host_resize_is_the_device_route(hw):
  image = fixtures.test_images(hw[0] * 3 + hw[1], 1, *hw)
  device = np.asarray(clip.cmmd_preprocess(image))[0]
  host = clip.cmmd_host_resize(image[0])
  assert host.shape == (336, 336, 3) and np.all(host == np.round(host))
  again = np.asarray(clip.cmmd_preprocess((host / np.float32(255))[None]))[0]
  # The device's 8-bit route is Pillow's bit for bit: the same integers, then two float32
  # roundings of v/255 (≤ 2 ulps of 1/0.26 after normalisation).
  np.testing.assert_allclose(again, device, rtol=0, atol=4 * 2.0**-24 * 4)


def test_host_route_of_a_mixed_folder(checkpoints, folders):
  """A folder of several sizes, opened for the combined network: each row holds every part's
  host-resized image, which the parts' host_resize give on their own."""
  model = dinov2.load(checkpoints["dinov2"])
  combined = base.combine((("inception", inception.NETWORK, "tf1"),
                           ("dinov2", dinov2.network_of(model.config), "dgm-eval"),
                           ("clip", clip.CMMD_NETWORK, "cmmd")))
  with sources.open_source(folders["a"], network=combined, resize="parts") as source:
    assert source.host_resize is not None and source.image_shape == (*combined.input_size, 3)
    rows, valid = source.read(0, 2)
  assert valid.all()
  for row, image in zip(rows, folders["images_a"][:2]):
    parts = [inception.host_resize(image, "tf1"), dinov2.host_resize(image, "dgm-eval"),
             clip.cmmd_host_resize(image)]
    expected = np.concatenate([p.reshape(-1, 1, 3) for p in parts]) / np.float32(255)
    np.testing.assert_array_equal(row, expected)


def test_space_errors_before_any_pass(checkpoints, folders, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path / "cache"))
  stats = tmp_path / "stats.npz"
  rng = np.random.default_rng(0)
  np.savez(stats, mu=rng.normal(size=2048), sigma=np.eye(2048))
  with pytest.raises(InputError, match=r"stats.npz: FD_DINOv2 needs the statistics of DINOv2 cls, "
                     r"but the file holds only saved statistics \(mu, sigma\) and no images") as e:
    jaxmetrics.evaluate(folders["a"], stats, metrics=("fid", "fd_dinov2"),
                        dinov2=checkpoints["dinov2"])
  assert "\n" not in str(e.value)
  with pytest.raises(InputError, match="CMMD needs CLIP clip_embedding features of every image"):
    jaxmetrics.evaluate(folders["a"], stats, metrics=("cmmd",), clip=checkpoints["clip"],
                        check_hash=False)
  # DINOv2's hub files have no published sha256: without a path nothing is downloaded, and the
  # error comes before the Inception pass.
  with pytest.raises(WeightsError, match="lists no sha256"):
    jaxmetrics.evaluate(folders["a"], folders["b"], metrics=("fid", "fd_dinov2"),
                        params=checkpoints["params"])
  with pytest.raises(InputError, match=r"metrics: expected some of .*fd_dinov2.*cmmd, got fd_dino"):
    jaxmetrics.evaluate(folders["a"], folders["b"], metrics="fd_dino")
  assert not (tmp_path / "cache" / "stats").exists()  # no pass ran, nothing was cached


def test_spaces_are_cached_apart(checkpoints, tmp_path, monkeypatch):
  """Each space's statistics have an entry of their own: a later call that adds a space computes
  only that space, and a new version of jaxmetrics or another device kind misses."""
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  passes = []
  real_pass = evaluation.Evaluator._pass  # pylint: disable=protected-access
  monkeypatch.setattr(evaluation.Evaluator, "_pass", lambda self, source, name, needs: (
      passes.append((name, sorted(needs))), real_pass(self, source, name, needs))[1])
  images = fixtures.test_images(9, 8, 32, 32)
  reference = fixtures.test_images(10, 8, 32, 32)
  options = dict(params=checkpoints["params"], dinov2=checkpoints["dinov2"], check_hash=False)
  first = jaxmetrics.evaluate(images, reference, metrics=("fd_dinov2",), **options)
  assert first["cached"] == [False, False] and evaluation.cache_info()["entries"] == 2
  assert [spaces for _, spaces in passes] == [["dinov2"], ["dinov2"]]
  both = jaxmetrics.evaluate(images, reference, metrics=("fd_dinov2", "fid"), **options)
  # The DINOv2 entries are read; only Inception runs, over each source once.
  assert [spaces for _, spaces in passes[2:]] == [["inception"], ["inception"]]
  assert both["cached"] == [False, False] and evaluation.cache_info()["entries"] == 4
  again = jaxmetrics.evaluate(images, reference, metrics=("fid", "fd_dinov2"), **options)
  assert again["cached"] == [True, True] and len(passes) == 4
  # Reading the cache is exact: the same float64 statistics, the same distances.
  assert (again["fid"], again["fd_dinov2"]) == (both["fid"], both["fd_dinov2"])
  assert again["fd_dinov2"] == first["fd_dinov2"]
  # The Inception Score of the first source (2 splits: another Inception entry) needs nothing of
  # the second, whose DINOv2 entry is read.
  scored = jaxmetrics.evaluate(images, reference, metrics=("is", "fd_dinov2"), splits=2, **options)
  assert scored["cached"] == [False, True]
  assert passes[4:] == [("array(8, 32, 32, 3)", ["inception"])]
  monkeypatch.setattr(evaluation, "_device_identity", lambda: ("gpu", "NVIDIA H100 80GB HBM3"))
  assert jaxmetrics.evaluate(images, reference, metrics=("fid",), **options)["cached"] == [
      False, False]
  monkeypatch.setattr(evaluation, "_version", lambda: "0.0.0-other")
  assert jaxmetrics.evaluate(images, reference, metrics=("fid",), **options)["cached"] == [
      False, False]
  info = evaluation.clear_cache()
  assert info["entries"] == 9 and info["bytes"] > 0
  assert evaluation.cache_info()["entries"] == 0


def test_command_line_mixes_spaces(checkpoints, folders, tmp_path, monkeypatch):
  """``jaxmetrics eval A B --metrics fid,fd_dinov2,cmmd --json``: the keys are the metric names,
  and the numbers are the Python API's (both cached float64 statistics through the same float64
  routes, so equal exactly)."""
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  api = jaxmetrics.evaluate(folders["a"], folders["b"], metrics="fid,fd_dinov2,kid_dinov2,cmmd",
                            weights=checkpoints["inception"], dinov2=checkpoints["dinov2"],
                            clip=checkpoints["clip"], check_hash=False, kid_subset_size=4,
                            kid_subsets=3)
  args = ["eval", folders["a"], folders["b"], "--metrics", "fid,fd_dinov2,kid_dinov2,cmmd",
          "--weights", checkpoints["inception"], "--dinov2", checkpoints["dinov2"], "--clip",
          checkpoints["clip"], "--no-hash-check", "--kid-subset-size", "4", "--kid-subsets", "3"]
  run = lambda *extra: _cli.run(*args, *extra)  # in-process: tests/_cli.py says why
  result = run("--json")
  assert result.returncode == 0, result.stderr
  got = json.loads(result.stdout)
  assert got["cached"] == [True, True]  # the Python call filled the cache for all three spaces
  for key in ("fid", "fd_dinov2", "kid_dinov2_mean", "kid_dinov2_std", "cmmd"):
    assert got[key] == api[key], key
  assert got["dinov2_weights"] == str(checkpoints["dinov2"])
  assert got["clip_weights"] == str(checkpoints["clip"]) and got["dinov2_resize"] == "dgm-eval"
  human = run()
  assert human.returncode == 0, human.stderr
  lines = human.stdout.splitlines()
  assert lines[0] == f"FID  {api['fid']:.6f}" and f"FD_DINOv2 {api['fd_dinov2']:.6f}" in lines
  assert f"CMMD {api['cmmd']:.6f}" in lines
  assert "DINOv2 " in lines[-1] and "resize dgm-eval" in lines[-1] and "CLIP " in lines[-1]
  missing = _cli.run("eval", folders["a"], folders["b"], "--metrics", "fd_dinov2")
  assert missing.returncode == 1 and "lists no sha256" in missing.stderr
  assert len(missing.stderr.strip().splitlines()) == 1
