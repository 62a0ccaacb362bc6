"""Inception feature extraction throughput: jaxmetrics vs the PyTorch peers, same machine, one run.

Every extractor loads the same random-weight checkpoint in the official format (the real weights
cannot be downloaded here; speed does not depend on the values, and calibrated BatchNorm statistics
keep activations free of denormals that would distort CPU timings), takes uint8 images of the given
side from the host, resizes them to 299×299 on the device as its library does and returns pool3
to the host. jaxmetrics (TF1 resize, pool3 and both logits) runs two ways: ``extract`` over every
JAX device (the route of ``evaluate`` and the command line; on a CPU-only machine the command
line's default of one CPU device per core, which this script sets the same way before JAX starts
unless ``--cpu-devices`` says otherwise) and ``inception.features`` on one device; each at every
requested precision:
"highest" (full float32, the default) and "default" (the fast mode: TF32 on Ampere and later GPUs,
bfloat16 passes on TPUs; CPUs compute float32 either way). The peers are their own torch modules
(``_torch_peers.py``): torch-fidelity, pytorch-fid and torchmetrics, at torch's defaults (on an
NVIDIA GPU, cuDNN convolutions in TF32) and, on a GPU, with TF32 off ("highest").

A second table gives the size of the change each precision makes: pool3 of 32 images, relative L2
difference from jaxmetrics at "highest" with the same resize as the peer.

  python benchmarks/extract_throughput.py [--batch-sizes 32,64,128,256,512] [--sizes 299]
      [--precisions highest,default] [--libraries jaxmetrics,torch-fidelity,...] [--repeats 2]
      [--cpu-devices N]

Writes benchmarks/results/extract_throughput{,_gpu}.{json,md,png} (``_gpu`` when JAX runs on one).
"""

import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# JAX and torch share the GPU in this process: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if "--cpu-devices" in sys.argv:  # before JAX starts, as the command line sets it
  os.environ["JAXMETRICS_CPU_DEVICES"] = sys.argv[sys.argv.index("--cpu-devices") + 1]
from jaxmetrics.pipeline import cli  # noqa: E402
cli.cpu_devices()

import jax  # noqa: E402
import torch  # noqa: E402

import _results  # noqa: E402
import _torch_peers  # noqa: E402
from jaxmetrics.networks import inception  # noqa: E402
from jaxmetrics.pipeline import extract  # noqa: E402
from tests import _inception_fixtures as fixtures  # noqa: E402

_CHECK_IMAGES = 32  # images in the precision table


def _relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _runners(args, params, checkpoint, gpu):
  """(library, precision, resize, fn(images) -> pool3 on the host) for every requested run."""
  runners = []
  libraries = args.libraries.split(",")
  if "jaxmetrics" in libraries:
    replicated = extract.replicate(params)
    devices = f"extract, {jax.device_count()} devices"
    for precision in args.precisions.split(","):
      def run_extract(images, precision=precision):
        return extract.extract(images, replicated, batch_size=len(images), precision=precision,
                               keep_features=("pool3",), progress=False).outputs["pool3"]
      def run_jax(images, precision=precision):
        return np.asarray(inception.features(params, images, precision=precision)["pool3"])
      runners.append((f"jaxmetrics ({devices})", precision, "tf1", run_extract))
      runners.append(("jaxmetrics (features, 1 device)", precision, "tf1", run_jax))
  dev = _torch_peers.device()
  for library in (lib for lib in libraries if lib in _torch_peers.PEERS):
    forward = _torch_peers.extractor(library, checkpoint, dev)
    for precision in ("default", "highest") if gpu else ("default",):
      def run_torch(images, forward=forward, precision=precision):
        _torch_peers.set_precision(precision)
        return forward(images).cpu().numpy()
      runners.append((library, precision if gpu else "float32", _torch_peers.RESIZE[library],
                      run_torch))
  return runners


def _precision_rows(runners, params):
  """pool3 change of every run from jaxmetrics at highest precision with the peer's resize."""
  images = fixtures.test_images(7, _CHECK_IMAGES, 299, 299)
  rows = []
  for library, precision, resize, fn in runners:
    reference = np.asarray(inception.features(params, images, resize=resize)["pool3"])
    rows.append({"library": library, "precision": precision, "resize": resize,
                 "pool3_change": _relative(fn(images), reference)})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-sizes", default="32,64,128,256,512")
  parser.add_argument("--sizes", default="299", help="input image side lengths")
  parser.add_argument("--precisions", default="highest,default", help="jaxmetrics' precisions")
  parser.add_argument("--libraries", default="jaxmetrics,torch-fidelity,pytorch-fid,torchmetrics")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--cpu-devices", help="JAX CPU devices (default: one per core, as the "
                      "command line; read before JAX starts)")
  args = parser.parse_args()

  torch.set_num_threads(os.cpu_count())
  gpu = jax.default_backend() == "gpu"
  folder = pathlib.Path(tempfile.mkdtemp())
  legacy, _ = fixtures.save_checkpoints(fixtures.random_state_dict(seed=0), folder)
  os.environ["JAXMETRICS_CACHE"] = str(folder / "cache")
  params = jax.device_put(inception.load_params(legacy, check_hash=False, progress=False))
  runners = _runners(args, params, legacy, gpu)

  rows = []
  for side in [int(s) for s in args.sizes.split(",")]:
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
      images = fixtures.test_images(side + batch, batch, side, side)
      for library, precision, _, fn in runners:
        best, median, _ = _results.best_of(lambda fn=fn: fn(images), args.repeats)
        rows.append({"library": library, "precision": precision, "input": f"{side}x{side}",
                     "batch": batch, "best_s": best, "median_s": median,
                     "images_per_s": batch / best})
        print(rows[-1], flush=True)
  precision_rows = _precision_rows(runners, params)

  meta = _results.machine(threads_torch=torch.get_num_threads(), repeats=args.repeats,
                          torch_device=str(_torch_peers.device()))
  lines = [
      "# Inception feature extraction throughput",
      "",
      _results.describe(meta),
      "",
      "uint8 images on the host → each library's resize to 299×299 on the device → pool3 back on "
      f"the host. images/s from the fastest of {args.repeats} timed calls after a warm-up "
      "(compilation excluded). Peers at precision \"default\" run as torch does by default (on "
      "an NVIDIA GPU, TF32 cuDNN convolutions); \"highest\" turns TF32 off. "
      f"Command: `python benchmarks/extract_throughput.py --repeats {args.repeats}`.",
      "",
      "| input | batch | library | precision | images/s | vs torch-fidelity (default) |",
      "|---|---:|---|---|---:|---:|",
  ]
  for row in rows:
    peer = next((r for r in rows if r["library"] == "torch-fidelity" and r["batch"] == row["batch"]
                 and r["input"] == row["input"] and r["precision"] in ("default", "float32")),
                None)
    ratio = f"{row['images_per_s'] / peer['images_per_s']:.2f}×" if peer else ""
    lines.append(f"| {row['input']} | {row['batch']} | {row['library']} | {row['precision']} | "
                 f"{row['images_per_s']:.2f} | {ratio} |")
  lines += ["", f"Precision: pool3 of {_CHECK_IMAGES} images of 299×299, relative L2 difference "
            "from jaxmetrics at \"highest\" with the same resize.", "",
            "| library | precision | resize | pool3 change |", "|---|---|---|---:|"]
  lines += [f"| {r['library']} | {r['precision']} | {r['resize']} | {r['pool3_change']:.1e} |"
            for r in precision_rows]
  name = "extract_throughput" + ("_gpu" if gpu else "")
  _results.write(name, {"meta": meta, "rows": rows, "precision": precision_rows},
                 "\n".join(lines))


if __name__ == "__main__":
  main()
