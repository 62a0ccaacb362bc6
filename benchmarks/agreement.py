"""Agreement of jaxmetrics with torch-fidelity, torchmetrics and pytorch-fid: features, FID, IS, KID.

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
* pytorch-fid: its ``InceptionV3`` on [0, 1] floats, against ``resize="pytorch"``; FID by its
  ``calculate_frechet_distance`` (``scipy.linalg.sqrtm``) on the mean and ``np.cov`` of its
  features, against ``jaxmetrics.fid``. With fewer images than 2048 the covariances are singular
  and its ``sqrtm`` may return an imaginary part it refuses ("Imaginary component"): the row then
  records that, and ``--n 2560`` gives a number.

On a GPU the torch peers run on it with TF32 off (``_torch_peers.set_precision("highest")``), as
jaxmetrics runs at its default "highest": the table is parity, not speed
(``extract_throughput.py`` measures what TF32 changes).

  python benchmarks/agreement.py [--n 64] [--size 32]

Writes benchmarks/results/agreement{,_gpu}.{json,md,png} (``_gpu`` when JAX runs on one).
"""

import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# JAX and torch share the GPU in this process: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import torch  # noqa: E402

import _results  # noqa: E402
import _torch_peers  # noqa: E402
import jaxmetrics  # noqa: E402
from jaxmetrics.pipeline import extract  # noqa: E402
from jaxmetrics.networks import inception  # noqa: E402
from tests import _inception_fixtures as fixtures  # noqa: E402
from tests._peers import pytorch_fid_frechet  # noqa: E402
from tests._peers import torch_fidelity_metric_module  # noqa: E402
from tests._peers import torchmetrics_module  # noqa: E402


_CHUNK = 256  # images per forward pass: whole sets of thousands do not fit in GPU memory


def _chunks(x):
  return (x[i:i + _CHUNK] for i in range(0, len(x), _CHUNK))


def _relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _row(peer, quantity, ours=None, theirs=None, difference=None, bar=None):
  if difference is None:
    difference = abs(ours - theirs) / abs(theirs)
  return {"peer": peer, "quantity": quantity, "jaxmetrics": ours, "theirs": theirs,
          "difference": difference, "bar": bar}


def _stats(x):
  x = np.asarray(x, np.float64)
  return {"mu": np.mean(x, axis=0), "sigma": np.cov(x, rowvar=False)}


def _pytorch_fid_rows(legacy, params, sets, dev):
  """pytorch-fid's model and FID against ``resize="pytorch"``."""
  forward = _torch_peers.extractor("pytorch-fid", legacy, dev)
  peer = [np.concatenate([forward(c).cpu().numpy() for c in _chunks(x)]) for x in sets]
  ours = [np.asarray(jaxmetrics.features(params, x, resize="pytorch", batch_size=_CHUNK)["pool3"])
          for x in sets]
  rows = [_row("pytorch-fid", "features pool3 (relative L2, worst set)", bar=1e-4,
               difference=max(_relative(o, t) for o, t in zip(ours, peer)))]
  our_fid = jaxmetrics.fid(sets[0], sets[1], params=params, resize="pytorch", cache=False)
  (mu1, sigma1), (mu2, sigma2) = ((np.mean(a, axis=0), np.cov(a, rowvar=False)) for a in peer)
  peer_fid, note = pytorch_fid_frechet(mu1, sigma1, mu2, sigma2)
  if peer_fid is None:
    rows.append({"peer": "pytorch-fid", "quantity": f"FID: pytorch-fid {note}",
                 "jaxmetrics": float(our_fid), "theirs": None, "difference": None, "bar": None})
    return rows
  quantity = "FID" + (f" (pytorch-fid {note})" if note else "")
  rows.append(_row("pytorch-fid", quantity, float(our_fid), peer_fid))
  return rows


def _kid_float64(x, y):
  """Unbiased MMD² with the cubic polynomial kernel on whole sets, float64: the textbook formula."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n, m, d = len(x), len(y), x.shape[1]
  kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
  return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
          - 2 * kxy.sum() / (n * m))


def _torchmetrics_rows(legacy, params, sets, dev):
  """torchmetrics' three metrics (defaults) and its FID with antialias=False, against ours."""
  n = len(sets[0])
  # torch.chunk makes splits of ceil(n / splits) rows, improved-gan of n·k // splits boundaries:
  # the same splits only when they divide n.
  splits = next(s for s in range(10, 0, -1) if n % s == 0)
  image = torchmetrics_module("image")
  network = torchmetrics_module("image.fid").NoTrainInceptionV3
  path = str(legacy)
  fake, real = (torch.from_numpy(x).to(dev).permute(0, 3, 1, 2).contiguous() for x in sets)
  peer = {}
  with torch.no_grad():
    for antialias in (True, False):
      fid = image.FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=path,
                                           antialias=antialias).to(dev)
      for chunk in _chunks(real):
        fid.update(chunk, real=True)
      for chunk in _chunks(fake):
        fid.update(chunk, real=False)
      peer["fid", antialias] = float(fid.compute())
    # KID and IS take no weights path: they get the module they would build, from this file.
    kid = image.KernelInceptionDistance(
        feature=network("inception-v3-compat", ["2048"], feature_extractor_weights_path=path),
        subsets=2, subset_size=n).to(dev)
    for chunk in _chunks(real):
      kid.update(chunk, real=True)
    for chunk in _chunks(fake):
      kid.update(chunk, real=False)
    peer["kid"] = float(kid.compute()[0])
    isc = image.InceptionScore(feature=network("inception-v3-compat", ["logits_unbiased"],
                                               feature_extractor_weights_path=path),
                             splits=splits).to(dev)
    for chunk in _chunks(fake):
      isc.update(chunk)
    torch.manual_seed(2020)
    permutation = torch.randperm(n).numpy()  # what InceptionScore.compute draws next
    torch.manual_seed(2020)
    peer["is"] = float(isc.compute()[0])
    pool3 = network("inception-v3-compat", ["2048"], feature_extractor_weights_path=path).to(dev)
    peer_pool3 = [torch.cat([pool3(c).cpu() for c in _chunks(x)]).numpy() for x in (fake, real)]

  ours = jaxmetrics.evaluate(sets[0][permutation], sets[1], metrics=("fid", "kid", "is"),
                             params=params, resize="torchmetrics", splits=splits, kid_subsets=2,
                             kid_subset_size=n, cache=False)
  ours_tf1 = jaxmetrics.fid(sets[0], sets[1], params=params, resize="tf1", cache=False)
  our_pool3 = [jaxmetrics.features(params, x, resize="torchmetrics", batch_size=_CHUNK)["pool3"]
               for x in sets]
  err = max(_relative(o, t) for o, t in zip(our_pool3, peer_pool3))
  # KID cancels terms many times its size, so feature round-off moves it. Float64 KID on
  # each library's own features separates its kernel arithmetic from its features.
  peer["kid float64"] = (_kid_float64(*our_pool3), _kid_float64(*peer_pool3))
  rows = [_row("torchmetrics", "features pool3, antialias=True (relative L2)", difference=err,
               bar=1e-4)]
  for quantity, mine, theirs in (
      ("FID (default: antialias=True)", ours["fid"], peer["fid", True]),
      ("FID, antialias=False vs resize=\"tf1\"", ours_tf1, peer["fid", False]),
      ("KID mean (subsets of the whole sets)", ours["kid_mean"], peer["kid"]),
      (f"IS mean (its shuffle, {splits} splits)", ours["is_mean"], peer["is"])):
    rows.append(_row("torchmetrics", quantity, mine, theirs))
  return rows, peer["fid", True], peer["fid", False], peer["kid float64"]


def _table(title, peer, rows):
  fmt = lambda v: "" if v is None else f"{v:.8g}"
  lines = [title, "", f"| quantity | jaxmetrics | {peer} | relative difference |",
           "|---|---|---|---|"]
  for row in rows:
    difference = "" if row["difference"] is None else f"{row['difference']:.2e}"
    lines.append(f"| {row['quantity']} | {fmt(row['jaxmetrics'])} | {fmt(row['theirs'])} | "
                 f"{difference} |")
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
  dev = _torch_peers.device()
  _torch_peers.set_precision("highest")
  extractor = fixtures.torch_fidelity_extractor(legacy).to(dev)
  sets = [fixtures.test_images(seed, args.n, args.size, args.size) for seed in (101, 202)]

  ours, theirs = [], []
  for images in sets:
    result = extract.extract(images, params, keep_features=("pool3", "logits_unbiased"),
                             progress=False)
    ours.append(result)
    parts = [fixtures.torch_fidelity_features(extractor, c) for c in _chunks(images)]
    theirs.append({k: np.concatenate([part[k] for part in parts]) for k in parts[0]})

  rows = []
  for key, ours_key in (("pool3", "pool3"), ("logits_unbiased", "logits_unbiased")):
    err = max(_relative(o.outputs[ours_key], t[key]) for o, t in zip(ours, theirs))
    rows.append(_row("torch-fidelity", f"features {key} (relative L2, worst set)",
                     difference=err, bar=1e-4))

  metric_fid = torch_fidelity_metric_module("metric_fid")
  metric_isc = torch_fidelity_metric_module("metric_isc")
  metric_kid = torch_fidelity_metric_module("metric_kid")

  peer_fid = metric_fid.fid_statistics_to_metric(
      _stats(theirs[0]["pool3"]), _stats(theirs[1]["pool3"]), verbose=False)[metric_fid.KEY_METRIC_FID]
  statistics = [(o.stats.mean, o.stats.covariance()) for o in ours]
  # What jaxmetrics.fid and the CLI do: the float64 route (float64 statistics in). The float32
  # kernel on the device is the in-training-loop route; it cannot resolve covariances whose
  # spectrum spans > 1/eps (N close to d with dead channels, as here at N = 2560): a row of its
  # own, not a parity claim.
  our_fid = float(jaxmetrics.frechet_distance(*(np.asarray(x, np.float64) for x in
                                                 (*statistics[0], *statistics[1]))))
  our_fid32 = float(jaxmetrics.frechet_distance(*statistics[0], *statistics[1]))
  rows.append(_row("torch-fidelity", "FID", our_fid, peer_fid))
  rows.append(_row("torch-fidelity", "FID, float32 kernel on the device (in-loop route)",
                   our_fid32, peer_fid))
  # FID is a difference of large terms; its float32 error scales with them, not with FID.
  s1, s2 = (_stats(t["pool3"]) for t in theirs)
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

  torchmetrics_rows, default, without_antialias, kid64 = _torchmetrics_rows(legacy, params, sets,
                                                                            dev)
  pytorch_fid_rows = _pytorch_fid_rows(legacy, params, sets, dev)
  meta = _results.machine(images_per_set=args.n, image_size=args.size)
  gpu = jax.default_backend() == "gpu"
  lines = ["# Agreement with torch-fidelity, torchmetrics and pytorch-fid", "",
           _results.describe(meta), "",
           f"jaxmetrics vs the peers on the same random-weight checkpoint and images "
           f"({args.n} + {args.n} images of {args.size}×{args.size}). Random weights give large "
           "feature magnitudes, so FID and KID are large here: compare the relative differences. "
           + ("The torch peers run on the GPU with TF32 off, jaxmetrics at precision "
              "\"highest\". " if gpu else "")
           + f"Command: `python benchmarks/agreement.py --n {args.n}`.", ""]
  lines += _table("## torch-fidelity (TF1 resize)", "torch-fidelity", rows)
  lines += ["", *_table("## torchmetrics (its defaults; jaxmetrics `resize=\"torchmetrics\"`)",
                        "torchmetrics", torchmetrics_rows)]
  lines += ["", f"torchmetrics' default FID against torch-fidelity's on the same images: "
            f"{default:.8g} vs {peer_fid:.8g} ({abs(default - peer_fid) / peer_fid:.1e} "
            "relative). The network is the same; the resize is not: torch's bilinear with half-pixel "
            "centres (antialiased when shrinking) against the TF graph's. With antialias=False "
            f"torchmetrics gives {without_antialias:.8g}."]
  kid_ours, kid_theirs = (r["jaxmetrics"] for r in torchmetrics_rows if r["quantity"].startswith(
      "KID")), (r["theirs"] for r in torchmetrics_rows if r["quantity"].startswith("KID"))
  kid_ours, kid_theirs = next(kid_ours), next(kid_theirs)
  lines += ["", "KID on whole sets by the textbook formula in float64 (unbiased MMD², cubic kernel) "
            f"on each library's own pool3: jaxmetrics' features {kid64[0]:.8g}, its KID "
            f"{abs(kid_ours - kid64[0]) / abs(kid64[0]):.1e} from it; torchmetrics' features "
            f"{kid64[1]:.8g}, its KID {abs(kid_theirs - kid64[1]) / abs(kid64[1]):.1e} from it. "
            "KID cancels terms many times its size, so the 1e-6 feature differences alone move it by "
            f"{abs(kid64[0] - kid64[1]) / abs(kid64[1]):.1e}."]
  lines += ["", *_table("## pytorch-fid (jaxmetrics `resize=\"pytorch\"`)", "pytorch-fid",
                        pytorch_fid_rows)]
  rows += torchmetrics_rows + pytorch_fid_rows
  name = "agreement" + ("_gpu" if gpu else "")
  _results.write(name, {"meta": meta, "rows": rows, "kid_float64_whole_sets": kid64},
                 "\n".join(lines))


if __name__ == "__main__":
  main()
