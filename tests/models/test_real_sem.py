"""Checks on real SEM images with hand-drawn outlines (../shared/data/real_sem_ampis, see its README).

Bars (issue): number D50 within ±8 % and median sphericity within ±0.05 of the manual values with the default
segmenter. The sphericity bar holds. The D50 bar does not yet. Diagnosis (matching our particles to the manual
ones by IoU): matched particles agree in diameter within 1.5 %, but 25-30 % of the manual particles, median
~20 px, are dim particles lying beside or half behind bright ones; the distance-transform watershed keeps them
merged with the bright neighbour (the silhouette has no neck), so the number median comes out 34-74 % high
(figures in benchmarks/bench_describe.py --real). Splitting them needs an intensity cue (a dim region inside a
bright object's silhouette), not a shape cue. That test is marked xfail (strict) so it turns red the day the
bar is reached and the marker must go.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from models.describe import Describer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real_sem_ampis"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real SEM data not found at {DATA} (../shared absent)")


@pytest.fixture(scope="module")
def measured() -> pd.DataFrame:
    truth = pd.read_csv(DATA / "truth" / "summary.csv").set_index("image")
    describer = Describer()
    rows = []
    for image in sorted((DATA / "images").glob("*.png")):
        result = describer.describe(image, pixel_size_um=1.0)  # sizes in pixels, as the manual values
        t = truth.loc[image.name]
        rows.append({
            "image": image.name,
            "d50_rel_error": result.descriptors["d50_um"] / t.D50_number_px_interior - 1,
            "median_sphericity_error": float(result.particles.sphericity.median()) - t.median_sphericity_interior,
        })
    return pd.DataFrame(rows)


def test_real_median_sphericity_within_005(measured):
    assert len(measured) == 4
    assert measured.median_sphericity_error.abs().max() <= 0.05, measured.to_string()


@pytest.mark.xfail(strict=True, reason="dim particles beside bright ones stay merged: D50 +34..+74 %")
def test_real_number_d50_within_8_percent(measured):
    assert measured.d50_rel_error.abs().max() <= 0.08, measured.to_string()
