"""Two processes on localhost with ``jax.distributed`` and CPU collectives (gloo), 2 devices each.

This file is also the worker: ``python -m tests.test_multihost WORKER PARAMS IMAGES OUT`` runs one
process of the group (the test starts two). Each worker joins through
:func:`jaxmetrics.pipeline.extract.initialize` from the ``JAX_*`` environment variables, then extracts

A. an ``.npy`` file of 7 rows with a global batch of 4: steps of rows [0, 4) and [4, 7), so in the
   second step process 0 reads rows 4 and 5 and process 1 row 6 plus a masked pad (uneven shards);
B. an iterable of its own, of unknown length: process 0 yields rows 0-4, process 1 rows 5-6, so the
   processes must agree step by step on when the last of them ran out;
C. an iterable that goes bad on process 1 only: both processes must stop, not hang;
D. ``jaxmetrics.evaluate`` twice with a statistics cache per process (``JAXMETRICS_CACHE`` differs,
   as on TPU VMs and GPU hosts), process 1's cache emptied in between: process 0 finds its entries,
   process 1 does not, and both must take the same path (a lone process in a collective hangs);
E. ``evaluate`` on a file whose content differs between the processes: an error naming process 1,
   on both processes, before any feature pass.

A process reads only its share, so equal statistics on both, with the count of all rows, can only
come from the cross-process all-reduce inside the compiled step.
"""

import os
import socket
import subprocess
import sys

import numpy as np

N = 7
KEEP = ("pool3", "logits_unbiased")  # as test_extract.KEEP (not imported: the worker skips torch)
WORKER_TIMEOUT_S = 400


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(inception_checkpoints, tmp_path):
  from tests import test_extract  # pylint: disable=import-outside-toplevel
  params_path = inception_checkpoints["legacy"]
  images_path = tmp_path / "images.npy"
  np.save(images_path, test_extract.IMAGES[:N])
  address = f"127.0.0.1:{_free_port()}"
  # The coordinator binds to every interface unless told otherwise: keep it on the loopback.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_COORDINATOR_ADDRESS=address,
             JAX_COORDINATOR_BIND_ADDRESS=address, JAX_NUM_PROCESSES="2")
  workers = []
  for process in range(2):
    log = open(tmp_path / f"log{process}.txt", "w")
    workers.append((subprocess.Popen(
        [sys.executable, "-m", "tests.test_multihost", "WORKER", str(params_path),
         str(images_path), str(tmp_path / f"out{process}.npz")],
        env=dict(env, JAX_PROCESS_ID=str(process),
                 JAXMETRICS_CACHE=str(tmp_path / f"cache{process}")), stdout=log, stderr=subprocess.STDOUT,
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
  assert "Gloo" in logs[0]  # the CPU collectives really connected the two processes
  out = [dict(np.load(tmp_path / f"out{p}.npz")) for p in range(2)]

  # Replicated state: both processes hold bit-identical results.
  for key in out[0]:
    np.testing.assert_array_equal(out[0][key], out[1][key], err_msg=key)
  result = out[0]

  expected = test_extract.reference(params_path)
  pool3 = expected["pool3"][:N]
  for run, order in (("A", np.arange(N)), ("B", [0, 1, 5, 6, 2, 3, 4])):
    assert int(result[f"{run}_count"]) == N
    # The same 1e-5 as the single-process test: round-off of the network and float32 statistics.
    test_extract.assert_close(result[f"{run}_mean"], pool3.mean(axis=0), 1e-5)
    test_extract.assert_close(result[f"{run}_covariance"], np.cov(pool3, rowvar=False), 1e-5)
    # Features come back in source order (A) or step by step, process by process (B).
    test_extract.assert_close(result[f"{run}_features"], pool3[order], 1e-5)
  np.testing.assert_array_equal(result["A_index"], np.arange(N))
  from jaxmetrics.metrics.inception_score import inception_score
  test_extract.assert_scores_close(result["A_inception_score"],
                                   inception_score(result["A_logits_unbiased"], 3))

  # C: process 1 names its bad batch; process 0 names process 1; neither hangs.
  assert "iterable batch 1: expected uint8 images of shape (B, 16, 16, 3)" in logs[1]
  assert "process 1 stopped the run on bad input" in logs[0]

  # D: the same float64 FID from both processes, both runs; the second run recomputed on both
  # (process 1 had no entry), so neither reports a cache hit alone. Deterministic float64 on the
  # same replicated statistics: equal exactly.
  assert result["D_fid"][0] == result["D_fid"][1]
  np.testing.assert_array_equal(out[0]["D_cached"], [[False, False], [False, False]])
  np.testing.assert_array_equal(out[1]["D_cached"], [[False, False], [False, False]])
  for log in logs:
    assert "E: " in log and "the content of process 1" in log


def _worker(params_path, images_path, out_path):
  from jaxmetrics.pipeline import extract  # pylint: disable=import-outside-toplevel
  assert extract.initialize(), "expected a multi-process run"
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from jaxmetrics.networks import inception  # pylint: disable=import-outside-toplevel
  from jaxmetrics._errors import InputError  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_numpy_dtype_promotion", "strict")
  process = jax.process_index()
  assert (jax.process_count(), len(jax.devices()), len(jax.local_devices())) == (2, 4, 2)
  params = inception.load_params(params_path, check_hash=False, cache=False, progress=False)
  images = np.load(images_path)
  options = dict(batch_size=4, keep_features=KEEP, splits=3, progress=process == 0)
  out = {}

  def save(run, result):
    out.update({f"{run}_count": result.count, f"{run}_mean": np.asarray(result.stats.mean),
                f"{run}_covariance": np.asarray(result.stats.covariance()),
                f"{run}_features": result.features,
                f"{run}_logits_unbiased": result.outputs["logits_unbiased"],
                f"{run}_inception_score": np.array(result.inception_score.compute())})

  result = extract.extract(images_path, params, **options)
  save("A", result)
  out["A_index"] = result.index

  def own_rows():
    rows = images[:5] if process == 0 else images[5:]
    for start in range(0, len(rows), 3):
      yield rows[start:start + 3]

  save("B", extract.extract(own_rows(), params, **options))

  def goes_bad():
    yield images[:1]
    yield images[:1, :8] if process == 1 else images[1:3]

  try:
    extract.extract(goes_bad(), params, **options)
  except InputError as e:
    print(f"C: {e}", flush=True)
  else:
    raise AssertionError("C: expected an InputError")
  import jaxmetrics  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  other = os.path.join(os.path.dirname(images_path), "reversed.npy")
  if process == 0:
    np.save(other, images[::-1])
  multihost_utils.sync_global_devices("reversed.npy written")
  fids, cached = [], []
  for run in range(2):
    if run == 1 and process == 1:
      shutil.rmtree(os.environ["JAXMETRICS_CACHE"])
    results = jaxmetrics.evaluate(images_path, other, params=params, batch_size=4)
    fids.append(results["fid"])
    cached.append(results["cached"])
  out["D_fid"], out["D_cached"] = np.array(fids), np.array(cached)

  own = os.path.join(os.path.dirname(images_path), f"own{process}.npy")
  np.save(own, images if process == 0 else images[::-1])
  try:
    jaxmetrics.evaluate(own, other, params=params, batch_size=4)
  except InputError as e:
    print(f"E: {e}", flush=True)
  else:
    raise AssertionError("E: expected an InputError")
  np.savez(out_path, **out)
  jax.distributed.shutdown()


if __name__ == "__main__":
  if sys.argv[1:2] != ["WORKER"]:
    sys.exit("usage: python -m tests.test_multihost WORKER PARAMS IMAGES OUT")
  _worker(*sys.argv[2:5])
