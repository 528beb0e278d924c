"""Tests for models.infobar: the flat instrument bar is found at the bottom or the top, exactly, and never on
a micrograph that has none (synthetic fields and real SEM images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.imageio import read_image
from models.infobar import InfoBar, detect_info_bar, flat_row_fraction
from simulators.fields import draw_info_bar, make_particle_field

REAL_IMAGES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real_sem_ampis" / "images"

CASES = [(0, (512, 512)), (1, (256, 384)), (2, (384, 256)), (3, (1024, 640))]


def quantised(image: np.ndarray) -> np.ndarray:
    """What an 8-bit file holds."""
    return (np.round(image * 255) / 255).astype(np.float32)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"seed{c[0]}-{c[1][0]}x{c[1][1]}")
def fields(request):
    seed, shape = request.param
    kwargs = dict(shape=shape, n_particles=8, d50_px=min(shape) / 10)
    return (make_particle_field(seed, **kwargs, info_bar=True),
            make_particle_field(seed, **kwargs, info_bar=False))


def real_images() -> list[Path]:
    if not REAL_IMAGES.is_dir():
        pytest.skip(f"real SEM images absent ({REAL_IMAGES}): ../shared/data is not mounted here")
    paths = sorted(REAL_IMAGES.glob("*.png"))
    if not paths:
        pytest.skip(f"no PNG images in {REAL_IMAGES}")
    return paths


def test_bottom_bar_found_exactly(fields):
    with_bar, _ = fields
    h = with_bar.image.shape[0]
    assert with_bar.info_bar_rows > 0
    for image in (with_bar.image, quantised(with_bar.image)):
        bar = detect_info_bar(image)
        assert bar == InfoBar(h - with_bar.info_bar_rows, h, "bottom")
        assert bar.height == with_bar.info_bar_rows
        assert bar.analysis_rows(h) == slice(0, h - with_bar.info_bar_rows)


def test_top_bar_found_exactly(fields):
    with_bar, _ = fields
    flipped = np.ascontiguousarray(with_bar.image[::-1])
    h = flipped.shape[0]
    bar = detect_info_bar(flipped)
    assert bar == InfoBar(0, with_bar.info_bar_rows, "top")
    rows = bar.analysis_rows(h)
    assert rows == slice(with_bar.info_bar_rows, h)
    # what is left is exactly the micrograph, none of it cut
    np.testing.assert_array_equal(flipped[rows], with_bar.image[: h - with_bar.info_bar_rows][::-1])


def test_no_bar_on_field_without_bar(fields):
    _, no_bar = fields
    h = no_bar.image.shape[0]
    for image in (no_bar.image, quantised(no_bar.image)):
        bar = detect_info_bar(image)
        assert bar.side == "none" and bar.height == 0
        assert bar.analysis_rows(h) == slice(0, h)


def test_flat_row_fraction_separates_bar_rows_from_image_rows(fields):
    with_bar, _ = fields
    frac = flat_row_fraction(with_bar.image)
    h = with_bar.image.shape[0]
    assert frac.shape == (h,)
    assert frac[: h - with_bar.info_bar_rows].max() < 0.3  # noisy micrograph rows
    assert np.median(frac[h - with_bar.info_bar_rows:]) > 0.9  # flat bar rows (text glyphs aside)


def test_stray_flat_rows_are_no_bar():
    f = make_particle_field(5, shape=(256, 256), n_particles=6, d50_px=25, info_bar=False)
    image = f.image.copy()
    image[-2:] = 0.5  # two dead rows: below the minimum bar height
    assert detect_info_bar(image).side == "none"


def test_tall_blank_region_is_no_bar():
    f = make_particle_field(6, shape=(256, 256), n_particles=6, d50_px=25, info_bar=False)
    image = f.image.copy()
    image[128:] = 0.0  # half the frame blank (e.g. beyond the specimen): not an instrument bar
    bar = detect_info_bar(image)
    assert bar.side == "none" and bar.analysis_rows(256) == slice(0, 256)


def test_no_bar_on_pure_noise():
    rng = np.random.default_rng(0)
    assert detect_info_bar(rng.random((200, 300)).astype(np.float32)).side == "none"


def test_no_false_bar_on_real_sem_images():
    for path in real_images():
        image = read_image(path, 1.0).pixels
        bar = detect_info_bar(image)
        assert bar.side == "none", f"{path.name}: false {bar.side} bar of {bar.height} rows"
        assert bar.analysis_rows(image.shape[0]) == slice(0, image.shape[0])


def test_bar_stamped_on_real_sem_image_found():
    path = real_images()[0]
    image = read_image(path, 1.0).pixels.copy()
    h = image.shape[0]
    rows = 70
    draw_info_bar(image, rows, 0.05, np.random.default_rng(0))
    assert detect_info_bar(image) == InfoBar(h - rows, h, "bottom")
    assert detect_info_bar(np.ascontiguousarray(image[::-1])) == InfoBar(0, rows, "top")
