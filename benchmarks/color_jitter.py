"""Colour jitter evaluations side by side: by subset, masked, fused (eager) and fused compiled.

Each timed call is ``simclrv2.augment.color_jitter(x, s, apply, generator, method=...)`` on a
float32 batch of random pixels in [0, 1], ``apply`` drawn with p 0.8 as in pretraining, the same
generator seed for every call: the draws of ``sample_jitter`` are included, and every evaluation
gets the same draws, so its output is compared with the masked one's (``max abs diff``). Strength
is the pretraining recipe's: 1.0 above 32 px, 0.5 at 32 px and below.

- ``subset``: each operation on the images that drew it at each position (CPU default; reads
  subset sizes, a host sync on CUDA);
- ``masked``: every operation on the whole batch at each position (the CUDA default before);
- ``fused``: one affine pass per position for brightness/contrast/saturation, two hue passes;
- ``compiled``: ``fused`` through ``torch.compile`` (inductor; the CUDA default). Its first
  call, compilation included, is reported separately; where compilation fails the row says so
  and times the eager fallback.

Medians of the timed calls (synchronised on CUDA); ``masked / this`` and ``subset / this`` are
speed-ups (> 1: this evaluation is faster).

    python benchmarks/color_jitter.py                    # B 64 @ 224 px, B 512 @ 32 px
    python benchmarks/color_jitter.py --device cuda      # the same on a GPU
    python benchmarks/color_jitter.py --no-compile       # without the compiled row
    python benchmarks/color_jitter.py --quick            # seconds: B 8 @ 32 px, no compile
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, markdown_table, median, resolve_device, sync, timed  # noqa: E402

from simclrv2 import augment  # noqa: E402
from simclrv2.augment import color_jitter  # noqa: E402

DEFAULT_CASES = ("64:224", "512:32")
QUICK_CASES = ("8:32",)
METHODS = ("subset", "masked", "fused", "compiled")


def make_input(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Random pixels, the pretraining ``apply`` mask (p 0.8) and the recipe's strength for ``size``."""
    g = torch.Generator(device).manual_seed(1)
    x = torch.rand(batch, 3, size, size, generator=g, device=device)
    apply = torch.rand(batch, generator=g, device=device) < 0.8
    return x, apply, 1.0 if size > 32 else 0.5


def measure(method: str, x: torch.Tensor, apply: torch.Tensor, strength: float, warmup: int,
            repeats: int) -> dict:
    """First-call seconds, median ms of the timed calls and the output of one call."""
    device = x.device

    def call() -> torch.Tensor:
        return color_jitter(x, strength, apply, torch.Generator(device).manual_seed(0), method=method)

    first = timed(call, device)
    for _ in range(warmup - 1):
        call()
    times = [timed(call, device) for _ in range(repeats)]
    out = call()
    sync(device)
    return {"method": method, "first_s": first, "ms": 1e3 * median(times), "out": out}


def compiled_label() -> str:
    """``compiled``, or what failed if the compiled evaluation fell back to eager."""
    error = augment.COMPILED_JITTER.error
    return "compiled" if error is None else f"compiled (failed, eager: {error[:60]})"


def run_case(batch: int, size: int, device: torch.device, methods: list[str], warmup: int,
             repeats: int) -> list[list[object]]:
    """The table rows of one batch size and image size."""
    x, apply, strength = make_input(batch, size, device)
    results = {m: measure(m, x, apply, strength, warmup, repeats) for m in methods}
    reference = results.get("masked")
    subset = results.get("subset")
    rows = []
    for method, r in results.items():
        label = compiled_label() if method == "compiled" else method
        diff = "" if reference is None else f"{(r['out'] - reference['out']).abs().max().item():.1e}"
        rows.append([batch, size, strength, label, f"{r['ms']:.2f}",
                     "" if reference is None else f"{reference['ms'] / r['ms']:.2f}",
                     "" if subset is None else f"{subset['ms'] / r['ms']:.2f}",
                     diff, f"{r['first_s']:.2f}"])
    return rows


def main(argv: list[str] | None = None) -> list[list[object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=None,
                        help=f"batch:size items (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled evaluation")
    parser.add_argument("--warmup", type=int, default=2, help="calls before the timed ones (the first included)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls of each evaluation (median)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (no compile)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cases = args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES)
    warmup, repeats = (1, 1) if args.quick else (max(args.warmup, 1), args.repeats)
    methods = list(args.methods or METHODS)
    if args.no_compile or (args.quick and args.methods is None):
        methods = [m for m in methods if m != "compiled"]

    rows = []
    with torch.no_grad():
        for case in cases:
            batch, size = (int(v) for v in case.split(":"))
            rows += run_case(batch, size, device, methods, warmup, repeats)
    print(f"# color_jitter ({datetime.date.today()})\n")
    print(machine_line(device) + f", device: {device}, warmup {warmup}, timed {repeats} (median)\n")
    print(markdown_table(["batch", "px", "s", "evaluation", "ms", "masked / this", "subset / this",
                          "max abs diff vs masked", "first call s"], rows))
    return rows


if __name__ == "__main__":
    main()
