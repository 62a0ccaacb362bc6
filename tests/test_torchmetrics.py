"""jaxmetrics against torchmetrics' own FID, KID and Inception Score, with torchmetrics' defaults.

torchmetrics runs unmodified: its ``FrechetInceptionDistance``, ``KernelInceptionDistance`` and
``InceptionScore`` build their ``NoTrainInceptionV3`` (torch-fidelity's network) from the same
random-weight checkpoint file, resize with ``antialias=True`` (their default) and reduce with their
own code. jaxmetrics runs its public ``evaluate`` with ``resize="torchmetrics"``. The images are
320×304, so the resize shrinks and the antialiasing filter matters.
"""

import contextlib

import numpy as np
import pytest
import torch

import jaxmetrics
from jaxmetrics.networks import inception
from jaxmetrics.pipeline.evaluation import Evaluator
from tests import _inception_fixtures as fixtures
from tests._peers import torchmetrics_module

N = 12  # images per set: divisible by SPLITS, so torch.chunk and contiguous splits agree
SPLITS = 3
HEIGHT, WIDTH = 320, 304


@pytest.fixture(scope="module")
def images():
  fake = fixtures.test_images(31, N, HEIGHT, WIDTH)
  real = fixtures.test_images(32, N, HEIGHT, WIDTH)
  return fake, real


@pytest.fixture(scope="module")
def peer(inception_checkpoints, images):
  """torchmetrics' three metrics on the two sets, each with torch's RNG seeded as noted."""
  image = torchmetrics_module("image")
  path = str(inception_checkpoints["legacy"])
  fake, real = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() for x in images)
  with contextlib.redirect_stdout(None), torch.no_grad():
    fid = image.FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=path)
    # KID and IS take no weights path; given a feature name they build this same module with the
    # official weights (a download), so they get it built, with its default antialias=True.
    network = torchmetrics_module("image.fid").NoTrainInceptionV3
    pool3 = network("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    logits = network("inception-v3-compat", ["logits_unbiased"],
                     feature_extractor_weights_path=path)
    # subset_size = N: every subset is the whole of each set in some order, and the unbiased MMD²
    # does not depend on the order, so torchmetrics' random draws give the full-sample value.
    kid = image.KernelInceptionDistance(feature=pool3, subsets=2, subset_size=N)
    isc = image.InceptionScore(feature=logits, splits=SPLITS)
    for metric in (fid, kid):
      metric.update(real, real=True)
      metric.update(fake, real=False)
    isc.update(fake)
    torch.manual_seed(7)
    permutation = torch.randperm(N).numpy()  # the permutation InceptionScore.compute draws next
    torch.manual_seed(7)
    is_mean, is_std = isc.compute()
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "is_mean": float(is_mean), "is_std": float(is_std), "permutation": permutation,
            "fid_formula": torchmetrics_module("image.fid")._compute_fid}


@pytest.fixture(scope="module")
def params(inception_checkpoints):
  return inception.load_params(inception_checkpoints["legacy"], check_hash=False, progress=False,
                               cache=False)


@pytest.fixture(scope="module")
def ours(params, images, peer):
  fake, real = images
  # torchmetrics shuffles the IS logits before its contiguous splits; feeding the fake set in the
  # order it drew reproduces its splits (FID and KID do not depend on order).
  return jaxmetrics.evaluate(fake[peer["permutation"]], real, metrics=("fid", "kid", "is"),
                             params=params, resize="torchmetrics", splits=SPLITS, kid_subsets=2,
                             kid_subset_size=N, cache=False)


def test_statistics_give_torchmetrics_fid(params, images, peer):
  # torchmetrics' own FID formula on our float64 mean and covariance: equal to its end-to-end FID
  # when our resize and network reproduce its pipeline. Features agree to ~1e-6 relative; FID is
  # a sum of terms (traces, ‖μ₁ − μ₂‖²) some 5× larger than itself here, and torchmetrics rounds
  # it to float32 (6e-8). Seen 1.4e-7; the bar 2e-6 still fails for a resize off by one grey level.
  evaluator = Evaluator(params=params, resize="torchmetrics", cache=False, progress=False)
  a, b = (evaluator.statistics(x) for x in images)
  as_torch = lambda x: torch.from_numpy(np.asarray(x, np.float64))
  formula = float(peer["fid_formula"](as_torch(a.mu), as_torch(a.sigma), as_torch(b.mu),
                                      as_torch(b.sigma)))
  assert formula == pytest.approx(peer["fid"], rel=2e-6)


def test_fid_matches_torchmetrics(peer, ours):
  # With 12 samples both covariances are singular, and torchmetrics takes √ of the eigenvalues of
  # Σ₁Σ₂ (torch.linalg.eigvals): the ≥ 2037 that are 0 in exact arithmetic come out as ±1e-10-size
  # round-off whose square roots add up. On identical statistics its formula gives 0.21 less than
  # ours (5e-6 of the FID), and ours is the float64 textbook value (tests/test_frechet.py). 2e-5
  # holds that with a margin of 4; at 10,000+ samples, the use the field recommends, it vanishes.
  assert ours["fid"] == pytest.approx(peer["fid"], rel=2e-5)


def test_kid_matches_torchmetrics(peer, ours):
  # torchmetrics' kernel sums run in float32 over N² terms of ~(1 + pool3·pool3/d)³; the MMD² is a
  # difference of such sums. Relative 1e-4 of the value is ~100 float32 ulps of those sums; seen
  # 7.8e-6. Each of its two subsets is a whole set in another order, so each subset's MMD² is the
  # full-sample value to that same 1e-4, and the population std of two values (torch.std with
  # unbiased=False), |a − b| / 2, is within it too: a std of real subsampling would be O(mean).
  # Ours (float64) meets the same bound; how far below it either falls is summation round-off.
  assert ours["kid_mean"] == pytest.approx(peer["kid_mean"], rel=1e-4)
  assert abs(peer["kid_std"]) <= 1e-4 * abs(peer["kid_mean"])
  assert abs(ours["kid_std"]) <= 1e-4 * abs(peer["kid_mean"])


def test_inception_score_matches_torchmetrics(peer, ours):
  # Same splits of the same logits; torchmetrics works in float32 (softmax, log, exp), we as
  # torch-fidelity does: seen 5.6e-7 relative. Its std is torch.std's unbiased one (ddof = 1), ours
  # the improved-gan population std (ddof = 0), as torch-fidelity's: they differ by √(S / (S − 1)).
  # The std of three scores within 0.005 of each other is a difference: float32 scores of ~1.06
  # (ulp 1.2e-7) and features off by 1e-6 move it by ~1e-6 (seen 4.8e-7), so an absolute 5e-6.
  assert ours["is_mean"] == pytest.approx(peer["is_mean"], rel=1e-5)
  assert ours["is_std"] * np.sqrt(SPLITS / (SPLITS - 1)) == pytest.approx(peer["is_std"], abs=5e-6)


def test_tf1_resize_differs_from_torchmetrics_default(peer, params, images):
  # The mode matters: with the TF1 resize the same images give another FID, so the match above is
  # the antialiased resize at work and not an insensitive comparison.
  tf1 = jaxmetrics.fid(*images, params=params, resize="tf1", cache=False)
  assert abs(tf1 - peer["fid"]) > 1e-3 * peer["fid"]
