"""Overhead of the pretraining step around the network: full step vs bare forward/backward/SGD.

The *full* step is the real one: ``Engine.train_step`` of a pretraining run
(``simclrv2.stages.pretrain.build`` with its defaults, see ``_common.stage_engine``) on a
synthetic uint8 batch that is the run's whole data set. It sets the scheduled learning rate,
draws the step's generator, runs ``ContrastiveStep`` under autocast (two augmented views of the
batch with its original sizes, one forward of the ``ContrastiveModel``, NT-Xent at temperature
0.1), checks the loss without a host sync, runs backward, the LARS step on the stage's parameter
groups (weight decay 1e-4, BN/bias exempt) and ``zero_grad(set_to_none)``.

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
import contextlib
import copy
import datetime
import sys
import time
from pathlib import Path
from typing import Callable, ContextManager

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (Case, cropped_batch, machine_line, make_batch, markdown_table, median,  # noqa: E402
                     pretrain_augment, resolve_device, stage_engine, sync, timed)

from simclrv2.data.loader import Batch  # noqa: E402
from simclrv2.engine import Engine  # noqa: E402
from simclrv2.engine.loop import step_generator  # noqa: E402
from simclrv2.engine.placement import autocast, autocast_dtype, use_channels_last  # noqa: E402

DEFAULT_CASES = ("r18_1x_sk0:32:64", "r50_1x_sk0:96:16")
QUICK_CASES = ("r18_0.25x_sk0:16:8",)
PARTS = ("augment", "forward", "loss", "backward", "optimizer", "bookkeeping")


class Marks:
    """Synchronised seconds between marks, listed under the name of the part a mark ends."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self._last = device, {}, 0.0

    def start(self) -> None:
        sync(self.device)
        self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.seconds.setdefault(name, []).append(now - self._last)
        self._last = now

    @contextlib.contextmanager
    def between(self, before: str | None, after: str | None):
        """Marks ``before`` on entering and ``after`` on leaving."""
        if before:
            self(before)
        yield
        if after:
            self(after)


def wrap(obj: object, attr: str, context: Callable[[], ContextManager]) -> None:
    """Run every call of ``obj.attr`` inside ``context()``: instruments the real step unchanged."""
    fn = getattr(obj, attr)

    def wrapped(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)

    setattr(obj, attr, wrapped)


def mark_parts(engine: Engine, marks: Marks) -> None:
    """Mark the parts of ``engine.train_step``: up to the network's call (learning rate, generator,
    the two views), the forward, the loss, up to the optimizer's step (non-finite check, backward),
    the optimizer step; what is left after it is "bookkeeping" (marked by the caller)."""
    wrap(engine.step, "net", lambda: marks.between("augment", "forward"))
    wrap(engine.step, "criterion", lambda: marks.between(None, "loss"))
    wrap(engine.optimizer, "step", lambda: marks.between("backward", "optimizer"))


class BareStep:
    """Forward, trivial loss, backward and SGD on ready float views."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str):
        self.model, self.device = model, device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.autocast = torch.bfloat16 if precision == "bf16" else None

    def __call__(self, views: torch.Tensor, marks: Marks | None = None) -> None:
        mark = marks if marks is not None else (lambda name: None)
        if marks is not None:
            marks.start()
        with autocast(self.device, self.autocast):
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


def full_engine(case: Case, device: torch.device, precision: str, channels_last: bool,
                cropped: bool = False) -> tuple[Engine, Batch]:
    """The real pretraining engine of ``case`` and its batch: whole images at the load size, as the loader's
    cache hands them (the device crops), or with ``cropped`` the two views the workers cut (``--input``)."""
    data, batch = make_batch(case, device)
    engine = stage_engine("pretrain", case, data, device, precision, "on" if channels_last else "off")
    return engine, (cropped_batch(batch, case.size) if cropped else batch)


def uses_cropped(case: Case, choice: str) -> bool:
    """``--input auto``: the workers' crops above 32 px (photos larger than the load size, as ImageNet's),
    whole cached images at <= 32 px (CIFAR-like data no larger than the load size)."""
    return choice == "cropped" or (choice == "auto" and case.size > 32)


def measure(case: Case, device: torch.device, warmup: int, steps: int, precision: str = "fp32",
            channels_last: bool = False, breakdown: bool = False, cropped: bool = False) -> dict:
    """Interleaved bare/full steps; medians; optional per-part breakdown of the full step."""
    engine, batch = full_engine(case, device, precision, channels_last, cropped)
    bare = BareStep(copy.deepcopy(engine.model), device, precision)
    step = engine.step
    with torch.no_grad():
        g = step_generator(1, 0, 0, device)
        views = torch.cat([step.augment(batch.images, batch.sizes, g, view=0),
                           step.augment(batch.images, batch.sizes, g, view=1)])
        ready = step.layout(views).detach().clone()

    def full() -> None:
        engine.train_step(batch)

    for _ in range(warmup):
        bare(ready)
        full()
    t_bare, t_full = [], []
    for i in range(steps):
        # alternate which one goes first, so that neither always follows the other
        if i % 2:
            t_full.append(timed(full, device))
            t_bare.append(timed(lambda: bare(ready), device))
        else:
            t_bare.append(timed(lambda: bare(ready), device))
            t_full.append(timed(full, device))
    result = {
        "case": case, "bare_s": median(t_bare), "full_s": median(t_full),
        "bare_ips": case.batch / median(t_bare), "full_ips": case.batch / median(t_full),
        # each full step against the bare step beside it: robust to the machine's speed drifting
        "ratio": median([b / f for b, f in zip(t_bare, t_full)]),
        "spread": (min(t_full) / max(t_full), min(t_bare) / max(t_bare)),
    }
    if breakdown:
        marks, bare_marks = Marks(device), Marks(device)
        mark_parts(engine, marks)
        for _ in range(max(steps, 1)):
            marks.start()
            full()
            marks("bookkeeping")
            bare(ready, bare_marks)
        result["parts"] = {k: median(v) for k, v in marks.seconds.items()}
        result["bare_parts"] = {k: median(v) for k, v in bare_marks.seconds.items()}
    return result


def augment_only(case: Case, device: torch.device, warmup: int, steps: int) -> float:
    """Median seconds of the step's two augmented views alone (no model)."""
    augment = pretrain_augment(case)
    _, batch = make_batch(case, device)

    def views(i: int) -> torch.Tensor:
        g = step_generator(0, i, 0, device)
        return torch.cat([augment(batch.images, batch.sizes, g, view=0), augment(batch.images, batch.sizes, g, view=1)])

    for i in range(warmup):
        views(i)
    return median([timed(lambda: views(i), device) for i in range(steps)])


def profile_full_step(case: Case, device: torch.device, precision: str, channels_last: bool,
                      steps: int = 3, rows: int = 25) -> str:
    """torch.profiler table (self time) of a few full steps, with the step's parts as ranges."""
    from torch.profiler import ProfilerActivity, profile, record_function

    engine, batch = full_engine(case, device, precision, channels_last)
    engine.train_step(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    wrap(engine.step, "augment", lambda: record_function("## augment"))
    wrap(engine.step, "criterion", lambda: record_function("## ntxent"))
    wrap(engine.optimizer, "step", lambda: record_function("## optimizer.step"))
    with profile(activities=activities) as prof:
        for _ in range(steps):
            engine.train_step(batch)
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
                        help="auto: bf16 autocast on CUDA, fp32 on CPU (as a training run)")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--breakdown", action="store_true", help="also time each part of the full step")
    parser.add_argument("--input", default="auto", choices=("auto", "whole", "cropped"),
                        help="the step's batch: whole images at the load size (the cache; the device crops), the "
                             "two views the workers cropped, or auto: cropped above 32 px")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table")
    parser.add_argument("--augment-only", action="store_true",
                        help="only time the two augmented views of each case (no model)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = "bf16" if autocast_dtype(args.precision, device) is not None else "fp32"
    channels_last = use_channels_last(args.channels_last, device)
    cases = args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES)
    warmup, steps = (1, 1) if args.quick else (args.warmup, args.steps)

    if args.augment_only:
        rows = [[c.model, c.size, c.batch, c.load_size, f"{1e3 * augment_only(c, device, max(warmup, 1), steps):.1f}"]
                for c in map(Case.parse, cases)]
        print(f"# step_overhead --augment-only ({datetime.date.today()})\n")
        print(machine_line(device) + f", device: {device}, warmup {max(warmup, 1)}, timed {steps} (median)\n")
        print(markdown_table(["model", "px", "batch", "load px", "two views ms"], rows))
        return rows
    results = [measure(Case.parse(c), device, warmup, steps, precision, channels_last, args.breakdown,
                       uses_cropped(Case.parse(c), args.input))
               for c in cases]
    print(f"# step_overhead ({datetime.date.today()})\n")
    print(machine_line(device) + f", device: {device}, precision: {precision}, channels_last: {channels_last}, "
          f"warmup {warmup}, timed steps {steps} (median)\n")
    rows = [[r["case"].model, r["case"].size, r["case"].batch,
             "2 views cut by the workers" if uses_cropped(r["case"], args.input) else "whole, load size (cache)",
             f"{r['bare_ips']:.2f}", f"{r['full_ips']:.2f}", f"{r['ratio']:.3f}", "yes" if r["ratio"] >= 0.85 else "no"]
            for r in results]
    print(markdown_table(["model", "px", "batch", "input", "bare img/s", "full img/s", "ratio full/bare", ">= 0.85"],
                         rows))
    print("\nimg/s: medians; ratio: median over adjacent (bare, full) pairs of bare time / full time. "
          "Fastest/slowest timed step: " + "; ".join(
              f"{r['case'].model} full {r['spread'][0]:.2f}, bare {r['spread'][1]:.2f}" for r in results))
    if args.breakdown:
        print("\nmedian ms per part of each step (synchronised, measured after the timed steps):\n")
        table = []
        for r in results:
            for kind, parts in (("full", r["parts"]), ("bare", r["bare_parts"])):
                table.append([r["case"].model, r["case"].size, r["case"].batch, kind,
                              *[f"{1e3 * parts[k]:.1f}" if k in parts else "-" for k in PARTS],
                              f"{1e3 * sum(parts.values()):.1f}"])
        print(markdown_table(["model", "px", "batch", "step", *PARTS, "total"], table))
    if args.profile:
        for c in cases:
            print()
            print(profile_full_step(Case.parse(c), device, precision, channels_last, steps=1 if args.quick else 3))
    return results


if __name__ == "__main__":
    main()
