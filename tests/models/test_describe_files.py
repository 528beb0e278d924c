"""``describe_files``: many images at once in worker processes, in order, one failure not stopping the rest."""
from __future__ import annotations

import pytest

from models.describe import DescribeError, DescribeOptions, default_workers, describe_files
from simulators.fields import make_particle_field, write_sem_tiff


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> list:
    d = tmp_path_factory.mktemp("batch")
    paths = [write_sem_tiff(d / f"field{i}.tif", make_particle_field(500 + i, shape=(384, 384), n_particles=20,
                                                                     d50_px=40).image, 0.1) for i in range(3)]
    missing = d / "missing.tif"
    return [paths[0], missing, paths[1], paths[2]]


def test_workers_give_the_serial_results_in_order_and_report_the_bad_file(batch):
    serial = list(describe_files(batch, workers=1))
    parallel = list(describe_files(batch, workers=2))
    assert [p for p, _ in parallel] == [str(p) for p in batch]
    for (_, a), (_, b) in zip(serial, parallel):
        if isinstance(a, BaseException):
            assert isinstance(b, DescribeError) and "missing.tif" in str(b)
        else:
            assert a.record() == b.record()
    assert sum(isinstance(r, BaseException) for _, r in parallel) == 1


def test_default_workers_fill_the_cores_but_not_for_sam(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert default_workers(DescribeOptions(), 10) == 4
    assert default_workers(DescribeOptions(), 3) == 3
    assert default_workers(DescribeOptions(), 1) == 1
    assert default_workers(DescribeOptions(segmenter="sam", sam_checkpoint="x.pth"), 10) == 1


def test_without_arrays_the_workers_send_back_the_same_descriptors_and_table(batch):
    full = [r for _, r in describe_files(batch, workers=2)]
    light = [r for _, r in describe_files(batch, workers=2, keep_arrays=False)]
    for a, b in zip(full, light):
        if isinstance(a, BaseException):
            continue
        assert a.pixels is not None and a.labels is not None
        assert b.pixels is None and b.labels is None
        assert a.record() == b.record() and a.particles.equals(b.particles)
