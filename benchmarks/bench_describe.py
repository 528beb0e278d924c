"""Benchmarks of ``morphloop describe`` (speed and quality; not tests).

    .venv/bin/python benchmarks/bench_describe.py [--images 8] [--real] [--dim-grid]

Speed, each as a ratio against a baseline measured in the same run:
* particle images/s on 1024² synthetic fields (TIFF files) with the default (watershed) segmenter; goal ≥ 5/s on
  2 cores. Baseline: ``describe_files`` with 1 worker (one image after another in this process); measured: with
  2 worker processes, what ``morphloop describe`` does by default on 2 cores.
* texture ROIs/s (256² ROIs, equalise + db2 DWT energy); goal ≥ 200/s. Baseline: one ``wavedec2`` call per
  ROI; measured: the batched call used by ``measure_texture``.
Quality: D50 / sphericity errors on held-out synthetic fields, and with ``--real`` on the AMPIS images.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pywt
from skimage.exposure import equalize_hist

from models.describe import Describer, describe_files
from models.texture import TextureConfig, roi_wavelet_energy
from simulators.fields import make_particle_field, make_platelet_network, write_sem_tiff


def bench_particles(n_images: int) -> None:
    jobs = [(70_000 + i, {"touching": 0.4}) for i in range(n_images)]
    fields = [make_particle_field(s, **k) for s, k in jobs]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_sem_tiff(Path(tmp) / f"field{i}.tif", f.image, f.pixel_size_um) for i, f in enumerate(fields)]
        list(describe_files(paths[:1]))  # warm imports and caches
        rates = {}
        for workers in (1, min(2, os.cpu_count() or 1)):
            t0 = time.perf_counter()
            results = [r for _, r in describe_files(paths, workers=workers, keep_arrays=False)]
            rates[workers] = n_images / (time.perf_counter() - t0)
    serial, parallel = rates[1], rates[max(rates)]
    print(f"particles 1024² (files, as `morphloop describe` reads them): 1 worker {serial:.2f} img/s (baseline), "
          f"{max(rates)} workers {parallel:.2f} img/s, ratio {parallel / serial:.2f}x; goal 5 img/s")
    errs = np.array([[r.descriptors["d50_um"] / f.summary()["d50_um"] - 1,
                      r.descriptors["sphericity_mean"] - f.summary()["sphericity_mean"],
                      r.descriptors["sphericity_std"] - f.summary()["sphericity_std"]] for r, f in zip(results, fields)])
    print(f"held-out synthetic fields (touching 0.4, n={n_images}): max |D50 err| {np.abs(errs[:, 0]).max():.1%}, "
          f"max |Ψ mean err| {np.abs(errs[:, 1]).max():.3f}, max |Ψ std err| {np.abs(errs[:, 2]).max():.3f}")


def bench_texture(n_rois: int = 256) -> None:
    cfg = TextureConfig()
    image = make_platelet_network(5, width_px=4, shape=(1024, 1024), pixel_size_um=cfg.reference_pixel_size_um)
    rng = np.random.default_rng(0)
    corners = rng.integers(0, 1024 - 256, size=(n_rois, 2))
    rois = np.stack([image[y: y + 256, x: x + 256] for y, x in corners]).astype(np.float64)
    t0 = time.perf_counter()
    for roi in rois:  # baseline: one decomposition per ROI
        eq = equalize_hist(roi, nbins=256)
        coeffs = pywt.wavedec2(eq - eq.mean(), cfg.wavelet, mode="periodization", level=cfg.levels)
        sum(np.mean(b**2) for lvl in coeffs[1:] for b in lvl)
    baseline = n_rois / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    roi_wavelet_energy(rois, cfg)
    batched = n_rois / (time.perf_counter() - t0)
    print(f"texture ROIs 256²: per-ROI loop {baseline:.0f} ROI/s (baseline), batched {batched:.0f} ROI/s, "
          f"ratio {batched / baseline:.2f}x; goal 200 ROI/s")


def _ampis():
    """The AMPIS images (sorted) and their manual summary table, or None (with a message) when absent."""
    import pandas as pd

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_sem_ampis"
    if not data.is_dir():
        print(f"real data absent ({data}); skipped")
        return None
    return sorted((data / "images").glob("*.png")), pd.read_csv(data / "truth" / "summary.csv").set_index("image")


def bench_real() -> None:
    if (ampis := _ampis()) is None:
        return
    images, truth = ampis
    describer = Describer()
    for image in images:
        r = describer.describe(image, 1.0)
        t = truth.loc[image.name]
        print(f"real {image.name}: n {r.descriptors['n_particles']}/{t.n_not_touching_border}  "
              f"D50 {r.descriptors['d50_um']:.1f}/{t.D50_number_px_interior} px "
              f"({r.descriptors['d50_um'] / t.D50_number_px_interior - 1:+.1%})  median Ψ "
              f"{r.particles.sphericity.median():.3f}/{t.median_sphericity_interior} "
              f"({r.particles.sphericity.median() - t.median_sphericity_interior:+.3f})")


def bench_dim_grid() -> None:
    """Sensitivity of the AMPIS number D50 to the dim-split thresholds (a 3 x 3 x 3 grid around the defaults)."""
    import dataclasses
    import itertools

    from models.imageio import read_image
    from models.particles import measure_particles, size_statistics
    from models.segmentation import WatershedConfig, foreground_mask, split_dim_neighbours, split_touching

    if (ampis := _ampis()) is None:
        return
    images, truth = ampis
    base = WatershedConfig()
    frames = []
    for image in images:
        pixels = read_image(image, 1.0).pixels
        frames.append((image.name, pixels, split_touching(foreground_mask(pixels, base), base)))
    worst_per_point = []
    for ratio, outline, contrast in itertools.product((0.65, 0.70, 0.75), (0.30, 0.35, 0.40), (0.07, 0.08, 0.09)):
        config = dataclasses.replace(base, dim_ratio=ratio, dim_min_outline_fraction=outline,
                                     dim_min_edge_contrast=contrast)
        errors = [size_statistics(measure_particles(split_dim_neighbours(pixels, labels, config), 1.0))["d50_um"]
                  / truth.loc[name].D50_number_px_interior - 1 for name, pixels, labels in frames]
        worst_per_point.append(max(map(abs, errors)))
        print(f"dim grid ratio {ratio:.2f} outline {outline:.2f} contrast {contrast:.2f}: D50 errors "
              + " ".join(f"{e:+.1%}" for e in errors))
    within = sum(w <= 0.08 for w in worst_per_point)
    print(f"dim grid: {within}/{len(worst_per_point)} points hold all four images within ±8 %; "
          f"worst {max(worst_per_point):.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--real", action="store_true", help="also report the real AMPIS figures")
    parser.add_argument("--dim-grid", action="store_true",
                        help="only the AMPIS D50 over a grid of the dim-split thresholds")
    args = parser.parse_args()
    if args.dim_grid:
        bench_dim_grid()
        raise SystemExit(0)
    bench_texture()
    bench_particles(args.images)
    if args.real:
        bench_real()
