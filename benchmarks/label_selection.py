"""Which images to label: `simclrv2 select` against random draws, by held-out top-1 after fine-tuning.

On the bundled digits with the demo's recipe (configs/demo.yaml): pretrain (one run per seed), then for
each budget choose the labeled images with each method of `simclrv2 select` (no labels read) and
fine-tune on them with the demo's fine-tuning; compare with a uniform random draw of the same size
(`--method random`: what a user without labels can do) and with class-balanced random subsets
(`--labels K/class` or `10%`, which need the very labels they are meant to save). Held-out top-1 (%)
on the demo's 20% held-out images, mean and spread (population std) over the seeds.

    python benchmarks/label_selection.py                      # 3 seeds, budgets 10/20/40/10%: ~25 min, 2 cores
    python benchmarks/label_selection.py --seeds 0 --budgets 10
    python benchmarks/label_selection.py --quick              # 1-epoch pretraining, 3 fine-tuning epochs: a smoke run
    python benchmarks/label_selection.py --scale 100000 1000000 --dim 128 --budget-images 1000
                                                              # seconds and memory of select() alone
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, markdown_table  # noqa: E402

from simclrv2.config import from_mapping, to_dict  # noqa: E402
from simclrv2.commands.run import load_pipeline_config, packaged_config, plan  # noqa: E402
from simclrv2.selection import METHODS  # noqa: E402
from simclrv2.commands.select import SELECTED, run_selection  # noqa: E402
from simclrv2.engine import train  # noqa: E402
from simclrv2.stages.finetune import FinetuneConfig  # noqa: E402

BUDGETS = ("10", "20", "40", "10%")
CLASSES = 10  # digits


def demo_stages(out: Path, seed: int, quick: bool) -> dict:
    """The demo's pretraining and fine-tuning configs for ``seed``."""
    overrides = ['labels=["2/class"]', f"seed={seed}", "skip=[supervised, linear_eval, distill]"]
    if quick:
        overrides += ["pretrain.epochs=1", "finetune.epochs=3"]
    cfg = load_pipeline_config(str(packaged_config("demo")), overrides, {"out": str(out)})
    return {stage.id.kind: stage.cfg for stage in plan(cfg)}


def balanced_spec(budget: str) -> str:
    """The class-balanced random subset of the same size: K/class, or the same percentage."""
    return budget if budget.endswith("%") else f"{int(budget) // CLASSES}/class"


def finetune(stages: dict, checkpoint: str, labels: str, out: Path) -> tuple[float, int]:
    base = {k: v for k, v in to_dict(stages["finetune"]).items() if k != "resume"}
    result = train(from_mapping(FinetuneConfig, {**base, "from": checkpoint, "labels": labels, "out": str(out),
                                               "overwrite": True}))
    return 100 * result["holdout_top1"], int(result["labeled_images"])


def scale(sizes: list[int], dim: int, budget: int, methods: list[str]) -> None:
    """Seconds and peak memory of ``select`` on synthetic features (1,000 Gaussian clusters)."""
    import subprocess

    rows = []
    for n in sizes:
        for method in methods:
            if method in ("probcover",) and n > 50_000:
                rows.append([f"{n:,}", method, "-", "-", "O(N^2) distances: not run above 50,000"])
                continue
            # a fresh process per case, so that the peak memory is that case's
            code = (f"import time, numpy as np, resource, torch; torch.set_num_threads({torch.get_num_threads()}); "
                    "from simclrv2.selection import select; rng = np.random.default_rng(0); "
                    f"c = rng.normal(size=(1000, {dim})).astype(np.float32); "
                    f"x = c[rng.integers(0, 1000, {n})] + 0.3 * rng.normal(size=({n}, {dim})).astype(np.float32); "
                    f"t = time.perf_counter(); s = select(x, {budget}, '{method}', seed=0); "
                    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
                    "x.nbytes)")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            seconds, peak_kb, nbytes = out.split()
            rows.append([f"{n:,}", method, f"{float(seconds):.1f}", f"{int(peak_kb) / 2**20:.2f}",
                         f"features {int(nbytes) / 2**30:.2f} GiB"])
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"machine: {machine_line(torch.device('cpu'))}")
    print(f"select() on synthetic features ({dim}-d, 1,000 clusters), budget {budget}")
    print()
    print(markdown_table(["images", "method", "seconds", "peak GiB (process)", "note"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), help="images (10) or a percentage (10%%)")
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "random"], choices=METHODS)
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    parser.add_argument("--quick", action="store_true", help="1-epoch pretraining, 3-epoch fine-tuning, one seed, "
                        "budget 10: a smoke run")
    parser.add_argument("--scale", type=int, nargs="+", default=None, help="time select() on this many synthetic "
                        "images instead (no training)")
    parser.add_argument("--dim", type=int, default=128, help="--scale: feature dimensions")
    parser.add_argument("--budget-images", type=int, default=1000, help="--scale: images to choose")
    args = parser.parse_args(argv)
    if args.scale:
        scale(args.scale, args.dim, args.budget_images, list(args.methods) + ["random"])
        return 0
    if args.quick:
        args.seeds, args.budgets, args.methods = args.seeds[:1], ["10"], args.methods[:1]
    logging.disable(logging.INFO)
    rows_by = ["balanced random (needs labels)", "uniform random"] + list(args.methods)
    scores: dict[tuple[str, str], list[float]] = {}
    sizes: dict[str, set[int]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            stages = demo_stages(Path(tmp) / f"seed{seed}", seed, args.quick)
            train(stages["pretrain"])
            checkpoint = str(Path(stages["pretrain"].out) / "model.pt")
            holdout = stages["finetune"].holdout
            for budget in args.budgets:
                runs = {"balanced random (needs labels)": balanced_spec(budget)}
                for method in ["random"] + list(args.methods):
                    folder = Path(tmp) / f"seed{seed}" / f"select_{method}_{budget.replace('%', 'pct')}"
                    run_selection(checkpoint, "digits", budget, folder, method, seed=seed, holdout=holdout,
                                  workers=0, device="cpu", figures_on=False)
                    runs["uniform random" if method == "random" else method] = str(folder / SELECTED)
                for row, labels in runs.items():
                    top1, count = finetune(stages, checkpoint, labels, Path(tmp) / f"seed{seed}" / "finetune")
                    scores.setdefault((row, budget), []).append(top1)
                    sizes.setdefault(budget, set()).add(count)
                    print(f"seed {seed} budget {budget} {row}: {top1:.1f} ({count} labeled)", file=sys.stderr,
                          flush=True)
    minutes = (time.perf_counter() - started) / 60
    headers = ["selection"] + [f"{b} ({'/'.join(map(str, sorted(sizes[b])))} images)" for b in args.budgets]
    table = [[row] + [f"{np.mean(scores[row, b]):.1f} ± {np.std(scores[row, b]):.1f}" for b in args.budgets]
             for row in rows_by]
    gains = [[f"{m} - uniform random"] + [f"{np.mean(scores[m, b]) - np.mean(scores['uniform random', b]):+.1f}"
                                          for b in args.budgets] for m in args.methods]
    gains += [[f"{m} - balanced random"] + [
        f"{np.mean(scores[m, b]) - np.mean(scores['balanced random (needs labels)', b]):+.1f}" for b in args.budgets]
        for m in args.methods]
    print(f"machine: {machine_line(torch.device('cpu'))}")
    print(f"digits (demo recipe{', --quick' if args.quick else ''}), seeds {args.seeds}: held-out top-1 % after "
          f"fine-tuning on the chosen images, mean ± std; {minutes:.1f} min")
    print()
    print(markdown_table(headers, table))
    print()
    print(markdown_table(["difference (points)"] + args.budgets, gains))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{r}|{b}": v for (r, b), v in scores.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
