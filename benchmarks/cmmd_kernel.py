"""Accuracy, time and memory of the CMMD kernel (``jaxmetrics.cmmd``) against cmmd's own arithmetic.

Run by hand (not a test), from the repository root:

  python benchmarks/cmmd_kernel.py                      # N = 2000, 5000 per side; a minute
  python benchmarks/cmmd_kernel.py --sizes 2000 --large 30000   # adds jaxmetrics float32 at 30k

Embeddings: N + N unit vectors of d = 768 clustered as CLIP's (pairwise cosines ~0.5), the second
set moved along three axes (CMMD ~0.5), float32. Per N:

* the float64 value: ``jaxmetrics.cmmd`` on float64 inputs (its float64 route; the tests hold it to
  the NumPy float64 formula), and for N ≤ 5000 the NumPy float64 formula itself;
* ``jaxmetrics.cmmd`` on the float32 embeddings (float32 tiles), its error against the float64
  value and its time (second call: the first includes the compilation);
* cmmd's own arithmetic on the same float32 embeddings, as clip-mmd's ``calculation.mmd`` carries
  it (torch float32, full matrices, means of kernel values near 1): error and time.

``--large N`` times jaxmetrics float32 alone at N + N in a fresh process and reports its peak
resident memory (``VmHWM``) next to the size of the two sets. One CPU device.

Writes ``benchmarks/results/cmmd_kernel.json`` and ``.md``.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

import _results  # noqa: E402  (beside this file)

# Moves the second set's mean by ~0.2 (unit vectors): CMMD ~0.5, inside the 0.1..5 range the
# paper reports between generators.
OFFSET = 5.0


def embeddings(seed, n, d=768, offset=0.0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, d)).astype(np.float32) + 1.0
  a[:, :3] += offset
  return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def numpy_cmmd(x, y):
  x, y = x.astype(np.float64), y.astype(np.float64)
  gamma = 1.0 / 200.0
  k = lambda a, b: np.exp(-gamma * (-2 * a @ b.T + (a * a).sum(1)[:, None] + (b * b).sum(1)[None]))
  return 1000.0 * (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def one_size(n):
  import jaxmetrics
  import torch
  import clip_mmd.calculation as clip_mmd
  x, y = embeddings(0, n), embeddings(1, n, offset=OFFSET)
  row = {"n": n, "d": x.shape[1]}
  row["cmmd_float64"] = float(jaxmetrics.cmmd(x.astype(np.float64), y.astype(np.float64)))
  if n <= 5000:
    row["numpy_float64_minus_float64_route"] = float(numpy_cmmd(x, y)) - row["cmmd_float64"]
  jaxmetrics.cmmd(x, y)
  value, row["jaxmetrics_float32_s"] = timed(lambda: float(jaxmetrics.cmmd(x, y)))
  row["jaxmetrics_float32_error"] = value - row["cmmd_float64"]
  torch.set_num_threads(os.cpu_count())
  value, row["cmmd_arithmetic_float32_s"] = timed(lambda: clip_mmd.mmd(x, y).item())
  row["cmmd_arithmetic_float32_error"] = value - row["cmmd_float64"]
  return row


def large(n):
  import jaxmetrics
  x, y = embeddings(0, n), embeddings(1, n, offset=OFFSET)
  before = _results.memory_mb()["peak"]
  _, first = timed(lambda: float(jaxmetrics.cmmd(x, y)))
  value, second = timed(lambda: float(jaxmetrics.cmmd(x, y)))
  return {"n": n, "d": x.shape[1], "jaxmetrics_float32": value, "first_call_s": first,
          "second_call_s": second, "rss_before_mb": before, "peak_rss_mb": _results.memory_mb()["peak"],
          "embeddings_mb": 2 * x.nbytes / 2**20}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000])
  parser.add_argument("--large", type=int, default=0)
  parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(large(args.child)))
    return
  rows = [one_size(n) for n in args.sizes]
  for row in rows:
    print(row)
  big = None
  if args.large:
    out = subprocess.run([sys.executable, __file__, "--child", str(args.large)], check=True,
                         capture_output=True, text=True).stdout
    big = json.loads(out.strip().splitlines()[-1])
    print(big)
  machine = _results.machine(load_average_before=os.getloadavg())
  lines = ["# CMMD kernel: float32 error and time against cmmd's own arithmetic", "",
           _results.describe(machine), "",
           "| N + N (d = 768) | CMMD (float64) | jaxmetrics float32: error, time | cmmd's "
           "arithmetic (clip-mmd, torch float32): error, time |", "|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['n']} | {r['cmmd_float64']:.6f} | {r['jaxmetrics_float32_error']:.1e}, "
                 f"{r['jaxmetrics_float32_s']:.2f} s | {r['cmmd_arithmetic_float32_error']:.1e}, "
                 f"{r['cmmd_arithmetic_float32_s']:.2f} s |")
  if big:
    lines.append("")
    lines.append(f"jaxmetrics float32 at {big['n']} + {big['n']}: {big['second_call_s']:.1f} s "
                 f"({big['first_call_s']:.1f} s with compilation), peak RSS "
                 f"{big['peak_rss_mb']:.0f} MB ({big['rss_before_mb']:.0f} MB before; embeddings "
                 f"{big['embeddings_mb']:.0f} MB).")
  _results.write("cmmd_kernel", {"machine": machine, "sizes": rows, "large": big},
                 "\n".join(lines))


if __name__ == "__main__":
  main()
