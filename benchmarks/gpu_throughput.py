"""GPU throughput of the three SimCLRv2 training steps, with model FLOPs and memory.

For each model (default r50_1x_sk0 and r50_1x_sk1 at 224 px) under bf16 autocast and
channels-last, eager and ``torch.compile``d (the model only, as ``--compile`` does):

- pretraining: the full step of ``step_overhead.py`` (device-side augmentation of a uint8 batch
  at the load size 256 with aspect ratios, two views, ``ContrastiveModel``, NT-Xent, LARS) at
  each ``--batch-sizes``: images/s (an image = its two views), the model's FLOPs per image
  (forward + backward of both views, counted with ``torch.utils.flop_counter.FlopCounterMode``;
  the augmentation, loss and optimizer are not counted), achieved TFLOP/s and its fraction of a
  measured bf16 matmul peak, peak memory (``torch.cuda.max_memory_allocated``); then the
  largest batch that fits (eager: doubling, then bisection to ``--fit-step`` images);
- fine-tuning: ``Classifier`` (``classifier_config(..., head_layer=1)``, 1000 classes), crop +
  flip (``AugmentConfig.finetune``), cross-entropy, LARS without weight decay;
- distillation: a ``Classifier`` teacher (eval, no grad, as ``train/distill.py`` holds it: not
  compiled) and a ``Classifier`` student (head layer 0) of the same encoder, crop + flip,
  ``distillation_loss`` at tau 0.1, LARS. FLOPs: teacher forward + student forward/backward.

Fine-tuning and distillation count an image as its one view.

    python benchmarks/gpu_throughput.py                                  # the GPU benchmark
    python benchmarks/gpu_throughput.py --batch-sizes 128 256 --no-compile
    python benchmarks/gpu_throughput.py --device cpu --quick             # seconds: a CPU smoke run

``--quick`` swaps in a tiny model (r18_0.25x_sk1 at 64 px, batch 4; ``--models`` to change it), one timed step, a small
matmul, and the ``eager`` backend of torch.compile (traced by dynamo, no code generation): it
checks that the script runs, its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, markdown_table, median, resolve_device, timed  # noqa: E402
from step_overhead import Case, FullStep, make_batch  # noqa: E402

from simclrv2.augment import AugmentConfig, SimCLRAugment  # noqa: E402
from simclrv2.losses import distillation_loss  # noqa: E402
from simclrv2.models import build_model, classifier_config, contrastive_config  # noqa: E402
from simclrv2.optim import build_optimizer, param_groups, scale_learning_rate  # noqa: E402
from simclrv2.train.loop import step_generator  # noqa: E402

NUM_CLASSES = 1000
GIB = 1 << 30


# ------------------------------------------------------------------ FLOPs and peak

def count_flops(config: dict, views: int, size: int, backward: bool = True) -> float:
    """FLOPs of one forward (and backward) of ``views`` images through the model, on the meta device.

    Counted on a batch of 4 x ``views`` (training-mode BN needs more than one) and divided by 4.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_model(config)
        x = torch.empty(4 * views, 3, size, size)
    model.train(backward)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        if backward:
            out.float().sum().backward()
    return counter.get_total_flops() / 4


def matmul_peak(device: torch.device, n: int, iters: int) -> float:
    """TFLOP/s of an n x n x n bf16 matmul (median of ``iters``)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = [timed(lambda: a @ b, device) for _ in range(iters)]
    return 2 * n ** 3 / median(times) / 1e12


# ------------------------------------------------------------------ steps

def _prepare(model: torch.nn.Module, device: torch.device, channels_last: bool, compile_backend: str | None):
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    # dynamic=False: one static graph per batch size, as a training run (fixed batch) compiles
    train_model = torch.compile(model, backend=compile_backend, dynamic=False) if compile_backend else model
    return model, train_model


def _input_view(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class ClassifierStep:
    """train/finetune.py's step (``teacher`` None) or train/distill.py's (alpha 1), in Trainer._apply."""

    def __init__(self, name: str, size: int, batch: int, device: torch.device, channels_last: bool,
                 compile_backend: str | None, distill: bool):
        small = size <= 32
        self.device, self.channels_last, self.distill = device, channels_last, distill
        config = classifier_config(name, NUM_CLASSES, 0 if distill else 1, small)
        self.model, self.train_model = _prepare(build_model(config), device, channels_last, compile_backend)
        self.teacher = None
        if distill:
            teacher = build_model(classifier_config(name, NUM_CLASSES, 1, small))
            self.teacher = teacher.to(device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.augment = SimCLRAugment(AugmentConfig.finetune(size))
        groups = param_groups(self.model, 1e-4 if distill else 0.0, ("classifier.",))
        self.optimizer = build_optimizer("lars", groups, lr=0.0, momentum=0.9)
        self.lr = scale_learning_rate(0.1 if distill else 0.005, batch, "sqrt")
        self.bad_steps = torch.zeros((), device=device)
        self.step_index = 0

    def __call__(self, images: torch.Tensor, aspect: torch.Tensor, labels: torch.Tensor) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        generator = step_generator(0, self.step_index, 0, self.device)
        self.step_index += 1
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            x = _input_view(self.augment(images, aspect, generator), self.channels_last)
            if self.distill:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                logits = self.train_model(x)
                loss = distillation_loss(logits, teacher_logits, 0.1)
                logs = {"agreement": (logits.argmax(1) == teacher_logits.argmax(1)).float().mean()}
            else:
                logits = self.train_model(x)
                loss = F.cross_entropy(logits.float(), labels)
                logs = {"train_top1": (logits.argmax(1) == labels).float().mean()}
        self.bad_steps += (~torch.isfinite(loss.detach())).float()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        del logs


def pretrain_step(name: str, size: int, batch: int, device: torch.device, channels_last: bool,
                  compile_backend: str | None) -> FullStep:
    case = Case(name, size, batch)
    model = build_model(contrastive_config(name, case.small_images))
    model, train_model = _prepare(model, device, channels_last, compile_backend)
    return FullStep(model, case, device, "bf16", channels_last, train_model=train_model)


# ------------------------------------------------------------------ measuring

def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_rate(step, inputs: tuple, batch: int, device: torch.device, warmup: int, steps: int) -> dict:
    """Median images/s of ``step(*inputs)`` and the peak memory, or {"oom": True}."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    oom = False
    try:
        for _ in range(warmup):
            step(*inputs)
        times = [timed(lambda: step(*inputs), device) for _ in range(steps)]
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not _is_oom(exc):
            raise
        oom = True
    if oom:
        if hasattr(step, "optimizer"):
            step.optimizer.zero_grad(set_to_none=True)
        _free(device)
        return {"oom": True}
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return {"oom": False, "ips": batch / median(times), "peak_gib": peak}


def largest_batch(name: str, size: int, device: torch.device, channels_last: bool, start: int,
                  fit_step: int, limit: int) -> tuple[int, float | None]:
    """Largest pretraining batch (eager) whose step runs: doubling from ``start``, then bisection."""
    step = pretrain_step(name, size, start, device, channels_last, None)

    def fits(b: int) -> tuple[bool, float | None]:
        images, aspect = make_batch(Case(name, size, b), device)
        r = run_rate(step, (images, aspect), b, device, warmup=1, steps=1)
        del images, aspect
        _free(device)
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
    del step
    _free(device)
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
        torch.backends.cuda.matmul.allow_tf32 = False  # the trainer's defaults; bf16 autocast anyway
    channels_last = True
    compiles = [None] if args.no_compile else [None, args.compile_backend]
    load = Case("x", args.size, 1).load_size

    peak = matmul_peak(device, args.matmul_size, 5 if args.quick else 20)
    pre_rows, fit_rows, cls_rows = [], [], []
    for name in args.models:
        small = args.size <= 32
        flops = {
            "pretrain": count_flops(contrastive_config(name, small), 2, args.size),
            "finetune": count_flops(classifier_config(name, NUM_CLASSES, 1, small), 1, args.size),
            "distill": count_flops(classifier_config(name, NUM_CLASSES, 0, small), 1, args.size)
            + count_flops(classifier_config(name, NUM_CLASSES, 1, small), 1, args.size, backward=False),
        }
        fwd_view = count_flops(contrastive_config(name, small), 1, args.size, backward=False)
        for backend in compiles:
            mode = "eager" if backend is None else f"compile ({backend})"
            step = pretrain_step(name, args.size, args.batch_sizes[0], device, channels_last, backend)
            for batch in args.batch_sizes:
                images, aspect = make_batch(Case(name, args.size, batch), device)
                r = run_rate(step, (images, aspect), batch, device, args.warmup, args.steps)
                del images, aspect
                if r["oom"]:
                    pre_rows.append([name, mode, batch, "OOM", "", "", "", ""])
                    continue
                tflops = flops["pretrain"] * r["ips"] / 1e12
                pre_rows.append([name, mode, batch, f"{r['ips']:.1f}", f"{flops['pretrain'] / 1e9:.3g}",
                                 f"{tflops:.3g}", f"{100 * tflops / peak:.1f}%",
                                 "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"])
            del step
            _free(device)
            for kind in ("finetune", "distill"):
                batch = args.classifier_batch
                step = ClassifierStep(name, args.size, batch, device, channels_last, backend, kind == "distill")
                images, aspect = make_batch(Case(name, args.size, batch), device)
                labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
                r = run_rate(step, (images, aspect, labels), batch, device, args.warmup, args.steps)
                del step, images, aspect, labels
                _free(device)
                if r["oom"]:
                    cls_rows.append([kind, name, mode, batch, "OOM", "", "", "", ""])
                    continue
                tflops = flops[kind] * r["ips"] / 1e12
                cls_rows.append([kind, name, mode, batch, f"{r['ips']:.1f}", f"{flops[kind] / 1e9:.3g}",
                                 f"{tflops:.3g}", f"{100 * tflops / peak:.1f}%",
                                 "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"])
        if device.type == "cuda" and not args.no_fit:
            best, best_peak = largest_batch(name, args.size, device, channels_last, args.batch_sizes[0],
                                            args.fit_step, args.fit_limit)
            fit_rows.append([name, f"{best} (to {args.fit_step})" if best else "none",
                             "-" if best_peak is None else f"{best_peak:.1f}",
                             f"{torch.cuda.get_device_properties(device).total_memory / GIB:.1f}"])
        else:
            fit_rows.append([name, "not searched (" + ("cpu" if device.type != "cuda" else "--no-fit") + ")",
                             "-", "-"])
        print(f"{name}: forward {fwd_view / 1e9:.2f} GFLOP per view at {args.size} px", file=sys.stderr)

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
    print("\nfine-tuning and distillation steps (an image = one view):\n")
    print(markdown_table(["step", "model", "mode", "batch", "img/s", "GFLOP/img", "TFLOP/s", "of peak",
                          "peak mem GiB"], cls_rows))
    return {"peak_tflops": peak, "pretrain": pre_rows, "fit": fit_rows, "classifier": cls_rows}


if __name__ == "__main__":
    main()
