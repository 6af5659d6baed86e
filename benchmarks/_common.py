"""Helpers shared by the benchmark scripts: machine description, timing, markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Sequence

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(device: torch.device) -> str:
    """One line naming the CPU, cores, torch and (on CUDA) the GPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"cpu: {cpu_model()}", f"cores: {cores}", f"torch threads: {torch.get_num_threads()}",
             f"torch {torch.__version__}"]
    if hasattr(os, "getloadavg"):
        parts.append("1-min load average %.1f at report time (this run included)" % os.getloadavg()[0])
    if device.type == "cuda":
        parts.append(f"gpu: {torch.cuda.get_device_name(device)}")
        parts.append(f"cuda {torch.version.cuda}")
    return ", ".join(parts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
