"""In-situ tomography: the end-of-run flow (reconstruct → enhance → segment → quantify) and the dry run.

One scan, as data: the area detector's HDF5 file (darks, flats, projections; a scan repeated after a beam loss
keeps its frames of every attempt, the last attempt is the complete one) → flat/dark correction, centre search,
ring removal, filtered back-projection → the slices in 1/µm → InDI enhancement 2× → particles segmented →
resolution (edge FWHM), CNR and particle fraction → Prefect artifacts and a before/after PNG.

The dry run drives the simulated beamline with the Bluesky plans (an in-situ series of low-quality scans at
three states of charge, then one high-quality reference scan), runs the end-of-run flow on each scan, and
compares LQ, HQ and enhanced slices over the HQ field of view.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from devices.beamline import DATA_PATH, FRAME_DATASETS
from models.indi import InDIModel, register_lq_to_hq, upsample_lq
from models.tomo_metrics import (cnr, count_sift_matches, edge_resolution_nm, psnr, segment_particles,
                                 sift_descriptors, ssim)
from models.tomo_reconstruction import reconstruct
from simulators.tomography import HQ, LQ, QUALITIES, AcquisitionQuality, hq_region_in_lq, pillar_mask

#: ``image_key`` values of the detector (NeXus convention).
PROJECTION, FLAT, DARK = 0, 1, 2
#: The InDI model shipped with the project (``morphloop indi train`` reproduces it; see the README).
DEFAULT_INDI_MODEL = Path(__file__).resolve().parents[1] / "models" / "weights" / "indi"
#: InDI trained on a real pair: the top half of tomopy's tooth scan, row 0 (``morphloop tomo real-pair``; README).
TOOTH_INDI_MODEL = DEFAULT_INDI_MODEL.parent / "indi_tooth"


@dataclass
class ScanData:
    """Frames of one scan, ``n x rows x cols`` counts, and the projection angles (degrees)."""

    projections: np.ndarray
    flats: np.ndarray
    darks: np.ndarray
    angles_deg: np.ndarray


def read_scan_file(path: str | Path) -> ScanData:
    """The complete (last) attempt of a scan from the detector's HDF5 file.

    Raises
    ------
    ValueError
        When the file lacks darks, flats or projections in its last attempt.
    """
    import h5py

    with h5py.File(path, "r") as handle:
        frames = handle[DATA_PATH][...]
        key = handle[FRAME_DATASETS["image_key"]][...]
        angle = handle[FRAME_DATASETS["rotation_angle"]][...]
        attempt = handle[FRAME_DATASETS["attempt"]][...]
    last = attempt == attempt.max()
    parts = {name: frames[last & (key == value)] for name, value in
             (("projections", PROJECTION), ("flats", FLAT), ("darks", DARK))}
    missing = [name for name, a in parts.items() if len(a) == 0]
    if missing:
        raise ValueError(f"{path}: the scan's last attempt has no {', '.join(missing)}; it is incomplete")
    return ScanData(parts["projections"].astype(np.float32), parts["flats"].astype(np.float32),
                    parts["darks"].astype(np.float32), angle[last & (key == PROJECTION)].astype(np.float64))


def scan_attempts(path: str | Path) -> int:
    """How many times the scan in ``path`` was started: 1, plus one per suspension that repeated it."""
    import h5py

    with h5py.File(path, "r") as handle:
        attempt = handle[FRAME_DATASETS["attempt"]][...]
    return int(attempt.max()) + 1 if len(attempt) else 0


def scan_quality(path: str | Path) -> str:
    """The acquisition quality (``"hq"`` / ``"lq"``) the detector wrote into a scan file's ``/entry``.

    Raises
    ------
    ValueError
        When the file is missing, not HDF5, or not a scan file of the station's detector.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as handle:
            quality = handle["/entry"].attrs.get("quality") if "/entry" in handle else None
            has_frames = DATA_PATH in handle
    except OSError as exc:
        raise ValueError(f"{path}: not an HDF5 file ({exc})") from exc
    if isinstance(quality, bytes):
        quality = quality.decode()
    if not has_frames or quality not in QUALITIES:
        raise ValueError(f"{path}: not a scan file of the tomography station's detector (it needs {DATA_PATH} and "
                         f"/entry's 'quality' attribute, one of {sorted(QUALITIES)})")
    return str(quality)


def reconstruct_slices(scan: ScanData, voxel_nm: float) -> tuple[np.ndarray, float]:
    """``rows x N x N`` attenuation (1/µm) and the rotation centre used (detector column)."""
    volume, center = reconstruct(scan.projections, scan.flats, scan.darks, scan.angles_deg)
    return (volume / (voxel_nm * 1e-3)).astype(np.float32), float(center)


def hq_reference_rows(hq_volume: np.ndarray) -> np.ndarray:
    """HQ slices averaged in pairs of rows: the reference for LQ rows, which are twice as tall."""
    rows = hq_volume.shape[0] // 2 * 2
    return hq_volume[:rows].reshape(rows // 2, 2, *hq_volume.shape[1:]).mean(axis=1)


def lq_over_hq_field(lq_volume: np.ndarray, hq: AcquisitionQuality = HQ,
                     lq: AcquisitionQuality = LQ) -> np.ndarray:
    """The part of an LQ reconstruction that the HQ scan sees (still at LQ resolution).

    The HQ sample is a cylinder inside its field of view (air outside), so the LQ voxels outside it are set to
    zero too: a training pair must show the same material. ``hq`` and ``lq``: the two acquisitions (default the
    simulated beamline's).
    """
    field = lq_volume[hq_region_in_lq(hq, lq)].copy()
    inside = pillar_mask(hq).reshape(hq.fov_px // 2, 2, hq.fov_px // 2, 2).all(axis=(1, 3))
    field[:, ~inside] = 0.0
    return field


def quantify(image: np.ndarray, particles: np.ndarray, voxel_nm: float) -> dict[str, float]:
    """Resolution (edge FWHM, nm, one fit to the edge profiles of all slices), median CNR over the slices and
    particle area fraction of slices, with a particle mask."""
    try:  # one fit to the edge profiles of all slices, pooled: steady on noisy low-dose slices
        resolution = edge_resolution_nm(image, particles, voxel_nm)
    except ValueError:  # no fittable edge anywhere
        resolution = float("nan")
    contrast = float(np.median([cnr(s, m) for s, m in zip(image, particles)]))
    return {"resolution_nm": resolution, "cnr": contrast, "particle_fraction": float(particles.mean())}


STEPS_SWEEP = (1, 2, 4, 6, 8, 10, 12, 16)


def compare_qualities(lq_field: np.ndarray, hq_reference: np.ndarray, model: InDIModel,
                      steps: int | None = None, steps_sweep: tuple[int, ...] = STEPS_SWEEP,
                      voxel_nm: float | None = None, truth: np.ndarray | None = None) -> dict[str, Any]:
    """LQ (bicubic 2×), enhanced and HQ slices over the HQ field, measured with the HQ particle mask.

    Using one mask (segmented on the HQ reference) for all three keeps the comparison about the images,
    not about three segmentations; for each LQ-derived stack the mask follows the sub-pixel offset that
    registration finds between it and HQ (``shift_px``). They also get ``psnr_db`` and ``ssim`` against HQ
    (moved onto it): fidelity, which sharpness and CNR alone do not show (a model can draw crisp, clean particles
    in the wrong shape); LQ, the enhanced stack and N = 1 also get ``sift_matches``, paper 001's "congruent
    points": SIFT keypoints matched between each slice and its HQ slice, summed over the slices. ``by_steps``
    measures the enhancement at each number of InDI steps of ``steps_sweep`` (N = 1 is plain regression, paper
    001's baseline). ``voxel_nm``: the HQ voxel (default: the simulated HQ scan's). ``truth``: the noise-free
    attenuation on the HQ grid, when known (a simulated scan);
    measured with the same mask it gives the ceiling of these figures: a phantom with cracks, dense phases and a
    binder/pore background has a finite CNR of its own, which no faithful enhancement can exceed.
    """
    bicubic = upsample_lq(lq_field)
    steps = int(steps or model.config.steps)
    enhanced = {n: model.enhance(lq_field, steps=n) for n in sorted({*steps_sweep, steps, 1})}
    mask = np.stack([segment_particles(s) for s in hq_reference])
    voxel = HQ.voxel_nm if voxel_nm is None else voxel_nm
    data_range = float(hq_reference.max() - hq_reference.min())

    def measure(image: np.ndarray) -> dict[str, Any]:
        # each LQ-derived stack registered onto HQ on its own (sub-pixel; InDI learnt from a registered pair, so
        # its output need not keep the bicubic slices' offset): HQ's particles where this stack sees them, since
        # an offset would smear the edge profiles taken along the mask's normals. The stack itself is measured
        # unresampled (interpolation would soften it); PSNR and SSIM compare it moved onto HQ.
        moved, shift = register_lq_to_hq(image, hq_reference)
        own_mask = np.stack([segment_particles(ndi.shift(s, (-shift[0], -shift[1]), order=3, mode="nearest"))
                             for s in hq_reference])
        return {**quantify(image, own_mask, voxel), "psnr_db": psnr(moved, hq_reference, data_range),
                "ssim": float(np.mean([ssim(a, b, data_range) for a, b in zip(moved, hq_reference)])),
                "shift_px": [float(shift[0]), float(shift[1])]}

    hq_keypoints = [sift_descriptors(s) for s in hq_reference]  # once for the three stacks matched to HQ

    def congruent_points(image: np.ndarray) -> int:  # SIFT is shift-invariant: no registration needed
        return sum(count_sift_matches(sift_descriptors(a), b) for a, b in zip(image, hq_keypoints))

    by_steps = {n: measure(image) for n, image in enhanced.items()}
    return {
        "lq": {**measure(bicubic), "sift_matches": congruent_points(bicubic)},
        "hq": quantify(hq_reference, mask, voxel),
        "enhanced": {**by_steps[steps], "sift_matches": congruent_points(enhanced[steps])},
        "one_step": {**by_steps[1], "sift_matches": congruent_points(enhanced[1])},
        "by_steps": by_steps,
        "images": {"lq": bicubic, "hq": hq_reference, "enhanced": enhanced[steps]},
        **({"truth": quantify(truth, mask, voxel)} if truth is not None else {}),
    }


def save_steps_plot(path: Path, comparison: dict[str, Any],
                    title: str = "Enhancement quality vs number of steps (final state of charge, HQ field of view)",
                    resolution_label: str = "edge resolution (nm, lower is sharper)") -> Path:
    """Resolution, CNR and SSIM (against HQ) of the enhanced slices against the number of InDI steps, with LQ and
    HQ as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(comparison["by_steps"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, label in ((axes[0], "resolution_nm", resolution_label),
                           (axes[1], "cnr", "CNR"), (axes[2], "ssim", "SSIM against HQ")):
        ax.plot(steps, [comparison["by_steps"][n][key] for n in steps], "o-", color="tab:orange", label="InDI")
        ax.axhline(comparison["lq"][key], color="tab:blue", ls="--", label="LQ (bicubic)")
        if key in comparison["hq"]:
            ax.axhline(comparison["hq"][key], color="k", ls=":", label="HQ")
        if key in comparison.get("truth", {}):
            ax.axhline(comparison["truth"][key], color="tab:green", ls="-.", label="noise-free phantom")
        ax.set_xlabel("InDI steps N")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_before_after(path: Path, lq: np.ndarray, enhanced: np.ndarray, hq: np.ndarray | None = None,
                      title: str = "") -> Path:
    """A PNG: bicubic LQ, InDI-enhanced and (when given) HQ slices side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("LQ (bicubic 2x)", lq), ("InDI enhanced", enhanced)] + ([("HQ reference", hq)] if hq is not None else [])
    lo, hi = np.percentile(np.concatenate([p.ravel() for _, p in panels]), [1, 99])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    for ax, (name, image) in zip(np.atleast_1d(axes), panels):
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_model(model_dir: str | Path | None) -> InDIModel:
    """The InDI model in ``model_dir`` (default: the shipped one)."""
    directory = Path(model_dir) if model_dir else DEFAULT_INDI_MODEL
    return InDIModel.load(directory)


def summary_json(summary: dict[str, Any]) -> str:
    """One line of strict JSON (arrays dropped, numbers as floats)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.floating, np.integer)):
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            return None  # strict JSON has no NaN (a resolution no edge could be fitted for)
        return value

    return json.dumps(clean(summary))


__all__ = ["QUALITIES", "ScanData", "read_scan_file", "scan_attempts", "scan_quality", "reconstruct_slices",
           "hq_reference_rows", "lq_over_hq_field", "quantify", "compare_qualities", "save_before_after",
           "load_model", "summary_json", "DEFAULT_INDI_MODEL"]
