"""CPU numeric precision: whether bfloat16 runs natively, and the autocast context the samplers use.

On CPUs with bfloat16 instructions (x86 AVX512-BF16 or AMX-BF16, Arm BF16) convolutions under
``torch.autocast("cpu", dtype=torch.bfloat16)`` run about 2x faster than in float32; elsewhere oneDNN emulates
bfloat16 and is slower than float32, so "auto" means float32 there.
"""
from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "bfloat16_autocast", "native_bfloat16", "resolve_bfloat16"]

#: What a user may ask for: ``auto`` (bfloat16 where the CPU runs it natively), ``float32`` or ``bfloat16``.
PRECISIONS = ("auto", "float32", "bfloat16")
_X86_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def native_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has bfloat16 instructions (read from ``/proc/cpuinfo``; False where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return bool(flags & _X86_FLAGS) if platform.machine() in ("x86_64", "AMD64") else "bf16" in flags
    return False


def resolve_bfloat16(precision: str | bool | None) -> bool:
    """``auto``/None -> :func:`native_bfloat16`; ``float32``/False -> False; ``bfloat16``/True -> True."""
    if isinstance(precision, bool):
        return precision
    if precision is None or precision == "auto":
        return native_bfloat16()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision == "bfloat16"


def bfloat16_autocast(enabled: bool) -> contextlib.AbstractContextManager:
    """CPU autocast to bfloat16 when ``enabled`` (convolutions and matmuls; reductions stay float32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(enabled))
