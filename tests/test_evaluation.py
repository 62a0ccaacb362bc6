"""The one-call API: from two arrays of images and loaded parameters to FID, IS and KID."""

import numpy as np
import pytest

import jaxmetrics
from jaxmetrics import inception
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
