"""Agreement of jaxmetrics with torch-fidelity and torchmetrics: features, FID, IS and KID.

Every side loads the same random-weight checkpoint in the official file format (the real weights
cannot be downloaded here) and sees the same uint8 images.

* torch-fidelity: its own extractor and metric functions (``fid_statistics_to_metric``,
  ``isc_features_to_metric``, ``kid_features_to_metric``) run unmodified; jaxmetrics runs its public
  API end to end (``extract`` → ``FeatureStats`` → ``frechet_distance``; ``inception_score``;
  ``kid``), TF1 resize.
* torchmetrics: its ``FrechetInceptionDistance``, ``KernelInceptionDistance`` and
  ``InceptionScore`` with their defaults (``antialias=True``), against ``jaxmetrics.evaluate`` with
  ``resize="torchmetrics"``; and its FID with ``antialias=False`` against ``resize="tf1"``. KID
  uses subsets of the whole sets (torchmetrics draws them with torch's RNG; whole sets make the
  draws irrelevant), IS gets the fake set in the order torchmetrics' shuffle puts it.

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
from tests._peers import torchmetrics_module  # noqa: E402


def _relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _row(peer, quantity, ours=None, theirs=None, difference=None, bar=None):
  if difference is None:
    difference = abs(ours - theirs) / abs(theirs)
  return {"peer": peer, "quantity": quantity, "jaxmetrics": ours, "theirs": theirs,
          "difference": difference, "bar": bar}


def _torchmetrics_rows(legacy, params, sets):
  """torchmetrics' three metrics (defaults) and its FID with antialias=False, against ours."""
  n = len(sets[0])
  # torch.chunk makes splits of ceil(n / splits) rows, improved-gan of n·k // splits boundaries:
  # the same splits only when they divide n.
  splits = next(s for s in range(10, 0, -1) if n % s == 0)
  image = torchmetrics_module("image")
  network = torchmetrics_module("image.fid").NoTrainInceptionV3
  path = str(legacy)
  fake, real = (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() for x in sets)
  peer = {}
  with torch.no_grad():
    for antialias in (True, False):
      fid = image.FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=path,
                                           antialias=antialias)
      fid.update(real, real=True)
      fid.update(fake, real=False)
      peer["fid", antialias] = float(fid.compute())
    # KID and IS take no weights path: they get the module they would build, from this file.
    kid = image.KernelInceptionDistance(
        feature=network("inception-v3-compat", ["2048"], feature_extractor_weights_path=path),
        subsets=2, subset_size=n)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    peer["kid"] = float(kid.compute()[0])
    isc = image.InceptionScore(feature=network("inception-v3-compat", ["logits_unbiased"],
                                               feature_extractor_weights_path=path), splits=splits)
    isc.update(fake)
    torch.manual_seed(2020)
    permutation = torch.randperm(n).numpy()  # what InceptionScore.compute draws next
    torch.manual_seed(2020)
    peer["is"] = float(isc.compute()[0])
    pool3 = network("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    peer_pool3 = [pool3(x).numpy() for x in (fake, real)]

  ours = jaxmetrics.evaluate(sets[0][permutation], sets[1], metrics=("fid", "kid", "is"),
                             params=params, resize="torchmetrics", splits=splits, kid_subsets=2,
                             kid_subset_size=n, cache=False)
  ours_tf1 = jaxmetrics.fid(sets[0], sets[1], params=params, resize="tf1", cache=False)
  our_pool3 = [jaxmetrics.features(params, x, resize="torchmetrics")["pool3"] for x in sets]
  err = max(_relative(o, t) for o, t in zip(our_pool3, peer_pool3))
  rows = [_row("torchmetrics", "features pool3, antialias=True (relative L2)", difference=err,
               bar=1e-4)]
  for quantity, mine, theirs in (
      ("FID (default: antialias=True)", ours["fid"], peer["fid", True]),
      ("FID, antialias=False vs resize=\"tf1\"", ours_tf1, peer["fid", False]),
      ("KID mean (subsets of the whole sets)", ours["kid_mean"], peer["kid"]),
      (f"IS mean (its shuffle, {splits} splits)", ours["is_mean"], peer["is"])):
    rows.append(_row("torchmetrics", quantity, mine, theirs))
  return rows, peer["fid", True], peer["fid", False]


def _table(title, peer, rows):
  fmt = lambda v: "" if v is None else f"{v:.8g}"
  lines = [title, "", f"| quantity | jaxmetrics | {peer} | relative difference |",
           "|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['quantity']} | {fmt(row['jaxmetrics'])} | {fmt(row['theirs'])} | "
                 f"{row['difference']:.2e} |")
  return lines


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
    rows.append(_row("torch-fidelity", f"features {key} (relative L2, worst set)",
                     difference=err, bar=1e-4))

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
  rows.append(_row("torch-fidelity", "FID", our_fid, peer_fid))
  # FID is a difference of large terms; its float32 error scales with them, not with FID.
  s1, s2 = (stats(t["pool3"].astype(np.float64)) for t in theirs)
  scale = np.trace(s1["sigma"]) + np.trace(s2["sigma"]) + np.sum((s1["mu"] - s2["mu"]) ** 2)
  rows.append(_row("torch-fidelity", "FID, difference relative to tr Σ₁ + tr Σ₂ + ‖Δμ‖²",
                   theirs=float(scale), difference=abs(our_fid - peer_fid) / scale))

  splits = 10
  peer_is = metric_isc.isc_features_to_metric(torch.from_numpy(theirs[0]["logits_unbiased"]),
                                              splits=splits, shuffle=True, rng_seed=2020)
  our_is = jaxmetrics.inception_score(ours[0].outputs["logits_unbiased"], splits=splits,
                                      shuffle_seed=2020)
  rows.append(_row("torch-fidelity", "IS mean (shuffle_seed=2020)", float(our_is[0]),
                   peer_is[metric_isc.KEY_METRIC_ISC_MEAN]))

  peer_kid = metric_kid.kid_features_to_metric(
      torch.from_numpy(theirs[0]["pool3"]), torch.from_numpy(theirs[1]["pool3"]),
      kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, verbose=False)
  our_kid = jaxmetrics.kid(ours[0].features, ours[1].features, subsets=args.kid_subsets,
                           subset_size=args.kid_subset_size)
  peer_mean = peer_kid[metric_kid.KEY_METRIC_KID_MEAN]
  rows.append(_row("torch-fidelity", "KID mean", float(our_kid[0]), peer_mean))

  torchmetrics_rows, default, without_antialias = _torchmetrics_rows(legacy, params, sets)
  meta = _results.machine(images_per_set=args.n, image_size=args.size)
  lines = ["# Agreement with torch-fidelity and torchmetrics", "", _results.describe(meta), "",
           f"jaxmetrics vs the peers on the same random-weight checkpoint and images "
           f"({args.n} + {args.n} images of {args.size}×{args.size}). Random weights give large "
           "feature magnitudes, so FID and KID are large here: compare the relative differences. "
           "Command: `python benchmarks/agreement.py`.", ""]
  lines += _table("## torch-fidelity (TF1 resize)", "torch-fidelity", rows)
  lines += ["", *_table("## torchmetrics (its defaults; jaxmetrics `resize=\"torchmetrics\"`)",
                        "torchmetrics", torchmetrics_rows)]
  lines += ["", f"torchmetrics' default FID against torch-fidelity's on the same images: "
            f"{default:.8g} vs {peer_fid:.8g} ({abs(default - peer_fid) / peer_fid:.1e} "
            "relative). The network is the same; the resize is not: torch's bilinear with half-pixel "
            "centres (antialiased when shrinking) against the TF graph's. With antialias=False "
            f"torchmetrics gives {without_antialias:.8g}."]
  rows += torchmetrics_rows
  _results.write("agreement", {"meta": meta, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
  main()
