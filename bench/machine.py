"""What a benchmark table says about the machine it ran on: the CPU model, its core
count and the instruction-set flags that decide which model forms run fast (AVX-512,
VNNI, AMX, BF16), so figures from different CPUs are not compared unawares."""

from __future__ import annotations

import os
import platform

from pipelines.runtime import cpu_flags

#: the flag families a reader needs to place a figure (SIMD width, int8 and bf16 units)
FLAG_PREFIXES = ("avx", "amx", "fma", "sse4")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or the platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_line() -> str:
    """One sentence: model, cores, architecture and the relevant flags."""
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(FLAG_PREFIXES))) or "none read"
    return (f"CPU: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()}); "
            f"flags: {flags}.")
