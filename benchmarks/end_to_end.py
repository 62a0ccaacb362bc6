"""FID of two image sets end to end: wall time and peak memory, jaxmetrics vs torch-fidelity.

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
  in jaxmetrics gives its number, see ``agreement.py``), ``update`` over the same batches.

All load the same random-weight checkpoint in the official file format. pytorch-fid needs
torchvision: on a machine without it its row says "not measured".

  python benchmarks/end_to_end.py [--n 50000] [--batch 64]

The issue's figure is --n 50000 (50,000 vs 50,000 images); at 10-12 images/s on a 2-core CPU that
is 2.3-2.8 hours per library, so CPU runs use a smaller --n and say so.

Writes benchmarks/results/end_to_end.{json,md,png}.
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
  import jaxmetrics
  from jaxmetrics import inception
  params = inception.load_params(args.checkpoint, check_hash=False, progress=False)
  return float(jaxmetrics.fid(args.a, args.b, params=params, batch_size=args.batch, cache=False))


def _torch_fidelity(args):
  import torch
  from tests import _inception_fixtures as fixtures
  from tests._peers import torch_fidelity_metric_module
  torch.set_num_threads(os.cpu_count())
  metric_fid = torch_fidelity_metric_module("metric_fid")
  extractor = fixtures.torch_fidelity_extractor(args.checkpoint)
  stats = []
  for path in (args.a, args.b):
    images = np.load(path, mmap_mode="r")
    features = []
    with torch.no_grad():
      for start in range(0, len(images), args.batch):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + args.batch]))
        features.append(extractor(batch.permute(0, 3, 1, 2))[0])  # pool3 (2048,)
    stats.append(metric_fid.fid_features_to_statistics(torch.cat(features)))
  return float(metric_fid.fid_statistics_to_metric(stats[0], stats[1], verbose=False)[
      metric_fid.KEY_METRIC_FID])


def _torchmetrics(args):
  import torch
  from tests._peers import torchmetrics_module
  torch.set_num_threads(os.cpu_count())
  fid = torchmetrics_module("image").FrechetInceptionDistance(
      feature=2048, feature_extractor_weights_path=args.checkpoint)
  with torch.no_grad():
    for path, real in ((args.b, True), (args.a, False)):
      images = np.load(path, mmap_mode="r")
      for start in range(0, len(images), args.batch):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + args.batch]))
        fid.update(batch.permute(0, 3, 1, 2), real=real)
  return float(fid.compute())


def _child(args):
  start = time.perf_counter()
  fid = {"jaxmetrics": _jaxmetrics, "torch-fidelity": _torch_fidelity,
         "torchmetrics": _torchmetrics}[args.child](args)
  print(json.dumps({"library": args.child, "fid": fid, "wall_s": time.perf_counter() - start,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=50000, help="images per set")
  parser.add_argument("--size", type=int, default=32, help="image side (CIFAR: 32)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--libraries", default="jaxmetrics,torch-fidelity,torchmetrics")
  parser.add_argument("--child", help=argparse.SUPPRESS)
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
  rows = []
  for library in args.libraries.split(","):
    command = [sys.executable, __file__, "--child", library, "--checkpoint", str(legacy),
               "--a", str(paths[0]), "--b", str(paths[1]), "--batch", str(args.batch)]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode:
      raise SystemExit(f"{library} failed:\n{out.stderr[-3000:]}")
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(rows[-1], flush=True)
  for library in ("pytorch-fid",):
    rows.append({"library": library, "fid": None, "wall_s": None, "peak_rss_mb": None,
                 "note": "not measured: needs torchvision (a GPU machine has it)"})

  meta = _results.machine(images_per_set=args.n, image_size=args.size, batch=args.batch)
  measured = [r for r in rows if r["wall_s"] is not None]
  base = next((r for r in measured if r["library"] == "torch-fidelity"), None)
  lines = [
      "# FID end to end",
      "",
      _results.describe(meta),
      "",
      f"FID of {args.n} vs {args.n} images ({args.size}×{args.size} uint8 in .npy files, resized to "
      f"299×299), batch {args.batch}, each library in a fresh process: wall time includes start-up, "
      "weight loading and compilation; peak RSS of that process. Same random-weight checkpoint. "
      f"Command: `python benchmarks/end_to_end.py --n {args.n} --batch {args.batch}`.",
      "",
      "| library | wall time (s) | images/s | vs torch-fidelity | peak RSS (MB) | FID |",
      "|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    if r["wall_s"] is None:
      lines.append(f"| {r['library']} | {r['note']} | | | | |")
      continue
    speed = f"{base['wall_s'] / r['wall_s']:.2f}×" if base else ""
    lines.append(f"| {r['library']} | {r['wall_s']:.1f} | {2 * args.n / r['wall_s']:.2f} | "
                 f"{speed} | {r['peak_rss_mb']:.0f} | {r['fid']:.6f} |")
  fids = {r["library"]: r["fid"] for r in measured}
  if "jaxmetrics" in fids and "torch-fidelity" in fids:
    a, b = fids["jaxmetrics"], fids["torch-fidelity"]
    lines += ["", "FID difference, jaxmetrics vs torch-fidelity (both TF1 resize): "
              f"{abs(a - b):.2e} ({abs(a - b) / abs(b):.1e} relative)."]
  if "torchmetrics" in fids:
    lines += ["", "torchmetrics' FID is that of its default resize (torch's half-pixel bilinear, "
              "antialias=True), not the TF graph's; jaxmetrics reproduces it with "
              "resize=\"torchmetrics\" (benchmarks/agreement.py)."]
  _results.write("end_to_end", {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
  main()
