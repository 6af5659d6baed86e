"""GPU throughput of the training step of every registered stage (``simclrv2.stages``), with model FLOPs and
memory.

Each step is the real one: ``Engine.train_step`` of a run of the stage (built by the stage's own
code with its defaults on a synthetic uint8 batch that is the run's whole data set; see
``_common.stage_engine``), under bf16 autocast and channels-last, eager and ``torch.compile``d
(the network the step calls, as ``--compile`` does). For each model (default r50_1x_sk0 and
r50_1x_sk1 at 224 px):

- pretraining: ``ContrastiveStep`` (device-side augmentation of the two uint8 views per image the
  loader's workers cut: flip, colour, blur; ``ContrastiveModel``, NT-Xent, LARS) at each
  ``--batch-sizes``: images/s (an image = its two views), the model's FLOPs per image (forward
  + backward of both views, counted with ``torch.utils.flop_counter.FlopCounterMode``; the
  augmentation, loss and optimizer are not counted), achieved TFLOP/s and its fraction of a
  measured bf16 matmul peak, peak memory (``torch.cuda.max_memory_allocated``); then the
  largest batch that fits (eager: doubling, then bisection to ``--fit-step`` images);
- fine-tuning: ``ClassifierStep`` on a classifier of hiddens[1] (1000 classes), crop + flip,
  cross-entropy, LARS without weight decay;
- distillation: ``DistillStep`` with a classifier teacher of the same encoder (eval, no grad,
  not compiled, as the stage holds it) and a student (head layer 0), crop + flip,
  ``distillation_loss`` at tau 0.1, LARS. FLOPs: teacher forward + student forward/backward.

- every other registered stage (linear evaluation, and any stage added to the registry) as fine-tuning is
  measured: its own step at ``--classifier-batch``.

Outside pretraining an image is counted as the views the step draws of it (one, for the built-in stages).

    python benchmarks/gpu_throughput.py                                  # the GPU benchmark
    python benchmarks/gpu_throughput.py --batch-sizes 128 256 --no-compile
    python benchmarks/gpu_throughput.py --device cpu --quick             # seconds: a CPU smoke run

``--quick`` swaps in a tiny model (r18_0.25x_sk1 at 64 px, batch 4; ``--models`` to change it), one timed step, a small
matmul, and the ``eager`` backend of torch.compile (traced by dynamo, no code generation): it
checks that the script runs, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (Case, cropped_batch, machine_line, make_batch, markdown_table, median,  # noqa: E402
                     resolve_device, stage_engine, timed)

from simclrv2.data.loader import Batch  # noqa: E402
from simclrv2.engine import Engine  # noqa: E402
from simclrv2.models.resnet import ResNet  # noqa: E402
from simclrv2.stages import stages  # noqa: E402

NUM_CLASSES = 1000
GIB = 1 << 30


# ------------------------------------------------------------------ FLOPs and peak

def count_flops(module: torch.nn.Module, views: int, size: int, backward: bool = True) -> float:
    """FLOPs of one forward (and backward) of ``views`` images through ``module``, on a copy on the
    meta device.

    Counted on a batch of 4 x ``views`` (training-mode BN needs more than one) and divided by 4.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(module).to("meta")
    x = torch.empty(4 * views, 3, size, size, device="meta")
    model.train(backward)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        if backward:
            out.float().sum().backward()
    return counter.get_total_flops() / 4


def step_flops(kind: str, engine: Engine, batch: Batch, size: int) -> dict[str, float]:
    """FLOPs per image of the networks the step runs (see the module docstring): the trained network forward
    and backward on each of the image's views (as many as the step's ``views`` draws per image), every other
    network the step holds (a teacher, a momentum encoder) forward only; also one forward of one view
    ("view")."""
    views = engine.step.views(batch, torch.Generator(device=batch.images.device)).shape[0] // batch.images.shape[0]
    flops = count_flops(engine.model, views, size)
    for name, module in engine.step.modules().items():
        if name not in ("model", "net") and any(isinstance(m, ResNet) for m in module.modules()):
            flops += count_flops(module, views, size, backward=False)
    return {kind: flops, "view": count_flops(engine.model, 1, size, backward=False)}


def matmul_peak(device: torch.device, n: int, iters: int) -> float:
    """TFLOP/s of an n x n x n bf16 matmul (median of ``iters``)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = [timed(lambda: a @ b, device) for _ in range(iters)]
    return 2 * n ** 3 / median(times) / 1e12


# ------------------------------------------------------------------ measuring

def engine_and_batch(kind: str, name: str, size: int, batch: int, device: torch.device,
                     compile_backend: str | None) -> tuple[Engine, Batch]:
    """The real step of ``kind`` in bf16 and channels-last, and a batch for it: above 32 px the views the
    loader's workers cut from full-resolution photos (the device draws flip, colour and blur), at <= 32 px
    whole cached images (the device also crops), as a run on such data gets them."""
    case = Case(name, size, batch)
    data, b = make_batch(case, device, classes=0 if kind == "pretrain" else NUM_CLASSES)
    engine = stage_engine(kind, case, data, device, "bf16", "on", compile_backend)
    if size > 32:
        b = cropped_batch(b, size, views=engine.step.views_per_image)
    return engine, b


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_rate(engine: Engine, batch: Batch, device: torch.device, warmup: int, steps: int) -> dict:
    """Median images/s of ``engine.train_step(batch)`` and the peak memory, or {"oom": True}."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    oom = False
    try:
        for _ in range(warmup):
            engine.train_step(batch)
        times = [timed(lambda: engine.train_step(batch), device) for _ in range(steps)]
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not _is_oom(exc):
            raise
        oom = True
    if oom:  # (outside the except block, whose traceback holds the step's tensors)
        engine.optimizer.zero_grad(set_to_none=True)
        _free(device)
        return {"oom": True}
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return {"oom": False, "ips": batch.images.shape[0] / median(times), "peak_gib": peak}


def measure(kind: str, name: str, size: int, batch: int, device: torch.device, backend: str | None,
            warmup: int, steps: int, flops: dict[str, float]) -> dict:
    """``run_rate`` of a fresh engine of ``kind``; fills in ``flops[kind]`` the first time."""
    engine, b = engine_and_batch(kind, name, size, batch, device, backend)
    if kind not in flops:
        flops.update(step_flops(kind, engine, b, size))
    r = run_rate(engine, b, device, warmup, steps)
    del engine, b
    _free(device)
    return r


def rate_cells(r: dict, flops: float, peak: float) -> list[str]:
    """img/s, GFLOP/img, TFLOP/s, of peak, peak mem GiB."""
    if r["oom"]:
        return ["OOM", "", "", "", ""]
    tflops = flops * r["ips"] / 1e12
    return [f"{r['ips']:.1f}", f"{flops / 1e9:.3g}", f"{tflops:.3g}", f"{100 * tflops / peak:.1f}%",
            "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"]


def largest_batch(name: str, size: int, device: torch.device, start: int, fit_step: int,
                  limit: int) -> tuple[int, float | None]:
    """Largest pretraining batch (eager) whose step runs: doubling from ``start``, then bisection."""

    def fits(b: int) -> tuple[bool, float | None]:
        r = measure("pretrain", name, size, b, device, None, warmup=0, steps=1,
                    flops={"pretrain": 0.0})  # (not counted)
        return (not r["oom"]), r.get("peak_gib")

    ok, peak = fits(start)
    if not ok:
        return 0, None
    good, good_peak, bad = start, peak, None
    while bad is None and good * 2 <= limit:
        ok, peak = fits(good * 2)
        if ok:
            good, good_peak = good * 2, peak
        else:
            bad = good * 2
    if bad is None:
        return good, good_peak  # ``limit`` reached
    while bad - good > fit_step:
        mid = (good + bad) // 2 // fit_step * fit_step
        if mid <= good:
            break
        ok, peak = fits(mid)
        if ok:
            good, good_peak = mid, peak
        else:
            bad = mid
    return good, good_peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="default: r50_1x_sk0 r50_1x_sk1")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512],
                        help="pretraining batch sizes (images; twice as many views)")
    parser.add_argument("--classifier-batch", type=int, default=256, help="fine-tuning/distillation batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--stages", nargs="+", default=None,
                        help="the stages besides pretraining to measure (default: every registered one)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--no-fit", action="store_true", help="skip the largest-batch search")
    parser.add_argument("--fit-step", type=int, default=32, help="resolution of the largest-batch search")
    parser.add_argument("--fit-limit", type=int, default=8192, help="stop the largest-batch search here")
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models, one step: a smoke run")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.quick:
        args.models = args.models or ["r18_0.25x_sk1"]
        args.size, args.batch_sizes, args.classifier_batch = 64, [4], 4
        args.warmup, args.steps, args.matmul_size = 1, 1, 256
        if args.compile_backend == "inductor":
            args.compile_backend = "eager"
    args.models = args.models or ["r50_1x_sk0", "r50_1x_sk1"]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # torch's default, as in a run; bf16 autocast anyway
    compiles = [None] if args.no_compile else [None, args.compile_backend]
    load = Case("x", args.size, 1).load_size

    peak = matmul_peak(device, args.matmul_size, 5 if args.quick else 20)
    pre_rows, fit_rows, cls_rows = [], [], []
    for name in args.models:
        flops: dict[str, float] = {}
        for backend in compiles:
            mode = "eager" if backend is None else f"compile ({backend})"
            for batch in args.batch_sizes:
                r = measure("pretrain", name, args.size, batch, device, backend, args.warmup, args.steps, flops)
                pre_rows.append([name, mode, batch, *rate_cells(r, flops["pretrain"], peak)])
            for kind in [stage.name for stage in stages() if stage.name != "pretrain"
                         and (args.stages is None or stage.name in args.stages)]:
                batch = args.classifier_batch
                r = measure(kind, name, args.size, batch, device, backend, args.warmup, args.steps, flops)
                cls_rows.append([kind, name, mode, batch, *rate_cells(r, flops[kind], peak)])
        if device.type == "cuda" and not args.no_fit:
            best, best_peak = largest_batch(name, args.size, device, args.batch_sizes[0], args.fit_step,
                                            args.fit_limit)
            fit_rows.append([name, f"{best} (to {args.fit_step})" if best else "none",
                             "-" if best_peak is None else f"{best_peak:.1f}",
                             f"{torch.cuda.get_device_properties(device).total_memory / GIB:.1f}"])
        else:
            fit_rows.append([name, "not searched (" + ("cpu" if device.type != "cuda" else "--no-fit") + ")",
                             "-", "-"])
        print(f"{name}: forward {flops['view'] / 1e9:.2f} GFLOP per view at {args.size} px", file=sys.stderr)

    print(f"# gpu_throughput ({datetime.date.today()})\n")
    print(machine_line(device) + f", device: {device}; bf16 autocast, channels_last, {args.size} px "
          f"(load size {load}), warmup {args.warmup}, timed steps {args.steps} (median)"
          + (" -- QUICK SMOKE RUN: tiny models, figures meaningless" if args.quick else "") + "\n")
    print(f"bf16 matmul peak ({args.matmul_size}^3): {peak:.3g} TFLOP/s\n")
    print("pretraining step (an image = its two views; FLOPs: model forward + backward of both views):\n")
    print(markdown_table(["model", "mode", "batch", "img/s", "GFLOP/img", "TFLOP/s", "of peak", "peak mem GiB"],
                         pre_rows))
    print("\nlargest pretraining batch that fits (eager):\n")
    print(markdown_table(["model", "largest batch", "peak mem GiB", "device GiB"], fit_rows))
    print("\nthe other stages' steps (an image = the views the step draws of it):\n")
    print(markdown_table(["step", "model", "mode", "batch", "img/s", "GFLOP/img", "TFLOP/s", "of peak",
                          "peak mem GiB"], cls_rows))
    return {"peak_tflops": peak, "pretrain": pre_rows, "fit": fit_rows, "classifier": cls_rows}


if __name__ == "__main__":
    main()
