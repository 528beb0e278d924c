"""One image in, the morphology fingerprint out: what ``morphloop describe`` computes for each file.

Low-magnification images give secondary-particle descriptors (D50, sphericity); high-magnification images give
primary-particle texture. ``kind="auto"`` decides by pixel size: frames finer than
:data:`TEXTURE_MAX_PIXEL_SIZE_UM` are texture images (~15k× and above), coarser ones particle images.
"""
from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from models.imageio import ImageInputError, SEMImage, read_image, validate_pixel_size
from models.infobar import InfoBar, detect_info_bar
from models.particles import ParticleFilter, measure_particles, size_statistics
from models.segmentation import NoParticlesError, WatershedConfig, segment_watershed
from models.texture import TextureConfig, TextureError, TextureResult, measure_texture

Kind = Literal["particles", "texture", "auto"]
SegmenterName = Literal["watershed", "sam"]

#: ``kind="auto"`` treats images with pixels finer than this (µm) as high-magnification texture images.
TEXTURE_MAX_PIXEL_SIZE_UM = 0.025

#: Keys of one ``--json`` record, in order (a contract: other tools read them).
JSON_KEYS = ["image", "pixel_size_um", "n_particles", "d50_um", "d50_volume_um", "d10_um", "d90_um",
             "sphericity_mean", "sphericity_std", "texture", "texture_energy"]


class DescribeError(ValueError):
    """An image that could not be described (bad input or nothing to measure)."""


@dataclass
class DescribeOptions:
    """How to describe images (CLI flags map onto these)."""

    kind: Kind = "auto"
    segmenter: SegmenterName = "watershed"
    sam_checkpoint: str | None = None
    particle_filter: ParticleFilter = field(default_factory=ParticleFilter)
    watershed: WatershedConfig = field(default_factory=WatershedConfig)
    texture: TextureConfig = field(default_factory=TextureConfig)


@dataclass
class ImageDescription:
    """Everything measured on one image."""

    image: str
    pixel_size_um: float
    kind: str
    descriptors: dict
    particles: pd.DataFrame
    pixels: np.ndarray | None
    info_bar: InfoBar
    labels: np.ndarray | None = None
    texture: TextureResult | None = None

    def without_arrays(self) -> "ImageDescription":
        """This description without the image and label arrays (8 MB for a 1024² frame; what a worker
        process sends back when no overlay needs them)."""
        return dataclasses.replace(self, pixels=None, labels=None)

    def record(self) -> dict:
        """The ``--json`` record: :data:`JSON_KEYS`, ``None`` where not applicable."""
        out = {key: None for key in JSON_KEYS}
        out.update({k: v for k, v in self.descriptors.items() if k in out})
        out["image"] = self.image
        out["pixel_size_um"] = self.pixel_size_um
        return out


class Describer:
    """Describes images one after another, loading a Segment-Anything model at most once."""

    def __init__(self, options: DescribeOptions | None = None):
        self.options = options or DescribeOptions()
        self._sam = None
        if self.options.segmenter not in ("watershed", "sam"):
            raise DescribeError(f"unknown segmenter {self.options.segmenter!r}; use 'watershed' or 'sam'")
        if self.options.kind not in ("particles", "texture", "auto"):
            raise DescribeError(f"unknown kind {self.options.kind!r}; use 'particles', 'texture' or 'auto'")
        if self.options.segmenter == "sam" and not self.options.sam_checkpoint:
            raise DescribeError(
                "--segmenter sam needs a local checkpoint: pass --sam-checkpoint PATH "
                "(e.g. sam_vit_b_01ec64.pth); no weights are downloaded"
            )

    def segment(self, pixels: np.ndarray) -> np.ndarray:
        """Instance labels of ``pixels`` with the configured segmenter."""
        if self.options.segmenter == "sam":
            if self._sam is None:
                from models.sam import SamSegmenter

                self._sam = SamSegmenter(self.options.sam_checkpoint)
            return self._sam.segment(pixels)
        return segment_watershed(pixels, self.options.watershed)

    def describe(self, path: str | Path, pixel_size_um: float | None = None) -> ImageDescription:
        """Describe one image file.

        Raises
        ------
        DescribeError
            With a message naming the problem and the fix.
        """
        try:
            image = read_image(path, pixel_size_um)
        except ImageInputError as exc:
            raise DescribeError(str(exc)) from exc
        return self.describe_array(image)

    def describe_array(self, image: SEMImage) -> ImageDescription:
        """Describe an already loaded image."""
        name = image.path
        if image.pixel_size_um is None:
            raise DescribeError(
                f"{name}: no pixel size: the file carries no calibration tags; pass --pixel-size-um X "
                "(µm per pixel, read it from the scale bar)"
            )
        pixels = image.pixels
        if float(np.ptp(pixels)) < 1e-6:
            raise DescribeError(f"{name}: image is constant (every pixel = {float(pixels.flat[0]):.3g}); "
                                "nothing to describe")
        bar = detect_info_bar(pixels)
        micrograph = pixels[bar.analysis_rows(pixels.shape[0])]
        kind = self.options.kind
        if kind == "auto":
            kind = "texture" if image.pixel_size_um <= TEXTURE_MAX_PIXEL_SIZE_UM else "particles"
        try:
            if kind == "texture":
                result = measure_texture(micrograph, image.pixel_size_um, self.options.texture)
                descriptors = {"texture": result.texture, "texture_energy": result.texture_energy}
                return ImageDescription(name, image.pixel_size_um, kind, descriptors, pd.DataFrame(),
                                        micrograph, bar, texture=result)
            labels = self.segment(micrograph)
            table = measure_particles(labels, image.pixel_size_um, self.options.particle_filter)
        except (TextureError, NoParticlesError) as exc:
            raise DescribeError(f"{name}: {exc}") from exc
        if table.empty:
            n_raw = int(labels.max())
            raise DescribeError(
                f"{name}: no complete particle found ({n_raw} segmented, all touching the border, too small "
                "or merged); check the image is a low-magnification particle micrograph and --pixel-size-um"
            )
        return ImageDescription(name, image.pixel_size_um, kind, size_statistics(table), table, micrograph,
                                bar, labels=labels)


def describe_image(path: str | Path, pixel_size_um: float | None = None,
                   options: DescribeOptions | None = None) -> ImageDescription:
    """Describe one image file with default or given options (convenience for :class:`Describer`)."""
    validate_pixel_size(pixel_size_um)
    return Describer(options).describe(path, pixel_size_um)


# ------------------------------------------------------------------------------------ many files at once
_worker_describer: Describer | None = None


_worker_keeps_arrays = True


def _start_worker(options: DescribeOptions, keep_arrays: bool) -> None:
    """Pool initializer: one :class:`Describer` per worker, and one BLAS thread (the workers fill the cores)."""
    global _worker_describer, _worker_keeps_arrays
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _worker_describer = Describer(options)
    _worker_keeps_arrays = keep_arrays


def _describe_in_worker(path: str, pixel_size_um: float | None) -> ImageDescription:
    assert _worker_describer is not None, "worker not initialised"
    description = _worker_describer.describe(path, pixel_size_um)
    return description if _worker_keeps_arrays else description.without_arrays()


def default_workers(options: DescribeOptions, n_images: int) -> int:
    """Worker processes for ``n_images``: one per core for the watershed segmenter; one for SAM (torch
    already spreads one model over the cores, and each worker would load its own copy)."""
    if options.segmenter == "sam" or n_images < 2:
        return 1
    return max(1, min(os.cpu_count() or 1, n_images))


def describe_files(paths: Sequence[str | Path], pixel_size_um: float | None = None,
                   options: DescribeOptions | None = None, workers: int = 1, keep_arrays: bool = True
                   ) -> Iterator[tuple[str, ImageDescription | BaseException]]:
    """Describe ``paths`` in order, ``workers`` images at a time; yields ``(path, description or error)``.

    An image that fails yields its exception and the others go on. With ``workers > 1`` the images are
    described in worker processes, at most ``2 * workers`` ahead of the consumer (bounded memory). Should a
    worker die (e.g. out of memory on a huge frame), that image yields the error and the rest are described
    in this process. With ``keep_arrays=False`` the descriptions come without ``pixels`` and ``labels``
    (:meth:`ImageDescription.without_arrays`): what a caller that needs no overlay asks for, as pickling them
    back from the workers costs more than a tenth of the segmentation.

    Raises
    ------
    DescribeError
        When ``options`` themselves are invalid (before any image).
    """
    options = options or DescribeOptions()
    describer = Describer(options)  # validates the options once, here, rather than in every worker
    paths = [str(p) for p in paths]
    if workers <= 1 or len(paths) < 2:
        for path in paths:
            yield path, _describe_or_error(describer, path, pixel_size_um, keep_arrays)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pending: deque = deque()
    next_index = 0
    with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker,
                             initargs=(options, keep_arrays)) as pool:
        while next_index < len(paths) or pending:
            while next_index < len(paths) and len(pending) < 2 * workers:
                path = paths[next_index]
                pending.append((path, pool.submit(_describe_in_worker, path, pixel_size_um)))
                next_index += 1
            path, future = pending.popleft()
            try:
                yield path, future.result()
            except BrokenProcessPool as exc:
                yield path, RuntimeError(f"the worker process describing it died ({exc}); "
                                         "try again with --workers 1")
                for path, _ in pending:
                    yield path, _describe_or_error(describer, path, pixel_size_um, keep_arrays)
                for path in paths[next_index:]:
                    yield path, _describe_or_error(describer, path, pixel_size_um, keep_arrays)
                return
            except Exception as exc:  # noqa: BLE001 - handed to the caller, the batch goes on
                yield path, exc


def _describe_or_error(describer: Describer, path: str, pixel_size_um: float | None, keep_arrays: bool = True
                       ) -> ImageDescription | BaseException:
    try:
        description = describer.describe(path, pixel_size_um)
        return description if keep_arrays else description.without_arrays()
    except Exception as exc:  # noqa: BLE001 - handed to the caller, the batch goes on
        return exc
