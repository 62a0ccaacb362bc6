"""The ``jaxmetrics`` command line.

::

  jaxmetrics fid A B                        # FID between two sources
  jaxmetrics is A                           # Inception Score
  jaxmetrics kid A B                        # Kernel Inception Distance
  jaxmetrics eval A B --metrics fid,sfid,is,kid,precision,recall,density,coverage
                                            # several metrics from one feature pass per source
  jaxmetrics eval A B --metrics fid,fd_dinov2,cmmd --dinov2 dinov2_vitl14_pretrain.pth
                                            # several feature spaces, each source read once
  jaxmetrics adm REF SAMPLE                 # guided-diffusion's evaluator: IS, FID, sFID, P, R
  jaxmetrics stats A -o ref.npz             # reference statistics (pytorch-fid's .npz format)
  jaxmetrics features A [-o features.npz]   # Inception features of every image of a source
  jaxmetrics semsim DIR [--clip CKPT]       # CLIP semantic similarity, one sub-folder per prompt
  jaxmetrics weights download|verify|path   # manage the checkpoint cache
  jaxmetrics cache info|clear               # the statistics cache

A source is a folder of images, an ``.npy``/``.npz`` image array, a saved statistics ``.npz``
(``mu``, ``sigma``: ours, pytorch-fid's, clean-fid's, guided-diffusion's reference batches), or
``tfds:NAME:SPLIT`` with the ``tfds`` extra installed.

Exit codes: 0 success; 2 a usage error or bad input named on the command line (a missing folder, a
bad option, too few images); 1 a runtime failure (download, unreadable or mismatching weights
file). Errors print one line on stderr; ``--debug`` shows the traceback instead.

On a machine without an accelerator the commands run JAX with one CPU device per core (set before
JAX starts, unless ``XLA_FLAGS`` already forces a device count or ``JAX_PLATFORMS`` names another
platform): the network then runs one image per core at a time, which measured faster than one
device with every core (``benchmarks/results/scaling.md``). Each device holds its own copy of the
weights (0.1 GB for Inception, 1.2 GB per ViT-L), so the default stops at :data:`MAX_CPU_DEVICES`;
``JAXMETRICS_CPU_DEVICES=N`` sets another count (1: JAX's own default).
"""

import argparse
import json
import os
import pathlib
import re
import sys
import time
import warnings

import numpy as np

from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import InputError, JaxmetricsError
from jaxmetrics._io import save_npz_atomic
from jaxmetrics.networks.dinov2 import RESIZE_MODES as DINOV2_RESIZE_MODES
from jaxmetrics.networks.resize import RESIZE_MODES


def _parser():
  parser = argparse.ArgumentParser(
      prog="jaxmetrics", description="Evaluation metrics for generative image models, in JAX.")
  parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  metric = argparse.ArgumentParser(add_help=False)
  _weights_options(metric)
  _pass_options(metric)
  metric.add_argument("--num-samples", type=_positive_int, metavar="N",
                      help="use the first N images of each source (an error if one has fewer)")
  metric.add_argument("--no-cache", dest="cache", action="store_false",
                      help="neither read nor write the statistics cache")
  _output_options(metric)

  kid = argparse.ArgumentParser(add_help=False)
  kid.add_argument("--kid-subsets", type=_positive_int, default=100, help="KID subsets (100)")
  kid.add_argument("--kid-subset-size", type=_positive_int, default=1000,
                   help="samples per KID subset (1000)")
  neighbours = argparse.ArgumentParser(add_help=False)
  neighbours.add_argument("--pr-k", type=_positive_int, default=3,
                          help="neighbours for precision/recall (3: guided-diffusion, "
                               "torch-fidelity)")
  neighbours.add_argument("--dc-k", type=_positive_int, default=5,
                          help="neighbours for density/coverage (5: the prdc package)")

  for name, sources, help_text, parents in (
      ("fid", 2, "Fréchet Inception Distance between two sources", [metric]),
      ("is", 1, "Inception Score of a source", [metric]),
      ("kid", 2, "Kernel Inception Distance between two sources", [metric, kid]),
      ("eval", 2, "several metrics from one feature pass per source", [metric, kid, neighbours])):
    command = commands.add_parser(name, parents=parents, help=help_text, description=help_text + ".")
    command.add_argument("a", metavar="A", help="folder, .npy/.npz images, saved statistics, or tfds:NAME:SPLIT")
    if sources == 2:
      command.add_argument("b", metavar="B", help="folder, .npy/.npz images, saved statistics, or tfds:NAME:SPLIT")
    if name == "eval":
      command.add_argument("--metrics", default="fid,is,kid",
                           help="comma-separated, from: fid, sfid, is (of A), kid, precision, "
                                "recall, density, coverage (Inception); fd_dinov2, kid_dinov2, "
                                "precision_dinov2, recall_dinov2, density_dinov2, "
                                "coverage_dinov2 (DINOv2 ViT-L/14, needs --dinov2); cmmd (CLIP "
                                "ViT-L/14@336px); A is the generated set, B the reference "
                                "(default: fid,is,kid)")
      command.add_argument("--dinov2", metavar="PATH",
                           help="DINOv2 ViT-L/14 checkpoint for the _dinov2 metrics: the torch hub "
                                "dinov2_vitl14_pretrain.pth or a Hugging Face folder")
      command.add_argument("--dinov2-resize", choices=DINOV2_RESIZE_MODES, default="dgm-eval",
                           help="dgm-eval: PIL bicubic to 224 (default); edm2: torch's "
                                "antialiased bicubic; clean: clean-fid's float32 PIL bicubic")
      command.add_argument("--clip", metavar="NAME|PATH",
                           help="CLIP ViT-L/14@336px checkpoint for cmmd: OpenAI's "
                                "ViT-L-14-336px.pt, a Hugging Face or OpenCLIP folder; default: "
                                "download OpenAI's once")
      command.set_defaults(run=_metric)
    else:
      command.set_defaults(run=_metric, metrics=name)

  adm = commands.add_parser(
      "adm", parents=[metric],
      help="guided-diffusion's evaluator suite: IS, FID, sFID, precision, recall",
      description="The numbers of guided-diffusion's evaluations/evaluator.py, in its argument "
                  "order (reference batch first) and with its printed lines: Inception Score over "
                  "parts of 5000 samples (mean), FID, sFID, precision and recall (k = 3).")
  adm.add_argument("ref", metavar="REF", help="reference batch (.npz with arr_0, and optionally "
                   "mu, sigma, mu_s, sigma_s), a folder or .npy of images, or saved statistics")
  adm.add_argument("sample", metavar="SAMPLE", help="sample batch (.npz arr_0), folder or .npy")
  adm.set_defaults(run=_adm)

  stats = commands.add_parser("stats", parents=[metric], help="save FID reference statistics",
                              description="Write the FID statistics (mu, sigma) of a source as an "
                                          ".npz that pytorch-fid and clean-fid read too.")
  stats.add_argument("a", metavar="A", help="folder or .npy/.npz images")
  stats.add_argument("-o", "--output", required=True, help="the .npz to write")
  stats.set_defaults(run=_stats)

  features = commands.add_parser(
      "features", help="Inception features (pool3, logits) of a folder of images",
      description="Compute FID Inception-v3 features of every image under a folder (recursive) "
                  "or in an .npy/.npz array.")
  features.add_argument("source", help="folder of images (PNG, JPEG, WebP, BMP, …) or .npy/.npz images")
  features.add_argument("-o", "--output", help="write pool3, logits_unbiased, logits and file names "
                        "to this .npz")
  _weights_options(features)
  _pass_options(features)
  _output_options(features)
  features.set_defaults(run=_features)

  semsim = commands.add_parser(
      "semsim", help="semantic similarity of each prompt's images (CLIP)",
      description="For each sub-folder of DIR (one per prompt), the mean CLIP cosine similarity "
                  "over all distinct pairs of its images, as 100·max(mean cosine, 0), and the "
                  "average over prompts.")
  semsim.add_argument("source", metavar="DIR", help="folder with one sub-folder of images per prompt")
  semsim.add_argument("--clip", metavar="CKPT",
                      help="CLIP checkpoint: a Hugging Face (model.safetensors + config.json) or "
                           "OpenCLIP folder, an OpenAI .pt, or a registered name (openai-clip-vit-"
                           "b-32, -b-16, -l-14); default: download OpenAI's ViT-B/32 once")
  semsim.add_argument("--batch-size", type=_positive_int, metavar="N",
                      help="images per CLIP step (default: a prompt's images at once)")
  _output_options(semsim)
  semsim.set_defaults(run=_semsim)

  manage = commands.add_parser("weights", help="download, verify or locate checkpoints",
                               description="Manage the checkpoint cache ($JAXMETRICS_CACHE).")
  manage.add_argument("action", choices=("download", "verify", "path"))
  manage.add_argument("name", nargs="?", default=weights.DEFAULT,
                      help=f"checkpoint name ({', '.join(sorted(weights.registry()))})")
  manage.add_argument("--force", action="store_true", help="download again even if cached")
  manage.add_argument("--quiet", action="store_true", help="no progress bar")
  manage.set_defaults(run=_weights)

  cache = commands.add_parser("cache", help="show or empty the statistics cache",
                              description="The statistics cache ($JAXMETRICS_CACHE/stats): what "
                                          "a pass computed for a source, reused when the same "
                                          "source is evaluated again with the same settings.")
  cache.add_argument("action", choices=("info", "clear"))
  _output_options(cache)
  cache.set_defaults(run=_cache)
  return parser



def _weights_options(parser):
  parser.add_argument("--weights", metavar="FILE",
                      help="Inception checkpoint (.pth); default: download the official one once")
  parser.add_argument("--no-hash-check", dest="check_hash", action="store_false",
                      help="accept a weights file whose sha256 differs from the official one "
                           "(custom or fine-tuned weights)")


def _pass_options(parser):
  parser.add_argument("--resize", choices=RESIZE_MODES, default="tf1",
                      help="tf1: the TF reference (default); pytorch: pytorch-fid; clean: "
                      "clean-fid; torchmetrics: torchmetrics' antialias=True default")
  parser.add_argument("--batch-size", type=_positive_int, metavar="N",
                      help="images per step over all devices (default 32 per device)")
  parser.add_argument("--image-size", type=_size, metavar="H,W",
                      help="centre-crop and resize other-sized folder images to H×W on the host")


def _output_options(parser):
  parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
  parser.add_argument("--quiet", action="store_true", help="print nothing but errors (and --json)")


def _size(text):
  try:
    h, w = (int(v) for v in text.split(","))
    if h < 1 or w < 1:
      raise ValueError
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected two positive integers H,W, got {text}") from None
  return h, w


def _positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
  return value


def _features(args):
  from jaxmetrics.pipeline import extract
  from jaxmetrics.networks import inception
  from jaxmetrics.pipeline import sources  # JAX starts only for commands that need it.

  if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
    raise InputError(f"--output {args.output}: its folder does not exist")
  source = sources.open_source(args.source, image_size=args.image_size, network=inception.NETWORK,
                               resize=args.resize)
  try:
    params = inception.load_params(args.weights, check_hash=args.check_hash, progress=not args.quiet)
    start = time.perf_counter()
    result = extract.extract(source, params, batch_size=args.batch_size, resize=args.resize,
                             keep_features=inception.OUTPUTS, progress=not args.quiet)
    seconds = time.perf_counter() - start
  finally:
    source.close()
  out = result.outputs
  if isinstance(source, sources.FolderSource):
    names = [str(source.paths[i]) for i in result.index]
  else:
    names = [f"row {i}" for i in (result.index if result.index is not None else range(result.count))]
  if args.output:
    save_npz_atomic(args.output, files=np.array(names), **out)
  summary = {
      "source": args.source, "n": result.count, "resize": args.resize,
      "weights": str(args.weights) if args.weights else weights.DEFAULT,
      "seconds_including_compilation": round(seconds, 3),
      "output": args.output,
      "images": [{"file": name, "pool3_norm": float(np.linalg.norm(out["pool3"][i])),
                  "top_class": int(np.argmax(out["logits"][i]))} for i, name in enumerate(names)],
  }
  if args.json:
    print(json.dumps(summary))
  elif not args.quiet:
    print(f"{result.count} images from {args.source}: weights {summary['weights']}, resize "
          f"{args.resize}; {seconds:.2f} s including compilation")
    for item in summary["images"]:
      print(f"{item['file']}\t|pool3| {item['pool3_norm']:.4f}\ttop class {item['top_class']}")
    if args.output:
      print(f"wrote {args.output}")
  return 0


def _evaluator_options(args):
  spaces = {key: getattr(args, key) for key in ("dinov2", "dinov2_resize", "clip")
            if hasattr(args, key)}
  if spaces.get("clip") in _CLIP_NAMES and not os.path.exists(spaces["clip"]):
    spaces["clip"] = None  # the registered file, downloaded once
  return dict(weights=args.weights, check_hash=args.check_hash, resize=args.resize,
              batch_size=args.batch_size, num_samples=args.num_samples, image_size=args.image_size,
              cache=args.cache, progress=not args.quiet, **spaces)


# CMMD's network is CLIP ViT-L/14@336px: its registered name, for --clip.
_CLIP_NAMES = ("openai-clip-vit-l-14-336",)


_FLAGS = {"kid_subset_size": "--kid-subset-size", "kid_subsets": "--kid-subsets",
          "num_samples": "--num-samples", "image_size=(H, W)": "--image-size H,W",
          "image_size": "--image-size", "pr_k": "--pr-k", "dc_k": "--dc-k",
          "batch_size": "--batch-size", "check_hash=False": "--no-hash-check"}
_FLAG_PATTERN = re.compile("|".join(rf"\b{re.escape(name)}" + ("" if name.endswith(")") else r"\b")
                                    for name in _FLAGS))


def _with_flags(error):
  """The error with the Python arguments it names written as the command line's flags."""
  return InputError(_FLAG_PATTERN.sub(lambda m: _FLAGS[m.group(0)], str(error)))


def _metric(args):
  from jaxmetrics.pipeline import evaluation  # JAX starts only for commands that need it.

  two = getattr(args, "b", None) is not None
  results = evaluation.evaluate(
      args.a, getattr(args, "b", None), metrics=args.metrics, **_evaluator_options(args),
      kid_subsets=getattr(args, "kid_subsets", 100),
      kid_subset_size=getattr(args, "kid_subset_size", 1000),
      pr_k=getattr(args, "pr_k", 3), dc_k=getattr(args, "dc_k", 5))
  results = {"a": args.a, **({"b": args.b} if two else {}), **results,
             "weights": args.weights or weights.DEFAULT}
  if "dinov2_weights_sha256" in results:
    results["dinov2_weights"] = args.dinov2
  if "clip_weights_sha256" in results:
    results["clip_weights"] = args.clip or _CLIP_NAMES[0]
  if args.json:
    print(json.dumps(results))
  elif not args.quiet:
    lines = []
    if "fid" in results:
      lines.append(f"FID  {results['fid']:.6f}")
    if "is_mean" in results:
      lines.append(f"IS   {results['is_mean']:.6f} ± {results['is_std']:.6f}  (of A)")
    if "kid_mean" in results:
      lines.append(f"KID  {results['kid_mean']:.8f} ± {results['kid_std']:.8f}")
    for key, label in (("sfid", "sFID"), ("precision", "precision"), ("recall", "recall"),
                       ("density", "density"), ("coverage", "coverage"),
                       ("fd_dinov2", "FD_DINOv2"), ("precision_dinov2", "precision_dinov2"),
                       ("recall_dinov2", "recall_dinov2"), ("density_dinov2", "density_dinov2"),
                       ("coverage_dinov2", "coverage_dinov2"), ("cmmd", "CMMD")):
      if key in results:
        lines.append(f"{label:<4} {results[key]:.6f}")
    if "kid_dinov2_mean" in results:
      lines.append(f"KID_DINOv2  {results['kid_dinov2_mean']:.8f} ± "
                   f"{results['kid_dinov2_std']:.8f}")
    print("\n".join(lines))
    counts = f"n1={_count(results['n1'])}" + (f", n2={_count(results['n2'])}" if two else "")
    used = []
    if results["weights_sha256"]:
      used.append(f"weights {results['weights']} (sha256 {results['weights_sha256'][:12]}…), "
                  f"resize {results['resize']}")
    if "dinov2_weights_sha256" in results:
      used.append(f"DINOv2 {results['dinov2_weights']} (sha256 "
                  f"{results['dinov2_weights_sha256'][:12]}…), resize {results['dinov2_resize']}")
    if "clip_weights_sha256" in results:
      used.append(f"CLIP {results['clip_weights']} (sha256 "
                  f"{results['clip_weights_sha256'][:12]}…)")
    print(f"{counts}; {'; '.join(used) or 'from saved statistics only (no weights needed)'}")
  return 0


def _adm(args):
  from jaxmetrics.pipeline import evaluation  # JAX starts only for commands that need it.

  results = evaluation.evaluate(
      args.sample, args.ref, metrics=("is", "fid", "sfid", "precision", "recall"),
      is_split_size=ADM_IS_SPLIT_SIZE, pr_k=3, **_evaluator_options(args))
  results = {"ref": args.ref, "sample": args.sample, **results,
             "weights": args.weights or weights.DEFAULT}
  if args.json:
    print(json.dumps(results))
  elif not args.quiet:
    # guided-diffusion's evaluator prints the IS mean over its parts, then these, in this order.
    print(f"Inception Score: {results['is_mean']}")
    print(f"FID: {results['fid']}")
    print(f"sFID: {results['sfid']}")
    print(f"Precision: {results['precision']}")
    print(f"Recall: {results['recall']}")
  return 0


# guided-diffusion's Evaluator.compute_inception_score(activations, split_size=5000).
ADM_IS_SPLIT_SIZE = 5000


def _count(n):
  return "saved statistics" if n is None else str(n)


def _stats(args):
  from jaxmetrics.pipeline import evaluation

  if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
    raise InputError(f"--output {args.output}: its folder does not exist")
  stats = evaluation.save_statistics(args.a, args.output, **_evaluator_options(args))
  if args.json:
    print(json.dumps({"a": args.a, "n": stats.count, "output": args.output, "cached": stats.cached}))
  elif not args.quiet:
    print(f"wrote {args.output}: statistics of {stats.count} images from {args.a}")
  return 0


def _semsim(args):
  from jaxmetrics.networks import clip
  from jaxmetrics.metrics import semantic
  from jaxmetrics.pipeline import sources  # JAX starts only for commands that need it.

  root = pathlib.Path(args.source)
  if not root.is_dir():
    raise InputError(f"{root}: expected a folder with one sub-folder of images per prompt"
                     + ("" if root.exists() else ", but it does not exist"))
  prompts = sorted(p for p in root.iterdir() if p.is_dir())
  if not prompts:
    raise InputError(f"{root}: expected one sub-folder of images per prompt, found no sub-folder")
  groups = {}
  for folder in prompts:
    images = []
    for path in sources.list_images(folder):
      try:
        images.append(sources.read_image(path))
      except InputError as e:
        warnings.warn(f"skipped {e}", stacklevel=1)
    groups[folder.name] = images
  if args.clip is None or (args.clip in clip.MODELS and not os.path.exists(args.clip)):
    model = clip.load(name=args.clip, progress=not args.quiet)
  else:
    model = clip.load(args.clip)
  embeddings = {}
  for prompt, images in groups.items():
    if len(images) < 2:
      raise InputError(f"{root / prompt}: expected at least 2 images (a pair) for a prompt, got "
                       f"{len(images)}")
    # Images of one size share a batch; the similarity is then taken from the embeddings.
    by_shape = {}
    for image in images:
      by_shape.setdefault(image.shape, []).append(image)
    embeddings[prompt] = np.concatenate([
        np.asarray(clip.image_embeddings(model, np.stack(same), batch_size=args.batch_size))
        for same in by_shape.values()])
  result = semantic.semantic_similarity(embeddings)
  summary = {"source": args.source, "score": result.score, "per_prompt": result.per_prompt,
             "mean_cosine": result.mean_cosine, "counts": {k: len(v) for k, v in groups.items()}}
  if args.json:
    print(json.dumps(summary))
  elif not args.quiet:
    for prompt, score in result.per_prompt.items():
      print(f"{score:8.4f}  {prompt} ({summary['counts'][prompt]} images)")
    print(f"semantic similarity {result.score:.4f} (mean over {len(result.per_prompt)} prompts)")
  return 0


def _weights(args):
  if args.action == "path":
    print(weights.cached_path(args.name))
  elif args.action == "download":
    print(weights.download(args.name, progress=not args.quiet, force=args.force))
  else:
    print(f"{weights.verify(args.name)}: sha256 {weights.get(args.name).sha256} OK")
  return 0


def _cache(args):
  from jaxmetrics.pipeline import evaluation

  info = evaluation.clear_cache() if args.action == "clear" else evaluation.cache_info()
  if args.json:
    print(json.dumps({"action": args.action, **info}))
  elif not args.quiet:
    size = f"{info['entries']} entries, {info['bytes'] / 1e6:.1f} MB"
    print(f"removed {info['path']} ({size})" if args.action == "clear" else
          f"{info['path']}: {size}")
  return 0


MAX_CPU_DEVICES = 8
"""The most CPU devices :func:`cpu_devices` makes by default (measured to help on 2 cores; each
device replicates the weights)."""


def cpu_devices():
  """One JAX CPU device per usable core, before JAX starts (module docstring): sets XLA_FLAGS
  unless a device count is forced there already, ``JAX_PLATFORMS`` names no CPU, or
  ``JAXMETRICS_CPU_DEVICES`` says otherwise. Returns the count it set, or ``None``.

  The flag shapes only JAX's CPU backend: on a GPU or TPU host the accelerators stay the default
  devices, and the CPU devices are used for nothing but the float64 route on TPUs.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if "--xla_force_host_platform_device_count" in flags or (platforms and "cpu" not in platforms):
    return None
  wanted = os.environ.get("JAXMETRICS_CPU_DEVICES", "")
  if wanted:
    try:
      count = int(wanted)
      if count < 1:
        raise ValueError
    except ValueError:
      raise InputError(f"JAXMETRICS_CPU_DEVICES: expected a positive integer, got {wanted!r}") \
          from None
  else:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # Every device holds its own copy of each network's weights (0.1 GB for Inception, 1.2 GB
    # for a ViT-L) and its own batch: the default stops at MAX_CPU_DEVICES.
    count = min(cores or 1, MAX_CPU_DEVICES)
  if count == 1:
    return None
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
  return count


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
  print(f"warning: {message}", file=sys.stderr)


def main(argv=None):
  args = _parser().parse_args(argv)
  warnings.showwarning = _one_line_warnings
  try:
    cpu_devices()
    return args.run(args)
  except (InputError, FileNotFoundError) as e:
    if args.debug:
      raise
    message = _with_flags(e) if isinstance(e, InputError) else e
    print(f"jaxmetrics {args.command}: error: {message}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    if args.debug:
      raise
    reason = str(e) if isinstance(e, JaxmetricsError) else f"{type(e).__name__}: {e}"
    print(f"jaxmetrics {args.command}: error: {' '.join(reason.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
