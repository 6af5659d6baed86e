"""Overhead of the pretraining step around the network: full step vs bare forward/backward/SGD.

The *full* step reproduces ``simclrv2.train.pretrain``'s step as ``Trainer.fit`` runs it: the
per-step generator, the learning rate set on every group, device-side augmentation of the uint8
batch (``SimCLRAugment(AugmentConfig.pretrain(size))``, called twice with the batch's aspect
ratios), the two views concatenated into one forward of the ``ContrastiveModel``, ``NTXentLoss``
(temperature 0.1), the non-finite check without host sync, backward, the LARS step on the
official parameter groups (weight decay 1e-4, BN/bias exempt) and ``zero_grad(set_to_none)``.

The *bare* step is the same network (a copy with the same initial weights) on ready float
tensors of the same two-view batch: forward, a trivial loss (mean of squared projections),
backward, ``torch.optim.SGD`` (momentum 0.9). Bare and full steps alternate in one run; the
reported rates are medians, and ``ratio`` = full images/s / bare images/s (1.0 = no overhead).
An image counts once (its two views are one image).

    python benchmarks/step_overhead.py                      # r18 @ 32 px (B 64), r50 @ 96 px (B 16)
    python benchmarks/step_overhead.py --breakdown          # + time of each part of the full step
    python benchmarks/step_overhead.py --profile            # + torch.profiler top ops of the full step
    python benchmarks/step_overhead.py --augment-only       # only the two augmented views
    python benchmarks/step_overhead.py --quick              # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, markdown_table, median, resolve_device, sync, timed  # noqa: E402

from simclrv2.augment import AugmentConfig, SimCLRAugment  # noqa: E402
from simclrv2.losses import NTXentLoss  # noqa: E402
from simclrv2.models import build_model, contrastive_config  # noqa: E402
from simclrv2.optim import build_optimizer, param_groups, scale_learning_rate  # noqa: E402
from simclrv2.train.loop import step_generator  # noqa: E402

DEFAULT_CASES = ("r18_1x_sk0:32:64", "r50_1x_sk0:96:16")
QUICK_CASES = ("r18_0.25x_sk0:16:8",)


@dataclass
class Case:
    model: str
    size: int
    batch: int

    @classmethod
    def parse(cls, text: str) -> "Case":
        model, size, batch = text.split(":")
        return cls(model, int(size), int(batch))

    @property
    def small_images(self) -> bool:
        return self.size <= 32  # the pretrain default (--small-images auto)

    @property
    def load_size(self) -> int:
        # LoopConfig.resolved_load_size(): the loader's squashed side
        return self.size if self.size <= 32 else int(round(self.size * 8 / 7))


def make_batch(case: Case, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """What the Loader hands the step: uint8 (N, 3, L, L) and float32 aspect ratios (N,)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (case.batch, 3, case.load_size, case.load_size), dtype=torch.uint8,
                           generator=g)
    if case.size <= 32:
        aspect = torch.ones(case.batch)  # CIFAR-like: square originals
    else:  # photo-like originals, width / height in [0.6, 1.7]
        aspect = torch.exp(math.log(0.6) + (math.log(1.7) - math.log(0.6)) * torch.rand(case.batch, generator=g))
    return images.to(device), aspect.to(device)


class FullStep:
    """simclrv2.train.pretrain's step inside Trainer.fit/_apply (no monitor, no memory queue)."""

    def __init__(self, model: torch.nn.Module, case: Case, device: torch.device, precision: str,
                 channels_last: bool, train_model: torch.nn.Module | None = None):
        # train_model: what the step calls (e.g. torch.compile(model)), as prepare_model returns it
        self.model, self.case, self.device = model, case, device
        self.train_model = train_model if train_model is not None else model
        self.augment = SimCLRAugment(AugmentConfig.pretrain(case.size))
        self.criterion = NTXentLoss(0.1)
        self.optimizer = build_optimizer("lars", param_groups(model, 1e-4, ("monitor.",)), lr=0.0, momentum=0.9)
        self.lr = scale_learning_rate(0.1, case.batch, "sqrt")  # the pretrain default peak
        self.autocast = torch.bfloat16 if precision == "bf16" else None
        self.channels_last = channels_last
        self.bad_steps = torch.zeros((), device=device)
        self.sums: dict[str, torch.Tensor] = {}
        self.step_index = 0

    def views(self, images, aspect, generator) -> torch.Tensor:
        views = torch.cat([self.augment(images, aspect, generator), self.augment(images, aspect, generator)])
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        return views

    def __call__(self, images: torch.Tensor, aspect: torch.Tensor, parts: dict | None = None) -> None:
        """One step; with ``parts`` (a dict), also the seconds of each part (synchronising)."""
        mark = _Marker(self.device, parts)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)
        generator = step_generator(0, self.step_index, 0, self.device)
        self.step_index += 1
        n = images.shape[0]
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            views = self.views(images, aspect, generator)
            mark("augment")
            z, _ = self.train_model(views)
            mark("forward")
            loss = self.criterion(z[:n], z[n:])
            logs = {"contrastive_loss": loss.detach()}
            mark("loss")
        finite = torch.isfinite(loss.detach())
        self.bad_steps += (~finite).float()
        loss.backward()
        mark("backward")
        self.optimizer.step()
        mark("optimizer")
        self.optimizer.zero_grad(set_to_none=True)
        logs = {"loss": loss.detach().float(), **logs}
        for key, value in logs.items():
            self.sums[key] = self.sums[key] + value.float() if key in self.sums else value.float()
        mark("bookkeeping")


class BareStep:
    """Forward, trivial loss, backward and SGD on ready float views."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str):
        self.model, self.device = model, device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.autocast = torch.bfloat16 if precision == "bf16" else None

    def __call__(self, views: torch.Tensor, parts: dict | None = None) -> None:
        mark = _Marker(self.device, parts)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            z, _ = self.model(views)
            mark("forward")
            loss = z.float().square().mean()
            mark("loss")
        loss.backward()
        mark("backward")
        self.optimizer.step()
        mark("optimizer")
        self.optimizer.zero_grad(set_to_none=True)
        mark("bookkeeping")


class _Marker:
    def __init__(self, device: torch.device, parts: dict | None):
        self.device, self.parts = device, parts
        if parts is not None:
            sync(device)
            self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.parts is None:
            return
        sync(self.device)
        now = time.perf_counter()
        self.parts.setdefault(name, []).append(now - self._last)
        self._last = now


def build_pair(case: Case, device: torch.device, precision: str, channels_last: bool, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(contrastive_config(case.model, case.small_images)).to(device)
    bare_model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        bare_model = bare_model.to(memory_format=torch.channels_last)
    model.train()
    bare_model.train()
    full = FullStep(model, case, device, precision, channels_last)
    bare = BareStep(bare_model, device, precision)
    return full, bare


def measure(case: Case, device: torch.device, warmup: int, steps: int, precision: str = "fp32",
            channels_last: bool = False, breakdown: bool = False) -> dict:
    """Interleaved bare/full steps; medians; optional per-part breakdown of the full step."""
    full, bare = build_pair(case, device, precision, channels_last)
    images, aspect = make_batch(case, device)
    with torch.no_grad():
        ready = full.views(images, aspect, step_generator(1, 0, 0, device)).detach().clone()
    for _ in range(warmup):
        bare(ready)
        full(images, aspect)
    t_bare, t_full = [], []
    for i in range(steps):
        # alternate which one goes first, so that neither always follows the other
        if i % 2:
            t_full.append(timed(lambda: full(images, aspect), device))
            t_bare.append(timed(lambda: bare(ready), device))
        else:
            t_bare.append(timed(lambda: bare(ready), device))
            t_full.append(timed(lambda: full(images, aspect), device))
    result = {
        "case": case, "bare_s": median(t_bare), "full_s": median(t_full),
        "bare_ips": case.batch / median(t_bare), "full_ips": case.batch / median(t_full),
        # each full step against the bare step beside it: robust to the machine's speed drifting
        "ratio": median([b / f for b, f in zip(t_bare, t_full)]),
        "spread": (min(t_full) / max(t_full), min(t_bare) / max(t_bare)),
    }
    if breakdown:
        parts: dict[str, list[float]] = {}
        bare_parts: dict[str, list[float]] = {}
        for _ in range(max(steps, 1)):
            full(images, aspect, parts)
            bare(ready, bare_parts)
        result["parts"] = {k: median(v) for k, v in parts.items()}
        result["bare_parts"] = {k: median(v) for k, v in bare_parts.items()}
    return result


def augment_only(case: Case, device: torch.device, warmup: int, steps: int) -> float:
    """Median seconds of the step's two augmented views alone (no model)."""
    augment = SimCLRAugment(AugmentConfig.pretrain(case.size))
    images, aspect = make_batch(case, device)

    def views(i: int) -> torch.Tensor:
        g = step_generator(0, i, 0, device)
        return torch.cat([augment(images, aspect, g), augment(images, aspect, g)])

    for i in range(warmup):
        views(i)
    return median([timed(lambda: views(i), device) for i in range(steps)])


def profile_full_step(case: Case, device: torch.device, precision: str, channels_last: bool,
                      steps: int = 3, rows: int = 25) -> str:
    """torch.profiler table (self time) of a few full steps, with the step's parts as ranges."""
    from torch.profiler import ProfilerActivity, profile, record_function

    full, _ = build_pair(case, device, precision, channels_last)
    images, aspect = make_batch(case, device)
    full(images, aspect)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    augment, criterion, optimizer = full.augment, full.criterion, full.optimizer

    # wrap the parts in named ranges without changing the step
    def aug(*a, **k):
        with record_function("## augment"):
            return augment(*a, **k)

    def crit(*a, **k):
        with record_function("## ntxent"):
            return criterion(*a, **k)

    orig_step = optimizer.step

    def opt_step(*a, **k):
        with record_function("## optimizer.step"):
            return orig_step(*a, **k)

    full.augment, full.criterion, optimizer.step = aug, crit, opt_step
    with profile(activities=activities) as prof:
        for _ in range(steps):
            full(images, aspect)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ranges = [e for e in prof.key_averages() if e.key.startswith("## ")]
    lines = [f"profile of {steps} full steps, {case.model} @ {case.size} px, batch {case.batch}:"]
    for e in ranges:
        lines.append(f"  {e.key[3:]:<16} {e.cpu_time_total / 1e3 / steps:8.1f} ms/step (cpu, incl. children)")
    lines.append(prof.key_averages().table(sort_by=key, row_limit=rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=None,
                        help=f"model:size:batch items (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7, help="timed steps of each kind (median)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="auto: bf16 autocast on CUDA, fp32 on CPU (as the trainer)")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--breakdown", action="store_true", help="also time each part of the full step")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table")
    parser.add_argument("--augment-only", action="store_true",
                        help="only time the two augmented views of each case (no model)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda")
    cases = args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES)
    warmup, steps = (1, 1) if args.quick else (args.warmup, args.steps)

    if args.augment_only:
        rows = [[c.model, c.size, c.batch, c.load_size, f"{1e3 * augment_only(c, device, max(warmup, 1), steps):.1f}"]
                for c in map(Case.parse, cases)]
        print(f"# step_overhead --augment-only ({datetime.date.today()})\n")
        print(machine_line(device) + f", device: {device}, warmup {max(warmup, 1)}, timed {steps} (median)\n")
        print(markdown_table(["model", "px", "batch", "load px", "two views ms"], rows))
        return rows
    results = [measure(Case.parse(c), device, warmup, steps, precision, channels_last, args.breakdown)
               for c in cases]
    print(f"# step_overhead ({datetime.date.today()})\n")
    print(machine_line(device) + f", device: {device}, precision: {precision}, channels_last: {channels_last}, "
          f"warmup {warmup}, timed steps {steps} (median)\n")
    rows = [[r["case"].model, r["case"].size, r["case"].batch, f"{r['bare_ips']:.2f}", f"{r['full_ips']:.2f}",
             f"{r['ratio']:.3f}", "yes" if r["ratio"] >= 0.85 else "no"] for r in results]
    print(markdown_table(["model", "px", "batch", "bare img/s", "full img/s", "ratio full/bare", ">= 0.85"], rows))
    print("\nimg/s: medians; ratio: median over adjacent (bare, full) pairs of bare time / full time. "
          "Fastest/slowest timed step: " + "; ".join(
              f"{r['case'].model} full {r['spread'][0]:.2f}, bare {r['spread'][1]:.2f}" for r in results))
    if args.breakdown:
        names = ["augment", "forward", "loss", "backward", "optimizer", "bookkeeping"]
        print("\nmedian ms per part of each step (synchronised, measured after the timed steps):\n")
        table = []
        for r in results:
            for kind, parts in (("full", r["parts"]), ("bare", r["bare_parts"])):
                table.append([r["case"].model, r["case"].size, r["case"].batch, kind,
                              *[f"{1e3 * parts[k]:.1f}" if k in parts else "-" for k in names],
                              f"{1e3 * sum(parts.values()):.1f}"])
        print(markdown_table(["model", "px", "batch", "step", *names, "total"], table))
    if args.profile:
        for c in cases:
            print()
            print(profile_full_step(Case.parse(c), device, precision, channels_last, steps=1 if args.quick else 3))
    return results


if __name__ == "__main__":
    main()
