"""Reproduce the simulated microscope's frozen texture calibration (simulators/microscope.py).

    .venv/bin/python benchmarks/calibrate_microscope.py

Renders high-magnification frames (1024², 15k×, 0.010 µm/px) of platelets of several widths through the same
path as the simulated SEM, measures them with ``describe``'s texture pipeline, and prints the width -> texture
table to paste into ``TEXTURE_CALIBRATION_*``. The simulator cannot import models/ (layering), so the table
is frozen there.
"""
from __future__ import annotations

import numpy as np

from models.describe import Describer, DescribeOptions
from models.imageio import SEMImage
from simulators.fields import INFO_BAR_FRACTION, draw_info_bar, make_platelet_field
from simulators.microscope import MAGNIFICATIONS, pixel_size_for

WIDTHS_PX = [1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 16.0]
SEEDS = [1, 2, 3]


def measure(width_px: float, seed: int, aspect: float = 4.0) -> float:
    size = 1024
    pixel_size = pixel_size_for(MAGNIFICATIONS["high"], size)
    bar = int(round(INFO_BAR_FRACTION * size))
    image = make_platelet_field(seed, width_px, (size - bar, size), aspect=aspect)
    image = np.concatenate([image, np.zeros((bar, size), np.float32)])
    draw_info_bar(image, bar, pixel_size, np.random.default_rng(seed))
    result = Describer(DescribeOptions(kind="texture")).describe_array(SEMImage(image, pixel_size, "calib", "x"))
    return float(result.descriptors["texture"])


def main() -> None:
    rows = []
    for width in WIDTHS_PX:
        values = [measure(width, s) for s in SEEDS]
        rows.append((width, float(np.mean(values))))
        print(f"width {width:5.1f} px: texture {np.mean(values):.3f} (seeds {np.round(values, 3).tolist()})")
    print("TEXTURE_CALIBRATION_WIDTH_PX =", [w for w, _ in rows])
    print("TEXTURE_CALIBRATION_TEXTURE =", [round(t, 3) for _, t in rows])


if __name__ == "__main__":
    main()
