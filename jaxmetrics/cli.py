"""The ``jaxmetrics`` command line.

::

  jaxmetrics features DIR [--weights FILE] [-o features.npz]   # Inception features of a folder
  jaxmetrics weights download|verify|path                      # manage the checkpoint cache

Exit codes: 0 success; 2 a usage error or bad input named on the command line (a missing folder, a
bad option); 1 a runtime failure (download, unreadable or mismatching weights file). Errors print
one line on stderr; ``--debug`` shows the traceback instead.
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

from jaxmetrics import weights
from jaxmetrics._errors import InputError, JaxmetricsError
from jaxmetrics._io import save_npz_atomic
from jaxmetrics.resize import RESIZE_MODES


def _parser():
  parser = argparse.ArgumentParser(
      prog="jaxmetrics", description="Evaluation metrics for generative image models, in JAX.")
  parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  features = commands.add_parser(
      "features", help="Inception features (pool3, logits) of a folder of images",
      description="Compute FID Inception-v3 features of every image under a folder (recursive).")
  features.add_argument("source", help="folder of images (PNG, JPEG, WebP, BMP, …)")
  features.add_argument("-o", "--output", help="write pool3, logits_unbiased, logits and file names "
                        "to this .npz")
  _weights_options(features)
  features.add_argument("--resize", choices=RESIZE_MODES, default="tf1",
                        help="tf1: the TF reference (default); pytorch: pytorch-fid; clean: clean-fid")
  features.add_argument("--batch-size", type=_positive_int, default=50, help="images per step (50)")
  features.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
  features.add_argument("--quiet", action="store_true", help="print nothing but errors (and --json)")
  features.set_defaults(run=_features)

  manage = commands.add_parser("weights", help="download, verify or locate checkpoints",
                               description="Manage the checkpoint cache ($JAXMETRICS_CACHE).")
  manage.add_argument("action", choices=("download", "verify", "path"))
  manage.add_argument("name", nargs="?", default=weights.DEFAULT,
                      help=f"checkpoint name ({', '.join(sorted(weights.registry()))})")
  manage.add_argument("--force", action="store_true", help="download again even if cached")
  manage.add_argument("--quiet", action="store_true", help="no progress bar")
  manage.set_defaults(run=_weights)
  return parser


def _weights_options(parser):
  parser.add_argument("--weights", metavar="FILE",
                      help="Inception checkpoint (.pth); default: download the official one once")
  parser.add_argument("--no-hash-check", dest="check_hash", action="store_false",
                      help="accept a weights file whose sha256 differs from the official one "
                           "(custom or fine-tuned weights)")


def _positive_int(text):
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
  return value


def _features(args):
  from jaxmetrics import inception, sources  # JAX starts only for commands that need it.

  if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
    raise InputError(f"--output {args.output}: its folder does not exist")
  paths, images = sources.read_folder(args.source)
  params = inception.load_params(args.weights, check_hash=args.check_hash, progress=not args.quiet)
  start = time.perf_counter()
  out = {k: np.zeros((len(images), d), np.float32)
         for k, d in (("pool3", inception.POOL3_DIM), ("logits_unbiased", inception.NUM_CLASSES),
                      ("logits", inception.NUM_CLASSES))}
  by_shape = {}
  for i, image in enumerate(images):
    by_shape.setdefault(image.shape, []).append(i)
  for indices in by_shape.values():
    got = inception.features(params, np.stack([images[i] for i in indices]), resize=args.resize,
                             batch_size=args.batch_size)
    for key in out:
      out[key][indices] = np.asarray(got[key])
  seconds = time.perf_counter() - start
  if args.output:
    save_npz_atomic(args.output, files=np.array([str(p) for p in paths]), **out)
  summary = {
      "source": args.source, "n": len(images), "resize": args.resize,
      "weights": str(args.weights) if args.weights else weights.DEFAULT,
      "seconds_including_compilation": round(seconds, 3),
      "output": args.output,
      "images": [{"file": str(p), "pool3_norm": float(np.linalg.norm(out["pool3"][i])),
                  "top_class": int(np.argmax(out["logits"][i]))} for i, p in enumerate(paths)],
  }
  if args.json:
    print(json.dumps(summary))
  elif not args.quiet:
    print(f"{len(images)} images from {args.source}: weights {summary['weights']}, resize "
          f"{args.resize}; {seconds:.2f} s including compilation")
    for item in summary["images"]:
      print(f"{item['file']}\t|pool3| {item['pool3_norm']:.4f}\ttop class {item['top_class']}")
    if args.output:
      print(f"wrote {args.output}")
  return 0


def _weights(args):
  if args.action == "path":
    print(weights.cached_path(args.name))
  elif args.action == "download":
    print(weights.download(args.name, progress=not args.quiet, force=args.force))
  else:
    print(f"{weights.verify(args.name)}: sha256 {weights.get(args.name).sha256} OK")
  return 0


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
  print(f"warning: {message}", file=sys.stderr)


def main(argv=None):
  args = _parser().parse_args(argv)
  warnings.showwarning = _one_line_warnings
  try:
    return args.run(args)
  except (InputError, FileNotFoundError) as e:
    if args.debug:
      raise
    print(f"jaxmetrics {args.command}: error: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    if args.debug:
      raise
    reason = str(e) if isinstance(e, JaxmetricsError) else f"{type(e).__name__}: {e}"
    print(f"jaxmetrics {args.command}: error: {' '.join(reason.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
