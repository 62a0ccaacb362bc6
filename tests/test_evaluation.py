"""The one-call API: from two arrays of images and loaded parameters to FID, IS and KID."""

import numpy as np
import pytest
import scipy.linalg
import torch

import jaxmetrics
from jaxmetrics.networks import inception
from jaxmetrics.pipeline import extract
from tests._peers import torch_fidelity_metric_module
from tests import _inception_fixtures as fixtures
from tests._reference import reference_fid_of_features


@pytest.fixture(scope="module")
def params(inception_checkpoints):
  return inception.convert_state_dict({k: v.numpy() for k, v in inception_checkpoints["state_dict"].items()})


def test_fid_of_two_arrays_with_loaded_params(params, inception_checkpoints, tmp_path,
                                               monkeypatch):
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
  # IS and KID against torch-fidelity's own code on its own network's features of the same images:
  # isc_featuresdict_to_metric without its shuffle (6 rows, 2 splits: the same contiguous halves)
  # and kid_featuresdict_to_metric with its seed, whose subset draws jaxmetrics repeats.
  extractor = fixtures.torch_fidelity_extractor(inception_checkpoints["legacy"])
  peer_a, peer_b = (fixtures.torch_fidelity_features(extractor, images) for images in (a, b))
  metric_isc = torch_fidelity_metric_module("metric_isc")
  metric_kid = torch_fidelity_metric_module("metric_kid")
  peer_is = metric_isc.isc_featuresdict_to_metric(
      {"logits_unbiased": torch.from_numpy(peer_a["logits_unbiased"])}, "logits_unbiased",
      isc_splits=2, samples_shuffle=False, verbose=False)
  peer_kid = metric_kid.kid_featuresdict_to_metric(
      {"f": torch.from_numpy(peer_a["pool3"].astype(np.float64))},
      {"f": torch.from_numpy(peer_b["pool3"].astype(np.float64))}, "f", kid_subsets=3,
      kid_subset_size=5, rng_seed=2020, verbose=False)
  # The two float32 networks' outputs differ by ~1e-6 relative (test_inception); IS is a smooth
  # function of the logits, so 1e-5 holds it. KID cancels kernel terms ~1e2 times its size here,
  # which turns that into ~1e-4 of KID at most.
  assert results["is_mean"] == pytest.approx(peer_is["inception_score_mean"], rel=1e-5)
  assert results["kid_mean"] == pytest.approx(peer_kid["kernel_inception_distance_mean"], rel=1e-4)
  assert results["kid_std"] == pytest.approx(peer_kid["kernel_inception_distance_std"], rel=1e-4)
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
  f32 = float(jaxmetrics.frechet_distance(
      *(a.astype(np.float32) for a in (*jaxmetrics.load_stats(paths[0]),
                                       *jaxmetrics.load_stats(paths[1])))))
  assert abs(f32 - exact) > 0.01 * exact


def _scale(x, y):
  """tr Σ₁ + tr Σ₂ + ‖Δμ‖² in float64: the size of the terms a Fréchet distance cancels."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return (np.trace(np.cov(x, rowvar=False)) + np.trace(np.cov(y, rowvar=False))
          + np.sum((x.mean(0) - y.mean(0)) ** 2))


@pytest.fixture(scope="module")
def peer_sets(inception_checkpoints):
  """Three small sets and torch-fidelity's own features of them (spatial: the sFID hook)."""
  extractor = fixtures.torch_fidelity_extractor(inception_checkpoints["legacy"])
  sets = [fixtures.test_images(seed, n, 24, 24) for seed, n in ((31, 7), (32, 8), (33, 7))]
  return sets, [fixtures.torch_fidelity_features(extractor, images) for images in sets]


def _no_pass(*args, **kwargs):
  raise AssertionError("a feature pass ran before the input was checked")


def test_sfid_matches_torch_fidelitys_network(params, peer_sets, tmp_path, monkeypatch):
  """sFID (guided-diffusion's mixed_6/conv feature) through the whole pipeline against the float64
  textbook distance of torch-fidelity's own Mixed_6d.branch1x1 features."""
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  (a, b, _), (fa, fb, _) = peer_sets
  with pytest.warns(UserWarning, match="fewer than the 2048"):
    results = jaxmetrics.evaluate(a, b, params=params, metrics=("fid", "sfid"))
  for key, feature in (("fid", "pool3"), ("sfid", "spatial")):
    expected = reference_fid_of_features(fa[feature], fb[feature])
    # Features agree to the peer's 1e-4 relative bar (measured ~1e-6): each term of the distance
    # moves by at most ~2e-4 of its size, so the distance by 4e-4 of the terms it cancels.
    assert abs(results[key] - expected) <= 4e-4 * _scale(fa[feature], fb[feature]), key


def test_reference_batch_as_guided_diffusion_reads_it(params, peer_sets, tmp_path, monkeypatch):
  """A reference batch .npz: its mu/sigma (and mu_s/sigma_s) are used as saved, its images (arr_0)
  give what statistics cannot (precision, recall), as evaluations/evaluator.py reads them."""
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path / "cache"))
  (a, b, c), _ = peer_sets
  metrics = ("fid", "sfid", "precision", "recall")
  direct = jaxmetrics.evaluate(a, b, params=params, metrics=metrics, pr_k=2)
  of_c = jaxmetrics.evaluate(a, c, params=params, metrics=("fid", "sfid"))
  stats_c = jaxmetrics.save_statistics(c, tmp_path / "c.npz", params=params)
  assert set(np.load(tmp_path / "c.npz").files) == {"mu", "sigma", "mu_s", "sigma_s"}
  # Images of b, statistics of c: FID and sFID must be those of c, precision/recall those of b.
  np.savez(tmp_path / "ref.npz", arr_0=b, mu=stats_c.mu, sigma=stats_c.sigma,
           mu_s=stats_c.gaussians["spatial"][0], sigma_s=stats_c.gaussians["spatial"][1])
  batch = jaxmetrics.evaluate(a, tmp_path / "ref.npz", params=params, metrics=metrics, pr_k=2)
  # The same float64 inputs through the same float64 kernel: exactly equal.
  assert (batch["fid"], batch["sfid"]) == (of_c["fid"], of_c["sfid"])
  assert (batch["precision"], batch["recall"]) == (direct["precision"], direct["recall"])
  # Without mu_s/sigma_s, sFID comes from the images: those of b, the same pass as `direct`.
  np.savez(tmp_path / "ref_no_s.npz", arr_0=b, mu=stats_c.mu, sigma=stats_c.sigma)
  batch = jaxmetrics.evaluate(a, tmp_path / "ref_no_s.npz", params=params, metrics=metrics,
                              pr_k=2)
  assert (batch["fid"], batch["sfid"]) == (of_c["fid"], direct["sfid"])


def test_knn_metrics_take_generated_first_as_the_peers_define_them(params, peer_sets, tmp_path,
                                                                   monkeypatch):
  """evaluate(A=generated, B=reference): precision/recall as torch-fidelity's metric_prc
  (features_1 = generated), density/coverage as prdc (fake = generated), on the same features."""
  import prdc  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("JAXMETRICS_CACHE", str(tmp_path))
  (a, b, _), _ = peer_sets
  ours = jaxmetrics.evaluate(a, b, params=params, metrics=("precision", "recall", "density",
                                                           "coverage"), pr_k=3, dc_k=5)
  fa = np.array(inception.features(params, a)["pool3"])
  fb = np.array(inception.features(params, b)["pool3"])
  metric_prc = torch_fidelity_metric_module("metric_prc")
  peer = metric_prc.prc_features_to_metric(torch.from_numpy(fa), torch.from_numpy(fb),
                                           prc_neighborhood=3, prc_batch_size=10000,
                                           save_cpu_ram=False, verbose=False)
  # Counts of points in balls are equal when no distance lies within float32 round-off of a
  # radius. The smallest relative gap between a distance and a radius, in float64, must exceed ten
  # times the largest relative error of float32 distances on these very points (torch.cdist, as
  # torch-fidelity computes them): then equality is what any correct float32 route must give.
  def distances(x, y):
    return np.sqrt(((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1))

  def gap(x, y, k):
    radii = np.sort(distances(y, y), axis=1)[:, k]
    return np.min(np.abs(distances(x, y) - radii[None]) / radii[None])

  f32 = torch.cdist(torch.from_numpy(fa), torch.from_numpy(fb)).numpy()
  round_off = np.max(np.abs(f32 - distances(fa, fb)) / distances(fa, fb))
  assert min(gap(fa, fb, 3), gap(fb, fa, 3), gap(fa, fb, 5)) > 10 * round_off
  assert (ours["precision"], ours["recall"]) == (peer["precision"], peer["recall"])
  expected = prdc.compute_prdc(real_features=fb, fake_features=fa, nearest_k=5)
  assert ours["density"] == pytest.approx(expected["density"], rel=1e-12)  # a ratio of counts
  assert ours["coverage"] == expected["coverage"]


def test_what_counts_and_files_cannot_give_fails_before_any_pass(params, tmp_path, monkeypatch):
  monkeypatch.setattr(extract, "extract", _no_pass)
  images = fixtures.test_images(24, 4, 16, 16)
  mu, sigma = np.zeros(2048), np.eye(2048)
  jaxmetrics.save_stats(tmp_path / "stats.npz", mu, sigma)
  cases = [
      (dict(metrics="is"), "the Inception Score needs at least 10 images \\(one per split\\), got 4"),
      (dict(metrics="kid"), "KID draws subsets of 1000 images .* got 4"),
      (dict(metrics="precision", pr_k=4), "precision/recall need more than k = 4 images"),
      (dict(metrics="coverage"), "density/coverage need more than k = 5 images"),
  ]
  for options, message in cases:
    with pytest.raises(jaxmetrics.InputError, match=message):
      jaxmetrics.evaluate(images, images, params=params, cache=False, **options)
  with pytest.raises(jaxmetrics.InputError, match="precision needs pool3 features of every image, "
                     "but the file holds only saved statistics \\(mu, sigma\\) and no images"):
    jaxmetrics.evaluate(images, tmp_path / "stats.npz", params=params, metrics="fid,precision")
  with pytest.raises(jaxmetrics.InputError, match="sFID needs the statistics of spatial"):
    jaxmetrics.evaluate(images, tmp_path / "stats.npz", params=params, metrics="sfid")
  with pytest.raises(jaxmetrics.InputError, match="metrics: expected some of fid, sfid, is"):
    jaxmetrics.evaluate(images, images, params=params, metrics="fid,prc")
