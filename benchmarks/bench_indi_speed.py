"""Speed of InDI enhancement per slice, float32 vs bfloat16 autocast in the same run; a benchmark, not a test.

    .venv/bin/python benchmarks/bench_indi_speed.py [--model DIR] [--size 512] [--steps 8] [--repeats 3]

Seconds per ``size x size`` output slice (an LQ slice of ``size/2``, enhanced 2x) with the shipped model at
``--steps`` (goal <= 2 s at 512 and 8 steps on 2 cores), best of ``--repeats``. The ratio is float32 over
bfloat16 on the same slice; their agreement is the mean absolute difference as a share of the slice's spread.
The slice is a reconstructed LQ slice of a simulated cell (cell 7, full charge), tiled to the size, so the
network sees the grey values it was trained on.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_tomo_fbp import best_time  # benchmarks/ is on sys.path when run as a script
from flows.tomo import DEFAULT_INDI_MODEL, ScanData, lq_over_hq_field, reconstruct_slices
from models.indi import InDIModel
from models.precision import native_bfloat16
from simulators.tomography import HQ, LQ, ElectrodeCell, simulate_scan


def lq_slice(size: int) -> np.ndarray:
    """A reconstructed LQ slice of simulated cell 7 over the HQ field, tiled (mirrored) to ``size/2`` square."""
    quality = replace(LQ, n_rows=4)
    scan = simulate_scan(ElectrodeCell(7, depth_um=4 * LQ.voxel_um), 1.0, quality, seed=7)
    volume, _ = reconstruct_slices(ScanData(scan.projections, scan.flats, scan.darks, scan.angles_deg),
                                   LQ.voxel_nm)
    field = lq_over_hq_field(volume, replace(HQ, n_rows=4), quality)[0]
    return np.pad(field, [(0, max(0, size // 2 - n)) for n in field.shape], mode="symmetric")[:size // 2, :size // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_INDI_MODEL)
    parser.add_argument("--size", type=int, default=512, help="output slice edge (px); the LQ slice is half")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = InDIModel.load(args.model)
    lq = lq_slice(args.size)
    model.enhance(lq[:64, :64], steps=1)  # warm-up: oneDNN picks its kernels on the first call
    seconds, images = {}, {}
    for precision in ("float32", "bfloat16"):
        seconds[precision], images[precision] = best_time(
            lambda: model.enhance(lq, steps=args.steps, precision=precision), args.repeats)
    full, half = images["float32"], images["bfloat16"]
    result = {"output_px": args.size, "steps": args.steps, "threads": args.threads,
              "native_bfloat16": native_bfloat16(), "seconds_float32": seconds["float32"],
              "seconds_bfloat16": seconds["bfloat16"], "speedup": seconds["float32"] / seconds["bfloat16"],
              "mean_abs_diff_of_spread": float(np.abs(full - half).mean() / full.std())}
    if args.json:
        print(json.dumps(result))
        return
    print(f"InDI, {args.size}² output slice, {args.steps} steps, {args.threads} threads "
          f"(CPU bfloat16 instructions: {result['native_bfloat16']}):")
    print(f"  float32  {seconds['float32']:.2f} s per slice")
    print(f"  bfloat16 {seconds['bfloat16']:.2f} s per slice (x{result['speedup']:.2f}; mean |difference| "
          f"{100 * result['mean_abs_diff_of_spread']:.2f} % of the slice's spread); goal <= 2 s")


if __name__ == "__main__":
    main()
