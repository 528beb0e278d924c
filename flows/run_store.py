"""Run data in Tiled: Bluesky documents in, run metadata and frames (SEM images, tomography frames) back out.

A :class:`RunStore` is one embedded Tiled catalog in the data directory, served inside this process::

    DATA/tiled/catalog.db    SQLite catalog: one BlueskyRun container per run (start/stop in its metadata)
    DATA/tiled/tables.db     SQLite storage of the event tables (readbacks, image paths, ...)
    DATA/tiled/data/         writable storage of arrays Tiled itself writes (none for our plans)
    DATA/tiled/unwritten/    JSON-lines copies of runs Tiled failed to take (``TiledWriter`` backup)

Images never go into the catalog: the SEM writes each frame to a TIFF file, the tomography camera appends its
frames to one HDF5 file per scan, and both reference them with Resource/Datum pairs. ``TiledWriter``'s
normalizer turns those into StreamResource/StreamDatum documents, and the frames of one stream are registered
as one external ``N x H x W`` array over those files (:mod:`flows.tiled_frames`): for a scan a beam loss
interrupted, the frames of the repeated, complete scan.

The Tiled app runs on a daemon thread of this process, bound to 127.0.0.1 on a free port: nothing leaves the
machine and there is no server to manage. (Tiled's socket-free ``Context.from_app`` needs starlette's
``TestClient``, which since starlette 1.2 is built on ``httpx2`` and rejects the ``httpx`` URLs Tiled 0.2
passes it.)

Usage::

    store = RunStore.open(data_dir)
    RE.subscribe(store.writer)
    RE(synthesize_and_image(reactor, sem, conditions, md={"experiment_id": "E1"}))
    store.find(experiment_id="E1")      # -> [run uid, ...]
    store.run_summary(uid)["images"]    # -> frames with their TIFF paths
    store.read_image(uid, "high")       # -> H x W uint8 array, read through Tiled
    store.read_frames(scan_uid, "flat") # -> a tomography scan's flats, N x H x W float32
    store.close()
"""
from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from flows.tiled_frames import (ADAPTERS_BY_MIMETYPE, SPEC_TO_MIMETYPE, frame_rows_normalizer,
                                register_consolidators)

#: Sub-folder of the data directory that holds everything Tiled writes.
TILED_DIR = "tiled"
CATALOG_FILE = "catalog.db"
TABLES_FILE = "tables.db"
DATA_DIR = "data"
BACKUP_DIR = "unwritten"
SERVER_START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 300.0

logger = logging.getLogger(__name__)


class StoreNotWritable(PermissionError):
    """The data directory (or its ``tiled/`` folder) cannot be created or written."""


class StoreNotReadable(ValueError):
    """``data_dir/tiled/catalog.db`` exists but is not a catalog (damaged, or another program's file)."""


class RunNotFound(KeyError):
    """No run with that uid in the catalog."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def open_run_store(data_dir: str | Path) -> RunStore | None:
    """:meth:`RunStore.open` on ``data_dir``, or None (with a warning) when Tiled or the TiledWriter
    (bluesky-tiled-plugins) cannot be imported: the caller's documents then go to its JSON-lines log only."""
    try:
        return RunStore.open(data_dir)
    except ImportError as exc:  # Tiled and the TiledWriter are imported by open()
        logger.warning("Tiled or the TiledWriter (bluesky-tiled-plugins) cannot be imported (%s): runs go to "
                       "documents.jsonl only; reinstall with `make test` or `pip install -e .` to get the pinned "
                       "versions", exc)
        return None


def _writable_tiled_dir(data_dir: Path) -> Path:
    """Create ``data_dir/tiled`` (and its folders) and prove it writable, or raise :class:`StoreNotWritable`."""
    tiled_dir = data_dir / TILED_DIR
    try:
        for sub in (DATA_DIR, BACKUP_DIR):
            (tiled_dir / sub).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=tiled_dir, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise StoreNotWritable(f"cannot write the run store in {tiled_dir} ({exc.strerror or exc}); pass a data "
                               "directory you can create and write to") from exc
    return tiled_dir


def _init_catalog(uri: str) -> bool:
    """Create the catalog tables and stamp their schema revision in this process, as ``tiled catalog init``
    does (``init_if_not_exists=True`` would run that command in a subprocess that imports Tiled again, several
    seconds on a busy machine). Returns False if this Tiled lacks the functions, so the caller falls back."""
    import asyncio

    try:
        from sqlalchemy.ext.asyncio import create_async_engine
        from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
        from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
        from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database
        from tiled.utils import ensure_specified_sql_driver
    except ImportError:
        return False
    uri = ensure_specified_sql_driver(uri)

    async def create_tables() -> None:
        engine = create_async_engine(uri)
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
        except UninitializedDatabase:
            await initialize_database(engine)
        finally:
            await engine.dispose()

    failure: list[BaseException] = []

    def run() -> None:  # own thread: open() may be called from code that already runs an event loop
        try:
            asyncio.run(create_tables())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="morphloop-tiled-init")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    with warnings.catch_warnings():  # Tiled's alembic.ini template predates alembic's path_separator option
        warnings.filterwarnings("ignore", "No path_separator found", DeprecationWarning)
        stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)
    return True


def _start_server(app: Any, catalog_uri: str) -> tuple[Any, threading.Thread, str]:
    """Serve ``app`` on 127.0.0.1 (free port) from a daemon thread; return (server, thread, base URL)."""
    import uvicorn

    class _Server(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # not the main thread: leave signals to the host
            pass

    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, loop="asyncio", log_config=None,
                                    log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="morphloop-tiled", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the embedded Tiled server stopped while starting (see the log above); if Tiled "
                               f"was upgraded, migrate the catalog: tiled catalog upgrade-database {catalog_uri}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the embedded Tiled server did not start within {SERVER_START_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return server, thread, f"http://{host}:{port}"


def _external_assets(node: Any) -> list[str] | None:
    """Paths of the files behind an externally stored array node, in order; None for anything else."""
    from tiled.utils import path_from_uri

    sources = node.data_sources() or []
    if not sources or str(getattr(sources[0].management, "value", sources[0].management)) != "external":
        return None
    return [str(path_from_uri(a.data_uri)) for a in sorted(sources[0].assets, key=lambda a: a.num or 0)]


def _frame_rows(node: Any) -> list[int] | None:
    """Rows of the HDF5 dataset behind a tomography frame stack (see :mod:`flows.tiled_frames`); else None."""
    sources = node.data_sources() or []
    rows = sources[0].parameters.get("rows") if sources else None
    return [int(r) for r in rows] if rows is not None else None


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars (JSON-able summaries)."""
    return value.item() if isinstance(value, np.generic) else value


class RunStore:
    """Bluesky runs in an embedded Tiled catalog under ``data_dir/tiled``; build it with :meth:`open`.

    Attributes
    ----------
    data_dir : Path
    tiled_dir : Path
        ``data_dir/tiled``: catalog, tables, backups.
    readable_roots : tuple of Path
        Folders whose files Tiled serves: ``data_dir`` and the ``image_roots`` given to :meth:`open`.
    client : tiled.client.container.Container
        The root of the catalog, for anything this class does not wrap.
    """

    def __init__(self, data_dir: Path, tiled_dir: Path, client: Any, server: Any, thread: threading.Thread,
                 tiled_writer: Callable[[str, dict], None], readable_roots: Sequence[Path]) -> None:
        self.data_dir, self.tiled_dir, self.client = data_dir, tiled_dir, client
        self.readable_roots = tuple(readable_roots)
        self._server, self._thread, self._tiled_writer = server, thread, tiled_writer
        self._closed = False
        self._warned_roots: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(cls, data_dir: str | Path, *, image_roots: Sequence[str | Path] = ()) -> RunStore:
        """Create or open the catalog ``data_dir/tiled/catalog.db`` and serve it in this process.

        Parameters
        ----------
        data_dir : str or Path
            The data directory (created if missing). Image files under it can be read back through Tiled.
        image_roots : sequence of path, optional
            Further folders holding image files that runs reference (Tiled serves no file outside them).

        Returns
        -------
        RunStore
            Close it with :meth:`close` (or use it as a context manager).

        Raises
        ------
        StoreNotWritable
            ``data_dir/tiled`` cannot be created or written.
        StoreNotReadable
            ``data_dir/tiled/catalog.db`` is not a SQLite database.
        """
        data_dir = Path(data_dir).expanduser().absolute()
        tiled_dir = _writable_tiled_dir(data_dir)
        register_consolidators()
        import httpx
        from bluesky_tiled_plugins import TiledWriter
        from tiled.catalog import from_uri as catalog_from_uri
        from tiled.client import from_uri as client_from_uri
        from tiled.config import Authentication
        from tiled.server.app import build_app

        roots = [data_dir, *(Path(p).expanduser().absolute() for p in image_roots)]
        catalog_path = tiled_dir / CATALOG_FILE
        catalog_uri = f"sqlite:///{catalog_path}"
        fresh = not catalog_path.exists() or catalog_path.stat().st_size == 0
        if not fresh:
            with open(catalog_path, "rb") as handle:
                if handle.read(16) != b"SQLite format 3\x00":
                    raise StoreNotReadable(f"{catalog_path} is not a SQLite database, so not a Tiled catalog; move "
                                           "it aside (the runs' files are untouched) or pass another data directory")
        catalog = catalog_from_uri(
            catalog_uri,
            writable_storage=[str(tiled_dir / DATA_DIR), f"sqlite:///{tiled_dir / TABLES_FILE}"],
            readable_storage=[str(root) for root in roots],
            adapters_by_mimetype=dict(ADAPTERS_BY_MIMETYPE),
            init_if_not_exists=fresh and not _init_catalog(catalog_uri),  # subprocess fallback (old Tiled)
        )
        api_key = secrets.token_hex(16)
        app = build_app(catalog, authentication=Authentication(single_user_api_key=api_key))
        server, thread, base_url = _start_server(app, catalog_uri)
        try:
            # Generous timeouts: the server shares this process's cores, and a timed-out write would be retried.
            client = client_from_uri(f"{base_url}/api/v1", api_key=api_key, trust_env=False,
                                     include_data_sources=True, timeout=httpx.Timeout(REQUEST_TIMEOUT_S))
            writer = TiledWriter(client, spec_to_mimetype=dict(SPEC_TO_MIMETYPE),
                                 normalizer=frame_rows_normalizer(), backup_directory=str(tiled_dir / BACKUP_DIR))
        except BaseException:
            server.should_exit = True
            thread.join(timeout=10)
            raise
        return cls(data_dir, tiled_dir, client, server, thread, writer, roots)

    def close(self) -> None:
        """Stop the embedded server and release the catalog (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.client.context.close()
        finally:
            self._server.should_exit = True
            self._thread.join(timeout=30)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({str(self.data_dir)!r}{', closed' if self._closed else ''})"

    @property
    def catalog_path(self) -> Path:
        """The SQLite catalog file (``tiled/catalog.db``)."""
        return self.tiled_dir / CATALOG_FILE

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; open it again with RunStore.open(data_dir)")

    # ------------------------------------------------------------------ writing
    @property
    def writer(self) -> Callable[[str, dict], None]:
        """Callback ``(name, doc)`` that writes every run to the catalog: ``RE.subscribe(store.writer)``.

        A run is in the catalog when the RunEngine returns. If Tiled refuses a document, the run's documents
        go to ``tiled/unwritten/<uid prefix>.jsonl`` instead and a warning is logged; the plan goes on.
        """
        self._check_open()
        return self._write

    def _write(self, name: str, doc: dict) -> None:
        if name == "resource" and not self._serves(Path(doc.get("root", "")) / doc.get("resource_path", "")):
            root = str(doc.get("root"))
            if root not in self._warned_roots:
                self._warned_roots.add(root)
                logger.warning("images under %s are referenced but outside the folders this run store serves "
                               "(%s): they are catalogued, but read_image() cannot read them; open the store "
                               "with image_roots=[...]", root, ", ".join(map(str, self.readable_roots)))
        self._tiled_writer(name, doc)

    def _serves(self, path: Path) -> bool:
        return any(path.is_relative_to(root) for root in self.readable_roots)

    # ------------------------------------------------------------------ reading
    def runs(self) -> list[str]:
        """Uids of all runs, oldest first."""
        self._check_open()
        return list(self.client.keys())

    def find(self, **criteria: Any) -> list[str]:
        """Uids of the runs whose start document matches every ``key=value`` (Tiled metadata search).

        Nested keys use ``__`` for the dot: ``find(conditions__atmosphere="sealed")``.

        Examples
        --------
        >>> store.find(experiment_id="E1")                  # doctest: +SKIP
        >>> store.find(sample_id="S0003", plan_name="synthesize_and_image")  # doctest: +SKIP
        """
        self._check_open()
        if not criteria:
            raise ValueError("find() needs at least one key=value, e.g. find(experiment_id='E1'); "
                             "runs() lists all runs")
        from tiled.queries import Key

        results = self.client
        for key, value in criteria.items():
            results = results.search(Key("start." + key.replace("__", ".")) == value)
        return list(results.keys())

    def _run(self, uid: str) -> Any:
        self._check_open()
        try:
            return self.client[uid]
        except KeyError:
            raise RunNotFound(f"no run {uid!r} in {self.tiled_dir / CATALOG_FILE}; see store.runs() (a run "
                              f"Tiled refused is in {self.tiled_dir / BACKUP_DIR})") from None

    def run_summary(self, uid: str) -> dict[str, Any]:
        """What one run was and what it produced, as read back from the catalog.

        Returns
        -------
        dict
            ``uid``, ``plan_name``, ``sample_id``, ``experiment_id``, ``conditions``, ``magnifications``
            (None when the start document lacks them), ``exit_status`` and ``reason`` (None while the run is
            open), ``start`` (the whole start document), ``streams`` (names) and ``images``: one dict per
            externally stored frame, in acquisition order, with ``stream``, ``key``, ``index``, ``path`` (the
            file Tiled reads), ``file_row`` (HDF5 frames) and that event's readings (``sem_magnification``,
            ``sem_pixel_size_um``, ...); ``repeated_events``: per stream, the events a suspension made the plan
            take again (the rewound ones, replaced by their repeats; empty when nothing was repeated);
            ``annotations``: what :meth:`annotate` attached (e.g. ``end_of_run``, the tomography processing).
        """
        run = self._run(uid)
        md = run.metadata
        start, stop = dict(md.get("start", {})), dict(md.get("stop") or {})
        summary = {key: start.get(key) for key in
                   ("plan_name", "sample_id", "experiment_id", "conditions", "magnifications")}
        summary.update(uid=uid, exit_status=stop.get("exit_status"), reason=stop.get("reason"), start=start,
                       streams=list(run.keys()), images=[], repeated_events={},
                       annotations={k: v for k, v in md.items() if k not in ("start", "stop")})
        for stream in summary["streams"]:
            node = run[stream].base
            table = node["internal"].read() if "internal" in node.keys() else None
            if table is not None and (repeated := int(table["seq_num"].duplicated().sum())):
                summary["repeated_events"][stream] = repeated
            summary["images"].extend(self._frames(node, stream, table))
        return summary

    def annotate(self, uid: str, key: str, value: Any) -> None:
        """Attach analysis results to a run: ``value`` (JSON-able) under ``key`` of the run's metadata, beside
        ``start`` and ``stop`` (which cannot be overwritten). :meth:`run_summary` returns them as
        ``annotations``.

        Raises
        ------
        RunNotFound
            Unknown run.
        ValueError
            ``key`` is ``start`` or ``stop``.
        """
        if key in ("start", "stop"):
            raise ValueError(f"{key!r} holds the run's own document; annotate under another key")
        self._run(uid).update_metadata(metadata={key: value})

    def _frames(self, stream_node: Any, stream: str, table: Any = None) -> list[dict[str, Any]]:
        """Externally stored frames of one stream, each with the readings of its event in ``table`` (the stream's
        internal data; the last event of each ``seq_num``: after a rewind the repeated event replaces the
        interrupted one, as the frames do)."""
        external = {}
        for key in stream_node.keys():
            node = None if key == "internal" else stream_node[key]
            if node is not None and (paths := _external_assets(node)) is not None:
                external[key] = (paths, _frame_rows(node), node.shape[0])
        if not external:
            return []
        rows: list[dict[str, Any]] = []
        if table is not None:
            table = table.drop_duplicates("seq_num", keep="last")
            columns = [c for c in table.columns if not c.startswith("ts_") and c != "time"]
            rows = [{c: _plain(v) for c, v in zip(columns, values)}
                    for values in table.sort_values("seq_num")[columns].itertuples(index=False)]
        frames = []
        for key, (paths, file_rows, count) in external.items():
            for index in range(count):
                frame = {"stream": stream, "key": key, "index": index,
                         "path": paths[index] if len(paths) == count else paths[0]}
                if file_rows is not None:
                    frame["file_row"] = file_rows[index]
                frames.append({**frame, **(rows[index] if index < len(rows) else {})})
        return frames

    def read_image(self, uid: str, frame: int | str = 0, *, stream: str = "primary",
                   key: str | None = None) -> np.ndarray:
        """One frame of a run, read through Tiled from the file the run references.

        Parameters
        ----------
        uid : str
        frame : int or str
            Index in acquisition order (negative counts from the end), or a magnification as named in the
            start document (``"low"``, ``"high"``).
        stream : str
            The stream: ``primary`` (the SEM plans' frames, the tomography plans' projections), ``dark``, ``flat``.
        key : str, optional
            The frames' data key (``sem_image``, ``detector_image``); by default the stream's only frames.

        Returns
        -------
        numpy.ndarray
            ``H x W`` (uint8 for SEM frames, float32 for tomography frames).

        Raises
        ------
        RunNotFound, KeyError, IndexError
            Unknown run, stream/key or magnification; frame out of range.
        PermissionError
            The file is outside the folders this store serves (see ``image_roots`` in :meth:`open`).
        """
        images = self._frames_node(uid, stream, key)
        if isinstance(frame, str):
            names = [str(m) for m in self.client[uid].metadata["start"].get("magnifications") or []]
            if frame not in names:
                raise KeyError(f"run {uid} imaged magnifications {names}, not {frame!r}")
            frame = names.index(frame)
        count = images.shape[0]
        if not -count <= frame < count:
            raise IndexError(f"run {uid} has {count} frames in {stream}/{key}; frame {frame} is out of range")
        frame %= count
        paths = _external_assets(images) or []
        self._check_served(uid, paths[frame:frame + 1] if len(paths) == count else paths)
        return np.asarray(images[frame])

    def read_frames(self, uid: str, stream: str = "primary", key: str | None = None) -> np.ndarray:
        """All frames of one stream of a run, ``N x H x W`` in ``seq_num`` order, read through Tiled.

        For a tomography scan that a beam loss interrupted, the frames are those of the repeated, complete
        scan (the interrupted attempt's frames stay in the file but not in the stream).

        Raises
        ------
        RunNotFound, KeyError, PermissionError
            As :meth:`read_image`.
        """
        images = self._frames_node(uid, stream, key)
        self._check_served(uid, _external_assets(images) or [])
        return np.asarray(images.read())

    def _frames_node(self, uid: str, stream: str, key: str | None) -> Any:
        run = self._run(uid)
        if stream not in run.keys():
            raise KeyError(f"run {uid} has no stream {stream!r}; its streams are {list(run.keys())}")
        arrays = [k for k in run[stream].base.keys() if k != "internal"]
        if key is None and len(arrays) == 1:
            key = arrays[0]
        if key not in arrays:
            held = f"holds the frames {arrays}" if arrays else "holds no frames"
            raise KeyError(f"run {uid} has no frames {stream}/{key}; {stream} {held}")
        return run[stream].base[key]

    def _check_served(self, uid: str, paths: Sequence[str]) -> None:
        for path in paths:
            if not self._serves(Path(path)):
                raise PermissionError(f"run {uid} reads {path}, outside the folders this store serves "
                                      f"({', '.join(map(str, self.readable_roots))}); open it with "
                                      f"RunStore.open(data_dir, image_roots=[{str(Path(path).parent)!r}])")
