"""What every benchmark records: the machine, versions and date; then JSON, Markdown and a PNG.

``write(name, result, markdown)`` puts ``benchmarks/results/NAME.json``, ``NAME.md`` and, when
matplotlib is installed (``pip install -e ".[benchmarks]"``), ``NAME.png`` drawn by
:mod:`benchmarks.plots`. ``python benchmarks/plots.py`` redraws every PNG from the JSON files.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

_PACKAGES = ("jaxmetrics", "jax", "jaxlib", "flax", "numpy", "scipy", "torch", "torch-fidelity",
             "torchmetrics", "pytorch-fid", "clean-fid")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine(**extra) -> dict:
  """The machine a result was measured on: CPU, cores, accelerators, versions, UTC date."""
  import jax  # pylint: disable=g-import-not-at-top  (the callers fix XLA flags before importing)
  devices = jax.devices()
  versions = {}
  for package in _PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "cpu": cpu_model(), "cores": os.cpu_count(), "backend": jax.default_backend(),
          "devices": f"{len(devices)} x {devices[0].device_kind}",
          "platform": platform.platform(), "python": platform.python_version(),
          "versions": versions, **extra}


def describe(m: dict) -> str:
  """One Markdown line naming the machine, devices, date and versions of a ``machine()`` dict."""
  versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
  return (f"{m['date']} · {m['cpu']}, {m['cores']} cores · JAX backend {m['backend']} "
          f"({m['devices']}) · {versions}")


def memory_mb() -> dict:
  """This process's resident memory now and its high-water mark, in MB: ``{"rss", "peak"}``
  (``VmRSS`` and ``VmHWM`` of ``/proc/self/status``; the peak only ever grows)."""
  values = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, rest = line.partition(":")
      if key in ("VmRSS", "VmHWM"):
        values["rss" if key == "VmRSS" else "peak"] = int(rest.split()[0]) / 1024  # kB -> MB
  return values


def best_of(fn, repeats: int):
  """Calls ``fn()`` once to warm up (JAX compilation, cuDNN plans, allocator caches), then
  ``repeats`` times, timed. ``fn`` must return only once its work is done (a JAX result blocked
  on or copied to the host). Returns ``(fastest seconds, median seconds, last output)``."""
  out = fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return min(times), statistics.median(times), out


def write(name: str, result: dict, markdown: str) -> None:
  """Writes results/NAME.json and NAME.md, then NAME.png if matplotlib can be imported."""
  RESULTS.mkdir(parents=True, exist_ok=True)
  (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
  (RESULTS / f"{name}.md").write_text(markdown.rstrip("\n") + "\n")
  print(markdown)
  try:
    import plots  # pylint: disable=g-import-not-at-top  (beside this file, on sys.path[0])
  except ImportError as e:  # matplotlib is in the "benchmarks" extra only
    print(f"no {name}.png: {e}; pip install -e '.[benchmarks]' and run benchmarks/plots.py")
    return
  if plots.has_plot(name):
    plots.draw(name, result)
