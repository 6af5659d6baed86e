"""The memory a training step needs: the estimate printed before training (``engine.memory_estimate``),
for the ImageNet presets on 8 GPUs of 80 GB, and against measured peaks.

Presets (default; data-free, runs on a CPU): for each ImageNet preset, the peak of one process's step at the
preset's share of the batch on 8 GPUs (batch / 8 images, the real step of the stage built with the preset's
settings in one process), plain, with ``--activation-checkpointing`` and with ``--micro-batch``; whether it
fits 90% of 80 GB (the check's headroom) and the most images per forward pass that do. One process with
batch / 8 images stands for one of 8: NT-Xent there contrasts with 1/8 of the negatives of the whole batch
(its logits, < 0.2 GB at 512 images per process, are the only difference).

Measured (``--measure``): for each ``--cases`` model:size:batch, the estimate against the peak of two real
steps (``_common.measured_peak``: ``torch.cuda.max_memory_allocated`` on a GPU, the CPU allocator's
profiler events on a CPU).

    python benchmarks/memory_estimate.py                          # the presets (a few minutes on a CPU)
    python benchmarks/memory_estimate.py --measure --device cuda  # estimate vs measured, on a GPU
    python benchmarks/memory_estimate.py --quick                  # seconds: a smoke run (tiny models)
    python benchmarks/memory_estimate.py --quick --measure        # every registered stage, estimate vs measured
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Case, machine_line, make_batch, markdown_table, measured_peak, resolve_device, stage_engine  # noqa: E402

from simclrv2.engine.memory_estimate import GIB, HEADROOM, estimate_step, largest_fitting  # noqa: E402
from simclrv2.stages import stages  # noqa: E402

GPU_MEMORY = 80 * GIB
GPUS = 8

# (preset, stage, model, image size, global batch, settings, micro-batch variant)
PRESETS = [
    ("imagenet_pretrain", "pretrain", "r152_3x_sk1", 224, 4096, {"memory": 65536}, 64),
    ("imagenet_finetune_1pct", "finetune", "r152_3x_sk1", 224, 1024, {}, 32),
    ("imagenet_distill_self", "distill", "r152_3x_sk1", 224, 4096, {"temperature": 0.1}, 64),
    ("imagenet_distill_r50", "distill", "r152_3x_sk1", 224, 4096, {"student": "r50_1x_sk0"}, 128),
]
QUICK_PRESETS = [("quick_pretrain", "pretrain", "r18_0.25x_sk1", 32, 32, {"memory": 256}, 16)]


def preset_rows(presets, gpus: int, capacity: int) -> list[list[object]]:
    rows = []
    device = torch.device("cpu")
    for name, stage, model, size, batch, settings, micro in presets:
        share = batch // gpus
        case = Case(model, size, share)
        data, _ = make_batch(case, device, classes=10)
        variants = [("plain", None, False), ("--activation-checkpointing", None, True),
                    (f"--micro-batch {micro}", micro, False), (f"--micro-batch {micro} --activation-checkpointing",
                                                               micro, True)]
        for label, micro_batch, checkpointing in variants:
            engine = stage_engine(stage, case, data, device, micro_batch=micro_batch,
                                  settings={**settings, "activation_checkpointing": checkpointing})
            found = estimate_step(engine)
            found.usable = capacity
            largest = largest_fitting(engine, found)
            rows.append([name, model, share, label, round(found.peak / GIB, 1), "yes" if found.fits else "no",
                         largest])
            print(rows[-1], flush=True)
            del engine
            gc.collect()
    return rows


def measure_rows(cases: list[str], device: torch.device, micro_batch: int | None = None,
                 settings: dict | None = None) -> list[list[object]]:
    rows = []
    for text in cases:
        stage, spec = text.split("/")
        case = Case.parse(spec)
        data, batch = make_batch(case, device, classes=10)
        engine = stage_engine(stage, case, data, device, micro_batch=micro_batch, settings=settings)
        estimate = estimate_step(engine).peak
        measured = measured_peak(engine, batch)
        rows.append([stage, case.model, case.size, case.batch, round(estimate / GIB, 2), round(measured / GIB, 2),
                     round(estimate / measured, 3)])
        print(rows[-1], flush=True)
        del engine, batch
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="estimate against measured peaks (--cases)")
    parser.add_argument("--cases", nargs="+", default=["pretrain/r50_1x_sk1:224:64", "pretrain/r50_1x_sk1:224:128",
                                                        "finetune/r50_1x_sk1:224:128", "distill/r50_1x_sk1:224:128",
                                                        "pretrain/r101_2x_sk1:224:64"],
                        help="stage/model:size:batch")
    parser.add_argument("--micro-batch", type=int, default=None, help="--measure: the cases' --micro-batch")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="--measure: more stage options (memory=65536 activation_checkpointing=true)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gpus", type=int, default=GPUS)
    parser.add_argument("--quick", action="store_true", help="a smoke run on tiny models")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(machine_line(device))
    if args.measure:
        cases = [f"{stage.name}/r18_0.25x_sk1:64:16" for stage in stages()] if args.quick else args.cases
        settings = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
        rows = measure_rows(cases, device, args.micro_batch, settings)
        print(markdown_table(["stage", "model", "px", "images", "estimate GiB", "measured GiB", "ratio"], rows))
        return
    presets = QUICK_PRESETS if args.quick else PRESETS
    rows = preset_rows(presets, 1 if args.quick else args.gpus, GPU_MEMORY)
    print(f"per process, {1 if args.quick else args.gpus} processes; fits: at most {1 - HEADROOM:.0%} of {GPU_MEMORY / GIB:.0f} GiB")
    print(markdown_table(["preset", "model", "images / GPU", "variant", "estimate GiB", "fits", "largest pass"],
                         rows))


if __name__ == "__main__":
    main()
