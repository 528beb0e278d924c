"""Detecting the instrument info bar (data bar) of an SEM micrograph.

SEMs stamp a band across the full width at the bottom (sometimes the top) of the frame: a flat, noise-free
background with text and a scale bar. Image rows carry detector noise; bar rows are flat: most horizontally
adjacent pixels are exactly equal. We take the longest run of flat rows that starts at the bottom (or top) edge.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A row is "flat" when at least this fraction of adjacent pixel pairs differ by less than one 8-bit level.
FLAT_ROW_FRACTION = 0.6
#: Bars shorter than this fraction of the height are ignored (a stray flat line is no bar).
MIN_BAR_FRACTION = 0.015
#: A run of flat rows taller than this fraction is not a bar but a blank image region.
MAX_BAR_FRACTION = 0.35


@dataclass(frozen=True)
class InfoBar:
    """Rows ``[start, stop)`` hold the instrument bar; ``side`` is ``"bottom"``, ``"top"`` or ``"none"``."""

    start: int
    stop: int
    side: str

    @property
    def height(self) -> int:
        return self.stop - self.start

    def analysis_rows(self, height: int) -> slice:
        """The rows of the image that hold the micrograph itself."""
        if self.side == "bottom":
            return slice(0, self.start)
        if self.side == "top":
            return slice(self.stop, height)
        return slice(0, height)


def flat_row_fraction(image: np.ndarray, tolerance: float = 1.0 / 255) -> np.ndarray:
    """Fraction of horizontally adjacent pixel pairs per row that differ by less than ``tolerance`` (``H``)."""
    diffs = np.abs(np.diff(image, axis=1))
    return (diffs < tolerance * 0.5).mean(axis=1)


def detect_info_bar(image: np.ndarray) -> InfoBar:
    """Find the instrument info bar of ``image`` (``H x W`` float in [0, 1]).

    Returns
    -------
    InfoBar
        ``side="none"`` and an empty span when there is no bar.
    """
    h = image.shape[0]
    flat = flat_row_fraction(image) >= FLAT_ROW_FRACTION
    min_rows = max(3, int(round(MIN_BAR_FRACTION * h)))
    max_rows = int(MAX_BAR_FRACTION * h)
    for side, rows in (("bottom", flat[::-1]), ("top", flat)):
        run = _leading_run(rows, allow_gap=2)
        if min_rows <= run <= max_rows:
            return InfoBar(h - run, h, side) if side == "bottom" else InfoBar(0, run, side)
    return InfoBar(h, h, "none")


def _leading_run(flags: np.ndarray, allow_gap: int) -> int:
    """Length of the run of True at the start of ``flags``, bridging gaps of up to ``allow_gap`` rows
    (text glyphs can make a single bar row look busy)."""
    n, i, last_true = len(flags), 0, -1
    while i < n:
        if flags[i]:
            last_true = i
        elif i - last_true > allow_gap:
            break
        i += 1
    return last_true + 1
