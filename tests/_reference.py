"""Float64 textbook computations the tests and benchmarks compare jaxmetrics against."""

import numpy as np
import scipy.linalg


def reference_fid(mu1, sigma1, mu2, sigma2):
  """Textbook float64 FID: √Σ₁ by scipy eigh, then eigvalsh of the symmetric √Σ₁ Σ₂ √Σ₁."""
  w, v = scipy.linalg.eigh(sigma1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  lam = scipy.linalg.eigh(root1 @ sigma2 @ root1, eigvals_only=True)
  diff = mu1 - mu2
  trace_sqrt = np.sqrt(np.clip(lam, 0, None)).sum()
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt


def reference_fid_of_features(x, y):
  """:func:`reference_fid` of the float64 means and unbiased covariances (``np.cov``) of features."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(reference_fid(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)))
