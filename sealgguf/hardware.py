"""What this machine's CPU can do, read once from the OS (Linux: /proc/cpuinfo flags; elsewhere: nothing).
Used by eval (llama.cpp's AMX backend) and tune (whether bf16 runs fast on the CPU)."""

from __future__ import annotations

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
