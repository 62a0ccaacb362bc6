"""Tests of jaxmetrics.checkpoints.weights: the manifest, the cache location, download, verification and fetch.

No real network: a local HTTP server on 127.0.0.1 serves a 4 KiB file and counts the requests.
"""

import dataclasses
import hashlib
import http.server
import socket
import threading
import types

import pytest

from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import WeightsError

PAYLOAD = bytes(range(256)) * 16
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()

# The published file (pytorch-fid's fid_weights release; the sha256 prefix is in its name), written
# here independently of the manifest, so that a typo in either shows up.
INCEPTION_SIZE = 95_628_359
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# OpenAI's CLIP archives: the sha256 is the one in openai/CLIP's download URL (clip.py _MODELS);
# the sizes are those published beside these hashes (weights/README.md).
CLIP = {
    "openai-clip-vit-b-32": ("ViT-B-32.pt", 353_976_522,
                             "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
    "openai-clip-vit-b-16": ("ViT-B-16.pt", 350_837_078,
                             "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
    "openai-clip-vit-l-14": ("ViT-L-14.pt", 932_768_134,
                             "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
    "openai-clip-vit-l-14-336": ("ViT-L-14-336px.pt", 934_088_680,
                                 "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"),
}


class _Handler(http.server.BaseHTTPRequestHandler):
  """Routes: /good.bin, /redirect.bin (302 to good), /short.bin (drops halfway), else 404."""

  requests = None  # Set per server, see the fixture.

  def do_GET(self):  # pylint: disable=invalid-name
    self.requests.append(self.path)
    if self.path == "/redirect.bin":
      self.send_response(302)
      self.send_header("Location", "/good.bin")
      self.send_header("Content-Length", "0")
      self.end_headers()
    elif self.path in ("/good.bin", "/short.bin"):
      self.send_response(200)
      self.send_header("Content-Type", "application/octet-stream")
      self.send_header("Content-Length", str(len(PAYLOAD)))
      self.end_headers()
      body = PAYLOAD if self.path == "/good.bin" else PAYLOAD[: len(PAYLOAD) // 2]
      self.wfile.write(body)
      # HTTP/1.0: the server closes the connection when the handler returns.
    else:
      self.send_error(404)

  def log_message(self, *args):
    del args


@pytest.fixture
def server():
  requests = []
  handler = type("Handler", (_Handler,), {"requests": requests})
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
  thread.start()
  try:
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", requests=requests)
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def refused_url():
  # A port that was just free: nothing listens there, so connecting is refused.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/nothing.bin"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
  for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
    # A proxy from the environment must not see requests meant for 127.0.0.1.
    monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(var.upper(), raising=False)
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path / "cache"))
  return tmp_path / "cache"


def _checkpoint(*urls, sha256=PAYLOAD_SHA256):
  return dataclasses.replace(
      weights.get("inception-2015-12-05"),
      name="test-ckpt",
      filename="test.bin",
      urls=urls,
      size=len(PAYLOAD),
      sha256=sha256,
  )


def _message(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message and "\r" not in message, message
  return message


def test_manifest_has_the_inception_entry():
  entry = weights.registry()["inception-2015-12-05"]
  assert entry == weights.get("inception-2015-12-05")
  assert entry.size == INCEPTION_SIZE
  assert entry.sha256 == INCEPTION_SHA256
  assert entry.filename == "pt_inception-2015-12-05-6726825d.pth"
  assert entry.format == "torch-legacy"
  assert entry.license == "Apache-2.0"
  assert entry.provenance
  assert entry.urls == (
      "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
      "pt_inception-2015-12-05-6726825d.pth",
      "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
      "weights-inception-2015-12-05-6726825d.pth",
  )
  assert weights.DEFAULT == "inception-2015-12-05"


@pytest.mark.parametrize("name", sorted(CLIP))
def test_manifest_has_the_openai_clip_entries(name, cache):
  filename, size, sha256 = CLIP[name]
  entry = weights.get(name)
  assert (entry.filename, entry.size, entry.sha256) == (filename, size, sha256)
  assert entry.format == "torchscript" and entry.license == "MIT" and entry.provenance
  assert entry.urls == (f"https://openaipublic.azureedge.net/clip/models/{sha256}/{filename}",)
  assert weights.cached_path(name) == cache / name / filename


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(WeightsError) as excinfo:
    weights.get("inception-v4")
  message = _message(excinfo)
  assert "'inception-v4'" in message and "inception-2015-12-05" in message


def test_cache_dir_honours_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path / "own"))
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert weights.cache_dir() == tmp_path / "own"
  monkeypatch.delenv("JAXMETRICS_CACHE")
  assert weights.cache_dir() == tmp_path / "xdg" / "jaxmetrics"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert weights.cache_dir() == tmp_path / "home" / ".cache" / "jaxmetrics"
  assert weights.cached_path("inception-2015-12-05") == (
      tmp_path / "home" / ".cache" / "jaxmetrics" / "inception-2015-12-05"
      / "pt_inception-2015-12-05-6726825d.pth"
  )
  assert not (tmp_path / "home").exists()


def test_download_caches_verifies_and_reuses(server, cache):
  ckpt = _checkpoint(f"{server.url}/good.bin")
  path = weights.download(ckpt, progress=False)
  assert path == cache / "test-ckpt" / "test.bin" == weights.cached_path(ckpt)
  assert path.read_bytes() == PAYLOAD
  assert weights.verify(ckpt) == path
  assert weights.sha256_file(path, chunk=1000) == PAYLOAD_SHA256
  assert server.requests == ["/good.bin"]

  assert weights.download(ckpt, progress=False) == path
  assert weights.fetch(ckpt, progress=False) == path
  assert server.requests == ["/good.bin"]

  assert weights.download(ckpt, progress=False, force=True) == path
  assert server.requests == ["/good.bin", "/good.bin"]
  assert [p.name for p in path.parent.iterdir()] == ["test.bin"]


def test_download_follows_redirects(server):
  path = weights.download(_checkpoint(f"{server.url}/redirect.bin"), progress=False)
  assert path.read_bytes() == PAYLOAD
  assert server.requests == ["/redirect.bin", "/good.bin"]


def test_download_replaces_a_cached_file_of_the_wrong_size(server):
  ckpt = _checkpoint(f"{server.url}/good.bin")
  target = weights.cached_path(ckpt)
  target.parent.mkdir(parents=True)
  target.write_bytes(PAYLOAD[:10])
  assert weights.download(ckpt, progress=False).read_bytes() == PAYLOAD
  assert server.requests == ["/good.bin"]


@pytest.mark.parametrize("bad", ["not_found", "refused"])
def test_download_falls_back_to_the_next_url(server, refused_url, bad):
  first = f"{server.url}/missing.bin" if bad == "not_found" else refused_url
  path = weights.download(_checkpoint(first, f"{server.url}/good.bin"), progress=False)
  assert path.read_bytes() == PAYLOAD
  assert server.requests[-1] == "/good.bin"


def test_download_failure_lists_every_url_and_reason(server, refused_url, cache):
  missing = f"{server.url}/missing.bin"
  with pytest.raises(WeightsError) as excinfo:
    weights.download(_checkpoint(missing, refused_url), progress=False)
  message = _message(excinfo)
  assert f"{missing}: HTTP 404" in message
  assert f"{refused_url}: " in message and "refused" in message.lower()
  assert "test-ckpt" in message
  assert list((cache / "test-ckpt").iterdir()) == []


def test_wrong_sha256_leaves_no_file(server, cache):
  wrong = "0" * 64
  ckpt = _checkpoint(f"{server.url}/good.bin", sha256=wrong)
  with pytest.raises(WeightsError) as excinfo:
    weights.download(ckpt, progress=False)
  message = _message(excinfo)
  assert f"sha256 is {PAYLOAD_SHA256}, expected {wrong}" in message
  assert not weights.cached_path(ckpt).exists()
  assert list((cache / "test-ckpt").iterdir()) == []


def test_connection_dropped_midway_leaves_no_file(server, cache):
  ckpt = _checkpoint(f"{server.url}/short.bin")
  with pytest.raises(WeightsError) as excinfo:
    weights.download(ckpt, progress=False)
  assert f"received {len(PAYLOAD) // 2} bytes, expected {len(PAYLOAD)}" in _message(excinfo)
  assert list((cache / "test-ckpt").iterdir()) == []


def test_interrupted_download_leaves_no_file(server, cache, monkeypatch):
  class InterruptingBar:

    def __enter__(self):
      return self

    def __exit__(self, *args):
      return False

    def update(self, n):
      raise KeyboardInterrupt

  monkeypatch.setattr(weights, "_progress_bar", lambda ckpt, enabled: InterruptingBar())
  with pytest.raises(KeyboardInterrupt):
    weights.download(_checkpoint(f"{server.url}/good.bin"), progress=False)
  assert list((cache / "test-ckpt").iterdir()) == []


def test_progress_bar_only_when_asked(server, capsys):
  ckpt = _checkpoint(f"{server.url}/good.bin")
  weights.download(ckpt, progress=False)
  assert capsys.readouterr().err == ""
  weights.download(ckpt, progress=True, force=True)
  assert "test.bin" in capsys.readouterr().err


def test_verify_missing_cached_file():
  with pytest.raises(WeightsError) as excinfo:
    weights.verify(_checkpoint("http://127.0.0.1:9/unused"))
  message = _message(excinfo)
  assert "no such file" in message and "download('test-ckpt')" in message


def test_fetch_local_path(server, tmp_path):
  ckpt = _checkpoint(f"{server.url}/good.bin")
  good = tmp_path / "good.pth"
  good.write_bytes(PAYLOAD)
  tuned = tmp_path / "tuned.pth"
  tuned.write_bytes(PAYLOAD[::-1])

  assert weights.fetch(ckpt, good) == good
  with pytest.raises(WeightsError) as excinfo:
    weights.fetch(ckpt, tuned)
  message = _message(excinfo)
  assert str(tuned) in message and PAYLOAD_SHA256 in message
  assert hashlib.sha256(PAYLOAD[::-1]).hexdigest() in message
  assert "check_hash=False" in message
  assert weights.fetch(ckpt, str(tuned), check_hash=False) == tuned

  with pytest.raises(WeightsError) as excinfo:
    weights.fetch(ckpt, tmp_path / "absent.pth", check_hash=False)
  assert "absent.pth: no such file" in _message(excinfo)
  assert server.requests == []
