"""Random-access datasets and on-device samplers on two processes (``jax.distributed``, gloo).

This file is also the worker: ``python -m tests.test_multihost_datasets WORKER OUT`` runs one
process of the group (the test starts two, 2 CPU devices each, so a global batch of 4 is split 2 +
2). Each worker extracts, with the pixel network (its feature is the image itself):

A. a grain ``MapDataset`` of 7 images, the same on both processes: each reads only the rows its
   devices hold (step 2: process 0 rows 4 and 5, process 1 row 6 and a masked pad), so the result
   must be the 7 images in source order, as on one process;
B. a ``SamplerSource`` whose jitted sampler returns the global batch on the batch sharding: both
   processes run it, and each step's array must be used as it is.
"""

import os
import socket
import subprocess
import sys

import numpy as np

from tests import _inception_fixtures as fixtures
from tests import _optional

N, H, W = 7, 6, 5
IMAGES = fixtures.test_images(21, N, H, W)
WORKER_TIMEOUT_S = 300


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _sample(step):
  """Global batch ``step`` of 4 deterministic images, computed on the devices."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  rows = step * 4 + jnp.arange(4, dtype=jnp.int32)
  pixels = rows[:, None, None, None] * 11 + jnp.arange(H * W * 3, dtype=jnp.int32).reshape(H, W, 3)
  return (pixels % 256).astype(jnp.uint8)


def _sampled(n):
  rows = np.arange(n, dtype=np.int64)
  return ((rows[:, None, None, None] * 11 + np.arange(H * W * 3).reshape(H, W, 3)) % 256).astype(
      np.uint8)


def test_two_processes_read_rows_and_samples_as_one(tmp_path):
  _optional.require("grain")
  address = f"127.0.0.1:{_free_port()}"
  # The coordinator binds to every interface unless told otherwise: keep it on the loopback.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_COORDINATOR_ADDRESS=address,
             JAX_COORDINATOR_BIND_ADDRESS=address, JAX_NUM_PROCESSES="2")
  workers = []
  for process in range(2):
    log = open(tmp_path / f"log{process}.txt", "w")
    workers.append((subprocess.Popen(
        [sys.executable, "-m", "tests.test_multihost_datasets", "WORKER",
         str(tmp_path / f"out{process}.npz")],
        env=dict(env, JAX_PROCESS_ID=str(process)), stdout=log, stderr=subprocess.STDOUT,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), log))
  try:
    for worker, _ in workers:
      worker.wait(timeout=WORKER_TIMEOUT_S)
  finally:
    for worker, log in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
      log.close()
  logs = [(tmp_path / f"log{p}.txt").read_text() for p in range(2)]
  for worker, log in zip(workers, logs):
    assert worker[0].returncode == 0, log[-5000:]
  for process in range(2):
    out = dict(np.load(tmp_path / f"out{process}.npz"))
    # Pixels are integers 0..255 in float32: exact.
    np.testing.assert_array_equal(out["A_pixels"], IMAGES.reshape(N, -1).astype(np.float32))
    np.testing.assert_array_equal(out["A_index"], np.arange(N))
    np.testing.assert_array_equal(out["B_pixels"], _sampled(N).reshape(N, -1).astype(np.float32))
    assert out["B_used_as_is"].all() and len(out["B_used_as_is"]) == 2  # ceil(7 / 4) steps


def _worker(out_path):
  from jaxmetrics.pipeline import extract  # pylint: disable=import-outside-toplevel
  assert extract.initialize(), "expected a multi-process run"
  import grain  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from jaxmetrics.pipeline import datasets  # pylint: disable=import-outside-toplevel
  from tests import _pixel_network  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_numpy_dtype_promotion", "strict")
  assert (jax.process_count(), len(jax.devices()), len(jax.local_devices())) == (2, 4, 2)
  options = dict(network=_pixel_network.network(H, W), keep_features=("pixels",), batch_size=4,
                 progress=False)
  results = {}

  dataset = grain.MapDataset.source([{"image": image, "label": 0} for image in IMAGES])
  a = extract.extract(dataset, {}, **options)
  results.update(A_pixels=a.outputs["pixels"], A_index=a.index)

  mesh = extract.default_mesh()
  sampler = jax.jit(_sample, out_shardings=NamedSharding(mesh, P("data")))
  sampled, fed = [], []

  def record(step):
    sampled.append(sampler(step))
    return sampled[-1]

  step = extract._step  # pylint: disable=protected-access

  def spy(states, params, batch, *args, **kwargs):
    fed.append(batch["images"])
    return step(states, params, batch, *args, **kwargs)

  extract._step = spy  # pylint: disable=protected-access
  b = extract.extract(datasets.SamplerSource(record, num_samples=N), {}, mesh=mesh, **options)
  results.update(B_pixels=b.outputs["pixels"],
                 B_used_as_is=np.array([x is y for x, y in zip(fed, sampled)]))
  np.savez(out_path, **results)


if __name__ == "__main__":
  if sys.argv[1:2] != ["WORKER"]:
    sys.exit("usage: python -m tests.test_multihost_datasets WORKER OUT")
  _worker(*sys.argv[2:3])
