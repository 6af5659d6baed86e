"""Peak memory and images/s of ``--micro-batch`` (gradient caching) against the plain pretraining step.

Each measurement runs in a fresh process (peak memory is the process's peak resident set, less its
resident set once the model, optimizer and data are built) and times the real step
(``Engine.train_step``) after one warm-up step. Rows: the plain step at batch M (the memory
``--micro-batch M`` should stay near), the micro-batched step at global batch B, and the plain step
at batch B where it fits.

    python benchmarks/micro_batch.py                     # the BENCHMARKS.md table (CPU: ~15 min)
    python benchmarks/micro_batch.py --quick             # seconds: a tiny model, B 32, M 8
    python benchmarks/micro_batch.py --micro-batches 64  # only M = 64 (and the plain step at 64)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import Case, machine_line, make_batch, markdown_table, resolve_device, stage_engine, sync  # noqa: E402

# (model:size, plain batches, (global batch, micro-batch) pairs)
FULL = [("r18_1x_sk0:32", [64, 128, 256, 1024], [(1024, 64), (1024, 128), (1024, 256), (4096, 256)]),
        ("r50_1x_sk0:96", [64, 128], [(1024, 64), (1024, 128)])]
QUICK = [("r18_0.125x_sk0:16", [8, 32], [(32, 8)])]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_one(spec: str, batch: int, micro: int | None, steps: int, device: str) -> dict:
    """Runs in its own process: the real step's images/s and peak memory above the set-up's."""
    model, size = spec.split(":")
    case = Case(model, int(size), batch)
    dev = resolve_device(device)
    data, one = make_batch(case, dev)
    engine = stage_engine("pretrain", case, data, dev, precision="fp32", channels_last="off", micro_batch=micro)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mib()
    engine.train_step(one)  # warm-up
    sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        engine.train_step(one)
    sync(dev)
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"images_per_s": batch / seconds, "peak_mib": peak - base}


def run_child(spec: str, batch: int, micro: int | None, steps: int, device: str) -> dict:
    args = [sys.executable, __file__, "--one", spec, str(batch), str(micro or 0), "--steps", str(steps),
            "--device", device]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny case, seconds")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--micro-batches", type=int, nargs="+", help="only these micro-batch sizes (and the "
                        "plain step at them)")
    parser.add_argument("--one", nargs=3, metavar=("MODEL:SIZE", "BATCH", "MICRO"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        spec, batch, micro = args.one[0], int(args.one[1]), int(args.one[2]) or None
        print(json.dumps(measure_one(spec, batch, micro, args.steps, args.device)))
        return
    print(machine_line(resolve_device(args.device)))
    rows = []
    for spec, plains, micros in (QUICK if args.quick else FULL):
        if args.micro_batches:
            plains = [b for b in plains if b in args.micro_batches]
            micros = [(b, m) for b, m in micros if m in args.micro_batches]
        plain = {b: run_child(spec, b, None, args.steps, args.device) for b in plains}
        for b, m in micros:
            ours = run_child(spec, b, m, args.steps, args.device)
            ref = plain.get(m, {})
            if "error" in ours:
                rows.append([spec, b, m, ours["error"], "", "", ""])
                continue
            mem = ours["peak_mib"] / ref["peak_mib"] if ref.get("peak_mib") else float("nan")
            speed = ours["images_per_s"] / ref["images_per_s"] if ref.get("images_per_s") else float("nan")
            rows.append([spec, b, m, f"{ours['images_per_s']:.1f}", f"{ours['peak_mib']:.0f}", f"{mem:.2f}",
                         f"{speed:.2f}"])
        for b, r in plain.items():
            rows.append([spec, b, "plain", r.get("error") or f"{r['images_per_s']:.1f}",
                         "" if "error" in r else f"{r['peak_mib']:.0f}", "", ""])
    print(markdown_table(["model:size", "batch B", "micro-batch M", "images/s", "peak MiB (above set-up)",
                          "memory / plain at M", "images/s / plain at M"], rows))


if __name__ == "__main__":
    main()
