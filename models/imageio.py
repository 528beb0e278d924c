"""Reading SEM images and their pixel size.

Every image becomes a float32 grayscale array in [0, 1] whatever its storage (8/16-bit, float, RGB, palette).
The pixel size comes from the caller, else from the file's metadata: MorphoLoop's own JSON ImageDescription,
Thermo/FEI and Zeiss SEM tags, ImageJ or TIFF resolution tags in metric units, or a PNG text chunk.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Images above this size are refused rather than risking the machine's memory; crop or tile them.
MAX_MEGAPIXELS = 100.0


class ImageInputError(ValueError):
    """An image that cannot be described; the message names the problem and the fix."""


@dataclass(frozen=True)
class SEMImage:
    """A grayscale SEM image ready for analysis.

    Attributes
    ----------
    pixels : np.ndarray
        ``H x W`` float32 in [0, 1].
    pixel_size_um : float | None
        Side of one pixel in micrometres, ``None`` when the file does not say.
    source : str
        Where the pixel size came from (``"argument"``, ``"morphloop-json"``, ``"fei"``, ...).
    path : str
    """

    pixels: np.ndarray
    pixel_size_um: float | None
    source: str
    path: str


def validate_pixel_size(value: float | None, *, where: str = "--pixel-size-um") -> float | None:
    """Return ``value`` as float, or raise when it is not a positive finite number."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ImageInputError(
            f"{where} must be a positive finite number of micrometres per pixel, got {value!r}"
        )
    return value


def to_gray_float(array: np.ndarray) -> np.ndarray:
    """Convert any image array to ``H x W`` float32 in [0, 1].

    Integer images are scaled by their dtype's range (so a dim 16-bit image stays dim); float images
    outside [0, 1] are rescaled by their min and max. RGB(A) becomes luminance, alpha is dropped.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3]
        if np.issubdtype(a.dtype, np.integer):
            scale = float(np.iinfo(a.dtype).max)
            a = a.astype(np.float32) / scale
        a = (a.astype(np.float32) @ np.array([0.2125, 0.7154, 0.0721], np.float32))
    elif a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 3 and a.shape[-1] in (1, 2):  # gray, or gray + alpha (PNG mode "LA")
        a = a[..., 0]
    if a.ndim != 2:
        raise ImageInputError(
            f"expected a 2-D grayscale or RGB image, got an array of shape {a.shape}; "
            "save one frame/channel per file"
        )
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        return ((a.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ImageInputError("image contains NaN or infinite pixel values; fix the file")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a


def read_image(path: str | Path, pixel_size_um: float | None = None) -> SEMImage:
    """Read an image file and its pixel size.

    Parameters
    ----------
    path
        TIFF, PNG, JPEG, BMP ... file.
    pixel_size_um
        Overrides any metadata when given.

    Raises
    ------
    ImageInputError
        Missing file, unreadable file, unsupported shape, or an image too large to hold.
    """
    p = Path(path)
    if not p.exists():
        raise ImageInputError(f"{path}: file not found; check the path")
    if p.is_dir():
        raise ImageInputError(f"{path}: is a directory; pass image files (e.g. {path}/*.tif)")
    pixel_size_um = validate_pixel_size(pixel_size_um)
    suffix = p.suffix.lower()
    meta_size: tuple[float | None, str] = (None, "none")
    try:
        if suffix in (".tif", ".tiff"):
            array, meta_size = _read_tiff(p)
        else:
            array, meta_size = _read_with_pillow(p)
    except ImageInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not an image"
        raise ImageInputError(
            f"{path}: cannot be read as an image ({type(exc).__name__}: {exc}); "
            "pass a TIFF, PNG or JPEG micrograph"
        ) from exc
    pixels = to_gray_float(array)
    if pixel_size_um is not None:
        size, source = pixel_size_um, "argument"
    else:
        size, source = meta_size
        if size is not None:
            size = validate_pixel_size(size, where=f"{path}: pixel size in the file's metadata")
    return SEMImage(pixels=pixels, pixel_size_um=size, source=source, path=str(path))


def _check_size(shape: tuple[int, ...], path: Path) -> None:
    mpx = shape[0] * shape[1] / 1e6
    if mpx > MAX_MEGAPIXELS:
        raise ImageInputError(
            f"{path}: image is {shape[1]}x{shape[0]} ({mpx:.3g} Mpx), above the {MAX_MEGAPIXELS:g} Mpx "
            "limit; crop or tile it into smaller fields of view"
        )


def _read_tiff(path: Path) -> tuple[np.ndarray, tuple[float | None, str]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_size(page.shape, path)
        array = page.asarray()
        return array, _tiff_pixel_size(tif, page)


def _read_with_pillow(path: Path) -> tuple[np.ndarray, tuple[float | None, str]]:
    from PIL import Image

    # Pillow's own decompression-bomb limit is a process-wide global: lift it only while opening (the header
    # is read lazily and _check_size refuses large images before any pixel is decoded), then restore it.
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            _check_size((im.height, im.width), path)
            info = dict(im.info)
            if im.mode == "P":
                im = im.convert("RGB")
            array = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{path}: {exc}; crop or tile it") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    text = info.get("pixel_size_um") or info.get("Description") or info.get("description")
    size = _json_pixel_size(text) if isinstance(text, str) else None
    if size is None and isinstance(info.get("pixel_size_um"), str):
        try:
            size = float(info["pixel_size_um"])
        except ValueError:
            size = None
    return array, (size, "png-text" if size is not None else "none")


def _json_pixel_size(text: str | bytes | None) -> float | None:
    if not text:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(data, dict):
        data = data.get("pixel_size_um")
    if isinstance(data, (int, float, str)) and not isinstance(data, bool):
        try:
            return float(data)
        except ValueError:  # e.g. {"pixel_size_um": "unknown"}: no calibration, not an unreadable image
            return None
    return None  # absent or null: the file carries no calibration here


_UNIT_TO_UM = {"m": 1e6, "mm": 1e3, "cm": 1e4, "um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3}


def _tiff_pixel_size(tif, page) -> tuple[float | None, str]:
    """Pixel size (µm) from the tags a TIFF may carry, most specific first."""
    # 1. MorphoLoop's own JSON description (what our SEM device writes).
    size = _json_pixel_size(page.description)
    if size is not None:
        return size, "morphloop-json"
    # 2. Thermo Fisher / FEI SEMs: [Scan] PixelWidth in metres.
    fei = getattr(tif, "fei_metadata", None)
    if fei:
        scan = fei.get("Scan") or fei.get("EScan") or {}
        if "PixelWidth" in scan:
            return float(scan["PixelWidth"]) * 1e6, "fei"
    # 3. Zeiss SEMs: AP_PIXEL_SIZE = ('Image Pixel Size', value, unit).
    sem = getattr(tif, "sem_metadata", None)
    if sem and "ap_pixel_size" in {k.lower() for k in sem}:
        entry = next(v for k, v in sem.items() if k.lower() == "ap_pixel_size")
        try:
            value, unit = float(entry[1]), str(entry[2]).strip()
            if unit in _UNIT_TO_UM:
                return value * _UNIT_TO_UM[unit], "zeiss"
        except (TypeError, ValueError, IndexError):
            pass
    # 4. ImageJ: unit in the description, spacing from XResolution.
    xres = page.tags.get("XResolution")
    ij = getattr(tif, "imagej_metadata", None) or {}
    unit = str(ij.get("unit", "")).replace("\\u00B5", "µ").strip()
    if xres is not None and unit in _UNIT_TO_UM:
        num, den = xres.value
        if num:
            return (den / num) * _UNIT_TO_UM[unit], "imagej"
    # 5. Plain TIFF resolution in centimetres (inches are ignored: 72/96/300 dpi are screen/print defaults).
    runit = page.tags.get("ResolutionUnit")
    if xres is not None and runit is not None and int(runit.value) == 3:
        num, den = xres.value
        if num:
            return (den / num) * 1e4, "tiff-resolution"
    return None, "none"
