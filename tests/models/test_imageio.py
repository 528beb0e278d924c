"""Tests for models.imageio: any stored image -> gray float in [0, 1], pixel size from the flag or the tags,
and clear refusals (missing, not an image, too large, bad calibration)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image, PngImagePlugin

import models.imageio as imageio
from models.imageio import ImageInputError, read_image, to_gray_float, validate_pixel_size
from simulators.fields import make_particle_field, write_sem_tiff


@pytest.fixture(scope="module")
def field():
    return make_particle_field(0, shape=(128, 160), n_particles=6, d50_px=24)


@pytest.fixture(scope="module")
def gray8() -> np.ndarray:
    return (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)


# ------------------------------------------------------------------------------------ to_gray_float
def test_integer_images_scale_by_dtype_range():
    a8 = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_allclose(to_gray_float(a8), [[0, 128 / 255, 1]], atol=1e-7)
    dim16 = np.array([[0, 4095]], np.uint16)  # a dim 16-bit image stays dim (not stretched)
    np.testing.assert_allclose(to_gray_float(dim16), [[0, 4095 / 65535]], atol=1e-7)
    assert to_gray_float(a8).dtype == np.float32


def test_float_images_in_range_kept_out_of_range_rescaled():
    a = np.array([[0.2, 0.4]], np.float64)
    np.testing.assert_allclose(to_gray_float(a), a, atol=1e-7)
    np.testing.assert_allclose(to_gray_float(np.array([[-5.0, 5.0, 0.0]])), [[0.0, 1.0, 0.5]], atol=1e-7)
    assert to_gray_float(np.array([[True, False]])).tolist() == [[1.0, 0.0]]


def test_non_finite_pixels_refused():
    with pytest.raises(ImageInputError, match="NaN or infinite"):
        to_gray_float(np.array([[0.1, np.nan]], np.float32))


def test_rgb_rgba_and_gray_alpha_become_the_gray_image(gray8):
    expected = to_gray_float(gray8)
    rgb = np.stack([gray8] * 3, axis=-1)
    rgba = np.concatenate([rgb, np.full_like(gray8, 7)[..., None]], axis=-1)
    la = np.stack([gray8, np.full_like(gray8, 255)], axis=-1)
    for array in (rgb, rgba, la, gray8[None], gray8[..., None]):
        np.testing.assert_allclose(to_gray_float(array), expected, atol=1e-6)


def test_rgb_uses_luminance_weights():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(to_gray_float(red), 0.2125, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 8, 8), (3, 8, 8), (2, 4, 8, 8)])
def test_stacks_and_channel_first_refused_with_the_fix(shape):
    with pytest.raises(ImageInputError, match="one frame/channel per file"):
        to_gray_float(np.zeros(shape, np.uint8))


# ------------------------------------------------------------------------------------ validate_pixel_size
@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf"), -float("inf")])
def test_validate_pixel_size_refuses_non_positive_and_non_finite(bad):
    with pytest.raises(ImageInputError, match="--pixel-size-um must be a positive finite number"):
        validate_pixel_size(bad)


def test_validate_pixel_size_passes_none_and_positive():
    assert validate_pixel_size(None) is None
    assert validate_pixel_size(0.05) == 0.05
    assert validate_pixel_size(1) == 1.0 and isinstance(validate_pixel_size(1), float)


# ------------------------------------------------------------------------------------ read_image: refusals
def test_missing_file_named(tmp_path):
    with pytest.raises(ImageInputError, match=r"nope\.tif: file not found"):
        read_image(tmp_path / "nope.tif")


def test_directory_refused(tmp_path):
    with pytest.raises(ImageInputError, match="is a directory"):
        read_image(tmp_path)


@pytest.mark.parametrize("name", ["x.png", "x.tif", "x.tiff", "x.jpg"])
def test_text_file_with_image_suffix_is_not_an_image(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not an image\n")
    with pytest.raises(ImageInputError, match=r"cannot be read as an image.*TIFF, PNG or JPEG") as info:
        read_image(path, 0.1)
    assert name in str(info.value)


def test_truncated_png_is_not_an_image(tmp_path, gray8):
    path = tmp_path / "cut.png"
    Image.fromarray(gray8).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageInputError, match="cannot be read as an image"):
        read_image(path, 0.1)


def test_lazily_sized_png_above_limit_refused_before_decoding(tmp_path, lazily_sized_png):
    path = lazily_sized_png(tmp_path / "huge.png", 20000, 20000)
    assert path.stat().st_size < 200
    with pytest.raises(ImageInputError, match=r"20000x20000 \(400 Mpx\), above the 100 Mpx limit; crop or tile"):
        read_image(path, 0.1)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_max_megapixels_limit(tmp_path, monkeypatch, gray8, suffix):
    path = tmp_path / f"img{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, gray8)
    else:
        Image.fromarray(gray8).save(path)
    assert read_image(path, 0.1).pixels.shape == gray8.shape
    monkeypatch.setattr(imageio, "MAX_MEGAPIXELS", 0.001)  # 1000 px < 48 x 64
    with pytest.raises(ImageInputError, match=r"64x48 .* above the 0\.001 Mpx limit"):
        read_image(path, 0.1)


def test_pillow_global_limit_not_changed(tmp_path, monkeypatch, gray8):
    """Reading must not leave Pillow's process-wide decompression-bomb limit changed (it would break every
    later Image.open in the process)."""
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "g.png"
    Image.fromarray(gray8).save(path)
    monkeypatch.setattr(imageio, "MAX_MEGAPIXELS", 0.001)
    with pytest.raises(ImageInputError):
        read_image(path, 0.1)
    assert Image.MAX_IMAGE_PIXELS == before
    monkeypatch.undo()
    read_image(path, 0.1)
    assert Image.MAX_IMAGE_PIXELS == before


# ------------------------------------------------------------------------------------ read_image: storage
def test_16bit_tiff_equals_8bit_tiff(tmp_path, field):
    p8 = write_sem_tiff(tmp_path / "a8.tif", field.image, 0.1, bits=8)
    p16 = write_sem_tiff(tmp_path / "a16.tif", field.image, 0.1, bits=16)
    a8, a16 = read_image(p8).pixels, read_image(p16).pixels
    assert tifffile.imread(p16).dtype == np.uint16
    assert a8.shape == a16.shape == field.image.shape
    np.testing.assert_allclose(a16, field.image, atol=1e-4)
    np.testing.assert_allclose(a8, a16, atol=0.5 / 255 + 1e-4)


def test_rgb_png_equals_gray_png(tmp_path, field):
    g = np.round(field.image * 255).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(np.stack([g] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(g).convert("P").save(tmp_path / "pal.png")
    Image.fromarray(np.stack([g, np.full_like(g, 255)], -1), "LA").save(tmp_path / "la.png")
    gray = read_image(tmp_path / "g.png", 0.1).pixels
    for name in ("rgb.png", "pal.png", "la.png"):
        np.testing.assert_allclose(read_image(tmp_path / name, 0.1).pixels, gray, atol=1e-5, err_msg=name)


def test_16bit_png(tmp_path):
    a = (np.linspace(0, 1, 32 * 32).reshape(32, 32) * 65535).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    np.testing.assert_allclose(read_image(tmp_path / "g16.png", 0.1).pixels, a / 65535, atol=1e-6)


def test_float_tiff_rescaled(tmp_path, gray8):
    tifffile.imwrite(tmp_path / "f.tif", gray8.astype(np.float32) * 10)
    px = read_image(tmp_path / "f.tif", 0.1).pixels
    assert px.min() == 0.0 and px.max() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ read_image: pixel size
def test_pixel_size_from_morphloop_tiff(tmp_path, gray8):
    path = write_sem_tiff(tmp_path / "m.tif", gray8, 0.037, magnification=5000)
    img = read_image(path)
    assert img.pixel_size_um == pytest.approx(0.037) and img.source == "morphloop-json"
    assert img.path == str(path)


def test_argument_overrides_tags(tmp_path, gray8):
    path = write_sem_tiff(tmp_path / "m.tif", gray8, 0.037)
    img = read_image(path, 0.5)
    assert img.pixel_size_um == 0.5 and img.source == "argument"


def test_argument_validated(tmp_path, gray8):
    path = write_sem_tiff(tmp_path / "m.tif", gray8, 0.037)
    with pytest.raises(ImageInputError, match="positive finite"):
        read_image(path, float("nan"))


def test_pixel_size_from_centimetre_resolution_only(tmp_path, gray8):
    tifffile.imwrite(tmp_path / "cm.tif", gray8, resolution=(1e4 / 0.2, 1e4 / 0.2), resolutionunit="CENTIMETER")
    img = read_image(tmp_path / "cm.tif")
    assert img.pixel_size_um == pytest.approx(0.2) and img.source == "tiff-resolution"


def test_inch_resolution_ignored(tmp_path, gray8):
    tifffile.imwrite(tmp_path / "in.tif", gray8, resolution=(300, 300), resolutionunit="INCH")
    img = read_image(tmp_path / "in.tif")
    assert img.pixel_size_um is None and img.source == "none"


@pytest.mark.parametrize("unit, pixels_per_unit, expected_um", [
    ("um", 20.0, 0.05), ("micron", 20.0, 0.05), ("nm", 0.1, 0.01), ("mm", 1000.0, 1.0),
])
def test_pixel_size_from_imagej(tmp_path, gray8, unit, pixels_per_unit, expected_um):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, gray8, imagej=True, resolution=(pixels_per_unit, pixels_per_unit),
                     metadata={"unit": unit})
    img = read_image(path)
    assert img.pixel_size_um == pytest.approx(expected_um) and img.source == "imagej"


def test_pixel_size_from_fei_tags(tmp_path, gray8):
    ini = "[User]\nDate=01/01/2024\n[Scan]\nPixelWidth=5e-08\nPixelHeight=5e-08\n"
    tifffile.imwrite(tmp_path / "fei.tif", gray8, extratags=[(34682, "s", 0, ini, True)], metadata=None)
    img = read_image(tmp_path / "fei.tif")
    assert img.pixel_size_um == pytest.approx(0.05) and img.source == "fei"


def test_pixel_size_from_zeiss_tags(tmp_path, gray8):
    text = "\r\n".join(["", "AP_PIXEL_SIZE", "Image Pixel Size = 25.5 nm", "AP_WD", "WD = 5.0 mm", ""])
    tifffile.imwrite(tmp_path / "z.tif", gray8, extratags=[(34118, "s", 0, text, True)], metadata=None)
    img = read_image(tmp_path / "z.tif")
    assert img.pixel_size_um == pytest.approx(0.0255) and img.source == "zeiss"


@pytest.mark.parametrize("key, text", [
    ("pixel_size_um", "0.05"), ("Description", json.dumps({"pixel_size_um": 0.05})),
])
def test_pixel_size_from_png_text(tmp_path, gray8, key, text):
    info = PngImagePlugin.PngInfo()
    info.add_text(key, text)
    Image.fromarray(gray8).save(tmp_path / "t.png", pnginfo=info)
    img = read_image(tmp_path / "t.png")
    assert img.pixel_size_um == pytest.approx(0.05) and img.source == "png-text"


def test_plain_png_has_no_pixel_size(tmp_path, gray8):
    Image.fromarray(gray8).save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    assert img.pixel_size_um is None and img.source == "none"


@pytest.mark.parametrize("value", [None, "unknown"])
def test_json_description_without_a_number_means_no_calibration(tmp_path, gray8, value):
    """{"pixel_size_um": null} is an uncalibrated image, not an unreadable one."""
    tifffile.imwrite(tmp_path / "n.tif", gray8, description=json.dumps({"pixel_size_um": value}), metadata=None)
    img = read_image(tmp_path / "n.tif")
    assert img.pixel_size_um is None
    assert read_image(tmp_path / "n.tif", 0.1).pixel_size_um == 0.1


@pytest.mark.parametrize("value", [-1.0, 0.0, float("nan")])
def test_bad_pixel_size_in_metadata_refused_by_name(tmp_path, gray8, value):
    tifffile.imwrite(tmp_path / "bad.tif", gray8, description=json.dumps({"pixel_size_um": value}), metadata=None)
    with pytest.raises(ImageInputError, match=r"bad\.tif: pixel size in the file's metadata must be a positive"):
        read_image(tmp_path / "bad.tif")
    # the flag still rescues the image
    assert read_image(tmp_path / "bad.tif", 0.1).pixel_size_um == 0.1
