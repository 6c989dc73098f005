"""Memory the machine can give a new allocation (imports nothing heavy: the CLIs check sizes before torch loads)."""
from __future__ import annotations

import os


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory size, in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
