"""The ``jaxmetrics`` command line on small folders of images: ``cli.main`` in this process
(tests/_cli.py says why), and the real ``python -m jaxmetrics`` entry point in a fresh process for
the first test and for what only a fresh process shows."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxmetrics.networks import inception
from tests import _inception_fixtures as fixtures
from tests._cli import run as _run, run_process
from tests._reference import reference_fid_of_features


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """RGB PNG and JPEG, grayscale, RGBA and 16-bit files, in a sub-folder too, plus a corrupt one."""
  root = tmp_path_factory.mktemp("images")
  (root / "nested").mkdir()
  rgb = fixtures.test_images(1, 4, 40, 48)
  Image.fromarray(rgb[0]).save(root / "a.png")
  Image.fromarray(rgb[1]).save(root / "b.jpg", quality=95)
  Image.fromarray(rgb[2]).convert("L").save(root / "nested" / "c.png")
  Image.fromarray(np.dstack([rgb[3], np.full((40, 48), 128, np.uint8)]), "RGBA").save(root / "d.png")
  Image.fromarray((rgb[0, :, :, 0].astype(np.uint16) * 257)).save(root / "e16.png")
  (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
  (root / "notes.txt").write_text("not an image, and not an image extension either")
  return root


def test_features_command_matches_the_python_api(folder, inception_checkpoints, tmp_path):
  out = tmp_path / "features.npz"
  result = run_process("features", folder, "--weights", inception_checkpoints["legacy"],
                       "--no-hash-check", "--json", "--batch-size", "2", "-o", out,
                       cache=tmp_path / "cache")
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout)
  assert summary["n"] == 5 and summary["resize"] == "tf1"
  # The corrupt file is skipped and named in a one-line warning; the text file is not an image.
  assert "corrupt.png" in result.stderr and "warning: skipped" in result.stderr
  assert "notes.txt" not in result.stderr

  with np.load(out) as saved:
    files = [os.path.basename(f) for f in saved["files"]]
    assert files == ["a.png", "b.jpg", "d.png", "e16.png", "c.png"]
    params = inception.load_params(inception_checkpoints["legacy"], check_hash=False, cache=False)
    images = np.stack([np.asarray(Image.open(folder / name).convert("RGB")) for name in
                       ("a.png", "b.jpg", "d.png")])
    expected = inception.features(params, images)
    for key in ("pool3", "logits_unbiased", "logits"):
      # Same network and inputs in another process and batch composition: float32 round-off only.
      got = saved[key][:3]
      assert np.linalg.norm(got - expected[key]) <= 1e-5 * np.linalg.norm(expected[key])
    # Grayscale and 16-bit images are replicated to three channels (16-bit scaled to 8 bits).
    gray = np.asarray(Image.open(folder / "nested" / "c.png"))
    gray16 = np.round(np.asarray(Image.open(folder / "e16.png"), np.float64) / 257).astype(np.uint8)
    expected = inception.features(params, np.stack([np.dstack([gray16] * 3), np.dstack([gray] * 3)]))
    np.testing.assert_allclose(saved["pool3"][3:], expected["pool3"], rtol=1e-5, atol=1e-5)
  assert [item["file"] for item in summary["images"]] == [str(f) for f in np.load(out)["files"]]


def test_features_command_takes_a_folder_of_mixed_sizes(inception_checkpoints, tmp_path):
  """The issue's `jaxmetrics fid real/ fake/` on photographs of several sizes, which used to fail:
  the command passes the network's input size and --resize to the folder, which resizes each
  image on the host (tests/test_sources.py checks those rows against the device route)."""
  from jaxmetrics.pipeline import sources
  folder = tmp_path / "mixed"
  folder.mkdir()
  for i, (height, width) in enumerate([(40, 48), (150, 225), (320, 304)]):
    Image.fromarray(fixtures.test_images(40 + i, 1, height, width)[0]).save(folder / f"{i}.png")
  out = tmp_path / "features.npz"
  result = _run("features", folder, "--weights", inception_checkpoints["legacy"], "--no-hash-check",
                "--json", "--resize", "clean", "-o", out, cache=tmp_path / "cache")
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout)["n"] == 3
  params = inception.load_params(inception_checkpoints["legacy"], check_hash=False, cache=False)
  with sources.open_source(folder, input_size=(299, 299), resize="clean") as source:
    assert source.host_resize == ((299, 299), "clean")
    rows, _ = source.read(0, 3)
  expected = np.asarray(inception.features(params, rows, resize="clean")["pool3"])
  with np.load(out) as saved:
    assert [os.path.basename(f) for f in saved["files"]] == ["0.png", "1.png", "2.png"]
    # The same rows through the same network in another process and batch: float32 round-off.
    got = saved["pool3"]
    assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected)


@pytest.mark.parametrize("case", ["missing", "empty", "no-images", "output-folder"])
def test_bad_sources_exit_2_with_one_line(case, tmp_path, inception_checkpoints):
  source = tmp_path / "src"
  extra = []
  if case == "empty":
    source.mkdir()
  elif case == "no-images":
    source.mkdir()
    (source / "corrupt.png").write_bytes(b"garbage")
  elif case == "output-folder":
    source.mkdir()
    Image.fromarray(fixtures.test_images(0, 1, 8, 8)[0]).save(source / "a.png")
    extra = ["-o", tmp_path / "no" / "such" / "folder" / "f.npz"]
  result = _run("features", source, "--weights", inception_checkpoints["legacy"], "--no-hash-check",
                *extra, cache=tmp_path / "cache")
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
  assert len(errors) == 1 and errors[0].startswith("jaxmetrics features: error: "), result.stderr
  assert "Traceback" not in result.stderr
  assert not list(tmp_path.glob("**/*.npz"))


def test_bad_weights_exit_1_with_one_line(folder, inception_checkpoints, tmp_path):
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(inception_checkpoints["legacy"].read_bytes()[:100_000])
  not_a_checkpoint = tmp_path / "image.pth"
  not_a_checkpoint.write_bytes((folder / "a.png").read_bytes())
  cases = [
      ((inception_checkpoints["legacy"],), "--no-hash-check"),   # hash differs from the official
      ((truncated, "--no-hash-check"), "truncated"),
      ((not_a_checkpoint, "--no-hash-check"), "not a"),
      ((tmp_path / "missing.pth",), "no such file"),
  ]
  for weights_args, message in cases:
    result = _run("features", folder, "--weights", *weights_args, cache=tmp_path / "cache")
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_usage_errors_exit_2():
  result = subprocess.run([sys.executable, "-m", "jaxmetrics", "features"], capture_output=True, text=True)
  assert result.returncode == 2
  result = subprocess.run([sys.executable, "-m", "jaxmetrics", "features", ".", "--resize", "bicubic"],
                          capture_output=True, text=True)
  assert result.returncode == 2 and "invalid choice" in result.stderr


def test_weights_path_command(tmp_path):
  result = _run("weights", "path", cache=tmp_path)
  assert result.returncode == 0
  assert result.stdout.strip() == str(tmp_path / "inception-2015-12-05" / "pt_inception-2015-12-05-6726825d.pth")
  result = _run("weights", "verify", cache=tmp_path)
  assert result.returncode == 1 and "no such file" in result.stderr and len(result.stderr.splitlines()) == 1


def test_weights_command_knows_the_clip_checkpoints(tmp_path):
  result = _run("weights", "path", "openai-clip-vit-l-14", cache=tmp_path)
  assert result.returncode == 0
  assert result.stdout.strip() == str(tmp_path / "openai-clip-vit-l-14" / "ViT-L-14.pt")
  result = _run("weights", "verify", "openai-clip-vit-b-32", cache=tmp_path)
  assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
  assert "ViT-B-32.pt: no such file" in result.stderr and "openai-clip-vit-b-32" in result.stderr


# ------------------------------------------------------------------------ metric commands (issue 5)


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
  """Two folders of 12 crops of scikit-image's bundled photographs, resized to 32×32 PNGs."""
  import skimage.data
  photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(),
            skimage.data.rocket(), np.dstack([skimage.data.camera()] * 3)]
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("photos")
  for name in ("real", "fake"):
    (root / name).mkdir()
    for i in range(12):
      photo = photos[rng.integers(len(photos))]
      y, x = rng.integers(0, photo.shape[0] - 128), rng.integers(0, photo.shape[1] - 128)
      crop = Image.fromarray(photo[y:y + 128, x:x + 128]).resize((32, 32), Image.BICUBIC)
      crop.save(root / name / f"{i:02d}.png")
  return root / "real", root / "fake"


def _folder_features(params, folder):
  images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())])
  return np.asarray(inception.features(params, images)["pool3"], np.float64)


def test_eval_json_matches_a_textbook_computation_and_caches(photo_folders, inception_checkpoints, tmp_path):
  real, fake = photo_folders
  weights = inception_checkpoints["legacy"]
  args = ("eval", fake, real, "--weights", weights, "--no-hash-check", "--json",
          "--kid-subsets", "5", "--kid-subset-size", "10")
  first = _run(*args, cache=tmp_path / "cache")
  assert first.returncode == 0, first.stderr
  result = json.loads(first.stdout)
  assert result["n1"] == result["n2"] == 12 and result["cached"] == [False, False]
  assert "fewer than the 2048 feature dimensions" in first.stderr  # N < d is flagged

  params = inception.load_params(weights, check_hash=False, cache=False)
  x, y = _folder_features(params, fake), _folder_features(params, real)
  # float32 features and statistics vs this float64 computation from (float32) features of the
  # same network: the kernel's own error is ~1e-6 relative; 1e-4 covers feature round-off.
  assert result["fid"] == pytest.approx(reference_fid_of_features(x, y), rel=1e-4)

  again = _run(*args, cache=tmp_path / "cache")
  assert again.returncode == 0, again.stderr
  repeat = json.loads(again.stdout)
  assert repeat["cached"] == [True, True]
  for key in ("fid", "is_mean", "is_std", "kid_mean", "kid_std"):
    # The cached float64 statistics and float32 features through the same float64 routes.
    assert repeat[key] == result[key], key
  # A changed setting is another cache entry.
  other = json.loads(_run("fid", fake, real, "--weights", weights, "--no-hash-check", "--json",
                          "--resize", "pytorch", cache=tmp_path / "cache").stdout)
  assert other["cached"] == [False, False] and other["fid"] != pytest.approx(result["fid"], rel=1e-9)


def test_stats_file_round_trips(photo_folders, inception_checkpoints, tmp_path):
  real, fake = photo_folders
  weights = inception_checkpoints["legacy"]
  ref = tmp_path / "ref.npz"
  common = ("--weights", weights, "--no-hash-check", "--json", "--no-cache")
  made = _run("stats", real, "-o", ref, *common, cache=tmp_path / "cache")
  assert made.returncode == 0, made.stderr
  with np.load(ref) as saved:  # what pytorch-fid and clean-fid read
    assert saved["mu"].shape == (2048,) and saved["sigma"].shape == (2048, 2048)
    assert saved["mu"].dtype == np.float64
  via_file = json.loads(_run("fid", fake, ref, *common, cache=tmp_path / "cache").stdout)
  via_folder = json.loads(_run("fid", fake, real, *common, cache=tmp_path / "cache").stdout)
  assert via_file["n2"] is None and via_folder["n2"] == 12
  # The file holds the float32 statistics widened to float64 exactly, and both routes compute in
  # float64 on the host: the same inputs, the same value.
  assert via_file["fid"] == via_folder["fid"]
  assert not list(tmp_path.glob("**/.*part"))


def test_python_fid_equals_the_command_line(photo_folders, inception_checkpoints, tmp_path, monkeypatch):
  import jaxmetrics
  real, fake = photo_folders
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  value = jaxmetrics.fid(fake, real, weights=inception_checkpoints["legacy"], check_hash=False)
  cli = json.loads(_run("fid", fake, real, "--weights", inception_checkpoints["legacy"],
                        "--no-hash-check", "--json", cache=tmp_path).stdout)
  assert cli["cached"] == [True, True]  # the Python call filled the cache the CLI then read
  assert cli["fid"] == value  # the cached float64 statistics through the same float64 kernel


@pytest.mark.parametrize("case", ["missing", "wrong-dim-stats", "too-many", "kid-stats-only",
                                  "is-needs-images", "bad-metric"])
def test_metric_commands_reject_bad_input(case, photo_folders, inception_checkpoints, tmp_path):
  real, fake = photo_folders
  weights = ("--weights", inception_checkpoints["legacy"], "--no-hash-check")
  stats768 = tmp_path / "stats768.npz"
  np.savez(stats768, mu=np.zeros(768), sigma=np.eye(768))
  stats = tmp_path / "stats.npz"
  np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
  args, message = {
      "missing": (("fid", tmp_path / "nope", real), "no such file or folder"),
      "wrong-dim-stats": (("fid", fake, stats768), "2048-d pool3 features, got mu of shape (768,)"),
      "too-many": (("fid", fake, real, "--num-samples", "13"), "expected at most 12"),
      "kid-stats-only": (("kid", fake, stats), "KID needs pool3 features"),
      "is-needs-images": (("is", stats), "IS needs logits"),
      "bad-metric": (("eval", fake, real, "--metrics", "fid,lpips"),
                     "expected some of fid, sfid, is, kid, precision, recall"),
  }[case]
  result = _run(*args, *weights, cache=tmp_path / "cache")
  errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
  assert result.returncode == 2, result.stderr
  assert len(errors) == 1 and message in errors[0], result.stderr


PYTHON_NAMES = re.compile(r"\b(num_samples|kid_subset_size|kid_subsets|image_size|pr_k|dc_k|"
                          r"batch_size|check_hash)\b")


@pytest.mark.parametrize("case", ["is-splits", "kid-subset", "num-samples", "pr-k"])
def test_counts_are_checked_before_the_weights_and_the_pass(case, photo_folders, tmp_path):
  """Every check that counts and settings decide fails first, naming the command line's flags.

  The weights file does not exist: an error about it (exit 1) would mean the check came after the
  weights were needed, i.e. at the feature pass.
  """
  real, fake = photo_folders
  four = tmp_path / "four"
  four.mkdir()
  for i in range(4):
    Image.fromarray(fixtures.test_images(i, 1, 8, 8)[0]).save(four / f"{i}.png")
  args, message = {
      "is-splits": (("eval", four, real, "--metrics", "fid,is"),
                    "the Inception Score needs at least 10 images (one per split), got 4"),
      "kid-subset": (("kid", fake, real),
                     "KID draws subsets of 1000 images (a smaller --kid-subset-size draws fewer), "
                     "got 12"),
      "num-samples": (("fid", fake, real, "--num-samples", "13"),
                      f"--num-samples: expected at most 12, the images of {fake}, got 13"),
      "pr-k": (("eval", fake, real, "--metrics", "precision", "--pr-k", "12"),
               "precision/recall need more than k = 12 images"),
  }[case]
  result = _run(*args, "--weights", tmp_path / "missing.pth", "--no-hash-check",
                cache=tmp_path / "cache")
  errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
  assert result.returncode == 2, result.stderr
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert not PYTHON_NAMES.search(errors[0]), errors[0]


def test_eval_suite_and_adm_give_the_same_numbers(photo_folders, inception_checkpoints, tmp_path):
  """`eval A B` (A generated) with every metric of the suite, and `adm REF SAMPLE` (reference
  first, guided-diffusion's order and printed lines) on the same two folders."""
  real, fake = photo_folders
  weights = ("--weights", inception_checkpoints["legacy"], "--no-hash-check")
  suite = ("fid", "sfid", "is", "kid", "precision", "recall", "density", "coverage")
  ran = _run("eval", fake, real, "--metrics", ",".join(suite), "--json", "--kid-subsets", "5",
             "--kid-subset-size", "10", *weights, cache=tmp_path / "cache")
  assert ran.returncode == 0, ran.stderr
  result = json.loads(ran.stdout)
  numbers = {"fid", "sfid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall",
             "density", "coverage"}
  assert numbers <= set(result) and all(isinstance(result[k], float) for k in numbers)
  assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1

  adm = _run("adm", real, fake, *weights, cache=tmp_path / "cache")
  assert adm.returncode == 0, adm.stderr
  lines = adm.stdout.strip().splitlines()
  assert [line.split(":")[0] for line in lines] == [
      "Inception Score", "FID", "sFID", "Precision", "Recall"]
  printed = {line.split(": ")[0]: float(line.split(": ")[1]) for line in lines}
  # The same images, passes and float64 routes (only the IS parts differ: one part of 12 < 5000
  # images for guided-diffusion, 10 for eval): equal to the last digit printed.
  for key, name in (("fid", "FID"), ("sfid", "sFID"), ("precision", "Precision"),
                    ("recall", "Recall")):
    assert printed[name] == result[key], name
  from tests.test_extract import _adm_inception_score  # pylint: disable=import-outside-toplevel
  params = inception.load_params(inception_checkpoints["legacy"], check_hash=False, cache=False)
  images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(fake.iterdir())])
  logits = inception.features(params, images)["logits_unbiased"]
  # guided-diffusion's IS formula in float64 on this process's features; float32 IS and features
  # from another batch composition: 1e-5 (tests/test_extract.py: assert_scores_close).
  assert printed["Inception Score"] == pytest.approx(_adm_inception_score(logits, 5000), rel=1e-5)

  stats = tmp_path / "stats.npz"
  np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
  refused = _run("adm", stats, fake, *weights, cache=tmp_path / "cache")
  assert refused.returncode == 2
  assert "Precision" not in refused.stdout and "needs pool3 features of every image" in refused.stderr


def test_cache_info_and_clear(photo_folders, inception_checkpoints, tmp_path):
  real, fake = photo_folders
  cache = tmp_path / "cache"
  empty = _run("cache", "info", "--json", cache=cache)
  assert empty.returncode == 0, empty.stderr
  assert json.loads(empty.stdout) == {"action": "info", "path": str(cache / "stats"),
                                      "entries": 0, "bytes": 0}
  made = _run("fid", fake, real, "--weights", inception_checkpoints["legacy"], "--no-hash-check",
              "--json", cache=cache)
  assert made.returncode == 0, made.stderr
  entries = sorted((cache / "stats").glob("*.npz"))
  info = json.loads(_run("cache", "info", "--json", cache=cache).stdout)
  assert info["entries"] == len(entries) == 2
  assert info["bytes"] == sum(f.stat().st_size for f in entries)
  human = _run("cache", "clear", cache=cache)
  assert human.returncode == 0 and human.stdout.strip() == (
      f"removed {cache / 'stats'} (2 entries, {info['bytes'] / 1e6:.1f} MB)")
  assert not (cache / "stats").exists()


def _device_count(env):
  """What the command line's start-up gives JAX in a fresh process with ``env`` (no XLA_FLAGS of
  the test run's own)."""
  code = ("from jaxmetrics.pipeline import cli; cli.cpu_devices(); import jax; "
          "print(jax.device_count())")
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXMETRICS_CPU_DEVICES")}
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**base, **env}, timeout=300)


def test_one_cpu_device_per_core_by_default():
  cores = len(os.sched_getaffinity(0))
  default = _device_count({})
  assert default.returncode == 0, default.stderr
  # One device per usable core, at most cli.MAX_CPU_DEVICES (1 stays JAX's own default).
  from jaxmetrics.pipeline import cli
  assert int(default.stdout) == min(cores, cli.MAX_CPU_DEVICES)
  assert int(_device_count({"JAXMETRICS_CPU_DEVICES": "3"}).stdout) == 3
  # A count the caller forces is theirs.
  forced = {"XLA_FLAGS": "--xla_force_host_platform_device_count=5", "JAXMETRICS_CPU_DEVICES": "3"}
  assert int(_device_count(forced).stdout) == 5
  bad = run_process("cache", "info", cache="unused", env={"JAXMETRICS_CPU_DEVICES": "zero"})
  assert bad.returncode == 2 and bad.stderr.strip() == (
      "jaxmetrics cache: error: JAXMETRICS_CPU_DEVICES: expected a positive integer, got 'zero'")
  assert cli.cpu_devices() is None  # this process forces its device count in conftest
