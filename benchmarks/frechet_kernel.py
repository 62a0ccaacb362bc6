"""Time and accuracy of the Fréchet distance kernel against the peers' routes, on one machine.

Run by hand (not a test), from the repository root:

  python benchmarks/frechet_kernel.py                 # d = 2048, 768, 192, 64; a few minutes
  python benchmarks/frechet_kernel.py --dims 64 192   # quick
  python benchmarks/frechet_kernel.py --threads 1     # one BLAS/LAPACK/XLA thread per library
  python benchmarks/frechet_kernel.py --dims 2048 --samples 12 --no-accuracy-cases \
      --stats-samples 0 --out frechet_kernel_few_samples   # the small tests' statistics

Statistics come from N = 10000 Inception-like features per side (ReLU of a rotated Gaussian with a
1/k spectrum, mean ~0.5; the second set has a slightly steeper spectrum and another rotation), so
the covariances are full rank with a realistic spread of eigenvalues. Every route gets the same
float64 NumPy statistics and is compared with a float64 SciPy reference (eigh of Σ₁, eigvalsh of
the symmetric Σ₁^½ Σ₂ Σ₁^½). Times are medians of repeated calls after a warm-up (jit compilation
excluded); the peers run as their code does, in float64 on the CPU:

* pytorch-fid ``calculate_frechet_distance``: ``scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)``
  (``disp`` is deprecated in SciPy 1.16 and gone in 1.18: called without it there), retry with
  1e-6 on the diagonal if not finite, real part.
* torch-fidelity ``fid_statistics_to_metric``: its own function from the installed package (sum of
  the real parts of √eigvals(Σ₁Σ₂), ``np.linalg.eigvals``).
* torchmetrics ``_compute_fid``: ``torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()`` on
  float64 CPU tensors (torchmetrics is not installed here; these are its four lines).

Also measured: accuracy in the hard cases, fewer samples than dimensions (N = 1000 < d = 2048 on
one or both sides, against the exact float64 FID from features) and identical or near-identical
statistics (FID ~ 0, all cancellation); and, to document
:class:`jaxmetrics.metrics.statistics.FeatureStats`, float32 streaming statistics of 50000 x 2048 features
vs NumPy float64 and the FID difference they make.

Writes ``benchmarks/results/frechet_kernel.json`` and ``.md``.
"""

import os
import sys

# Thread counts must be fixed before NumPy, SciPy, JAX and torch start their pools. On a shared
# machine, one thread per library keeps the comparison fair: no pool spins waiting for a core
# another job holds.
if "--threads" in sys.argv[:-1]:
  _threads = sys.argv[sys.argv.index("--threads") + 1]
  for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = _threads
  if _threads == "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()

import argparse  # noqa: E402
import statistics as pystats  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _results  # noqa: E402
from jaxmetrics.metrics import frechet  # noqa: E402
from jaxmetrics.metrics.frechet import FrechetReference  # noqa: E402
from jaxmetrics.metrics.frechet import frechet_distance  # noqa: E402
from jaxmetrics.metrics.frechet import frechet_distance_from_features  # noqa: E402
from jaxmetrics.metrics.statistics import FeatureStats  # noqa: E402
from tests._peers import torch_fidelity_metric_module  # noqa: E402
from tests._reference import reference_fid  # noqa: E402

_HIGHEST = jax.lax.Precision.HIGHEST


def features(seed, n, d, tilt=0.0):
  rng = np.random.default_rng(seed)
  rotation, _ = np.linalg.qr(np.random.default_rng(1000 + int(100 * tilt)).standard_normal((d, d)))
  z = rng.standard_normal((n, d)) * np.arange(1, d + 1) ** (-(1.0 + tilt) / 2)
  return np.maximum(z @ rotation.T + 0.5, 0)


def pytorch_fid_route(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """pytorch-fid 0.3 ``calculate_frechet_distance``, with the ``disp`` argument SciPy 1.18 drops."""

  def sqrtm(a):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      try:
        return scipy.linalg.sqrtm(a, disp=False)[0]
      except TypeError:  # SciPy >= 1.18: no disp, returns the matrix only
        return scipy.linalg.sqrtm(a)

  diff = mu1 - mu2
  covmean = sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def torch_fidelity_route():
  """torch-fidelity's own ``fid_statistics_to_metric``, imported and run unmodified."""
  try:
    metric_fid = torch_fidelity_metric_module("metric_fid")
  except ImportError:
    return None
  return lambda mu1, s1, mu2, s2: metric_fid.fid_statistics_to_metric(
      {"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)[metric_fid.KEY_METRIC_FID]


def torchmetrics_route(mu1, sigma1, mu2, sigma2):
  """torchmetrics ``image/fid.py::_compute_fid`` on float64 CPU tensors."""
  mu1, sigma1, mu2, sigma2 = (torch.from_numpy(a) for a in (mu1, sigma1, mu2, sigma2))
  a = (mu1 - mu2).square().sum(dim=-1)
  b = sigma1.trace() + sigma2.trace()
  c = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(dim=-1)
  return float(a + b - 2 * c)


@jax.jit
def sandwich_eigvalsh_route(mu1, sigma1, mu2, sigma2):
  """The ablation: √λ of eigvalsh(Σ₁^½ Σ₂ Σ₁^½), the cheaper route jaxmetrics does not use."""
  w, v = jnp.linalg.eigh((sigma1 + sigma1.T) / 2)
  root1 = jnp.matmul(v * jnp.sqrt(jnp.maximum(w, 0)), v.T, precision=_HIGHEST)
  m = jnp.matmul(jnp.matmul(root1, sigma2, precision=_HIGHEST), root1, precision=_HIGHEST)
  lam = jnp.linalg.eigvalsh((m + m.T) / 2)
  diff = mu1 - mu2
  return (jnp.dot(diff, diff, precision=_HIGHEST) + jnp.trace(sigma1) + jnp.trace(sigma2)
          - 2 * jnp.sum(jnp.sqrt(jnp.maximum(lam, 0))))


@jax.jit
def eigh_factor_route(mu1, sigma1, mu2, sigma2):
  """The ablation: jaxmetrics' kernel with eigh factors on both sides, never Cholesky (the kernel
  before 2026-11-22, and its fallback for covariances singular to working precision)."""
  return frechet._distance_from_factors(
      mu1, jnp.trace(sigma1), frechet._eigh_factor((sigma1 + sigma1.T) / 2),
      mu2, jnp.trace(sigma2), frechet._eigh_factor((sigma2 + sigma2.T) / 2))


@jax.jit
def full_product_route(mu1, sigma1, mu2, sigma2):
  """The ablation: jaxmetrics' factors, singular values of the whole d x d product always (the
  kernel before 2026-12-06, and its branch for covariances of rank d/4 and more)."""
  factor1, factor2 = frechet._covariance_factor(sigma1), frechet._covariance_factor(sigma2)
  diff = mu1 - mu2
  nuclear = jnp.sum(jnp.linalg.svd(jnp.matmul(factor1.T, factor2, precision=_HIGHEST),
                                   compute_uv=False))
  return (jnp.dot(diff, diff, precision=_HIGHEST) + jnp.trace(sigma1) + jnp.trace(sigma2)
          - 2 * nuclear)


def in_x64(fn):
  def call():
    with jax.enable_x64(True):
      return fn()
  return call


def time_interleaved(routes, min_rounds=3, max_rounds=9, min_total=2.0):
  """{name: (min s, median s, value)}: one warm-up call each (jit compilation), then rounds that
  call every route once in turn, so that load from other jobs on a shared machine hits all alike."""
  values = {name: jax.block_until_ready(fn()) for name, fn in routes}
  times = {name: [] for name, _ in routes}
  while len(times[routes[0][0]]) < min_rounds or (
      len(times[routes[0][0]]) < max_rounds and min(sum(t) for t in times.values()) < min_total):
    for name, fn in routes:
      start = time.perf_counter()
      values[name] = jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: (min(times[name]), pystats.median(times[name]), values[name]) for name, _ in routes}


def run_dim(d, n, tf_route):
  x, y = features(1, n, d), features(2, n, d, tilt=0.1)
  stats = (x.mean(axis=0), np.cov(x, rowvar=False), y.mean(axis=0), np.cov(y, rowvar=False))
  del x, y
  reference = reference_fid(*stats)
  scale = np.trace(stats[1]) + np.trace(stats[3]) + np.sum((stats[0] - stats[2]) ** 2)
  f32 = [jnp.asarray(a, jnp.float32) for a in stats]
  ref32 = FrechetReference.create(f32[0], f32[1])
  with jax.enable_x64(True):
    f64 = [jnp.asarray(a, jnp.float64) for a in stats]
    ref64 = FrechetReference.create(f64[0], f64[1])
  routes = [
      ("jaxmetrics frechet_distance|float32", lambda: frechet_distance(*f32)),
      ("jaxmetrics FrechetReference.distance|float32", lambda: ref32.distance(f32[2], f32[3])),
      ("ablation: eigvalsh of Σ₁^½Σ₂Σ₁^½ (not used)|float32",
       lambda: sandwich_eigvalsh_route(*f32)),
      ("ablation: eigh factors only (not Cholesky)|float32", lambda: eigh_factor_route(*f32)),
      ("jaxmetrics frechet_distance|float64", in_x64(lambda: frechet_distance(*f64))),
      ("ablation: whole d x d product (before 2026-12-06)|float64",
       in_x64(lambda: full_product_route(*f64))),
      ("jaxmetrics FrechetReference.distance|float64",
       in_x64(lambda: ref64.distance(f64[2], f64[3]))),
      ("pytorch-fid: scipy sqrtm(Σ₁Σ₂)|float64", lambda: pytorch_fid_route(*stats)),
      ("torchmetrics: torch.linalg.eigvals(Σ₁Σ₂)|float64", lambda: torchmetrics_route(*stats)),
      ("FrechetReference.create (once per reference)|float32",
       lambda: FrechetReference.create(f32[0], f32[1])),
  ]
  if tf_route is not None:
    routes.insert(7, ("torch-fidelity: np.linalg.eigvals(Σ₁Σ₂)|float64",
                      lambda: tf_route(*stats)))
  timings = time_interleaved(routes)
  sqrtm = timings["pytorch-fid: scipy sqrtm(Σ₁Σ₂)|float64"][0]
  rows = []
  for key, (seconds, median_seconds, value) in timings.items():
    name, dtype = key.split("|")
    fid = float(value) if not isinstance(value, FrechetReference) else None
    rows.append({
        "d": d, "route": name, "dtype": dtype, "seconds": seconds, "median_seconds": median_seconds,
        "speedup_vs_sqrtm": sqrtm / seconds, "fid": fid,
        "relative_error": None if fid is None else abs(fid - reference) / abs(reference),
        "error_over_scale": None if fid is None else abs(fid - reference) / scale})
    error = "" if fid is None else f"rel.err {rows[-1]['relative_error']:.1e}"
    print(f"d={d:5d}  {name:52s} {dtype}  min {seconds * 1e3:9.1f} ms  median "
          f"{median_seconds * 1e3:9.1f} ms  {error}", flush=True)
  return {"d": d, "samples_per_side": n, "reference_fid": reference, "scale": scale, "rows": rows}


def exact_features_fid(x, y):
  """float64 FID from features: nuclear norm of X Yᵀ (SciPy SVD), exact also when N < d."""
  xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
  nuclear = scipy.linalg.svdvals(xc @ yc.T).sum() / np.sqrt((len(x) - 1) * (len(y) - 1))
  diff = x.mean(axis=0) - y.mean(axis=0)
  return diff @ diff + (xc**2).sum() / (len(x) - 1) + (yc**2).sum() / (len(y) - 1) - 2 * nuclear


def accuracy_cases(tf_route, d=2048):
  """Accuracy only (no timing) where cancellation or singular covariances make FID hard.

  N < d on one or both sides (singular covariances; reference: the exact float64 FID from
  features), identical statistics (reference 0) and near-identical ones (the same 10000 features
  vs their first 9900; reference: the float64 SciPy one). Errors are given relative to FID and to
  scale = tr Σ₁ + tr Σ₂ + ‖Δμ‖², the size of the terms FID cancels.
  """
  x_full, y_full = features(5, 10000, d), features(6, 10000, d, tilt=0.1)
  cases = [("N = 1000 vs 10000", x_full[:1000], y_full), ("N = 1000 vs 1000", x_full[:1000],
                                                          y_full[:1000]),
           ("identical, N = 10000", x_full, x_full), ("near-identical, N = 10000 vs 9900", x_full,
                                                      x_full[:9900])]
  rows = []
  for case, x, y in cases:
    stats = (x.mean(axis=0), np.cov(x, rowvar=False), y.mean(axis=0), np.cov(y, rowvar=False))
    scale = np.trace(stats[1]) + np.trace(stats[3]) + np.sum((stats[0] - stats[2]) ** 2)
    if x is y:
      exact = 0.0
    elif min(len(x), len(y)) < d:
      exact = exact_features_fid(x, y)
    else:
      exact = reference_fid(*stats)
    f32 = [jnp.asarray(a, jnp.float32) for a in stats]
    routes = [
        ("jaxmetrics frechet_distance", "float32", lambda: frechet_distance(*f32)),
        ("jaxmetrics frechet_distance_from_features", "float32",
         lambda: frechet_distance_from_features(x.astype(np.float32), y.astype(np.float32))),
        ("ablation: eigvalsh of Σ₁^½Σ₂Σ₁^½ (not used)", "float32",
         lambda: sandwich_eigvalsh_route(*f32)),
        ("ablation: eigh factors only (not Cholesky)", "float32",
         lambda: eigh_factor_route(*f32)),
        ("torch-fidelity: np.linalg.eigvals(Σ₁Σ₂)", "float64",
         lambda: tf_route(*stats) if tf_route else np.nan),
        ("torchmetrics: torch.linalg.eigvals(Σ₁Σ₂)", "float64", lambda: torchmetrics_route(*stats)),
        ("textbook float64 SciPy eigh reference", "float64", lambda: reference_fid(*stats)),
        ("jaxmetrics frechet_distance", "float64", in_x64(lambda: frechet_distance(*stats))),
        ("jaxmetrics frechet_distance_from_features", "float64",
         in_x64(lambda: frechet_distance_from_features(x, y))),
    ]
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # the N < d warning is the point here
      for name, dtype, fn in routes:
        value = float(fn())  # float32 inputs are computed in float32
        rows.append({"case": case, "d": d, "route": name, "dtype": dtype, "fid": value,
                     "exact": exact, "error_over_scale": abs(value - exact) / scale,
                     "relative_error": abs(value - exact) / exact if exact else None})
        print(f"{case:36s} {name:45s} {dtype}  err/scale {rows[-1]['error_over_scale']:.1e}",
              flush=True)
  return rows


def stats_accuracy(n=50000, d=2048, batch=1000):
  """float32 FeatureStats (padded, masked batches) vs NumPy float64 mean/cov of the same values."""
  x = features(3, n, d).astype(np.float32)
  y = features(4, n, d, tilt=0.1)
  stats = FeatureStats.empty(d)
  step = jax.jit(lambda s, b: s.update(b))
  jax.block_until_ready(step(stats, x[:batch]))  # compile outside the timing
  start = time.perf_counter()
  for i in range(0, n, batch):
    stats = step(stats, x[i:i + batch])
  mean32, cov32 = np.asarray(stats.mean, np.float64), np.asarray(stats.covariance(), np.float64)
  seconds = time.perf_counter() - start
  x64 = x.astype(np.float64)
  mean64, cov64 = x64.mean(axis=0), np.cov(x64, rowvar=False)
  del x, x64
  mu_y, sigma_y = y.mean(axis=0), np.cov(y, rowvar=False)
  fid64 = reference_fid(mean64, cov64, mu_y, sigma_y)
  fid_from32 = reference_fid(mean32, cov32, mu_y, sigma_y)
  return {
      "samples": n, "d": d, "batch": batch, "seconds_float32_stream": seconds,
      "mean_max_abs_error_over_max_abs_mean": float(np.abs(mean32 - mean64).max()
                                                    / np.abs(mean64).max()),
      "cov_max_abs_error_over_max_abs_cov": float(np.abs(cov32 - cov64).max()
                                                  / np.abs(cov64).max()),
      "fid_relative_change": abs(fid_from32 - fid64) / fid64, "fid": fid64,
  }


def markdown(result):
  m = result["machine"]
  lines = [
      "# Fréchet distance kernel: time and accuracy",
      "",
      f"{_results.describe(m)} · {m['threads']} thread(s) per library",
      "",
      f"N = {result['samples_per_side']} Inception-like features per side (1/k spectrum), float64 "
      "statistics given to every route; error relative to a float64 SciPy eigh reference. Times "
      "after a warm-up call (jit compilation excluded), at least 3 calls each: the minimum, which "
      "the speed-up uses, and the median. "
      + ("One thread per library limits BLAS/LAPACK and XLA's intra-op pool; XLA may still run "
         "independent operations (the two factorisations of frechet_distance) side by side."
         if m["threads"] == 1 else
         f"Every library uses its default thread pools ({m['threads']} threads here)."),
      "",
      "| d | route | dtype | min (ms) | median (ms) | speed-up vs sqrtm | relative error |",
      "|---:|---|---|---:|---:|---:|---:|",
  ]
  for block in result["dims"]:
    for r in block["rows"]:
      error = "" if r["relative_error"] is None else f"{r['relative_error']:.1e}"
      lines.append(f"| {r['d']} | {r['route']} | {r['dtype']} | {r['seconds'] * 1e3:.1f} | "
                   f"{r['median_seconds'] * 1e3:.1f} | {r['speedup_vs_sqrtm']:.1f}x | {error} |")
  if result.get("accuracy_cases"):
    lines += [
        "",
        "## Hard cases at d = 2048, accuracy only",
        "",
        "N < d: singular covariances, reference the exact float64 FID from features (nuclear norm "
        "of X Yᵀ by SciPy's SVD). Identical statistics: reference 0. Error over scale = |error| / "
        "(tr Σ₁ + tr Σ₂ + ‖Δμ‖²), the size of the terms FID cancels.",
        "",
        "| case | route | dtype | FID | error / scale | relative error |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in result["accuracy_cases"]:
      relative = "" if r["relative_error"] is None else f"{r['relative_error']:.1e}"
      lines.append(f"| {r['case']} | {r['route']} | {r['dtype']} | {r['fid']:.6g} | "
                   f"{r['error_over_scale']:.1e} | {relative} |")
  s = result.get("stats_accuracy")
  if s:
    lines += [
        "",
        f"## FeatureStats float32 vs NumPy float64 ({s['samples']} x {s['d']} features, "
        f"batches of {s['batch']})",
        "",
        f"- mean: max abs error / max |mean| = {s['mean_max_abs_error_over_max_abs_mean']:.1e}",
        f"- covariance: max abs error / max |cov| = {s['cov_max_abs_error_over_max_abs_cov']:.1e}",
        f"- FID (float64 kernel) from float32 vs float64 statistics: relative change "
        f"{s['fid_relative_change']:.1e} (FID {s['fid']:.4f})",
        f"- streaming time (jit, float32): {s['seconds_float32_stream']:.1f} s",
    ]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dims", type=int, nargs="+", default=[2048, 768, 192, 64])
  parser.add_argument("--samples", type=int, default=10000)
  parser.add_argument("--stats-samples", type=int, default=50000, help="0 skips that part")
  parser.add_argument("--threads", type=int, default=None,
                      help="threads per library (read before the imports); default: theirs")
  parser.add_argument("--out", default="frechet_kernel",
                      help="results file name in benchmarks/results, without extension")
  parser.add_argument("--no-accuracy-cases", dest="accuracy_cases", action="store_false",
                      help="skip the accuracy-only part (N < d, identical statistics)")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  tf_route = torch_fidelity_route()
  result = {"machine": _results.machine(threads=torch.get_num_threads()),
            "samples_per_side": args.samples,
            "dims": [run_dim(d, args.samples, tf_route) for d in args.dims]}
  if args.accuracy_cases:
    result["accuracy_cases"] = accuracy_cases(tf_route)
  if args.stats_samples:
    result["stats_accuracy"] = stats_accuracy(n=args.stats_samples)
    print(result["stats_accuracy"], flush=True)
  _results.write(args.out, result, markdown(result))


if __name__ == "__main__":
  main()
