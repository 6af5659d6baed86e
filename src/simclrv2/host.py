"""What the machine offers this process: the memory it may still take (``MemAvailable``, Linux)."""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes of memory the kernel can give without swapping; None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
