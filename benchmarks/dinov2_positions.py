"""How far transformers' DINOv2 position interpolation is from the original's, on random tables.

Run by hand (not a test), from the repository root (seconds):

  python benchmarks/dinov2_positions.py

The hub model resamples its 37 × 37 position table to a ``g × g`` grid with torch's bicubic
``interpolate(scale_factor=(g + 0.1) / 37)``; transformers' ``Dinov2Model`` with
``size=(g, g)``. For each target grid (16: 224 px, the FD_DINOv2 input; 18: 252 px; 32: 448 px)
this measures, with jaxmetrics' two routes (both checked against torch's ``interpolate`` in
``tests/test_dinov2.py``):

* the largest shift of a sampling position between the routes, in source cells;
* the relative L2 difference and the largest absolute difference of the resampled tables, for
  1024 channels of i.i.d. N(0, 1) values (the worst case: no smoothness) and of smooth fields
  (one 2-D sinusoid per channel, 0.5–3 cycles across the grid, random phase; a pretrained table is
  smooth, but none can be downloaded here to measure);
* jaxmetrics' original route against torch's ``interpolate`` with the original's arguments
  (largest absolute difference: round-off).

Writes ``benchmarks/results/dinov2_positions.json`` and ``.md``.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _results  # noqa: E402
from jaxmetrics.networks import dinov2  # noqa: E402

GRID = 37
DIM = 1024


def _tables(rng):
  random = rng.standard_normal((1 + GRID * GRID, DIM)).astype(np.float32)
  yy, xx = np.meshgrid(np.linspace(0, 1, GRID), np.linspace(0, 1, GRID), indexing="ij")
  freq = rng.uniform(0.5, 3.0, (DIM, 2))
  phase = rng.uniform(0, 2 * np.pi, DIM)
  field = np.sin(2 * np.pi * (freq[:, 0] * yy[..., None] + freq[:, 1] * xx[..., None]) + phase)
  smooth = np.concatenate([np.zeros((1, DIM)), field.reshape(-1, DIM)]).astype(np.float32)
  return {"random N(0,1)": random, "smooth sinusoids": smooth}


def _relative_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
  rng = np.random.RandomState(0)
  tables = _tables(rng)
  rows = []
  for g in (16, 18, 32):
    shift = {}
    for positions in dinov2.POSITIONS:
      s = (float(g + 0.1) / GRID) if positions == "original" else None
      scale = np.float64(np.float32(1.0 / s)) if s else np.float64(np.float32(GRID / g))
      shift[positions] = scale * (np.arange(g) + 0.5) - 0.5
    row = {"grid": g, "pixels": 14 * g,
           "max_shift_cells": float(np.abs(shift["original"] - shift["transformers"]).max())}
    for label, table in tables.items():
      original = np.asarray(dinov2.interpolate_positions(table, (g, g)))[1:]
      hf = np.asarray(dinov2.interpolate_positions(table, (g, g), positions="transformers"))[1:]
      row[label] = {"relative_l2": _relative_l2(hf, original),
                    "max_abs": float(np.abs(hf - original).max())}
    patch = torch.from_numpy(tables["random N(0,1)"][1:]).reshape(1, GRID, GRID, DIM)
    ref = torch.nn.functional.interpolate(
        patch.permute(0, 3, 1, 2), scale_factor=(float(g + 0.1) / GRID,) * 2, mode="bicubic",
        antialias=False).permute(0, 2, 3, 1).reshape(g * g, DIM).numpy()
    ours = np.asarray(dinov2.interpolate_positions(tables["random N(0,1)"], (g, g)))[1:]
    row["original_vs_torch_max_abs"] = float(np.abs(ours - ref).max())
    rows.append(row)
  result = {"machine": _results.machine(), "source_grid": GRID, "channels": DIM, "rows": rows}
  lines = ["# DINOv2 position interpolation: transformers' route vs the original's", "",
           _results.describe(result["machine"]), "",
           f"{GRID}×{GRID} table, {DIM} channels. Relative L2 / max |Δ| of transformers' "
           "`size=(g, g)` against the original's `scale_factor=(g + 0.1)/37`.", "",
           "| grid (px) | max shift (cells) | random N(0,1) | smooth sinusoids | ours vs torch "
           "(original route) |", "|---|---|---|---|---|"]
  for r in rows:
    cells = [f"{r[k]['relative_l2']:.3g} / {r[k]['max_abs']:.3g}" for k in tables]
    lines.append(f"| {r['grid']} ({r['pixels']}) | {r['max_shift_cells']:.3f} | {cells[0]} | "
                 f"{cells[1]} | {r['original_vs_torch_max_abs']:.2g} |")
  _results.write(sys.argv[1] if len(sys.argv) > 1 else "dinov2_positions", result,
                 "\n".join(lines))


if __name__ == "__main__":
  main()
