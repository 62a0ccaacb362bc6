"""DINOv2 ViT-L/14 and CLIP ViT-L/14@336px on the CPU: jaxmetrics against transformers' torch models.

Run by hand (not a test), from the repository root:

  python benchmarks/vit_throughput.py [--images 8] [--repeats 2] [--networks dinov2,clip]

The networks of FD_DINOv2 and CMMD at their real sizes (DINOv2 ViT-L/14: 24 layers of 1024, 304M
parameters; CLIP ViT-L/14@336px image tower: 24 layers of 1024 on 577 tokens), with random weights
(the real ones cannot be downloaded here; speed does not depend on the values), written once as
Hugging Face folders by transformers' ``save_pretrained`` and read by both sides. The DINOv2 config
has a 16 × 16 position grid, so at 224 px neither side interpolates its table (the hub model's
37 × 37 interpolation is one small bicubic matrix product, noise next to 24 layers); the two
sides' features are compared as a check that both ran the same network.

Each (library, network) runs in a fresh process, whose peak resident memory (``VmHWM``) is its
own, on ``--images`` uint8 images at the network's input size (224 and 336, so no library spends
time resizing), at full float32 precision:

* jaxmetrics ``extract`` over one CPU device per core (the command line's default; the route of
  ``evaluate``), and ``dinov2.features`` / ``clip.cmmd_embeddings`` on one device;
* transformers ``Dinov2Model`` (``last_hidden_state[:, 0]``) and ``CLIPModel.get_image_features``
  on the normalised images, ``torch.no_grad()``, torch's default threads (every core), eager
  attention.

Time: the fastest of ``--repeats`` calls after a warm-up call (jit compilation excluded).
Writes ``benchmarks/results/vit_throughput.{json,md}``.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DINOV2_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                image_size=224, patch_size=14, layerscale_value=1.0)
CLIP_L_336 = dict(
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, image_size=336, patch_size=14,
                       hidden_act="quick_gelu"),
    text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, hidden_act="quick_gelu"),
    projection_dim=768)
SIZES = {"dinov2": 224, "clip": 336}
LIBRARIES = ("jaxmetrics-extract", "jaxmetrics-1-device", "transformers")


def _write_checkpoints(folder):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  transformers.Dinov2Model(transformers.Dinov2Config(**DINOV2_L)).save_pretrained(folder / "dinov2")
  transformers.CLIPModel(transformers.CLIPConfig(**CLIP_L_336)).save_pretrained(folder / "clip")


def _images(network, n):
  from tests import _inception_fixtures as fixtures  # pylint: disable=g-import-not-at-top
  return fixtures.test_images(3, n, SIZES[network], SIZES[network])


def _jaxmetrics(network, folder, images, repeats, one_device):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import _results  # pylint: disable=g-import-not-at-top
  from jaxmetrics.networks import clip, dinov2  # pylint: disable=g-import-not-at-top
  from jaxmetrics.pipeline import extract  # pylint: disable=g-import-not-at-top
  if network == "dinov2":
    model = dinov2.load(folder / "dinov2")
    net, params, feature = dinov2.network_of(model.config), model.params, "cls"
    features = lambda: dinov2.features(model, images)["cls"]
  else:
    model = clip.load(folder / "clip")
    net = clip.cmmd_network(model.config)
    params = {k: model.params[k] for k in ("vision_model", "visual_projection")}
    feature = clip.CMMD_FEATURE
    features = lambda: clip.cmmd_embeddings(params, images, network=net)
  if one_device:
    return _results.best_of(lambda: np.asarray(features()), repeats)
  placed = extract.replicate(params)
  return _results.best_of(
      lambda: extract.extract(images, placed, network=net, batch_size=len(images),
                              keep_features=(feature,), progress=False,
                              states={}).outputs[feature], repeats)


def _transformers(network, folder, images, repeats):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import _results  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from jaxmetrics.networks import clip, dinov2  # pylint: disable=g-import-not-at-top
  mean, std = (dinov2.IMAGE_MEAN, dinov2.IMAGE_STD) if network == "dinov2" else (
      clip.IMAGE_MEAN, clip.IMAGE_STD)
  x = (images.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
  pixels = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  if network == "dinov2":
    model = transformers.Dinov2Model.from_pretrained(folder / "dinov2",
                                                     attn_implementation="eager").eval()
    forward = lambda: model(pixel_values=pixels).last_hidden_state[:, 0]
  else:
    model = transformers.CLIPModel.from_pretrained(folder / "clip",
                                                   attn_implementation="eager").eval()
    forward = lambda: model.get_image_features(pixel_values=pixels).pooler_output

  def run():
    with torch.no_grad():
      out = forward().numpy()
    if network == "clip":
      out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return out
  return _results.best_of(run, repeats)


def _child(library, network, folder, n, repeats):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import _results  # pylint: disable=g-import-not-at-top
  images = _images(network, n)
  before = _results.memory_mb()["rss"]
  if library == "transformers":
    best, _, out = _transformers(network, folder, images, repeats)
  else:
    one_device = library == "jaxmetrics-1-device"
    best, _, out = _jaxmetrics(network, folder, images, repeats, one_device)
  out = np.asarray(out, np.float32)
  np.save(folder / f"{library}-{network}.npy", out)
  import jax  # pylint: disable=g-import-not-at-top
  row = {"library": library, "network": network, "images": n, "seconds": best,
         "images_per_s": n / best, "peak_rss_mb": _results.memory_mb()["peak"],
         "rss_before_mb": before, "jax_devices": jax.device_count()}
  print("RESULT " + json.dumps(row), flush=True)


def _run_child(library, network, folder, n, repeats):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  if library == "jaxmetrics-1-device":
    env["JAXMETRICS_CPU_DEVICES"] = "1"
  out = subprocess.run([sys.executable, __file__, "--child", library, network, str(folder),
                        str(n), str(repeats)], env=env, text=True, capture_output=True,
                       check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
    return {"library": library, "network": network, "error": f"exit status {out.returncode}"}
  row = json.loads(lines[-1][len("RESULT "):])
  print(row, flush=True)
  return row


def main():
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    from jaxmetrics.pipeline import cli  # pylint: disable=g-import-not-at-top
    cli.cpu_devices()  # before JAX starts: one CPU device per core unless told otherwise
    _child(sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4]), int(sys.argv[5]),
           int(sys.argv[6]))
    return
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--networks", default="dinov2,clip")
  args = parser.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import _results  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(tempfile.mkdtemp())
  _write_checkpoints(folder)
  rows = []
  for network in args.networks.split(","):
    for library in LIBRARIES:
      rows.append(_run_child(library, network, folder, args.images, args.repeats))
    peer = np.load(folder / f"transformers-{network}.npy").astype(np.float64)
    for row in rows[-len(LIBRARIES):]:
      if "error" not in row:
        ours = np.load(folder / f"{row['library']}-{network}.npy").astype(np.float64)
        row["relative_l2_vs_transformers"] = float(np.linalg.norm(ours - peer) /
                                                   np.linalg.norm(peer))
  os.environ.pop("XLA_FLAGS", None)
  result = {"machine": _results.machine(), "images": args.images, "repeats": args.repeats,
            "rows": rows}
  lines = ["# DINOv2 ViT-L/14 and CLIP ViT-L/14@336px on the CPU", "",
           _results.describe(result["machine"]), "",
           f"{args.images} uint8 images at the network's input size (224, 336) → features, full "
           f"float32; fastest of {args.repeats} calls after a warm-up; a fresh process per row "
           "(peak RSS is its own). Random weights, Hugging Face folders read by both sides. "
           f"Command: `python benchmarks/vit_throughput.py --images {args.images} --repeats "
           f"{args.repeats}`.", "",
           "| network | library | JAX devices | images/s | vs transformers | peak RSS (MB) | "
           "features vs transformers (relative L2) |",
           "|---|---|---:|---:|---:|---:|---:|"]
  for row in rows:
    if "error" in row:
      lines.append(f"| {row['network']} | {row['library']} | {row['error']} | | | | |")
      continue
    peer = next(r for r in rows if r["network"] == row["network"] and
                r["library"] == "transformers")
    devices = "" if row["library"] == "transformers" else row["jax_devices"]
    lines.append(f"| {row['network']} | {row['library']} | {devices} | "
                 f"{row['images_per_s']:.3f} | {row['images_per_s'] / peer['images_per_s']:.2f}× "
                 f"| {row['peak_rss_mb']:.0f} | {row['relative_l2_vs_transformers']:.1e} |")
  _results.write("vit_throughput", result, "\n".join(lines))


if __name__ == "__main__":
  main()
