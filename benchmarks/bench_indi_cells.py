"""InDI on several unseen simulated cells: the issue's bars (resolution >= 2x, CNR >= 3x LQ) cell by cell.

    .venv/bin/python benchmarks/bench_indi_cells.py [--model DIR] [--cells 7 11 23] [--steps 8]
        [--noise-seeds S...] [--json]

Runs ``morphloop tomo dry-run --cell C --json`` for each cell (about 75 s each on 2 cores) and tabulates, over the
HQ field (HQ's particle mask) and on the same particles at each state of charge (the enhanced slices' mask), the
ratios LQ / enhanced resolution and enhanced / LQ CNR, plus the noise-free phantom's CNR: the ceiling of a
faithful image. One cell can pass by luck of its particles; this shows how the model does on cells it never saw.
``--noise-seeds`` scans every cell again with other detector noise draws (``tomo dry-run --noise-seed``): the
HQ-field LQ resolution is one edge-profile fit over few particles and moves by up to x1.4 between draws, so the
table then ends with each cell's mean ratios over its draws.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("morphloop")


def dry_run(cell: int, model: Path | None, work: Path, steps: int, noise_seed: int | None = None) -> dict:
    command = [str(CLI), "tomo", "dry-run", "--data-dir", str(work / f"cell{cell}-noise{noise_seed}"), "--cell",
               str(cell), "--steps", str(steps), "--json"]
    if noise_seed is not None:
        command += ["--noise-seed", str(noise_seed)]
    if model is not None:
        command += ["--model", str(model)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"dry run of cell {cell} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratios(summary: dict) -> dict:
    res, cnr = summary["resolution_nm"], summary["cnr"]
    field = {"resolution_x": res["lq"] / res["enhanced"], "cnr_x": cnr["enhanced"] / cnr["lq"],
             "sharper_than_n1": res["enhanced"] < summary["one_step"]["resolution_nm"],
             "phantom_cnr_x": cnr["truth"] / cnr["lq"]}
    states = [{"soc": t["soc"], "resolution_x": t["lq"]["resolution_nm"] / t["enhanced"]["resolution_nm"],
               "cnr_x": t["enhanced"]["cnr"] / t["lq"]["cnr"],
               "sharper_than_n1": t["enhanced"]["resolution_nm"] < t["one_step"]["resolution_nm"],
               "phantom_cnr": t["phantom"]["cnr"]} for t in summary["timepoints"]]
    return {"hq_field": field, "same_particles": states}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="InDI model (default: the shipped one)")
    parser.add_argument("--cells", type=int, nargs="+", default=[7, 11, 23])
    parser.add_argument("--steps", type=int, default=8, help="InDI sampling steps (the dry run's default: 8)")
    parser.add_argument("--noise-seeds", type=int, nargs="+", default=[],
                        help="also scan each cell with these detector noise seeds (default: the cell's own only)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    draws = [None, *args.noise_seeds]
    with tempfile.TemporaryDirectory() as work:
        rows = {(cell, noise): ratios(dry_run(cell, args.model, Path(work), args.steps, noise))
                for cell in args.cells for noise in draws}
    if args.json:
        print(json.dumps({"model": str(args.model or "shipped"), "steps": args.steps,
                          "cells": [{"cell": cell, "noise_seed": noise, **r} for (cell, noise), r in rows.items()]}))
        return
    print(f"model {args.model or 'shipped'}, {args.steps} steps; bars: resolution >= 2x LQ, CNR >= 3x LQ")
    print(f"{'cell':>4} {'noise':>5} {'where':>18} {'res x':>6} {'CNR x':>6} {'< N=1':>6} {'phantom':>8}")
    for (cell, noise), r in rows.items():
        f, noise = r["hq_field"], "cell" if noise is None else noise
        print(f"{cell:>4} {noise:>5} {'HQ field':>18} {f['resolution_x']:>6.2f} {f['cnr_x']:>6.2f} "
              f"{str(f['sharper_than_n1']):>6} {f['phantom_cnr_x']:>7.2f}x")
        for s in r["same_particles"]:
            print(f"{cell:>4} {noise:>5} {'soc ' + format(s['soc'], '.2f'):>18} {s['resolution_x']:>6.2f} "
                  f"{s['cnr_x']:>6.2f} {str(s['sharper_than_n1']):>6} {s['phantom_cnr']:>8.2f}")
    every = [v for r in rows.values() for v in (r["hq_field"], *r["same_particles"])]
    print(f"resolution >= 2x in {sum(v['resolution_x'] >= 2 for v in every)}/{len(every)}, "
          f"CNR >= 3x in {sum(v['cnr_x'] >= 3 for v in every)}/{len(every)} "
          "(phantom column: the noise-free phantom's CNR, as a multiple of LQ's over the HQ field)")
    if len(draws) > 1:
        print(f"mean over {len(draws)} noise draws per cell:")
        for cell in args.cells:
            field = [rows[cell, noise]["hq_field"] for noise in draws]
            states = list(zip(*(rows[cell, noise]["same_particles"] for noise in draws)))
            means = [("HQ field", field)] + [(f"state {i}", list(s)) for i, s in enumerate(states)]
            print(f"{cell:>4} " + "; ".join(
                f"{where} res x{sum(v['resolution_x'] for v in vs) / len(vs):.2f} "
                f"(min {min(v['resolution_x'] for v in vs):.2f}), CNR x{sum(v['cnr_x'] for v in vs) / len(vs):.2f}"
                for where, vs in means))


if __name__ == "__main__":
    main()
