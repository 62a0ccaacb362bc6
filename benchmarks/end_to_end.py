"""FID of two image sets end to end: wall time and peak memory, jaxmetrics vs the PyTorch peers.

The job users run: two sets of CIFAR-sized uint8 images in ``.npy`` files on disk, each read,
resized to 299×299 (TF1 bilinear), passed through the FID Inception and reduced to FID. Each
library runs in its own fresh process, so the wall time includes start-up, weight loading and
compilation, and the peak resident memory is that process's alone:

* jaxmetrics: ``jaxmetrics.fid(a.npy, b.npy, params=..., batch_size=B)``, its public one-call API
  (memory-mapped source, threaded prefetch, streaming statistics);
* torch-fidelity: its own ``FeatureExtractorInceptionV3`` over batches of B images read from the
  same memory-mapped files (its DataLoader needs torchvision, which this machine lacks; the model
  and metric code are its own), then its ``fid_features_to_statistics`` and
  ``fid_statistics_to_metric``;
* torchmetrics: its ``FrechetInceptionDistance`` with its defaults (``antialias=True``: its FID
  differs from the TF-resize FID of the other two by the resize alone; ``resize="torchmetrics"``
  in jaxmetrics gives its number, see ``agreement.py``), ``update`` over the same batches;
* pytorch-fid: its own ``InceptionV3`` (``_torch_peers.py``), the mean and ``np.cov`` of its
  ``calculate_activation_statistics`` and its ``calculate_frechet_distance`` (``scipy.linalg.sqrtm``).

All load the same random-weight checkpoint in the official file format and run on the GPU where
there is one (JAX's default backend; torch's CUDA device).

  python benchmarks/end_to_end.py [--n 50000] [--batch 64] [--libraries jaxmetrics,...]

``--libraries jaxmetrics:default,torch-fidelity:highest,...`` adds runs at another precision:
jaxmetrics' fast mode, a peer with TF32 off (``_torch_peers.set_precision``).

The issue's figure is --n 50000 (50,000 vs 50,000 images); at 10-12 images/s on a 2-core CPU that
is 2.3-2.8 hours per library, so CPU runs use a smaller --n and say so.

Writes benchmarks/results/end_to_end{,_gpu}.{json,md,png} (``_gpu`` when JAX runs on one).
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_CHUNK = 1000  # images generated (and written) at a time: the files can exceed memory


def _write_set(path, seed, n, size):
  from tests import _inception_fixtures as fixtures
  array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
  for start in range(0, n, _CHUNK):
    stop = min(n, start + _CHUNK)
    array[start:stop] = fixtures.test_images(seed * 1000003 + start, stop - start, size, size)
  array.flush()
  del array


def _jaxmetrics(args):
  # As the ``jaxmetrics`` command starts: on a machine without an accelerator, one JAX CPU device
  # per core (``cli.cpu_devices``), set in XLA_FLAGS before JAX's backend starts. The Python API
  # alone would run on XLA's one CPU device; ``JAXMETRICS_CPU_DEVICES=1`` measures that.
  from jaxmetrics.pipeline import cli
  cli.cpu_devices()
  import jaxmetrics
  from jaxmetrics.networks import inception
  params = inception.load_params(args.checkpoint, check_hash=False, progress=False)
  return float(jaxmetrics.fid(args.a, args.b, params=params, batch_size=args.batch, cache=False,
                              precision=args.precision or "highest"))


def _batches(path, batch):
  images = np.load(path, mmap_mode="r")
  for start in range(0, len(images), batch):
    yield np.array(images[start:start + batch])  # read into writable memory, as a loader does


def _peer_features(library, args):
  """pool3 of both sets on the host (float32), from the peer's module batch by batch, as it does."""
  import torch
  import _torch_peers
  torch.set_num_threads(os.cpu_count())
  _torch_peers.set_precision(args.precision or "default")
  forward = _torch_peers.extractor(library, args.checkpoint)
  return [torch.cat([forward(x).cpu() for x in _batches(path, args.batch)])
          for path in (args.a, args.b)]


def _torch_fidelity(args):
  from tests._peers import torch_fidelity_metric_module
  metric_fid = torch_fidelity_metric_module("metric_fid")
  stats = [metric_fid.fid_features_to_statistics(f) for f in _peer_features("torch-fidelity", args)]
  return float(metric_fid.fid_statistics_to_metric(stats[0], stats[1], verbose=False)[
      metric_fid.KEY_METRIC_FID])


def _pytorch_fid(args):
  from tests._peers import pytorch_fid_frechet
  stats = []
  for features in _peer_features("pytorch-fid", args):
    act = features.numpy()  # calculate_activation_statistics, after its get_activations:
    stats += [np.mean(act, axis=0), np.cov(act, rowvar=False)]
  fid, note = pytorch_fid_frechet(*stats)
  return {"fid": fid if fid is not None else note, "note": note if fid is not None else None}


def _torchmetrics(args):
  import torch
  import _torch_peers
  from tests._peers import torchmetrics_module
  torch.set_num_threads(os.cpu_count())
  _torch_peers.set_precision(args.precision or "default")
  dev = _torch_peers.device()
  fid = torchmetrics_module("image").FrechetInceptionDistance(
      feature=2048, feature_extractor_weights_path=args.checkpoint).to(dev)
  with torch.no_grad():
    for path, real in ((args.b, True), (args.a, False)):
      for x in _batches(path, args.batch):
        fid.update(torch.from_numpy(x).to(dev).permute(0, 3, 1, 2), real=real)
  return float(fid.compute())


def _peak_device_mb(library):
  """Peak memory the library's allocator held on the GPU, or None on a CPU."""
  if library == "jaxmetrics":
    import jax
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform == "gpu" else None
    return stats["peak_bytes_in_use"] / 2**20 if stats else None
  import torch
  return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


_CHILDREN = {"jaxmetrics": _jaxmetrics, "torch-fidelity": _torch_fidelity,
             "pytorch-fid": _pytorch_fid, "torchmetrics": _torchmetrics}


def _child(args):
  sys.path.insert(0, str(ROOT / "benchmarks"))
  start = time.perf_counter()
  fid = _CHILDREN[args.child](args)
  wall = time.perf_counter() - start
  note = None
  if isinstance(fid, dict):  # pytorch-fid: the FID and what its code raised on the way
    fid, note = fid["fid"], fid["note"]
  label = args.child + (f", precision={args.precision}" if args.precision else "")
  cpu_devices = None
  if args.child == "jaxmetrics":
    import jax
    cpu_devices = jax.device_count() if jax.default_backend() == "cpu" else None
  print(json.dumps({"library": label, "fid": fid, "wall_s": wall,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "peak_device_mb": _peak_device_mb(args.child), "note": note,
                    "cpu_devices": cpu_devices}))


def _report(args, rows, meta):
  """Writes the table of the rows so far (after each library: a cut-off run keeps its rows)."""
  import _results
  gpu = meta["backend"] == "gpu"
  base = next((r for r in rows if r["library"] == "torch-fidelity"), None)
  command = f"python benchmarks/end_to_end.py --n {args.n} --batch {args.batch}" + (
      f" --libraries {args.libraries}" if args.libraries != _LIBRARIES else "")
  lines = [
      "# FID end to end",
      "",
      _results.describe(meta),
      "",
      f"FID of {args.n} vs {args.n} images ({args.size}×{args.size} uint8 in .npy files, resized to "
      f"299×299), batch {args.batch}, each library in a fresh process: wall time includes start-up, "
      "weight loading and compilation; peak RSS of that process"
      + (", and the peak its allocator held on the GPU" if gpu else "") + ". Same random-weight "
      "checkpoint. jaxmetrics runs at its default precision (\"highest\", full float32) and the "
      "peers as torch runs them by default"
      + (" (TF32 cuDNN convolutions)" if gpu else "") + ", unless the row names a precision "
      "(\"highest\": TF32 off). On a CPU jaxmetrics starts as the `jaxmetrics` command does, with "
      "one JAX device per core (`cli.cpu_devices`). " + f"Command: `{command}`.",
      "",
      "| library | wall time (s) | images/s | vs torch-fidelity | peak RSS (MB) |"
      + (" peak GPU (MB) |" if gpu else "") + " FID |",
      "|---|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---:|",
  ]
  for r in rows:
    speed = f"{base['wall_s'] / r['wall_s']:.2f}×" if base else ""
    device = f" {r['peak_device_mb']:.0f} |" if gpu else ""
    fid = r["fid"] if isinstance(r["fid"], str) else f"{r['fid']:.6f}"
    fid += f" ({r['note']})" if r.get("note") else ""
    devices = r.get("cpu_devices")
    name = r["library"] + (f" ({devices} CPU devices)" if devices and devices > 1 else "")
    lines.append(f"| {name} | {r['wall_s']:.1f} | {2 * args.n / r['wall_s']:.2f} | "
                 f"{speed} | {r['peak_rss_mb']:.0f} |{device} {fid} |")
  fids = {r["library"]: r["fid"] for r in rows if isinstance(r["fid"], float)}
  # Parity is jaxmetrics at "highest" against a peer computing float32 too: on a GPU that is the
  # peer with TF32 off; on a CPU torch's default already is.
  peer = "torch-fidelity, precision=highest" if gpu else "torch-fidelity"
  if "jaxmetrics" in fids and peer in fids:
    a, b = fids["jaxmetrics"], fids[peer]
    lines += ["", f"FID difference, jaxmetrics vs {peer} (both float32, TF1 resize): "
              f"{abs(a - b):.2e} ({abs(a - b) / abs(b):.1e} relative). FID is a difference of "
              "terms (tr Σ₁ + tr Σ₂ + ‖Δμ‖²) thousands of times larger with random weights, so its "
              "relative difference is that many times the features' (see agreement*.md)."]
  tf32 = [(f"{lib} vs {ref}", fids[lib], fids[ref]) for lib, ref in (
      ("jaxmetrics, precision=default", "jaxmetrics"), ("torch-fidelity", peer)) if
          gpu and lib in fids and ref in fids]
  if tf32:
    lines += ["", "TF32 (10-bit mantissa products; pool3 moves by ~1e-3, extract_throughput_gpu.md) "
              "moves FID by " + "; ".join(f"{abs(a - b) / abs(b):.1e} relative ({name})"
                                          for name, a, b in tf32) + "."]
  if "pytorch-fid" in fids or "torchmetrics" in fids:
    lines += ["", "pytorch-fid and torchmetrics resize as torch does, not as the TF graph: "
              "pytorch-fid with half-pixel bilinear on [0, 1] values, torchmetrics antialiased "
              "(its default). Their FIDs differ from the TF-resize FID by the resize; jaxmetrics "
              "gives each with resize=\"pytorch\" / \"torchmetrics\" (benchmarks/agreement.py)."]
  name = "end_to_end" + ("_gpu" if gpu else "")
  _results.write(name, {"meta": meta, "rows": rows}, "\n".join(lines))


_LIBRARIES = "jaxmetrics,torch-fidelity,pytorch-fid,torchmetrics"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=50000, help="images per set")
  parser.add_argument("--size", type=int, default=32, help="image side (CIFAR: 32)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--libraries", default=_LIBRARIES,
                      help="comma-separated; jaxmetrics:default runs jaxmetrics at that precision")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--precision", help=argparse.SUPPRESS)
  parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
  parser.add_argument("--a", help=argparse.SUPPRESS)
  parser.add_argument("--b", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return _child(args)

  import _results
  from tests import _inception_fixtures as fixtures
  folder = pathlib.Path(tempfile.mkdtemp())
  legacy, _ = fixtures.save_checkpoints(fixtures.random_state_dict(seed=0), folder)
  paths = [folder / "a.npy", folder / "b.npy"]
  for seed, path in enumerate(paths, start=1):
    _write_set(path, seed, args.n, args.size)
  env = dict(os.environ, JAXMETRICS_CACHE=str(folder / "cache"))
  meta = _results.machine(images_per_set=args.n, image_size=args.size, batch=args.batch)
  rows = []
  for spec in args.libraries.split(","):
    library, _, precision = spec.partition(":")
    command = [sys.executable, __file__, "--child", library, "--checkpoint", str(legacy),
               "--a", str(paths[0]), "--b", str(paths[1]), "--batch", str(args.batch)]
    command += ["--precision", precision] if precision else []
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
      raise SystemExit(f"{spec} failed:\n{out.stderr[-3000:]}")
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(rows[-1], flush=True)
    _report(args, rows, meta)

if __name__ == "__main__":
  main()
