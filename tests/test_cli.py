"""The real ``jaxmetrics`` console entry point, run in a subprocess on a small folder of images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxmetrics import inception
from tests import _inception_fixtures as fixtures


def _run(*args, cache):
  env = dict(os.environ, JAXMETRICS_CACHE=str(cache))
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "jaxmetrics", *map(str, args)], capture_output=True,
                        text=True, env=env, timeout=600)


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
  result = _run("features", folder, "--weights", inception_checkpoints["legacy"], "--no-hash-check",
                "--json", "--batch-size", "2", "-o", out, cache=tmp_path / "cache")
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
