"""models.precision: reading the CPU's bfloat16 support and resolving a user's precision choice."""
from __future__ import annotations

import platform

import pytest

from models import precision
from models.precision import native_bfloat16, resolve_bfloat16


@pytest.mark.parametrize("machine, line, expected", [
    ("x86_64", "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("x86_64", "flags\t\t: fpu sse2 avx2 amx_tile amx_bf16", True),
    ("x86_64", "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni", False),
    ("aarch64", "Features\t: fp asimd sve bf16 i8mm", True),
    ("aarch64", "Features\t: fp asimd sve i8mm", False),
])
def test_native_bfloat16_reads_the_cpu_flags(tmp_path, monkeypatch, machine, line, expected):
    monkeypatch.setattr(platform, "machine", lambda: machine)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\n{line}\n")
    assert native_bfloat16(cpuinfo) is expected


def test_native_bfloat16_is_false_where_cpuinfo_cannot_be_read(tmp_path):
    assert native_bfloat16(tmp_path / "missing") is False


def test_resolve_bfloat16(monkeypatch):
    monkeypatch.setattr(precision, "native_bfloat16", lambda: True)
    assert resolve_bfloat16("auto") is True and resolve_bfloat16(None) is True
    monkeypatch.setattr(precision, "native_bfloat16", lambda: False)
    assert resolve_bfloat16("auto") is False
    assert resolve_bfloat16("bfloat16") is True and resolve_bfloat16(True) is True
    assert resolve_bfloat16("float32") is False and resolve_bfloat16(False) is False
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        resolve_bfloat16("fp16")
