"""Time and peak memory of precision/recall and density/coverage against prdc and torch-fidelity.

Run by hand (not a test), from the repository root:

  python benchmarks/manifold.py                         # N = 2000, 5000, 10000; a few minutes
  python benchmarks/manifold.py --sizes 2000 --large 0  # quick
  python benchmarks/manifold.py --large 50000           # adds 50k x 50k (jaxmetrics; prdc if
                                                        # it fits in memory)

Features: N generated and N reference Inception-like vectors of d = 2048 (ReLU of 16 shared
Gaussian factors plus noise, mean ~0.3), float32, the same for every library. Each (library, N)
runs in a fresh process on one CPU device, so that its high-water mark (``VmHWM`` of
``/proc/self/status``, which only ever grows) is its own; ``rss_before_mb`` is the resident size
once the libraries are imported and the features made, so ``peak − before`` is what the
computation itself holds. Libraries and what they compute:

* jaxmetrics ``manifold_metrics(generated, reference)``: precision/recall (k = 3, ``<=``) and
  density/coverage (k = 5, ``<``) in three blockwise passes. Timed twice in the same process: the
  first call includes the jit compilation, the second not (the speed-up uses the second); from
  N = 50000 on once, compilation included. Its cross pass is screened with bfloat16 products
  where ``manifold._screen`` says so (CPUs with bfloat16 dot instructions, from 8 reference
  blocks on: N >= ~7000 here); ``screen`` in the row.
* jaxmetrics-float32: the same with the screen off (the cross pass's products in float32), the
  ablation that shows what the screen saves.
* prdc ``compute_prdc(real_features=reference, fake_features=generated, nearest_k=5)``: all four
  from three full ``N×N`` scikit-learn distance matrices (float32 inputs upcast to float64 by
  chunks, ``n_jobs=8`` threads).
* torch-fidelity ``prc_features_to_metric(generated, reference, prc_neighborhood=3)``: precision
  and recall only, full ``torch.cdist`` matrices (``save_cpu_ram=False``, its default).
* torch-fidelity-part: the same with ``save_cpu_ram=True``, its own option for sets whose ``N×N``
  matrices do not fit (the default's peak was 6.7 GB at N = 20000 and grows as N²): distances by
  blocks of 10000 × N, each computed twice. For ``--large`` (e.g. ``--sizes --large 50000
  --large-libraries torch-fidelity-part --out manifold_torch_fidelity_50k``).

The results of the libraries are printed next to each other: precision/recall of jaxmetrics and
torch-fidelity should agree, prdc's use k = 5 and ``<`` and differ; density/coverage of jaxmetrics
and prdc should agree (up to pairs within float32 round-off of a radius, see
``tests/test_manifold.py``).

Beside each jaxmetrics row, ``products_s``: the time its tiles' matrix products alone would take
(one ``block × block × d`` product timed in the same process, times the number of tiles of the
three passes; the cross pass's tiles timed in bfloat16 where it is screened), so
``prdc / products_s`` is the largest speed-up over prdc that these products allow. A tiling without whole diagonal tiles and padding would do 2·N²·d multiply-adds, a few
percent fewer (``gmac_per_s`` gives the rate to time them at).

``--selection`` instead times the k-NN passes' running selection (``manifold._smallest``) on a
1024² tile of real distances: ``lax.top_k`` of whole rows and columns against the chunked search
for chunks of 8–64, and a whole k-NN pass of ``--selection-n`` rows with and without chunks
(``knn_selection.json``/``.md``).

Writes ``benchmarks/results/manifold.json`` and ``.md`` (``--out`` to rename).
"""

import argparse
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

D = 2048
LIBRARIES = ("jaxmetrics", "jaxmetrics-float32", "prdc", "torch-fidelity", "torch-fidelity-part")
# From this N on jaxmetrics is called once: its compilation (seconds) is noise next to the call.
SINGLE_CALL_FROM = 50000


def prdc_peak_bytes(n_real, n_fake):
  """What ``prdc.compute_prdc`` must hold at once, from its code (prdc 0.2, ``prdc/prdc.py``).

  ``compute_nearest_neighbour_distances`` keeps the full ``N×N`` float32 matrix of
  ``sklearn.metrics.pairwise_distances`` (float32 in, float32 out) and ``get_kth_value`` calls
  ``np.argpartition`` on it, which returns a full ``N×N`` int64 index array: 12 bytes per pair.
  """
  n = max(n_real, n_fake)
  return n * n * (4 + 8)


def _status():
  values = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, rest = line.partition(":")
      if key in ("VmHWM", "VmRSS"):
        values[key] = int(rest.split()[0]) / 1024  # kB -> MB
  return values


def _features(n, d, seed, shift=0.0):
  import numpy as np  # pylint: disable=g-import-not-at-top  (children import what they use)
  rng = np.random.default_rng(seed)
  mixing = np.random.default_rng(123).standard_normal((16, d), dtype=np.float32) / 4
  z = rng.standard_normal((n, 16), dtype=np.float32) @ mixing
  z += 0.5 * rng.standard_normal((n, d), dtype=np.float32)
  return np.maximum(0.5 * z + (0.2 + shift), 0, out=z)


def _child(library, n):
  if library.startswith("jaxmetrics"):
    from jaxmetrics.metrics import manifold  # pylint: disable=g-import-not-at-top
    if library == "jaxmetrics-float32":  # the ablation: the cross pass without its screen
      manifold._screen = lambda *args: False  # pylint: disable=protected-access
  elif library == "prdc":
    import prdc  # pylint: disable=g-import-not-at-top
  else:
    import torch  # pylint: disable=g-import-not-at-top
    from tests._peers import torch_fidelity_metric_module  # pylint: disable=g-import-not-at-top
    metric_prc = torch_fidelity_metric_module("metric_prc")
  generated, reference = _features(n, D, seed=1, shift=0.05), _features(n, D, seed=2)
  before = _status()["VmRSS"]
  row = {"library": library, "n": n, "d": D, "rss_before_mb": before}
  start = time.perf_counter()
  if library.startswith("jaxmetrics"):
    result = manifold.manifold_metrics(generated, reference)
    row["first_call_s"] = time.perf_counter() - start
    if n < SINGLE_CALL_FROM:
      start = time.perf_counter()
      result = manifold.manifold_metrics(generated, reference)
    row["seconds"] = time.perf_counter() - start
    row.update(precision=result.precision, recall=result.recall, density=result.density,
               coverage=result.coverage)
    row.update(_products(manifold, n))
  elif library == "prdc":
    out = prdc.compute_prdc(real_features=reference, fake_features=generated, nearest_k=5)
    row["seconds"] = time.perf_counter() - start
    row.update({k: float(v) for k, v in out.items()})
  else:
    out = metric_prc.prc_features_to_metric(
        torch.from_numpy(generated), torch.from_numpy(reference), prc_neighborhood=3,
        prc_batch_size=10000, save_cpu_ram=library == "torch-fidelity-part", verbose=False)
    row["seconds"] = time.perf_counter() - start
    row.update(precision=out["precision"], recall=out["recall"])
  row["peak_rss_mb"] = _status()["VmHWM"]
  print("RESULT " + json.dumps(row), flush=True)


def _best_of(f, *args, repeats=5):
  """Seconds of the fastest of ``repeats`` calls of ``f(*args)``, after one to compile."""
  import jax  # pylint: disable=g-import-not-at-top
  import _results  # pylint: disable=g-import-not-at-top  (beside this file)
  return _results.best_of(lambda: jax.block_until_ready(f(*args)), repeats)[0]


def _products(manifold, n):
  """The tiles' products of ``manifold_metrics`` on ``n + n`` rows, one device: their number (the
  two symmetric k-NN passes compute ``T(T + 1)/2`` tiles each, the cross pass ``T²``, for ``T``
  row blocks) times the time of one tile's product at ``Precision.HIGHEST``; the cross pass's
  tiles at the time of a bfloat16 product where it is screened (``screen``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  mesh = manifold._check_mesh(None)  # pylint: disable=protected-access
  block = manifold._block(n, mesh, None)  # pylint: disable=protected-access
  blocks = -(-n // block)
  tiles = blocks * (blocks + 1) + blocks * blocks
  a = jnp.asarray(_features(block, D, seed=3))
  b = jnp.asarray(_features(block, D, seed=4))
  product = jax.jit(lambda a, b: jax.lax.dot_general(
      a, b, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST))
  tile_s = _best_of(product, a, b)
  screen = manifold._screen(mesh, block, blocks * block)  # pylint: disable=protected-access
  low = jax.jit(lambda a, b: jax.lax.dot_general(
      a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32))
  low_s = _best_of(low, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
  cross_s = blocks * blocks * (low_s if screen else tile_s)
  return {"block": block, "blocks": blocks, "tiles": tiles, "tile_product_s": tile_s,
          "tile_product_bfloat16_s": low_s, "screen": screen,
          "products_s": blocks * (blocks + 1) * tile_s + cross_s,
          "gmac_per_s": block * block * D / tile_s / 1e9}


def selection(n):
  """Times of the k-NN selection, per tile and for a whole pass (module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxmetrics.metrics import manifold  # pylint: disable=g-import-not-at-top
  kk = 6  # density/coverage's k = 5, plus the point itself
  x = jnp.asarray(_features(2048, D, seed=1))
  sq = manifold._sq_norms(x)  # pylint: disable=protected-access
  tile = manifold._sq_distances(x[:1024], sq[:1024], x[1024:], sq[1024:])  # pylint: disable=protected-access
  best = jnp.asarray(np.sort(np.asarray(tile[:, :kk]), axis=1))
  smallest = jax.jit(manifold._smallest, static_argnums=(2, 3), static_argnames="columns")  # pylint: disable=protected-access
  updates = []
  for chunk in (None, 8, 16, 32, 64):
    rows = _best_of(lambda b, t, c=chunk: smallest(b, t, kk, c), best, tile)
    columns = _best_of(lambda b, t, c=chunk: smallest(b, t, kk, c, columns=True), best, tile)
    updates.append({"chunk": chunk, "rows_ms": 1e3 * rows, "columns_ms": 1e3 * columns})
  features = _features(n, D, seed=2)
  passes = []
  chunks = manifold._CHUNK  # pylint: disable=protected-access
  try:
    for chunk in (None, chunks["cpu"]):
      manifold._CHUNK = {} if chunk is None else {"cpu": chunk}  # pylint: disable=protected-access
      manifold._radii.clear_cache()  # pylint: disable=protected-access
      seconds = _best_of(lambda f: manifold.knn_radii(f, 5), features, repeats=2)
      passes.append({"chunk": chunk, "seconds": seconds})
  finally:
    manifold._CHUNK = chunks  # pylint: disable=protected-access
  products = _products(manifold, n)
  t = products["blocks"]  # one k-NN pass computes t(t + 1)/2 tiles
  return {"kk": kk, "n": n, "updates": updates, "passes": passes,
          "pass_products_s": t * (t + 1) // 2 * products["tile_product_s"], **products}


def _run_child(library, n):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one CPU device, whatever the caller forced
  out = subprocess.run([sys.executable, __file__, "--child", library, str(n)], env=env,
                       text=True, capture_output=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
    return {"library": library, "n": n, "d": D, "error": f"exit status {out.returncode}"}
  row = json.loads(lines[-1][len("RESULT "):])
  print(row, flush=True)
  return row


def _memory_bytes():
  with open("/proc/meminfo") as f:
    for line in f:
      if line.startswith("MemTotal:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no MemTotal in /proc/meminfo")


def _fmt(value, spec):
  return "" if value is None else format(value, spec)


def markdown(result):
  import _results  # pylint: disable=g-import-not-at-top  (beside this file)
  lines = ["# Precision/recall and density/coverage: time and peak memory", "",
           _results.describe(result["machine"]), "",
           f"N generated = N reference, d = {D} Inception-like float32 features; one CPU device "
           "per process, a fresh process per row. Time of the call (jaxmetrics: second call, jit "
           "compilation excluded, the first call's time beside it; from "
           f"N = {SINGLE_CALL_FROM} on one call, compilation included). Peak RSS is the process's "
           "high-water mark, `before` its resident size once libraries and features were loaded. "
           "jaxmetrics and prdc compute all four metrics, torch-fidelity precision/recall only. "
           "prdc's precision/recall use its k = 5 and `<`, not ADM's k = 3 and `<=`.", "",
           "`products (s)`: the time the jaxmetrics row's matrix products alone take (tiles × one "
           "tile's product, timed in its process; diagonal tiles whole, padding included; the "
           "cross pass's tiles in bfloat16 where it is screened, `screened`); "
           "`prdc ÷ products` is then the largest speed-up over prdc that these products allow.",
           "",
           "| N | library | time (s) | first call (s) | speed-up vs prdc | products (s) | "
           "prdc ÷ products | peak RSS (MB) | before (MB) | precision | recall | density | "
           "coverage |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  prdc_times = {r["n"]: r["seconds"] for r in result["rows"]
                if r["library"] == "prdc" and "seconds" in r}
  for r in result["rows"]:
    if "error" in r:
      lines.append(f"| {r['n']} | {r['library']} | {r['error']} | | | | | | | | | | |")
      continue
    prdc_s = prdc_times.get(r["n"])
    speedup = f"{prdc_s / r['seconds']:.2f}x" if prdc_s else ""
    ceiling = f"{prdc_s / r['products_s']:.2f}x" if prdc_s and "products_s" in r else ""
    library = r["library"] + (" (screened)" if r.get("screen") else "")
    lines.append(
        f"| {r['n']} | {library} | {r['seconds']:.2f} | {_fmt(r.get('first_call_s'), '.2f')} "
        f"| {speedup} | {_fmt(r.get('products_s'), '.2f')} | {ceiling} "
        f"| {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} "
        f"| {_fmt(r.get('precision'), '.4f')} | {_fmt(r.get('recall'), '.4f')} "
        f"| {_fmt(r.get('density'), '.4f')} | {_fmt(r.get('coverage'), '.4f')} |")
  return "\n".join(lines)


def selection_markdown(result):
  import _results  # pylint: disable=g-import-not-at-top  (beside this file)
  r = result["selection"]
  lines = ["# k-NN passes: the running selection of the k + 1 smallest distances", "",
           _results.describe(result["machine"]), "",
           f"One CPU device. Per 1024² tile of squared distances (d = {D}), the update of the "
           f"{r['kk']} smallest per row (per column: the transposed update of the symmetric "
           "pass), fastest of 5: `lax.top_k` of the whole rows (chunk: none) or of the chunks "
           f"with the smallest minima (`manifold._smallest`).", "",
           "| chunk | rows (ms) | columns (ms) |", "|---|---:|---:|"]
  lines += [f"| {t['chunk'] or 'none (lax.top_k)'} | {t['rows_ms']:.2f} | {t['columns_ms']:.2f} |"
            for t in r["updates"]]
  lines += ["", f"A whole k-NN pass (`knn_radii(features, 5)`) of {r['n']} rows, tiles of "
            f"{r['block']} rows, fastest of 2; its products alone take "
            f"{r['pass_products_s']:.2f} s ({r['gmac_per_s']:.0f} G multiply-adds/s).", "",
            "| chunk | time (s) |", "|---|---:|"]
  lines += [f"| {p['chunk'] or 'none (lax.top_k)'} | {p['seconds']:.2f} |" for p in r["passes"]]
  return "\n".join(lines)


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    _child(sys.argv[2], int(sys.argv[3]))
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000, 10000])
  parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES[:4]), choices=LIBRARIES)
  parser.add_argument("--large", type=int, default=0,
                      help="also run --large-libraries at this N (e.g. 50000); 0: skip")
  parser.add_argument("--large-libraries", nargs="+", default=["jaxmetrics", "prdc"],
                      choices=LIBRARIES,
                      help="libraries run at --large N (prdc is skipped, with its memory need "
                           "recorded, when that exceeds the machine's memory)")
  parser.add_argument("--out", default="manifold",
                      help="results file name in benchmarks/results, without extension")
  parser.add_argument("--selection", action="store_true",
                      help="time the k-NN selection instead (knn_selection.json)")
  parser.add_argument("--selection-n", type=int, default=10000)
  args = parser.parse_args()
  os.environ.pop("XLA_FLAGS", None)  # the machine record describes the children's one device
  import _results  # pylint: disable=g-import-not-at-top
  if args.selection:
    os.environ["JAX_PLATFORMS"] = "cpu"
    result = {"selection": selection(args.selection_n)}
    result["machine"] = _results.machine(load_average_before=os.getloadavg())
    _results.write("knn_selection", result, selection_markdown(result))
    return
  rows = [_run_child(library, n) for n in args.sizes for library in args.libraries]
  if args.large:
    for library in args.large_libraries:
      if library == "prdc" and prdc_peak_bytes(args.large, args.large) > _memory_bytes():
        rows.append({"library": "prdc", "n": args.large, "d": D, "error": (
            f"not run: needs {prdc_peak_bytes(args.large, args.large) / 2**30:.0f} GiB at once "
            f"(N x N float32 distances + N x N int64 argpartition indices), the machine has "
            f"{_memory_bytes() / 2**30:.0f} GiB")})
        continue
      rows.append(_run_child(library, args.large))
  versions = {}
  for package in ("prdc", "scikit-learn"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  machine = _results.machine(load_average_before=os.getloadavg())
  machine["versions"].update(versions)
  result = {"machine": machine, "d": D, "rows": rows}
  _results.write(args.out, result, markdown(result))


if __name__ == "__main__":
  main()
