"""Inception feature extraction throughput: jaxmetrics vs torch-fidelity, same machine, one run.

Both extractors load the same random-weight checkpoint in the official format (the real weights
cannot be downloaded here; speed does not depend on the values, and calibrated BatchNorm statistics
keep activations free of denormals that would distort CPU timings). Each takes uint8 images, resizes
to 299×299 with TF1 bilinear and returns pool3 and both logits. jaxmetrics runs at each requested
matmul/convolution precision: "highest" (full float32, the default) and "default" (the fast mode:
bfloat16 passes on TPUs, TF32 on Ampere and later GPUs; CPUs compute float32 either way); the
"pool3 change" column is the relative L2 difference of its features from the highest-precision
ones on the same images, the size of the change the fast mode makes. torch-fidelity runs as
it does for its users (float32; on an NVIDIA GPU torch's defaults let cuDNN convolutions use TF32,
torch.backends.cudnn.allow_tf32 = True, and keep matmuls in float32). pytorch-fid needs
torchvision, which this CPU machine lacks. torchmetrics imports here but is not in this benchmark
yet; end_to_end.py measures it.

  python benchmarks/extract_throughput.py [--batch-sizes 32,64,128,256,512] [--sizes 299]
      [--precisions highest,default] [--repeats 2]

Writes benchmarks/results/extract_throughput.{json,md,png}.
"""

import argparse
import pathlib
import os
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import torch  # noqa: E402

import _results  # noqa: E402
from jaxmetrics import inception  # noqa: E402
from tests import _inception_fixtures as fixtures  # noqa: E402


def _time(fn, repeats):
  out = fn()  # warm-up: compilation (JAX) and allocator caches (both)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times), float(np.median(times)), out


def _relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-sizes", default="32,64,128,256,512")
  parser.add_argument("--sizes", default="299", help="input image side lengths")
  parser.add_argument("--precisions", default="highest,default")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--no-torch", dest="torch", action="store_false")
  args = parser.parse_args()

  torch.set_num_threads(os.cpu_count())
  folder = pathlib.Path(tempfile.mkdtemp())
  legacy, _ = fixtures.save_checkpoints(fixtures.random_state_dict(seed=0), folder)
  os.environ["JAXMETRICS_CACHE"] = str(folder / "cache")
  params = jax.device_put(inception.load_params(legacy, check_hash=False, progress=False))
  extractor = fixtures.torch_fidelity_extractor(legacy) if args.torch else None
  precisions = args.precisions.split(",")

  rows = []
  for side in [int(s) for s in args.sizes.split(",")]:
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
      images = fixtures.test_images(side + batch, batch, side, side)
      baseline = None
      for precision in precisions:
        def run_jax(precision=precision):
          return jax.block_until_ready(inception.features(params, images, precision=precision))
        best, median, out = _time(run_jax, args.repeats)
        pool3 = np.asarray(out["pool3"])
        baseline = pool3 if baseline is None else baseline
        rows.append({"library": "jaxmetrics", "precision": precision, "input": f"{side}x{side}",
                     "batch": batch, "best_s": best, "median_s": median,
                     "images_per_s": batch / best, "pool3_change": _relative(pool3, baseline)})
        print(rows[-1], flush=True)
      if extractor is not None:
        nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

        def run_torch():
          with torch.no_grad():
            return extractor(nchw)
        best, median, _ = _time(run_torch, args.repeats)
        rows.append({"library": "torch-fidelity", "precision": "float32", "input": f"{side}x{side}",
                     "batch": batch, "best_s": best, "median_s": median,
                     "images_per_s": batch / best, "pool3_change": None})
        print(rows[-1], flush=True)

  meta = _results.machine(threads_torch=torch.get_num_threads(), repeats=args.repeats)
  lines = [
      "# Inception feature extraction throughput",
      "",
      _results.describe(meta),
      "",
      "uint8 input → TF1 resize to 299×299 → pool3 + logits. images/s from the fastest of "
      f"{args.repeats} timed calls after a warm-up (compilation excluded). pool3 change: relative L2 "
      "difference from jaxmetrics at precision highest on the same images. "
      "Command: `python benchmarks/extract_throughput.py`.",
      "",
      "| input | batch | library | precision | images/s | vs torch-fidelity | pool3 change |",
      "|---|---:|---|---|---:|---:|---:|",
  ]
  for row in rows:
    peer = next((r for r in rows if r["library"] == "torch-fidelity"
                 and r["batch"] == row["batch"] and r["input"] == row["input"]), None)
    ratio = f"{row['images_per_s'] / peer['images_per_s']:.2f}×" if peer else ""
    change = "" if row["pool3_change"] is None else f"{row['pool3_change']:.1e}"
    lines.append(f"| {row['input']} | {row['batch']} | {row['library']} | {row['precision']} | "
                 f"{row['images_per_s']:.2f} | {ratio} | {change} |")
  lines += ["", "pytorch-fid: not measured (no torchvision on this machine). torchmetrics: not "
            "in this benchmark yet (end_to_end.py measures it)." if meta["backend"] == "cpu" else ""]
  _results.write("extract_throughput", {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
  main()
