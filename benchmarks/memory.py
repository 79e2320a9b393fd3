"""Process memory readings shared by the benchmarks (Linux /proc; ru_maxrss elsewhere), all in GiB."""

from __future__ import annotations

import os
import resource
import sys


def _statm(field: int) -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[field]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def rss_gb() -> float:
    """The resident set now."""
    return _statm(1)


def address_space_gb() -> float:
    """VmSize: what RLIMIT_AS caps (torch's own mappings count, not only what is resident)."""
    return _statm(0)


def max_rss_gb() -> float:
    """The process's peak resident set since it started (ru_maxrss: bytes on macOS, KiB on Linux)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def reset_peak_rss() -> bool:
    """Reset the kernel's peak resident set (VmHWM) to the current one; False where that is unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gb(reset_worked: bool = True) -> float:
    """The peak resident set since the last `reset_peak_rss` (VmHWM), or since the start where the reset
    did not work."""
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    return max_rss_gb()
