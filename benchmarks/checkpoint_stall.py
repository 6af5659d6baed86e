"""How long a training checkpoint holds up training: written in the step's thread against in the background.

The engine of a real pretraining run (``_common.stage_engine``: the stage's own model, LARS state,
record) takes two steps on a synthetic batch, so the optimizer state exists, then writes training
checkpoints alternately with ``Engine.save(background=False)`` (the write as it was: serialise,
checksum, flush, rename, all before the next step) and ``Engine.save(background=True)`` (a host
copy, then the same write in a thread). "Stall" is the time until ``save`` returns, i.e. until
training can go on; "written" is until the file is on disk. Medians of ``--repeats``.

    python benchmarks/checkpoint_stall.py                       # r50_1x_sk0 (the pretraining network + head)
    python benchmarks/checkpoint_stall.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Case, machine_line, make_batch, markdown_table, median, resolve_device, stage_engine  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="r50_1x_sk0:32:8", help="model:size:batch (the size only sets the stem)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.case, args.repeats = "r18_0.25x_sk0:16:8", 1
    device = resolve_device(args.device)
    case = Case.parse(args.case)
    data, batch = make_batch(case, device)
    engine = stage_engine("pretrain", case, data, device)
    for _ in range(2):
        engine.train_step(batch)
    checkpoints = engine.folder.checkpoints
    stall = {False: [], True: []}
    written = {False: [], True: []}
    for _ in range(args.repeats):
        for background in (False, True):
            start = time.perf_counter()
            path = engine.save(background=background)
            stall[background].append(time.perf_counter() - start)
            checkpoints.wait()
            written[background].append(time.perf_counter() - start)
    size = path.stat().st_size / 2**20
    rows = [[("background (host copy, thread)" if b else "in the step's thread"), f"{median(stall[b]) * 1000:.0f}",
             f"{median(written[b]) * 1000:.0f}"] for b in (False, True)]
    print(f"# checkpoint_stall ({datetime.date.today()})\n")
    print(machine_line(device) + f"; {case.model} pretraining checkpoint of {size:.0f} MiB (weights, LARS momentum, "
          f"record); median of {args.repeats}\n")
    print(markdown_table(["write", "training stalled ms", "file on disk ms"], rows))
    print(f"\nstall ratio: {median(stall[False]) / median(stall[True]):.1f}x shorter in the background")
    return {"stall": stall, "written": written, "mib": size}


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
