"""Inception feature extraction throughput: jaxmetrics vs torch-fidelity, same machine, one run.

Both extractors load the same random-weight checkpoint in the official format (the real weights
cannot be downloaded here; speed does not depend on the values, and calibrated BatchNorm statistics
keep activations free of denormals that would distort CPU timings). Each takes uint8 images, resizes
to 299×299 with TF1 bilinear and returns pool3 and both logits, at full float32 precision.

  python benchmarks/extract_throughput.py [--batch-sizes 16,32] [--sizes 32,299] [--repeats 3]

Writes benchmarks/results/extract_throughput.{json,md}.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import torch  # noqa: E402

import jaxmetrics  # noqa: E402
from jaxmetrics import inception  # noqa: E402
from tests import _inception_fixtures as fixtures  # noqa: E402


def _cpu_model():
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _time(fn, repeats):
  fn()  # warm-up: compilation (JAX) and allocator caches (both)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times), float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch-sizes", default="16,32")
  parser.add_argument("--sizes", default="32,299", help="input image side lengths")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  threads = os.cpu_count()
  torch.set_num_threads(threads)
  folder = pathlib.Path(tempfile.mkdtemp())
  legacy, _ = fixtures.save_checkpoints(fixtures.random_state_dict(seed=0), folder)
  os.environ["JAXMETRICS_CACHE"] = str(folder / "cache")
  params = jax.device_put(inception.load_params(legacy, check_hash=False, progress=False))
  extractor = fixtures.torch_fidelity_extractor(legacy)

  rows = []
  for side in [int(s) for s in args.sizes.split(",")]:
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
      images = fixtures.test_images(side + batch, batch, side, side)
      nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

      def run_jax():
        jax.block_until_ready(inception.features(params, images))

      def run_torch():
        with torch.no_grad():
          extractor(nchw)

      for name, fn in (("jaxmetrics", run_jax), ("torch-fidelity", run_torch)):
        best, median = _time(fn, args.repeats)
        rows.append({"library": name, "input": f"{side}x{side}", "batch": batch,
                     "best_s": round(best, 3), "median_s": round(median, 3),
                     "images_per_s": round(batch / median, 2)})
        print(rows[-1], flush=True)

  meta = {
      "date": datetime.date.today().isoformat(), "machine": _cpu_model(), "cores": os.cpu_count(),
      "backend": jax.default_backend(), "threads_torch": threads, "precision": "float32 highest",
      "versions": {"jaxmetrics": jaxmetrics.__version__, "jax": jax.__version__,
                   "torch": torch.__version__, "torch_fidelity": "0.4.0", "python": platform.python_version()},
  }
  out = ROOT / "benchmarks" / "results"
  out.mkdir(parents=True, exist_ok=True)
  (out / "extract_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
  lines = [f"Inception feature extraction, uint8 input → TF1 resize → pool3 + logits, float32 highest. "
           f"{meta['machine']}, {meta['cores']} cores, {meta['date']}; jax {jax.__version__}, "
           f"torch {torch.__version__}.", "",
           "| input | batch | jaxmetrics (images/s) | torch-fidelity (images/s) | speed-up |",
           "|---|---|---|---|---|"]
  for i in range(0, len(rows), 2):
    j, t = rows[i], rows[i + 1]
    lines.append(f"| {j['input']} | {j['batch']} | {j['images_per_s']} | {t['images_per_s']} | "
                 f"{j['images_per_s'] / t['images_per_s']:.2f}× |")
  (out / "extract_throughput.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
