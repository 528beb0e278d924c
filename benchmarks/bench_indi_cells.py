"""InDI on several unseen simulated cells: the issue's bars (resolution >= 2x, CNR >= 3x LQ) cell by cell.

    .venv/bin/python benchmarks/bench_indi_cells.py [--model DIR] [--cells 7 11 23] [--steps 8] [--json]

Runs ``morphloop tomo dry-run --cell C --json`` for each cell (about 75 s each on 2 cores) and tabulates, over the
HQ field (HQ's particle mask) and on the same particles at each state of charge (the enhanced slices' mask), the
ratios LQ / enhanced resolution and enhanced / LQ CNR, plus the noise-free phantom's CNR: the ceiling of a
faithful image. One cell can pass by luck of its particles; this shows how the model does on cells it never saw.
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


def dry_run(cell: int, model: Path | None, work: Path, steps: int) -> dict:
    command = [str(CLI), "tomo", "dry-run", "--data-dir", str(work / f"cell{cell}"), "--cell", str(cell),
               "--steps", str(steps), "--json"]
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = {cell: ratios(dry_run(cell, args.model, Path(work), args.steps)) for cell in args.cells}
    if args.json:
        print(json.dumps({"model": str(args.model or "shipped"), "steps": args.steps, "cells": rows}))
        return
    print(f"model {args.model or 'shipped'}, {args.steps} steps; bars: resolution >= 2x LQ, CNR >= 3x LQ")
    print(f"{'cell':>4} {'where':>18} {'res x':>6} {'CNR x':>6} {'< N=1':>6} {'phantom':>8}")
    for cell, r in rows.items():
        f = r["hq_field"]
        print(f"{cell:>4} {'HQ field':>18} {f['resolution_x']:>6.2f} {f['cnr_x']:>6.2f} "
              f"{str(f['sharper_than_n1']):>6} {f['phantom_cnr_x']:>7.2f}x")
        for s in r["same_particles"]:
            print(f"{cell:>4} {'soc ' + format(s['soc'], '.2f'):>18} {s['resolution_x']:>6.2f} {s['cnr_x']:>6.2f} "
                  f"{str(s['sharper_than_n1']):>6} {s['phantom_cnr']:>8.2f}")
    every = [v for r in rows.values() for v in (r["hq_field"], *r["same_particles"])]
    print(f"resolution >= 2x in {sum(v['resolution_x'] >= 2 for v in every)}/{len(every)}, "
          f"CNR >= 3x in {sum(v['cnr_x'] >= 3 for v in every)}/{len(every)} "
          "(phantom column: the noise-free phantom's CNR, as a multiple of LQ's over the HQ field)")


if __name__ == "__main__":
    main()
