"""The one-call API: from two arrays of images and loaded parameters to FID, IS and KID."""

import numpy as np
import pytest
import scipy.linalg

import jaxmetrics
from jaxmetrics.networks import inception
from tests import _inception_fixtures as fixtures
from tests._reference import reference_fid_of_features


@pytest.fixture(scope="module")
def params(inception_checkpoints):
  return inception.convert_state_dict({k: v.numpy() for k, v in inception_checkpoints["state_dict"].items()})


def test_fid_of_two_arrays_with_loaded_params(params, tmp_path, monkeypatch):
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  a, b = fixtures.test_images(21, 6, 24, 24), fixtures.test_images(22, 7, 24, 24)
  value = jaxmetrics.fid(a, b, params=params)
  x = np.asarray(inception.features(params, a)["pool3"], np.float64)
  y = np.asarray(inception.features(params, b)["pool3"], np.float64)
  # float32 statistics and kernel vs float64 from the same float32 features: 1e-4 (see test_cli).
  assert value == pytest.approx(reference_fid_of_features(x, y), rel=1e-4)

  results = jaxmetrics.evaluate(a, b, params=params, metrics=("fid", "is", "kid"), splits=2,
                                kid_subsets=3, kid_subset_size=5)
  assert results["cached"] == [False, False]  # the fid() entries lack the features KID needs
  assert results["fid"] == pytest.approx(value, rel=1e-6)
  expected_is = jaxmetrics.inception_score(inception.features(params, a)["logits_unbiased"], splits=2)
  assert results["is_mean"] == pytest.approx(float(expected_is[0]), rel=1e-5)
  expected_kid = jaxmetrics.kid(x.astype(np.float32), y.astype(np.float32), subsets=3, subset_size=5)
  assert results["kid_mean"] == pytest.approx(float(expected_kid[0]), rel=1e-4, abs=1e-6)
  again = jaxmetrics.evaluate(a, b, params=params, metrics=("fid", "is", "kid"), splits=2,
                              kid_subsets=3, kid_subset_size=5)
  assert again["cached"] == [True, True] and again["fid"] == pytest.approx(value, rel=1e-6)


def test_one_source_is_enough_only_for_is(params):
  images = fixtures.test_images(23, 4, 16, 16)
  with pytest.raises(jaxmetrics.InputError, match="fid compare two sources"):
    jaxmetrics.evaluate(images, params=params, metrics="fid", cache=False)
  with pytest.raises(jaxmetrics.InputError, match="at least 10 images"):
    jaxmetrics.evaluate(images, params=params, metrics="is", cache=False)


def _steep_features(seed, n=2500, d=2048):
  """Inception-like pool3 features whose covariance spans ~12 decades: 22 dead (always 0)
  channels, a k^-2.5 spectrum under a random rotation, means up to 120, and N close to d (the
  smallest nonzero eigenvalues sit at the Marchenko-Pastur edge). Random-weight Inception features
  look like this (benchmarks/results/end_to_end.md); real ones can come close."""
  rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))
  dead = np.random.default_rng(0).choice(d, 22, replace=False)
  mean = np.random.default_rng(0).uniform(0, 120, d)
  x = (np.random.default_rng(seed).standard_normal((n, d)) * 200 * np.arange(1, d + 1) ** -1.25
       ) @ rotation.T + mean
  x[:, dead] = 0
  return x


def test_fid_from_statistics_is_float64_on_the_host(tmp_path):
  """jaxmetrics.fid on saved statistics computes in float64 on the CPU, as the peers do: float32
  cannot resolve a spectrum of 12 decades (here 13% off), float64 through the same kernel can."""
  x, y = _steep_features(1), _steep_features(2)
  paths = []
  for name, feats in (("a", x), ("b", y)):
    paths.append(tmp_path / f"{name}.npz")
    jaxmetrics.save_stats(paths[-1], feats.mean(axis=0), np.cov(feats, rowvar=False))
  # The exact float64 value from the features: nuclear norm of X Yᵀ by SciPy's SVD, no square root
  # of a covariance (the textbook eigh route itself errs by 6e-5 relative here).
  xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
  nuclear = scipy.linalg.svdvals(xc @ yc.T).sum() / np.sqrt((len(x) - 1) * (len(y) - 1))
  diff = x.mean(axis=0) - y.mean(axis=0)
  exact = diff @ diff + (xc**2).sum() / (len(x) - 1) + (yc**2).sum() / (len(y) - 1) - 2 * nuclear
  # Two statistics files need no Inception weights: nothing is downloaded (there is no network
  # here), and none are reported.
  results = jaxmetrics.evaluate(paths[0], paths[1])
  assert results["weights_sha256"] is None and results["n1"] is None
  value = results["fid"]
  # Measured 3e-12 relative; the statistics were rounded once when saved (float64, no loss).
  assert value == pytest.approx(exact, rel=1e-9)
  # The same statistics through the float32 kernel: the loss this guards against (measured 0.13).
  f32 = float(jaxmetrics.frechet_distance(*jaxmetrics.load_stats(paths[0]),
                                          *jaxmetrics.load_stats(paths[1])))
  assert abs(f32 - exact) > 0.01 * exact
