"""Agreement of jaxmetrics with torch-fidelity: features, FID, IS and KID on the same inputs.

Both sides load the same random-weight checkpoint in the official file format (the real weights
cannot be downloaded here) and see the same uint8 images. torch-fidelity's own extractor and its
own metric functions (``fid_statistics_to_metric``, ``isc_features_to_metric``,
``kid_features_to_metric``) run unmodified; jaxmetrics runs its public API end to end
(``extract`` → ``FeatureStats`` → ``frechet_distance``; ``inception_score``; ``kid``).

  python benchmarks/agreement.py [--n 64] [--size 32]

Writes benchmarks/results/agreement.{json,md}.
"""

import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import _results  # noqa: E402
import jaxmetrics  # noqa: E402
from jaxmetrics import extract  # noqa: E402
from jaxmetrics import inception  # noqa: E402
from tests import _inception_fixtures as fixtures  # noqa: E402
from tests._peers import torch_fidelity_metric_module  # noqa: E402


def _relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=64, help="images per set")
  parser.add_argument("--size", type=int, default=32, help="image side (resized to 299 inside)")
  parser.add_argument("--kid-subset-size", type=int, default=32)
  parser.add_argument("--kid-subsets", type=int, default=20)
  args = parser.parse_args()

  folder = pathlib.Path(tempfile.mkdtemp())
  legacy, _ = fixtures.save_checkpoints(fixtures.random_state_dict(seed=0), folder)
  os.environ["JAXMETRICS_CACHE"] = str(folder / "cache")
  params = inception.load_params(legacy, check_hash=False, progress=False)
  extractor = fixtures.torch_fidelity_extractor(legacy)
  sets = [fixtures.test_images(seed, args.n, args.size, args.size) for seed in (101, 202)]

  ours, theirs = [], []
  for images in sets:
    result = extract.extract(images, params, keep_features=("pool3", "logits_unbiased"),
                             progress=False)
    ours.append(result)
    theirs.append(fixtures.torch_fidelity_features(extractor, images))

  rows = []
  for key, ours_key in (("pool3", "pool3"), ("logits_unbiased", "logits_unbiased")):
    err = max(_relative(o.outputs[ours_key], t[key]) for o, t in zip(ours, theirs))
    rows.append({"quantity": f"features {key} (relative L2, worst set)", "jaxmetrics": None,
                 "torch_fidelity": None, "difference": err, "bar": 1e-4})

  metric_fid = torch_fidelity_metric_module("metric_fid")
  metric_isc = torch_fidelity_metric_module("metric_isc")
  metric_kid = torch_fidelity_metric_module("metric_kid")

  def stats(x):
    return {"mu": np.mean(x, axis=0), "sigma": np.cov(x, rowvar=False)}

  peer_fid = metric_fid.fid_statistics_to_metric(
      stats(theirs[0]["pool3"].astype(np.float64)), stats(theirs[1]["pool3"].astype(np.float64)),
      verbose=False)[metric_fid.KEY_METRIC_FID]
  our_fid = float(jaxmetrics.frechet_distance(ours[0].stats.mean, ours[0].stats.covariance(),
                                              ours[1].stats.mean, ours[1].stats.covariance()))
  rows.append({"quantity": "FID", "jaxmetrics": our_fid, "torch_fidelity": peer_fid,
               "difference": abs(our_fid - peer_fid) / abs(peer_fid), "bar": None})
  # FID is a difference of large terms; its float32 error scales with them, not with FID.
  s1, s2 = stats(theirs[0]["pool3"].astype(np.float64)), stats(theirs[1]["pool3"].astype(np.float64))
  scale = np.trace(s1["sigma"]) + np.trace(s2["sigma"]) + np.sum((s1["mu"] - s2["mu"]) ** 2)
  rows.append({"quantity": "FID, difference relative to tr Σ₁ + tr Σ₂ + ‖Δμ‖²",
               "jaxmetrics": None, "torch_fidelity": float(scale),
               "difference": abs(our_fid - peer_fid) / scale, "bar": None})

  splits = 10
  peer_is = metric_isc.isc_features_to_metric(torch.from_numpy(theirs[0]["logits_unbiased"]),
                                              splits=splits, shuffle=True, rng_seed=2020)
  our_is = jaxmetrics.inception_score(ours[0].outputs["logits_unbiased"], splits=splits,
                                      shuffle_seed=2020)
  rows.append({"quantity": "IS mean (shuffle_seed=2020)", "jaxmetrics": float(our_is[0]),
               "torch_fidelity": peer_is[metric_isc.KEY_METRIC_ISC_MEAN],
               "difference": abs(float(our_is[0]) - peer_is[metric_isc.KEY_METRIC_ISC_MEAN])
               / peer_is[metric_isc.KEY_METRIC_ISC_MEAN], "bar": None})

  peer_kid = metric_kid.kid_features_to_metric(
      torch.from_numpy(theirs[0]["pool3"]), torch.from_numpy(theirs[1]["pool3"]),
      kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, verbose=False)
  our_kid = jaxmetrics.kid(ours[0].features, ours[1].features, subsets=args.kid_subsets,
                           subset_size=args.kid_subset_size)
  peer_mean = peer_kid[metric_kid.KEY_METRIC_KID_MEAN]
  rows.append({"quantity": "KID mean", "jaxmetrics": float(our_kid[0]), "torch_fidelity": peer_mean,
               "difference": abs(float(our_kid[0]) - peer_mean) / abs(peer_mean), "bar": None})

  meta = _results.machine(images_per_set=args.n, image_size=args.size)
  lines = ["# Agreement with torch-fidelity", "", _results.describe(meta), "",
           f"jaxmetrics vs torch-fidelity on the same random-weight checkpoint and images "
           f"({args.n} + {args.n} images of {args.size}×{args.size}, TF1 resize). Random weights "
           "give large feature magnitudes, so FID and KID are large here: compare the relative "
           "differences. Command: `python benchmarks/agreement.py`.", "",
           "| quantity | jaxmetrics | torch-fidelity | relative difference |", "|---|---|---|---|"]
  for row in rows:
    fmt = lambda v: "" if v is None else f"{v:.8g}"
    lines.append(f"| {row['quantity']} | {fmt(row['jaxmetrics'])} | {fmt(row['torch_fidelity'])} | "
                 f"{row['difference']:.2e} |")
  _results.write("agreement", {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
  main()
