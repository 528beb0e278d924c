"""Shared fixtures."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest


def _lazily_sized_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header announcing ``width x height`` pixels with (almost) no pixel data: a few bytes on
    disk, so size limits can be checked without allocating the image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def lazily_sized_png():
    """Factory: ``lazily_sized_png(path, width, height) -> path``."""
    return _lazily_sized_png


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for the whole session: its start takes 20-30 s, more on a busy
    2-core machine, so the harness's 30-s default start timeout is raised."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
