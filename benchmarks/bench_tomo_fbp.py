"""Speed of the filtered back-projection (models.tomo_reconstruction.fbp); a benchmark, not a test.

    .venv/bin/python benchmarks/bench_tomo_fbp.py [--size 512] [--repeats 3] [--workers 1 2]

Seconds per ``size²`` slice for 180 and 360 angles (goal <= 0.5 s on 2 cores), the ratio against
:func:`skimage.transform.iradon` measured in the same run (baseline), the agreement of the two slices, and the
time of :func:`find_rotation_center` on one sinogram. Best of ``--repeats`` runs (the machine may be shared).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from models.tomo_reconstruction import fbp, find_rotation_center


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    image = resize(shepp_logan_phantom(), (args.size, args.size), anti_aliasing=True)
    inside = np.hypot(*np.ogrid[-args.size // 2:args.size - args.size // 2,
                                 -args.size // 2:args.size - args.size // 2]) < 0.45 * args.size
    for n_angles in (180, 360):
        angles = np.linspace(0, 180, n_angles, endpoint=False)
        sino = radon(image, angles, circle=True)
        t_ref, ref = best_time(lambda: iradon(sino, angles, circle=True), args.repeats)
        print(f"{args.size}² slice, {n_angles} angles: iradon {t_ref:.3f} s (baseline)")
        for workers in args.workers:
            t, out = best_time(lambda: fbp(sino.T, angles, workers=workers), args.repeats)
            r = np.corrcoef(out[inside], ref[inside])[0, 1]
            print(f"  fbp workers={workers}: {t:.3f} s per slice, {t_ref / t:.1f}x faster than iradon, "
                  f"r(fbp, iradon) = {r:.5f}")
    angles = np.linspace(0, 180, 180, endpoint=False)
    t, centre = best_time(lambda: find_rotation_center(radon(image, angles, circle=True).T, angles), 1)
    print(f"find_rotation_center, {args.size} columns x 180 angles: {t:.2f} s (found {centre:.2f}, "
          f"true {args.size // 2})")


if __name__ == "__main__":
    main()
