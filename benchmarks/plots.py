"""One PNG per benchmark result, drawn from its JSON file in benchmarks/results.

  python benchmarks/plots.py            # redraw every results/*.png from results/*.json

Each benchmark script also calls :func:`draw` after writing its JSON (through ``_results.write``).
Needs matplotlib: ``pip install -e ".[benchmarks]"``.
"""

import json
import sys
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
_LIBRARY_COLOURS = {"jaxmetrics": "tab:blue", "torch-fidelity": "tab:orange",
                    "pytorch-fid": "tab:green", "torchmetrics": "tab:red", "clean-fid": "tab:purple",
                    "prdc": "tab:brown"}


def _colour(label):
  return next((c for lib, c in _LIBRARY_COLOURS.items() if label.startswith(lib)), None)


def _date(result):
  meta = result.get("meta") or result.get("machine") or {}
  return str(meta.get("date", ""))[:10]


def _agreement(result, ax):
  rows = [r for r in result["rows"] if r.get("difference") is not None]
  labels = [f"{r.get('peer', 'torch-fidelity')}: {r['quantity']}" for r in rows]
  labels = [label if len(label) <= 60 else label[:59] + "…" for label in labels]
  ax.figure.set_size_inches(11, 1.5 + 0.32 * len(rows))
  ax.barh(labels, [r["difference"] for r in rows], color="tab:blue", label="|jaxmetrics − peer|")
  ax.scatter([r["bar"] for r in rows], labels, marker="|", s=300, color="black",
             label="tolerance", zorder=3)
  ax.set_xscale("log")
  ax.invert_yaxis()
  ax.set_xlabel("relative difference (log)")
  ax.set_title(f"Agreement with the PyTorch peers ({_date(result)})")
  ax.legend(loc="lower right", fontsize=8)


def _extract_memory(result, ax):
  kinds = sorted({r["kind"] for r in result["rows"]})
  for kind in kinds:
    rows = sorted((r for r in result["rows"] if r["kind"] == kind), key=lambda r: r["n"])
    ax.plot([r["n"] for r in rows], [r["peak_rss_mb"] for r in rows], marker="o", label=kind)
  ax.set_xscale("log")
  ax.set_ylim(bottom=0)
  ax.set_xlabel("images")
  ax.set_ylabel("peak RSS (MB)")
  ax.set_title(f"extract: peak host memory vs number of images ({_date(result)})")
  ax.legend(fontsize=8)


def _extract_throughput(result, ax):
  series = {}
  for r in result["rows"]:
    label = r["library"] + (f", {r['precision']}" if r.get("precision") else "")
    series.setdefault((label, r["input"]), []).append(r)
  for (label, size), rows in sorted(series.items()):
    rows.sort(key=lambda r: r["batch"])
    ax.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], marker="o",
            color=_colour(label),
            linestyle=":" if "1 device" in label else "--" if "default" in label else "-",
            label=f"{label} ({size})")
  ax.set_xscale("log", base=2)
  ax.set_ylim(bottom=0)
  ax.set_xlabel("batch size")
  ax.set_ylabel("images / s")
  meta = result.get("meta", {})
  ax.set_title(f"Inception extraction at 299×299, {meta.get('backend', '')} "
               f"({meta.get('cpu', meta.get('machine', ''))}, {_date(result)})", fontsize=9)
  ax.legend(fontsize=7)


def _frechet_kernel(result, ax):
  routes = {}
  for block in result["dims"]:
    for r in block["rows"]:
      routes.setdefault(f"{r['route']} ({r['dtype']})", []).append((r["d"], r["seconds"]))
  for route, points in routes.items():
    points.sort()
    ax.plot([d for d, _ in points], [s * 1e3 for _, s in points], marker="o", label=route,
            linestyle="--" if route.startswith(("ablation", "FrechetReference.create")) else "-")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("feature dimension d")
  ax.set_ylabel("time (ms, log)")
  threads = result["machine"].get("threads")
  ax.set_title(f"Fréchet distance kernel, {threads} thread(s) per library ({_date(result)})",
               fontsize=9)
  ax.legend(fontsize=6)


def _scaling(result, ax):
  runs = result["runs"]
  devices = [r["devices"] for r in runs]
  bars = ax.bar([str(d) for d in devices], [r["images_per_s"] for r in runs], color="tab:blue")
  for bar, run in zip(bars, runs):
    ax.annotate(f"Δmean {run['mean_max_relative_difference_vs_1']:.0e}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                va="bottom", fontsize=8)
  ax.set_xlabel("devices" + (" (forced CPU devices)" if result["meta"].get("forced_cpu_devices")
                             else ""))
  ax.set_ylabel("images / s")
  ax.set_title(f"extract on 1-8 devices: speed and difference from 1 device ({_date(result)})",
               fontsize=9)


def _end_to_end(result, ax):
  rows = [r for r in result["rows"] if r.get("wall_s") is not None]
  labels = [r["library"] for r in rows]
  bars = ax.barh(labels, [r["wall_s"] for r in rows], color=[_colour(l) for l in labels])
  for bar, r in zip(bars, rows):
    fid = f"FID {r['fid']:.4f}" if isinstance(r["fid"], float) else "no FID"
    gpu = f", GPU {r['peak_device_mb']:.0f} MB" if r.get("peak_device_mb") else ""
    ax.annotate(f" {fid}, {r['peak_rss_mb']:.0f} MB{gpu}",
                (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel("wall time (s)")
  ax.set_title(f"FID of {result['meta']['images_per_set']} vs {result['meta']['images_per_set']} "
               f"images, end to end ({_date(result)})", fontsize=9)


def _manifold(result, ax):
  for library in sorted({r["library"] for r in result["rows"]}):
    rows = sorted((r for r in result["rows"] if r["library"] == library and "seconds" in r),
                  key=lambda r: r["n"])
    ax.plot([r["n"] for r in rows], [r["seconds"] for r in rows], marker="o", label=library,
            color=_colour(library))
    for r in rows:
      ax.annotate(f" {r['peak_rss_mb'] / 1024:.1f} GB", (r["n"], r["seconds"]), fontsize=7)
    products = [r for r in rows if "products_s" in r]
    if products:
      ax.plot([r["n"] for r in products], [r["products_s"] for r in products], linestyle="--",
              color=_colour(library), label=f"{library}: its float32 products alone")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("N generated = N reference (d = 2048)")
  ax.set_ylabel("time (s, log); labels: peak RSS")
  ax.set_title(f"precision/recall, density/coverage on CPU ({_date(result)})", fontsize=9)
  ax.legend(fontsize=8)


def _dinov2_positions(result, ax):
  rows = result["rows"]
  labels = [k for k in rows[0] if isinstance(rows[0][k], dict)]
  width = 0.8 / len(labels)
  for j, label in enumerate(labels):
    ax.bar([i + j * width for i in range(len(rows))], [r[label]["relative_l2"] for r in rows],
           width, label=label)
  ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(rows))],
                [f"{r['grid']}×{r['grid']} ({r['pixels']} px)" for r in rows])
  ax.set_ylabel("relative L2, transformers vs original route")
  ax.set_title(f"DINOv2 position tables resampled from 37×37 ({_date(result)})", fontsize=9)
  ax.legend(fontsize=8)


_DRAW = {"agreement": _agreement, "dinov2_positions": _dinov2_positions, "extract_memory": _extract_memory,
         "extract_throughput": _extract_throughput, "frechet_kernel": _frechet_kernel,
         "scaling": _scaling, "end_to_end": _end_to_end, "manifold": _manifold}


def has_plot(name):
  """Whether results/NAME has a plot kind (some benchmarks are tables only)."""
  return any(name.startswith(k) for k in _DRAW)


def draw(name, result):
  """Draws results/NAME.png for a benchmark's result dict (NAME may carry a suffix: frechet_kernel_x)."""
  kind = next((k for k in sorted(_DRAW, key=len, reverse=True) if name.startswith(k)), None)
  if kind is None:
    raise ValueError(f"{name}: no plot for this benchmark; expected a name starting with one of "
                     f"{', '.join(sorted(_DRAW))}")
  fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
  try:
    _DRAW[kind](result, ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png")
  finally:
    plt.close(fig)
  print(f"wrote {RESULTS / name}.png")


def main(names=None):
  """Redraws the PNG of each named result (default: every result that has a plot kind)."""
  for path in sorted(RESULTS.glob("*.json")):
    if names and path.stem not in names:
      continue
    if not names and not has_plot(path.stem):
      print(f"{path.stem}: a table only (no plot kind)")
      continue
    draw(path.stem, json.loads(path.read_text()))


if __name__ == "__main__":
  main(sys.argv[1:])
