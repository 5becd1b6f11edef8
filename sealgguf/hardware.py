"""What this machine's CPU can do, read once from the OS (Linux: /proc/cpuinfo flags; elsewhere: nothing); how
much memory this process holds (Linux: /proc/self/status); and handing the C heap's free memory back (glibc's
malloc_trim). Used by eval (llama.cpp's AMX backend), tune (whether bf16 runs fast on the CPU; its peak memory; the
heap after the tokenizer is read) and the benchmarks (resident memory)."""

from __future__ import annotations

import contextlib
import functools


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_amx() -> bool:
    """AMX-INT8: what llama.cpp's AMX buffer type uses."""
    return "amx_int8" in cpu_flags()


def cpu_has_fast_bf16() -> bool:
    """bf16 matrix units (AMX-BF16) or instructions (AVX512-BF16). Without them torch emulates bf16 matmuls,
    slower than fp32."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def process_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB: "VmRSS" (resident now) or "VmHWM" (the resident high-water
    mark, reset by writing "5" to /proc/self/clear_refs); NaN where the OS has no such file."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def trim_heap() -> None:
    """Hand the C heap's free memory back to the system (glibc's malloc_trim; a no-op elsewhere). glibc keeps
    what a parse freed for reuse, but the weights that come next are allocated with mmap and never reuse it:
    reading Gemma 3's saved tokenizer leaves 194 MiB of its JSON parse resident (measured)."""
    with contextlib.suppress(AttributeError, TypeError):
        _libc().malloc_trim(0)
