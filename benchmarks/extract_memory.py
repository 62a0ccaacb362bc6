"""Peak host memory of ``jaxmetrics.pipeline.extract.extract`` as the number of images grows.

Each configuration runs in a fresh process (the kernel's high-water mark, ``VmHWM`` in
``/proc/self/status``, only ever grows) on one CPU device, and reports how much the extraction
and the stream hold, next to what holding every image would take:

* ``peak_rss_mb``: ``VmHWM`` of the whole process at the end (the runtime, the weights, the compiled
  step and its buffers, which do not depend on the number of images, plus what the stream holds);
* ``peak_anon_mb`` / ``peak_file_mb``: the largest ``RssAnon`` (heap) and ``RssFile`` (pages of
  mapped files, e.g. a memory-mapped ``.npy``) sampled every 5 ms during the streamed run.

Sources: a generator of 64×64 batches (a model sampling on the fly), a memory-mapped ``.npy`` and a
folder of PNG files. Unless ``--real`` is given, the network is a stand-in with the Inception's
output shapes (the same pipeline, statistics, Inception Score state and sharded step, at no
network cost; the network's own memory does not depend on the number of images). ``--real`` adds
two runs of the real network on random weights.

  python benchmarks/extract_memory.py [--real] [--sizes 1000,10000,100000]

Writes benchmarks/results/extract_memory.{json,md}.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIDE = 64
BATCH = 256


def _status():
  fields = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
        fields[key] = int(value.split()[0]) * 1024
  return fields


def _stand_in_forward(params, images, *, resize="tf1", precision="highest", shards=1):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  del params, resize, precision, shards
  x = jnp.mean(images.astype(jnp.float32), axis=(1, 2)) / 255.0
  pool3 = jnp.tile(x, (1, 683))[:, :2048] * jnp.linspace(0.5, 1.5, 2048)
  logits = jnp.tile(x, (1, 336)) * 4.0
  return {"pool3": pool3, "logits_unbiased": logits, "logits": logits}


def _child(kind, n, data, params_path):
  """One extraction in this (fresh) process; prints a JSON line."""
  from jaxmetrics.pipeline import extract
  from jaxmetrics.networks import inception  # pylint: disable=import-outside-toplevel
  if params_path:
    params = inception.load_params(params_path, check_hash=False, cache=False, progress=False)
    batch = 32
  else:
    params, batch = {}, BATCH
  network = (inception.NETWORK if params_path else
             dataclasses.replace(inception.NETWORK, name="stand-in", forward=_stand_in_forward))
  block = np.random.default_rng(0).integers(0, 256, (BATCH, SIDE, SIDE, 3), dtype=np.uint8)

  def generator():
    for start in range(0, n, BATCH):
      yield block[:min(BATCH, n - start)].copy()

  source = {"generator": generator, "npy": lambda: data, "folder": lambda: data}[kind]()
  # Compile and warm up on a small array first: every row then pays the same fixed cost (the
  # runtime, the weights, the compiled step and one step's buffers), and the rows differ only in
  # what the stream itself holds.
  extract.extract(block[:batch], params, network=network, batch_size=batch, progress=False)
  peak = {"RssAnon": 0, "RssFile": 0}
  running = True

  def sample():
    while running:
      status = _status()
      for key in peak:
        peak[key] = max(peak[key], status[key])
      time.sleep(0.005)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  start = time.perf_counter()
  result = extract.extract(source, params, network=network, batch_size=batch, progress=False)
  seconds = time.perf_counter() - start
  running = False
  sampler.join()
  assert result.count == n, (result.count, n)
  mb = lambda b: round(b / 2**20, 1)  # noqa: E731
  print(json.dumps({"kind": kind, "n": n, "seconds": round(seconds, 2),
                    "images_per_s": round(n / seconds, 1),
                    "peak_rss_mb": mb(_status()["VmHWM"]), "peak_anon_mb": mb(peak["RssAnon"]),
                    "peak_file_mb": mb(peak["RssFile"]),
                    "all_images_mb": mb(n * SIDE * SIDE * 3),
                    "network": "real" if params_path else "stand-in"}))


def _run_child(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device
  out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], env=env, text=True,
                       capture_output=True, check=False, timeout=3600)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  row = json.loads(out.stdout.strip().splitlines()[-1])
  print(row, flush=True)
  return row


def _write_folder(folder, n):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(1)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
        folder / f"{i:06d}.png", compress_level=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--child", nargs=4, metavar=("KIND", "N", "DATA", "PARAMS"))
  parser.add_argument("--sizes", default="1000,10000,100000")
  parser.add_argument("--folder-sizes", default="1000,10000")
  parser.add_argument("--real", action="store_true", help="also run the real network (slow)")
  args = parser.parse_args()
  if args.child:
    kind, n, data, params = args.child
    _child(kind, int(n), data, params if params != "-" else None)
    return

  rows = []
  work = pathlib.Path(tempfile.mkdtemp(prefix="extract_memory."))
  sizes = [int(s) for s in args.sizes.split(",")]
  for n in sizes:
    rows.append(_run_child("generator", n, "-", "-"))
  for n in sizes:
    path = work / f"images{n}.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, SIDE, SIDE, 3))
    for start in range(0, n, 4096):
      stop = min(n, start + 4096)
      array[start:stop] = np.random.default_rng(start).integers(0, 256, (stop - start, SIDE, SIDE, 3),
                                                                dtype=np.uint8)
    array.flush()
    del array
    rows.append(_run_child("npy", n, path, "-"))
    path.unlink()
  for n in [int(s) for s in args.folder_sizes.split(",")]:
    folder = work / f"folder{n}"
    _write_folder(folder, n)
    rows.append(_run_child("folder", n, folder, "-"))
  if args.real:
    from tests import _inception_fixtures as fixtures  # pylint: disable=import-outside-toplevel
    legacy, _ = fixtures.save_checkpoints(fixtures.random_state_dict(seed=0), work)
    for n in (64, 256):
      rows.append(_run_child("generator", n, "-", legacy))

  import _results  # pylint: disable=import-outside-toplevel
  meta = _results.machine(devices_used="1 CPU device", image=f"{SIDE}x{SIDE}x3 uint8",
                          batch=f"{BATCH} (stand-in), 32 (real)")
  lines = ["# Peak host memory of extract", "", _results.describe(meta), "",
           f"Peak host memory of a process running `extract` (a fresh process per row, "
           f"{meta['devices_used']}, {meta['image']} images, global batch {meta['batch']}). "
           "`peak RSS`: VmHWM of the whole process (runtime, weights, compiled step, warm-up "
           "included); `anon` and `file`: largest RssAnon (heap) and RssFile (mapped files) "
           "sampled every 5 ms while the images stream; `all images`: what holding them would "
           "take. Command: `python benchmarks/extract_memory.py`.", "",
           "| source | network | images | peak RSS (MB) | anon (MB) | file (MB) | all images (MB) "
           "| images/s |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['kind']} | {r['network']} | {r['n']:,} | {r['peak_rss_mb']} | "
                 f"{r['peak_anon_mb']} | {r['peak_file_mb']} | {r['all_images_mb']:,} | "
                 f"{r['images_per_s']} |")
  _results.write("extract_memory", {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
  main()
