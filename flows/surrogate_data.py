"""The surrogate's training set, built on the virtual lab.

Design of conditions (paper 000, Figs. S5/S6 train on a grid and test on levels left out):

* ``train``: scrambled-Sobol points over the whole box (interior) plus points on its faces (one coordinate at its
  low or high bound) so the model sees the boundaries; atmospheres cycle through their choices.
* ``heldout``: another Sobol sequence restricted to the central 80 % of each range: interpolation points that are
  never in training (used by ``morphloop surrogate report``).
* optionally (``n_log_uniform``), more training points from a third Sobol sequence on which the conditions that
  span a decade or more (:data:`LOG_UNIFORM`: the NaOH and NH4OH loadings, 60×, and the aging time, 48×) are
  drawn over their log-range. A linear design puts a tenth of its points below 0.35 wt% NH4OH or 170 min, where
  morphology changes as fast as over all the rest of the range (it follows their logarithms).

Each condition is synthesised once (batch noise included) and imaged at both magnifications: a 256-px frame at
3k× (0.2 µm/px) cut into four 128-px ``low`` tiles, and a 512-px frame at 30k× (0.01 µm/px) from which the four
128-px tiles most covered by particle surface become ``high`` tiles. Tiles are TIFF files with their pixel size;
``tiles.parquet`` lists one row per tile (path, split, condition id, magnification, pixel size, conditions and the
sample's true morphology).
"""
from __future__ import annotations

import json
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.stats import qmc

from models.surrogate.descriptors import DESCRIPTOR_NAMES, MEASURED_PREFIX
from models.texture import texture_foreground
from simulators.conditions import CONDITIONS, CategoricalCondition, validate_conditions
from simulators.coprecipitation import CoprecipitationWorld
from simulators.fields import write_sem_tiff
from simulators.microscope import render_micrograph

TILE_PX = 128
LOW_FRAME = (256, 3000.0)     # frame width (px), magnification -> 0.2 µm/px
HIGH_FRAME = (512, 30000.0)   # -> 0.01 µm/px
TILES_PER_MAGNIFICATION = 4
LOW_FRAME_PIXEL_UM, HIGH_FRAME_PIXEL_UM = 0.2, 0.01  # what LOW_FRAME and HIGH_FRAME give
TABLE = "tiles.parquet"
CONTINUOUS = [c for c in CONDITIONS.values() if not isinstance(c, CategoricalCondition)]
ATMOSPHERES = CONDITIONS["atmosphere"].choices


def condition_schema() -> list[dict]:
    """The virtual lab's conditions as a surrogate schema (see ``models.surrogate.conditioning``)."""
    out = []
    for c in CONDITIONS.values():
        if isinstance(c, CategoricalCondition):
            out.append({"name": c.name, "kind": "categorical", "choices": list(c.choices)})
        else:
            out.append({"name": c.name, "kind": "continuous", "low": c.low, "high": c.high, "log": False})
    return out


def _from_unit(u: np.ndarray, atmosphere_index: int, log: tuple[str, ...] = ()) -> dict[str, Any]:
    cond = {c.name: float(np.exp(np.log(c.low) + ui * (np.log(c.high) - np.log(c.low)))) if c.name in log
            else float(c.low + ui * (c.high - c.low)) for c, ui in zip(CONTINUOUS, u)}
    cond["atmosphere"] = ATMOSPHERES[atmosphere_index % len(ATMOSPHERES)]
    return validate_conditions({k: round(v, 4) if isinstance(v, float) else v for k, v in cond.items()})


#: Conditions a log-uniform design draws over their log-range: positive and spanning a decade or more.
LOG_UNIFORM = tuple(c.name for c in CONTINUOUS if c.low > 0 and c.high / c.low >= 10)


def design_conditions(n_interior: int = 256, n_faces: int = 64, n_heldout: int = 32, seed: int = 0,
                      n_log_uniform: int = 0) -> dict[str, list[dict]]:
    """``{"train": [...], "heldout": [...]}`` condition dicts with the virtual lab's names.

    The ``n_log_uniform`` extra training points come after the interior and face points, so a design with them
    starts with the same conditions (and :func:`build_training_set` renders those as the same samples)."""
    counts = {"interior": n_interior, "faces": n_faces, "heldout": n_heldout, "log-uniform": n_log_uniform}
    negative = {k: v for k, v in counts.items() if v < 0}
    if negative:
        raise ValueError(f"condition counts must be >= 0, got {', '.join(f'--{k} {v}' for k, v in negative.items())}")
    d = len(CONTINUOUS)
    rng = np.random.default_rng(seed)
    interior = qmc.Sobol(d, scramble=True, seed=seed).random(n_interior)
    faces = rng.random((n_faces, d))
    faces[np.arange(n_faces), rng.integers(d, size=n_faces)] = rng.integers(2, size=n_faces)
    heldout = 0.1 + 0.8 * qmc.Sobol(d, scramble=True, seed=seed + 1000).random(n_heldout)
    train = [_from_unit(u, i) for i, u in enumerate(np.concatenate([interior, faces]))]
    if n_log_uniform:
        with warnings.catch_warnings():  # any count is fine here: these points add to a balanced design
            warnings.filterwarnings("ignore", message="The balance properties of Sobol")
            extra = qmc.Sobol(d, scramble=True, seed=seed + 5000).random(n_log_uniform)
        train += [_from_unit(u, i + 1, log=LOG_UNIFORM) for i, u in enumerate(extra)]
    held = [_from_unit(u, i + 1) for i, u in enumerate(heldout)]
    return {"train": train, "heldout": held}


def render_condition_tiles(conditions: dict, sample_seed: int, world_seed: int = 0, n_tiles: int = 4
                           ) -> tuple[dict[str, np.ndarray], dict[str, float], dict]:
    """Synthesise one sample and image it: ``({"low": k x 128 x 128, "high": ...}, pixel sizes, morphology)``."""
    morphology = CoprecipitationWorld(world_seed).synthesize(conditions, sample_seed)
    tiles, pixel_sizes = {}, {}
    for mag, (width, magnification) in (("low", LOW_FRAME), ("high", HIGH_FRAME)):
        frame = render_micrograph(morphology, magnification, seed=sample_seed * 2 + (mag == "high"),
                                  shape=(width + 24, width))
        image = frame.image[:width]  # rows above the info bar
        pixel_sizes[mag] = frame.pixel_size_um
        tiles[mag] = _pick_tiles(image, frame.pixel_size_um, mag, n_tiles)
    return tiles, pixel_sizes, morphology.as_dict()


def _pick_tiles(image: np.ndarray, pixel_size_um: float, magnification: str, n: int) -> np.ndarray:
    grid = [(y, x) for y in range(0, image.shape[0] - TILE_PX + 1, TILE_PX)
            for x in range(0, image.shape[1] - TILE_PX + 1, TILE_PX)]
    if magnification == "high":  # tiles on particle surfaces, as texture ROIs are chosen
        fg = texture_foreground(image, pixel_size_um)
        grid.sort(key=lambda yx: -fg[yx[0]:yx[0] + TILE_PX, yx[1]:yx[1] + TILE_PX].mean())
    return np.stack([image[y:y + TILE_PX, x:x + TILE_PX] for y, x in grid[:n]]).astype(np.float32)


def _run_jobs(job: Callable[[Any], Any], jobs: list, workers: int, progress: Callable[[int], None] | None) -> list:
    """``job`` over ``jobs`` in order, on ``workers`` processes (in this one when 1), ``progress(1)`` after each."""
    results = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(job, jobs, chunksize=4):
                results.append(result)
                if progress:
                    progress(1)
    else:
        for args in jobs:
            results.append(job(args))
            if progress:
                progress(1)
    return results


def _render_job(args) -> list[dict]:
    out_dir, split, cid, conditions, sample_seed, n_tiles = args
    tiles, pixel_sizes, morphology = render_condition_tiles(conditions, sample_seed, n_tiles=n_tiles)
    rows = []
    for mag, stack in tiles.items():
        for k, tile in enumerate(stack):
            rel = Path(split) / f"c{cid:04d}" / f"{mag}_{k}.tif"
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            write_sem_tiff(out_dir / rel, tile, pixel_sizes[mag], bits=16,
                           extra={"conditions": conditions, "magnification_name": mag})
            rows.append({"path": str(rel), "split": split, "condition_id": cid, "magnification": mag,
                         "tile_index": k, "pixel_size_um": pixel_sizes[mag], "sample_seed": sample_seed,
                         **{f"cond_{n}": v for n, v in conditions.items()},
                         **{f"true_{n}": v for n, v in morphology.items()}})
    return rows


def build_training_set(out_dir: str | Path, *, n_interior: int = 256, n_faces: int = 64, n_heldout: int = 32,
                       seed: int = 0, n_tiles: int = TILES_PER_MAGNIFICATION, workers: int = 2,
                       progress: Callable[[int], None] | None = None, n_log_uniform: int = 0) -> pd.DataFrame:
    """Render the design into ``out_dir`` (tiles + ``tiles.parquet`` + ``design.json``); returns the table."""
    out_dir = Path(out_dir)
    if (out_dir / TABLE).exists():
        raise FileExistsError(f"{out_dir / TABLE} exists: a training set is already there; choose another "
                              "directory or delete it")
    design = design_conditions(n_interior, n_faces, n_heldout, seed, n_log_uniform)  # bad counts fail here
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "design.json").write_text(json.dumps(design, indent=1))
    jobs, cid = [], 0
    for split in ("train", "heldout"):
        for cond in design[split]:
            jobs.append((out_dir, split, cid, cond, training_sample_seed(cid, seed), n_tiles))
            cid += 1
    rows = [row for rendered in _run_jobs(_render_job, jobs, workers, progress) for row in rendered]
    table = pd.DataFrame(rows)
    table.to_parquet(out_dir / TABLE, index=False)
    return table


def training_sample_seed(condition_id: int, data_seed: int = 0) -> int:
    """The batch-noise seed :func:`build_training_set` gave a condition's sample."""
    return 10_000 * (data_seed + 1) + int(condition_id)


def _made_and_measured(conditions: dict, world_seed: int, sample_seed: int, name: str
                       ) -> tuple[dict[str, float], dict[str, float]]:
    """One sample made in the virtual lab (world ``world_seed``, batch seed ``sample_seed``) and measured as every
    experiment is (full SEM frames, ``describe``): its true morphology and its ``measured_*`` columns."""
    import tempfile

    from devices.lab import SimulatedLab
    from flows.dispatch import InProcessDispatcher, describe_images
    from models.describe import Describer

    with tempfile.TemporaryDirectory(prefix="morphloop-measure-") as tmp:
        lab = SimulatedLab(tmp, seed=world_seed, time_compression=None, first_sample_seed=sample_seed - 1)
        result = InProcessDispatcher(tmp, lab=lab).run(dict(conditions), name, {})
        made = lab.samples[result.sample_id].as_dict()
        measured = describe_images(Describer(), result.images)
    return made, {MEASURED_PREFIX + k: (np.nan if measured.get(k) is None else float(measured[k]))
                  for k in DESCRIPTOR_NAMES}


def _measure_job(args) -> dict[str, Any]:
    """One training sample made again in the lab (same world and sample seed) and measured as the lab does."""
    cid, conditions, truth, world_seed, sample_seed = args
    made, measured = _made_and_measured(conditions, world_seed, sample_seed, f"T{cid:05d}")
    if truth and any(abs(made[k] - v) > 1e-6 * max(1.0, abs(v)) for k, v in truth.items() if k in made):
        raise ValueError(f"condition {cid}: the lab made a different sample than the training set's (D50 "
                         f"{made['d50_um']:.4f} vs {truth.get('d50_um')}); the set was built with another "
                         f"--seed or world: pass that data seed")
    return {"condition_id": cid, **measured}


def measure_training_samples(table: pd.DataFrame, *, data_seed: int = 0, world_seed: int = 0, workers: int = 2,
                             progress: Callable[[int], None] | None = None,
                             known: pd.DataFrame | None = None) -> pd.DataFrame:
    """``table`` (one row per training condition, e.g. a model's ``training_descriptors.json``) with
    ``measured_*`` columns: each condition's training sample made again in the virtual lab (same world, same
    batch-noise seed, so the same sample) and imaged by the lab's SEM at full frame, then measured by
    ``describe`` -- what a lab holds for historical samples.

    The tiles a surrogate learns from are small crops whose descriptors are calibrated to the simulator's truth;
    what the lab (and every campaign) measures is ``describe`` on full frames, which reads texture and the
    sphericities differently. Predictions meant to be compared with measurements learn from these columns.

    ``known``: an earlier table with ``measured_*`` columns (e.g. the model this one was warm-started from). A row
    with the same condition id, conditions and true morphology is the same sample made in the same world, so its
    measurements are taken from there instead of being made again (their number: ``attrs["n_reused"]``).
    """
    if "condition_id" not in table.columns:
        raise ValueError("the table needs a condition_id column (one row per training condition)")
    truth_names = [c for c in table.columns if c.startswith("true_")]
    reused = _reusable_rows(table, known, "condition_id", truth_names)
    if progress and len(reused):
        progress(len(reused))
    jobs = []
    for (_, row), conditions in zip(table.iterrows(), conditions_of(table)):
        cid = int(row["condition_id"])
        if cid in reused.index:
            continue
        truth = {n[len("true_"):]: float(row[n]) for n in truth_names}
        jobs.append((cid, conditions, truth, world_seed, training_sample_seed(cid, data_seed)))
    measured = pd.concat([reused.reset_index(), pd.DataFrame(_run_jobs(_measure_job, jobs, workers, progress))],
                         ignore_index=True)
    kept = table.drop(columns=[c for c in table.columns if c.startswith(MEASURED_PREFIX)])
    out = kept.merge(measured, on="condition_id", how="left")
    out.attrs["n_reused"] = len(reused)
    return out


def _reusable_rows(table: pd.DataFrame, known: pd.DataFrame | None, key: str, match: list[str]) -> pd.DataFrame:
    """The ``measured_*`` columns of the rows of ``known`` that describe the same sample as a row of ``table``
    (same ``key``, equal ``cond_*`` and ``match`` columns), indexed by ``key``; empty without ``known``."""
    names = [MEASURED_PREFIX + k for k in DESCRIPTOR_NAMES]
    same = [c for c in table.columns if c.startswith("cond_") or c in match]
    if known is None or not {key, *same, *names} <= set(known.columns):
        return pd.DataFrame({n: pd.Series(dtype=float) for n in names}, index=pd.Index([], name=key))
    pairs = table[[key, *same]].merge(known[[key, *same, *names]], on=key, suffixes=("", "_known"))
    equal = np.ones(len(pairs), dtype=bool)
    for c in same:
        a, b = pairs[c], pairs[c + "_known"]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            equal &= np.isclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-9, atol=1e-12)
        else:
            equal &= (a.astype(str) == b.astype(str)).to_numpy()
    return pairs.loc[equal, [key, *names]].drop_duplicates(key).set_index(key)


#: Batch-noise seed of lab sample 0 (:func:`lab_sample_seed`); apart from the training samples' (10 000 + id).
LAB_SAMPLE_SEED0 = 900_000
#: Sobol scramble seed of the lab samples' design (another sequence than the training set's).
LAB_DESIGN_SEED = 2


def lab_sample_seed(index: int) -> int:
    """The batch-noise seed of lab sample ``index`` (:func:`measure_lab_samples`)."""
    return LAB_SAMPLE_SEED0 + int(index)


def lab_design(start: int, n: int) -> list[dict]:
    """Conditions ``start .. start + n - 1`` of the lab samples' design: one scrambled-Sobol sequence over the
    whole box (so a second call continues the first), atmospheres cycling through their choices."""
    sobol = qmc.Sobol(len(CONTINUOUS), scramble=True, seed=LAB_DESIGN_SEED)
    if start:
        sobol.fast_forward(start)
    with warnings.catch_warnings():  # Sobol balance warnings for n not a power of 2: the design is still space-filling
        warnings.simplefilter("ignore")
        units = sobol.random(n)
    return [_from_unit(u, start + i) for i, u in enumerate(units)]


def _measure_lab_job(args) -> dict[str, Any]:
    """One lab sample made and measured as every experiment is (a sample that cannot be made or measured: NaN)."""
    from flows.dispatch import DispatchError

    index, conditions, world_seed = args
    try:
        _, measured = _made_and_measured(conditions, world_seed, lab_sample_seed(index), f"L{index:05d}")
    except (DispatchError, ValueError):
        measured = {MEASURED_PREFIX + k: np.nan for k in DESCRIPTOR_NAMES}
    return {"sample_index": index, "sample_seed": lab_sample_seed(index),
            **{f"cond_{k}": v for k, v in conditions.items()}, **measured}


def measure_lab_samples(n: int, *, start: int = 0, world_seed: int = 0, workers: int = 2,
                        progress: Callable[[int], None] | None = None,
                        known: pd.DataFrame | None = None) -> pd.DataFrame:
    """``n`` lab samples at conditions ``start ..`` of :func:`lab_design`, each made once in the virtual lab
    (world ``world_seed``, batch seed :func:`lab_sample_seed`) and measured with ``describe`` on its full SEM
    frames. One row per sample: ``sample_index``, ``sample_seed``, ``cond_*`` and ``measured_*`` columns.

    These are what a lab holds beyond the images a surrogate was trained on (historical batches, earlier
    campaigns): they cost an experiment each but no training, and the training-set GP learns from them.

    ``known``: an earlier lab table made in the same world (another model's ``lab_descriptors.json``); its rows
    with the same sample index, batch seed and conditions are the same experiments and are taken from there (their number: ``attrs["n_reused"]``).
    """
    if n < 1:
        raise ValueError(f"the number of lab samples must be >= 1, got {n}")
    design = lab_design(start, n)
    planned = pd.DataFrame([{"sample_index": start + i, "sample_seed": lab_sample_seed(start + i),
                             **{f"cond_{k}": v for k, v in c.items()}} for i, c in enumerate(design)])
    reused = _reusable_rows(planned, known, "sample_index", ["sample_seed"])
    if progress and len(reused):
        progress(len(reused))
    jobs = [(start + i, c, world_seed) for i, c in enumerate(design) if start + i not in reused.index]
    made = pd.DataFrame(_run_jobs(_measure_lab_job, jobs, workers, progress))
    taken = planned.merge(reused.reset_index(), on="sample_index")
    out = pd.concat([taken, made], ignore_index=True).sort_values("sample_index", ignore_index=True)
    out.attrs["n_reused"] = len(reused)
    return out


def load_training_set(data_dir: str | Path) -> pd.DataFrame:
    """The tile table of a training set, with clear errors when it is not one."""
    data_dir = Path(data_dir)
    if not (data_dir / TABLE).is_file():
        raise FileNotFoundError(f"{data_dir} holds no {TABLE}: build a training set with "
                                f"`morphloop surrogate build-data --out {data_dir}`")
    return pd.read_parquet(data_dir / TABLE)


def conditions_of(table: pd.DataFrame) -> list[dict]:
    """The condition dict of each row."""
    names = [c[len("cond_"):] for c in table.columns if c.startswith("cond_")]
    return [{n: (row[f"cond_{n}"] if isinstance(row[f"cond_{n}"], str) else float(row[f"cond_{n}"])) for n in names}
            for _, row in table.iterrows()]


def tiles_from_frames(experiments: list[tuple[dict, list[str]]], n_tiles: int = TILES_PER_MAGNIFICATION):
    """Surrogate tiles from measured SEM frames (the closed loop's fine-tuning data).

    ``experiments``: ``(conditions, [low_frame_path, high_frame_path])`` per experiment. Low frames are
    block-averaged to the surrogate's 0.2 µm/px and cut into tiles; high frames (0.01 µm/px) give the tiles most
    covered by particle surface. Returns a :class:`models.surrogate.training.TileSet`.
    """
    from models.imageio import read_image
    from models.infobar import detect_info_bar
    from models.surrogate.training import TileSet

    tiles, conditions, mags = [], [], []
    target_px = {"low": LOW_FRAME_PIXEL_UM, "high": HIGH_FRAME_PIXEL_UM}
    for conds, paths in experiments:
        for mag, path in zip(("low", "high"), paths):
            image = read_image(path)
            pixels = image.pixels[detect_info_bar(image.pixels).analysis_rows(image.pixels.shape[0])]
            factor = int(round(target_px[mag] / image.pixel_size_um))
            if factor > 1:
                h, w = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
                pixels = pixels[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
            for tile in _pick_tiles(pixels.astype(np.float32), target_px[mag], mag, n_tiles):
                tiles.append(tile)
                conditions.append(dict(conds))
                mags.append(mag)
    return TileSet(np.stack(tiles).astype(np.float32), conditions, mags)
