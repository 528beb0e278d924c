"""Read and write tomography slices and stacks: TIFF, NPY or HDF5, 2D (``y x x``) or 3D (``rows x y x x``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SUFFIXES = {".npy": "npy", ".tif": "tiff", ".tiff": "tiff", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5"}
#: Dataset written to (and preferred when reading) HDF5 files.
HDF5_DATASET = "data"


class VolumeIOError(ValueError):
    """A slice or stack that cannot be read or written, with the reason and the fix."""


def _format(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise VolumeIOError(f"{path}: unsupported file type {path.suffix!r}; use .npy, .tif/.tiff or .h5/.hdf5")
    return kind


def read_volume(path: str | Path) -> np.ndarray:
    """A 2D slice or 3D stack as float32.

    HDF5: the dataset ``data`` if present, else ``/exchange/data``, else the only dataset in the file.

    Raises
    ------
    VolumeIOError
        Missing file, unsupported type, no usable dataset, or not 2D/3D.
    """
    path = Path(path)
    kind = _format(path)
    if not path.is_file():
        raise VolumeIOError(f"{path}: file not found; check the path")
    try:
        if kind == "npy":
            array = np.load(path, allow_pickle=False)
        elif kind == "tiff":
            import tifffile

            array = tifffile.imread(path)
        else:
            array = _read_hdf5(path)
    except VolumeIOError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise VolumeIOError(f"{path}: could not be read as {kind} ({type(exc).__name__}: {exc})") from exc
    array = np.asarray(array)
    if array.ndim not in (2, 3) or min(array.shape) < 1:
        raise VolumeIOError(f"{path}: expected a 2D slice or a 3D stack (rows x y x x), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise VolumeIOError(f"{path}: data type {array.dtype} is not numeric")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise VolumeIOError(f"{path}: contains NaN or infinite values; clean the reconstruction first")
    return array


def _read_hdf5(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as handle:
        for key in (HDF5_DATASET, "exchange/data"):
            if key in handle and isinstance(handle[key], h5py.Dataset):
                return handle[key][...]
        datasets: list[str] = []
        handle.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        if len(datasets) == 1:
            return handle[datasets[0]][...]
    raise VolumeIOError(f"{path}: no dataset named {HDF5_DATASET!r} and {len(datasets)} candidates "
                        f"({datasets[:5]}); write the stack to a dataset named {HDF5_DATASET!r}")


def write_volume(path: str | Path, array: np.ndarray) -> Path:
    """Write a slice or stack (float32) in the format given by the suffix; folders are created."""
    path = Path(path)
    kind = _format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(array, dtype=np.float32)
    if kind == "npy":
        np.save(path, data, allow_pickle=False)
    elif kind == "tiff":
        import tifffile

        tifffile.imwrite(path, data, photometric="minisblack")
    else:
        import h5py

        with h5py.File(path, "w") as handle:
            handle.create_dataset(HDF5_DATASET, data=data, compression="gzip")
    return path
