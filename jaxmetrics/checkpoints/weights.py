"""Checkpoint registry, download, cache and sha256 verification. Host-only: file and network I/O.

The registry is ``weights/manifest.json``, shipped as ``jaxmetrics._manifest/manifest.json``; see
``weights/README.md`` for the provenance of each file. A checkpoint is cached at
``cache_dir() / name / filename``::

  from jaxmetrics.checkpoints import weights
  path = weights.fetch()                      # downloads once, then reuses the cached file
  path = weights.fetch(path="my.pth")         # a local copy, checked against the registry's sha256
  path = weights.fetch(path="tuned.pth", check_hash=False)   # deliberately different weights

Downloads stream into a temporary file beside the final path, are checked against the registry's
size and sha256 while they stream, and are renamed into place only when both match, so an
interrupted or corrupt download never leaves a file at the final path.
"""

import contextlib
import dataclasses
import functools
import hashlib
import http.client
import importlib.resources
import json
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request

from jaxmetrics._errors import InputError
from jaxmetrics._errors import WeightsError

__all__ = [
    "Checkpoint",
    "DEFAULT",
    "cache_dir",
    "cached_path",
    "download",
    "fetch",
    "get",
    "registry",
    "sha256_file",
    "verify",
]

DEFAULT = "inception-2015-12-05"

_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_FIELDS = ("filename", "urls", "size", "sha256", "format", "license", "provenance")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One downloadable weights file, as listed in the manifest.

  Attributes:
    name: registry key; also the cache sub-folder.
    filename: file name in the cache.
    urls: download locations, tried in order.
    size: exact size in bytes, or ``None`` where no public listing gives it.
    sha256: lowercase hex sha256 of the whole file, or ``None`` where its publisher lists none
      (DINOv2's torch hub files): such an entry is never downloaded, only read from a ``path``
      the caller gives, since nothing could check the download.
    format: storage format the model loader expects: ``"torch-legacy"`` (a pre-zip
      ``torch.save`` pickle) or ``"torchscript"`` (a ``torch.jit.save`` archive).
    license: licence of the weights, e.g. ``"Apache-2.0"``.
    provenance: one line on who made the file and from what.
  """

  name: str
  filename: str
  urls: tuple[str, ...]
  size: int | None
  sha256: str | None
  format: str
  license: str
  provenance: str

  def __post_init__(self):
    # Accept a list of URLs (as JSON gives) while keeping the frozen instance hashable.
    object.__setattr__(self, "urls", tuple(self.urls))
    if self.sha256 is not None:
      object.__setattr__(self, "sha256", self.sha256.lower())


def _read_manifest() -> tuple[str, str]:
  """Returns (where, text) of the shipped manifest."""
  with contextlib.suppress(ModuleNotFoundError):
    resource = importlib.resources.files("jaxmetrics._manifest") / "manifest.json"
    if resource.is_file():
      return str(resource), resource.read_text(encoding="utf-8")
  # A source checkout on PYTHONPATH has no jaxmetrics._manifest: pyproject.toml maps weights/ to
  # that package only when the wheel is built.
  path = pathlib.Path(__file__).resolve().parents[2] / "weights" / "manifest.json"
  try:
    return str(path), path.read_text(encoding="utf-8")
  except OSError as e:
    raise WeightsError(
        f"{path}: cannot read the checkpoint manifest ({e.strerror or e}); expected it in the"
        " package jaxmetrics._manifest or in weights/ of a source checkout"
    ) from None


def _parse_entry(where: str, name, entry) -> Checkpoint:
  problem = None
  if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
    problem = "a name of letters, digits, '.', '_' and '-'"
  elif not isinstance(entry, dict):
    problem = f"an object, got {type(entry).__name__}"
  elif missing := [f for f in _FIELDS if f not in entry]:
    problem = f"the fields {', '.join(_FIELDS)}, missing {', '.join(missing)}"
  elif entry["size"] is not None and (not isinstance(entry["size"], int) or entry["size"] <= 0):
    problem = f"a positive integer size (or null), got {entry['size']!r}"
  elif entry["sha256"] is not None and (not isinstance(entry["sha256"], str)
                                        or not _SHA256.fullmatch(entry["sha256"])):
    problem = f"a 64-digit lowercase hex sha256 (or null), got {entry['sha256']!r}"
  elif not isinstance(entry["urls"], list) or not entry["urls"]:
    problem = f"a non-empty list of urls, got {entry['urls']!r}"
  elif not isinstance(entry["filename"], str) or not _SAFE_NAME.fullmatch(entry["filename"]):
    problem = f"a plain file name, got {entry['filename']!r}"
  if problem:
    raise WeightsError(f"{where}: entry {name!r} is malformed; expected {problem}")
  return Checkpoint(name=name, **{f: entry[f] for f in _FIELDS})


@functools.cache
def _registry() -> dict[str, Checkpoint]:
  where, text = _read_manifest()
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise WeightsError(
        f"{where}: not valid JSON ({e.msg}, line {e.lineno}); expected the checkpoint manifest"
    ) from None
  if not isinstance(data, dict):
    raise WeightsError(
        f"{where}: expected an object of checkpoint entries, got {type(data).__name__}"
    )
  return {name: _parse_entry(where, name, entry) for name, entry in data.items()}


def registry() -> dict[str, Checkpoint]:
  """Returns every checkpoint of the shipped manifest by name (the file is read once per process)."""
  return dict(_registry())


def get(name: str) -> Checkpoint:
  """Returns the registry entry ``name``; raises ``WeightsError`` listing the known names if absent."""
  entries = _registry()
  if name not in entries:
    raise WeightsError(
        f"manifest.json: unknown checkpoint {name!r}; expected one of {', '.join(sorted(entries))}"
    )
  return entries[name]


def _resolve(name_or_checkpoint) -> Checkpoint:
  if isinstance(name_or_checkpoint, Checkpoint):
    return name_or_checkpoint
  if isinstance(name_or_checkpoint, str):
    return get(name_or_checkpoint)
  raise InputError(
      "expected a checkpoint name (str) or a jaxmetrics.checkpoints.weights.Checkpoint, got"
      f" {type(name_or_checkpoint).__name__}"
  )


def cache_dir() -> pathlib.Path:
  """Returns the cache folder, without creating it.

  ``$JAXMETRICS_CACHE`` if set, else ``$XDG_CACHE_HOME/jaxmetrics`` if ``XDG_CACHE_HOME`` is set,
  else ``~/.cache/jaxmetrics``. Empty variables count as unset.
  """
  if own := os.environ.get("JAXMETRICS_CACHE"):
    return pathlib.Path(own).expanduser()
  if xdg := os.environ.get("XDG_CACHE_HOME"):
    return pathlib.Path(xdg).expanduser() / "jaxmetrics"
  return pathlib.Path.home() / ".cache" / "jaxmetrics"


def cached_path(name_or_checkpoint) -> pathlib.Path:
  """Returns where a checkpoint lives in the cache: ``cache_dir() / name / filename``.

  The file need not exist. Accepts a registry name or a ``Checkpoint``.
  """
  ckpt = _resolve(name_or_checkpoint)
  for part in (ckpt.name, ckpt.filename):
    # Both become path components, so neither may climb out of the cache.
    if not _SAFE_NAME.fullmatch(part):
      raise InputError(
          f"checkpoint {ckpt.name!r}: expected name and filename of letters, digits, '.', '_' and"
          f" '-' (not starting with '.'), got {part!r}"
      )
  return cache_dir() / ckpt.name / ckpt.filename


def sha256_file(path, chunk: int = 1 << 20) -> str:
  """Returns the lowercase hex sha256 of the file at ``path``, read ``chunk`` bytes at a time."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()


class _Rejected(Exception):
  """A server answered, but not with the registered file."""


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _reason(error: BaseException) -> str:
  """Says in a few words why one URL failed."""
  if isinstance(error, urllib.error.HTTPError):
    return f"HTTP {error.code} {error.reason}"
  if isinstance(error, urllib.error.URLError):
    if not isinstance(error.reason, BaseException):
      return _one_line(error.reason)
    error = error.reason
  if isinstance(error, TimeoutError):
    return f"no data for {_TIMEOUT_S:g} s (timed out)"
  if isinstance(error, _Rejected):
    return _one_line(error)
  if isinstance(error, OSError) and error.strerror:
    return _one_line(error.strerror)
  return _one_line(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)


class _NoBar:

  def update(self, n):
    del n

  def close(self):
    pass


def _progress_bar(ckpt: Checkpoint, enabled: bool):
  if enabled:
    try:
      from tqdm import auto as tqdm_auto
    except ImportError:
      # tqdm is the optional "progress" extra; without it downloads are silent.
      return contextlib.closing(_NoBar())
    return tqdm_auto.tqdm(
        total=ckpt.size, unit="B", unit_scale=True, unit_divisor=1024, desc=ckpt.filename
    )
  return contextlib.closing(_NoBar())


def _download_one(url: str, ckpt: Checkpoint, target: pathlib.Path, progress: bool):
  """Downloads ``url`` to ``target`` if it yields exactly the registered file; else raises."""
  request = urllib.request.Request(url, headers={"User-Agent": "jaxmetrics"})
  with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) != ckpt.size:
      raise _Rejected(f"server announces {announced} bytes, expected {ckpt.size}")
    tmp = tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{ckpt.filename}.", suffix=".part", delete=False
    )
    try:
      digest = hashlib.sha256()
      received = 0
      with tmp, _progress_bar(ckpt, progress) as bar:
        while block := response.read(_CHUNK):
          received += len(block)
          if received > ckpt.size:
            raise _Rejected(f"received more than the expected {ckpt.size} bytes")
          digest.update(block)
          tmp.write(block)
          bar.update(len(block))
      if received != ckpt.size:
        raise _Rejected(f"received {received} bytes, expected {ckpt.size}")
      if digest.hexdigest() != ckpt.sha256:
        raise _Rejected(f"sha256 is {digest.hexdigest()}, expected {ckpt.sha256}")
      # NamedTemporaryFile creates the file 0600; a cache may be shared between users.
      os.chmod(tmp.name, 0o644)
      os.replace(tmp.name, target)
    except BaseException:
      # Also on KeyboardInterrupt: never leave a partial file behind.
      with contextlib.suppress(OSError):
        os.unlink(tmp.name)
      raise


def _require_sha256(ckpt: Checkpoint):
  if ckpt.sha256 is None or ckpt.size is None:
    raise WeightsError(
        f"{ckpt.name}: its publisher lists no sha256 for {ckpt.urls[0]}, so jaxmetrics does not"
        " download it (nothing could check the file); download it yourself and pass its path"
    )


def download(name_or_checkpoint, *, progress: bool = True, force: bool = False) -> pathlib.Path:
  """Downloads a checkpoint into the cache and returns its path, ``cached_path(name)``.

  Each URL is tried in order (timeout ``60`` s per read). The file streams into a temporary file in
  the cache folder, is hashed while it streams, and replaces the final path atomically only if its
  size and sha256 match the entry; every failure removes the temporary file.

  Args:
    name_or_checkpoint: a registry name or a ``Checkpoint`` (e.g. one pointing at a mirror).
    progress: show a tqdm progress bar on stderr (needs the optional ``tqdm``); ``False`` is silent.
    force: download even if a file is already at the final path.

  Returns:
    The cached path. Without ``force``, a file already there with the registered size is returned
    without network access or hashing (``verify`` hashes it); one of another size is replaced.

  Raises:
    WeightsError: no URL gave the registered file (the message lists each URL and why), or the
      cache folder cannot be created.
  """
  ckpt = _resolve(name_or_checkpoint)
  _require_sha256(ckpt)
  target = cached_path(ckpt)
  if not force and target.is_file() and target.stat().st_size == ckpt.size:
    return target
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WeightsError(
        f"{target.parent}: cannot create the cache folder ({e.strerror or e}); expected a writable"
        " folder, set JAXMETRICS_CACHE to choose one"
    ) from None
  failures = []
  for url in ckpt.urls:
    try:
      _download_one(url, ckpt, target, progress)
      return target
    except (_Rejected, OSError, ValueError, http.client.HTTPException) as e:
      # URLError and socket errors are OSErrors; ValueError is urllib's "unknown url type".
      failures.append(f"{url}: {_reason(e)}")
  raise WeightsError(
      f"{target}: could not download {ckpt.name!r} ({ckpt.size} bytes, sha256 {ckpt.sha256});"
      f" tried {len(failures)} URL(s): {'; '.join(failures) or 'none listed'}"
  )


def verify(name_or_checkpoint, path=None) -> pathlib.Path:
  """Hashes a file and checks it against the registry entry; returns its path.

  Args:
    name_or_checkpoint: a registry name or a ``Checkpoint``.
    path: the file to check; default ``cached_path(name)``.

  Raises:
    WeightsError: the file is missing or unreadable, or its sha256 differs from the entry's.
  """
  ckpt = _resolve(name_or_checkpoint)
  _require_sha256(ckpt)
  in_cache = path is None
  path = cached_path(ckpt) if in_cache else pathlib.Path(path).expanduser()
  if not path.is_file():
    hint = f"; call jaxmetrics.checkpoints.weights.download({ckpt.name!r})" if in_cache else ""
    raise WeightsError(
        f"{path}: no such file; expected the {ckpt.name!r} checkpoint ({ckpt.size} bytes){hint}"
    )
  try:
    digest = sha256_file(path)
  except OSError as e:
    raise WeightsError(
        f"{path}: cannot read ({e.strerror or e}); expected the {ckpt.name!r} checkpoint"
    ) from None
  if digest != ckpt.sha256:
    fix = (
        f"download({ckpt.name!r}, force=True) replaces it"
        if in_cache
        else "pass check_hash=False to use custom weights"
    )
    raise WeightsError(
        f"{path}: sha256 is {digest}, expected {ckpt.sha256} ({ckpt.name}); {fix}"
    )
  return path


def fetch(
    name=DEFAULT, path=None, *, check_hash: bool = True, progress: bool = True
) -> pathlib.Path:
  """Returns the path of a checkpoint file, downloading it if needed. The model loader calls this.

  Args:
    name: a registry name (default the FID Inception-v3) or a ``Checkpoint``.
    path: a local file to use instead of the cache. It must exist; unless ``check_hash`` is
      ``False`` its sha256 must equal the entry's.
    check_hash: with ``path``, check its sha256; pass ``False`` for custom (e.g. fine-tuned)
      weights. An entry without a sha256 has nothing to check a ``path`` against. Without ``path`` it has no effect: a cached file is checked by size, its sha256
      having been checked when it was downloaded.
    progress: show a progress bar if a download happens.

  Raises:
    WeightsError: the file is missing, does not match, or cannot be downloaded (or the entry has
      no sha256 and no ``path`` is given).
  """
  ckpt = _resolve(name)
  if path is None:
    return download(ckpt, progress=progress)
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    size = f" ({ckpt.size} bytes)" if ckpt.size is not None else ""
    cache = ", or path=None to use the cache" if ckpt.sha256 is not None else ""
    raise WeightsError(f"{path}: no such file; expected the {ckpt.name!r} checkpoint{size}{cache}")
  if check_hash and ckpt.sha256 is not None:
    verify(ckpt, path)
  return path
