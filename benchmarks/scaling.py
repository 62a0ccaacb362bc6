"""The same extraction on 1, 2, 4 and 8 devices: time, and whether the results are the same.

Each device count runs in a fresh process (XLA fixes the device count at start-up). On a CPU
machine the devices are forced (``--xla_force_host_platform_device_count``) and share the same
cores, so this shows that sharding changes nothing in the numbers and what it costs, not a
speed-up; on a machine with several accelerators pass ``--real`` to use them as they are.

  python benchmarks/scaling.py [--devices 1,2,4,8] [--n 64] [--size 32] [--batch 16]

Writes benchmarks/results/scaling.{json,md}.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _child(args):
  if not args.real:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.child}"
    os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(ROOT))
  import jax
  import numpy as np

  from jaxmetrics.pipeline import extract
  from jaxmetrics.networks import inception
  from tests import _inception_fixtures as fixtures

  devices = jax.devices()[:args.child]
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  params = inception.load_params(args.checkpoint, check_hash=False, progress=False)
  images = fixtures.test_images(7, args.n, args.size, args.size)
  start = time.perf_counter()
  extract.extract(images, params, batch_size=args.batch, mesh=mesh, progress=False)  # compiles
  compiled = time.perf_counter()
  result = extract.extract(images, params, batch_size=args.batch, mesh=mesh, progress=False)
  jax.block_until_ready(result.stats)
  done = time.perf_counter()
  print(json.dumps({
      "devices": len(devices), "platform": devices[0].platform, "first_run_s": compiled - start,
      "second_run_s": done - compiled, "images_per_s": args.n / (done - compiled),
      "mean": np.asarray(result.stats.mean).tolist(),
      "covariance_trace": float(np.trace(np.asarray(result.stats.covariance()))),
      "inception_score": [float(v) for v in result.inception_score.compute()]}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4,8")
  parser.add_argument("--n", type=int, default=64)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--batch", type=int, default=16, help="global batch (a multiple of every count)")
  parser.add_argument("--real", action="store_true", help="use the machine's own devices")
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return _child(args)

  sys.path.insert(0, str(ROOT))
  import numpy as np
  from tests import _inception_fixtures as fixtures

  folder = pathlib.Path(tempfile.mkdtemp())
  legacy, _ = fixtures.save_checkpoints(fixtures.random_state_dict(seed=0), folder)
  env = dict(os.environ, JAXMETRICS_CACHE=str(folder / "cache"))
  runs = []
  for count in [int(d) for d in args.devices.split(",")]:
    command = [sys.executable, __file__, "--child", str(count), "--checkpoint", str(legacy),
               "--n", str(args.n), "--size", str(args.size), "--batch", str(args.batch)]
    out = subprocess.run(command + (["--real"] if args.real else []), capture_output=True,
                         text=True, env=env, check=True)
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print({k: v for k, v in runs[-1].items() if k != "mean"}, flush=True)

  base_mean = np.asarray(runs[0]["mean"])
  for run in runs:
    run["mean_max_relative_difference_vs_1"] = float(
        np.abs(np.asarray(run.pop("mean")) - base_mean).max() / np.abs(base_mean).max())
  import _results  # pylint: disable=import-outside-toplevel  (jax starts here, not in children)
  meta = _results.machine(forced_cpu_devices=not args.real, images=args.n, image_size=args.size,
                          global_batch=args.batch)
  kind = "forced CPU devices sharing" if not args.real else "devices of a machine with"
  lines = ["# Scaling over devices", "", _results.describe(meta), "",
           f"`extract` of {args.n} images ({args.size}×{args.size}, global batch {args.batch}) on "
           f"1–8 {kind} {meta['cores']} cores. Second run (compiled); results compared with the "
           "1-device run. Command: `python benchmarks/scaling.py`.", "",
           "| devices | images/s | first run incl. compile (s) | max rel. diff. of mean | tr Σ | IS |",
           "|---|---|---|---|---|---|"]
  for run in runs:
    lines.append(f"| {run['devices']} | {run['images_per_s']:.2f} | {run['first_run_s']:.1f} | "
                 f"{run['mean_max_relative_difference_vs_1']:.1e} | {run['covariance_trace']:.6g} | "
                 f"{run['inception_score'][0]:.7f} |")
  _results.write("scaling", {"meta": meta, "runs": runs}, "\n".join(lines))


if __name__ == "__main__":
  main()
