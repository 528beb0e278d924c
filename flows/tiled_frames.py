"""How the frames our detectors write are catalogued in Tiled and read back through it.

Both detectors reference their frames with Resource/Datum documents, as area detectors do, and ``TiledWriter``
registers those files as external arrays (nothing is copied into the catalog):

* The SEM (``devices.sem``, spec ``MORPHLOOP_TIFF``) writes one TIFF per frame and one Resource per file.
  :class:`SingleFrameTiffConsolidator` stacks a stream's frames (``N x H x W``, one file per row), read back
  with Tiled's TIFF-sequence adapter.
* The tomography camera (``devices.area_detector``, spec ``MORPHLOOP_HDF5_FRAME``) appends every frame of a
  scan to ``/entry/data/data`` of one HDF5 file, with one Resource per file and one Datum
  ``{"point_number": row}`` per frame. Darks, flats and projections are three streams of that one file, and
  after a beam loss the scan is repeated in the same run (the RunEngine rewinds, reusing the ``seq_num`` of the
  events it replaces) while the file keeps every attempt. So a stream's frames are *some* rows of the dataset,
  in an order only the datums tell:

  - :class:`FrameRowsNormalizer` gives each StreamDatum the file row of its frame as ``indices`` (what
    event-model's StreamDatum indices mean: the slice of the resource) and the event's own ``seq_num`` as
    ``seq_nums``, where the generic conversion of bluesky-tiled-plugins 2.0 derives ``seq_nums`` from the
    row (``row + 1``), which names a repeated event twice;
  - :class:`HDF5FrameRowsConsolidator` keeps the row of the *last* event of each ``seq_num``, so each stream
    reads as the complete scan the plan ended with (``N x H x W``, in ``seq_num`` order), not the interrupted
    attempt;
  - :class:`HDF5FrameRowsAdapter` serves those rows (lazily, through Dask) from the file.

:class:`FrameRowsNormalizer` overrides a private method of ``RunNormalizer`` (bluesky-tiled-plugins 2.0, where
bluesky 1.16 moved its Tiled writer) and reads its caches (``_sres_cache``, ``_desc_name_by_uid``, ``_emitted``):
``tests/flows/test_tiled_frames.py`` fails if a release changes them.

Register the consolidators with :func:`register_consolidators` before the first run is written, give
``TiledWriter`` :data:`SPEC_TO_MIMETYPE` and ``normalizer=FrameRowsNormalizer``, and give the catalog
:data:`ADAPTERS_BY_MIMETYPE`.
"""
from __future__ import annotations

import copy
from typing import Any

from devices.sem import RESOURCE_SPEC as SEM_RESOURCE_SPEC
from devices.station import DATA_PATH as HDF5_FRAME_DATASET
from devices.station import RESOURCE_SPEC as HDF5_FRAME_SPEC

#: StreamResource mimetype the SEM's Resource spec is normalised to: one single-frame TIFF per resource.
FRAME_TIFF_MIMETYPE = "image/tiff;morphloop=single-frame"
#: What Tiled reads the consolidated SEM frames with (its TIFF-sequence adapter).
TIFF_SEQUENCE_MIMETYPE = "multipart/related;type=image/tiff"
#: StreamResource mimetype of the tomography camera's frames: chosen rows of one HDF5 dataset.
HDF5_FRAME_ROWS_MIMETYPE = "application/x-hdf5;morphloop=frame-rows"
#: ``TiledWriter(spec_to_mimetype=...)`` for both detectors.
SPEC_TO_MIMETYPE = {SEM_RESOURCE_SPEC: FRAME_TIFF_MIMETYPE, HDF5_FRAME_SPEC: HDF5_FRAME_ROWS_MIMETYPE}


def register_consolidators() -> None:
    """Register both consolidators with bluesky-tiled-plugins' Tiled writer (idempotent)."""
    from bluesky_tiled_plugins.writing import consolidators

    for cls in (_single_frame_tiff_consolidator(), _hdf5_frame_rows_consolidator()):
        for mimetype in cls.supported_mimetypes:
            consolidators.CONSOLIDATOR_REGISTRY.setdefault(mimetype, cls)


def _single_frame_tiff_consolidator() -> type:
    """bluesky's ``TIFFConsolidator`` expects one StreamResource per file *sequence* (a directory plus a filename
    template) and cannot take a second StreamResource for the same data key. Our SEM writes one file per frame
    with one Resource each, so this subclass stacks frames (``N x H x W``, one TIFF per row) and takes each new
    StreamResource's file as the asset of the next frame."""
    from bluesky_tiled_plugins.writing import consolidators

    registered = consolidators.CONSOLIDATOR_REGISTRY.get(FRAME_TIFF_MIMETYPE)
    if registered is not None:
        return registered

    class SingleFrameTiffConsolidator(consolidators.TIFFConsolidator):
        supported_mimetypes = {FRAME_TIFF_MIMETYPE}
        join_method = "stack"

        def __init__(self, stream_resource: dict, descriptor: dict) -> None:
            # The parent wants a filename template; every resource here is exactly one file (its uri).
            stream_resource = {**stream_resource, "parameters": {**stream_resource["parameters"], "template": ""}}
            super().__init__(stream_resource, descriptor)
            self.mimetype = TIFF_SEQUENCE_MIMETYPE  # what the DataSource is read back with
            self._frame_uri = self.uri

        def get_datum_uri(self, indx: int) -> str:
            return self._frame_uri

        def update_from_stream_resource(self, stream_resource: dict) -> None:
            self._frame_uri = stream_resource["uri"]

    return SingleFrameTiffConsolidator


def _hdf5_frame_rows_consolidator() -> type:
    from bluesky_tiled_plugins.writing import consolidators

    registered = consolidators.CONSOLIDATOR_REGISTRY.get(HDF5_FRAME_ROWS_MIMETYPE)
    if registered is not None:
        return registered

    class HDF5FrameRowsConsolidator(consolidators.ConsolidatorBase):
        """One stream's frames of one HDF5 scan file: the file row of the last event of each ``seq_num``.

        Expects StreamDatums whose ``indices`` are file rows (:class:`FrameRowsNormalizer`). A stream is one
        file (one scan per run); a second file for the same stream is refused.
        """

        supported_mimetypes = {HDF5_FRAME_ROWS_MIMETYPE}
        join_method = "stack"

        def __init__(self, stream_resource: dict, descriptor: dict) -> None:
            # One frame per event: each row is the descriptor's H x W frame. The writer turns the Resource's
            # ``frame_per_point: 1`` into ``multiplier: 1``, which would give every row an extra axis of length 1.
            parameters = {k: v for k, v in stream_resource["parameters"].items() if k != "multiplier"}
            super().__init__({**stream_resource, "parameters": parameters}, descriptor)  # file = asset #0
            self._row_of_seq_num: dict[int, int] = {}

        def consume_stream_datum(self, doc: dict) -> Any:
            rows = range(doc["indices"]["start"], doc["indices"]["stop"])
            seq_nums = range(doc["seq_nums"]["start"], doc["seq_nums"]["stop"])
            if len(rows) != len(seq_nums):
                raise ValueError(f"StreamDatum {doc['uid']}: {len(rows)} file rows for {len(seq_nums)} events; "
                                 "this detector writes one frame per event")
            self._row_of_seq_num.update(zip(seq_nums, rows))  # a rewound event replaces the one it repeats
            self._num_rows = len(self._row_of_seq_num)
            self._seqnums_to_indices_map = {s: i for i, s in enumerate(sorted(self._row_of_seq_num))}
            # what changed, for Tiled's streaming subscribers: from the first position this datum wrote to the end
            first = min(self._seqnums_to_indices_map[s] for s in seq_nums) if len(seq_nums) else self._num_rows
            return consolidators.Patch(offset=(first, *[0] * len(self.datum_shape)),
                                       shape=(self._num_rows - first, *self.datum_shape))

        def rows(self) -> list[int]:
            """File rows of the stream's frames, in ``seq_num`` order."""
            return [self._row_of_seq_num[s] for s in sorted(self._row_of_seq_num)]

        def adapter_parameters(self) -> dict:
            return {"dataset": HDF5_FRAME_DATASET, "rows": self.rows()}

        def update_from_stream_resource(self, stream_resource: dict) -> None:
            if stream_resource["uri"] != self.uri:
                raise ValueError(f"stream {self.data_key!r} already reads {self.uri}; one scan file per stream "
                                 f"and run, got {stream_resource['uri']} too")

    return HDF5FrameRowsConsolidator


def frame_rows_normalizer() -> type:
    """:class:`FrameRowsNormalizer`, built on first use (the Tiled writer is imported only when a store opens)."""
    from bluesky_tiled_plugins.writing.tiled_writer import RunNormalizer
    from event_model.documents.stream_datum import StreamDatum, StreamRange

    class FrameRowsNormalizer(RunNormalizer):
        """``RunNormalizer``, except that a tomography frame's StreamDatum points at its file row and keeps its
        event's ``seq_num``.

        Our scan file holds three streams and, after a beam loss, two attempts. Each stream gets its own
        StreamResource of the file; the datum's ``point_number`` (the frame's row in ``/entry/data/data``)
        becomes the StreamDatum's ``indices`` and the event's ``seq_num`` its ``seq_nums`` (the generic
        conversion numbers events by file row, so a repeated frame would not replace the one it repeats).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._frame_resources: set[str] = set()

        def resource(self, doc: dict) -> None:
            if doc.get("spec") == HDF5_FRAME_SPEC:
                self._frame_resources.add(doc["uid"])
            super().resource(doc)

        def _convert_datum_to_stream_datum(self, datum_doc: dict, data_key: str, desc_uid: str,
                                           seq_num: int) -> tuple[dict | None, dict]:
            if datum_doc["resource"] not in self._frame_resources:
                return super()._convert_datum_to_stream_datum(datum_doc, data_key, desc_uid, seq_num)
            # one StreamResource per (file, data key, stream)
            stream = self._desc_name_by_uid[desc_uid]
            sres_uid = f"{datum_doc['resource']}-{data_key}-{stream}"
            sres_doc = None
            if sres_uid not in self._emitted:
                sres_doc = copy.deepcopy(self._sres_cache[datum_doc["resource"]])
                sres_doc.update(uid=sres_uid, data_key=data_key)
            row = int(datum_doc["datum_kwargs"]["point_number"])
            return sres_doc, StreamDatum(uid=datum_doc["datum_id"], stream_resource=sres_uid, descriptor=desc_uid,
                                         indices=StreamRange(start=row, stop=row + 1),
                                         seq_nums=StreamRange(start=seq_num, stop=seq_num + 1))

    return FrameRowsNormalizer


class HDF5FrameRowsAdapter:
    """Tiled adapter for :data:`HDF5_FRAME_ROWS_MIMETYPE`: the listed rows of one HDF5 dataset, read lazily."""

    @classmethod
    def from_catalog(cls, data_source: Any, node: Any, /, dataset: str = HDF5_FRAME_DATASET,
                     rows: list[int] | None = None, **kwargs: Any) -> Any:
        from tiled.adapters.array import ArrayAdapter
        from tiled.adapters.hdf5 import HDF5ArrayAdapter
        from tiled.utils import path_from_uri

        (uri,) = [a.data_uri for a in data_source.assets if a.parameter == "data_uris"] or [
            data_source.assets[0].data_uri]
        # not SWMR: the camera writes plain HDF5 and has closed the file when its run is read back
        array = HDF5ArrayAdapter.lazy_load_hdf5_array(path_from_uri(uri), dataset=dataset, swmr=False)
        array = array[list(rows or [])]
        structure = data_source.structure
        if array.shape != tuple(structure.shape):
            raise ValueError(f"{path_from_uri(uri)}{dataset}: rows {rows} give shape {array.shape}, the catalog "
                             f"records {tuple(structure.shape)}")
        return ArrayAdapter(array, structure, metadata=dict(node.metadata_), specs=node.specs)


#: ``catalog.from_uri(adapters_by_mimetype=...)`` for the frames only Tiled's defaults cannot read.
ADAPTERS_BY_MIMETYPE = {HDF5_FRAME_ROWS_MIMETYPE: HDF5FrameRowsAdapter}
