"""Fine-tuning and the supervised baseline over a grid of learning rates, on the demo's labels.

From a pretraining checkpoint (e.g. ``runs/demo/pretrain/model.pt``), fine-tune on digits with 2
labels per class (the demo's fine-tuning recipe with the rate changed), and train the same
network from random weights on the same labels with the same recipe: held-out top-1 of each at
each rate. This is how the demo's rate was chosen (BENCHMARKS.md section 4). Run it under
``ATEN_CPU_CAPABILITY=avx2`` too to see how much the figures move with the CPU's kernels.

    python benchmarks/finetune_rate_grid.py --checkpoint runs/demo/pretrain/model.pt
    python benchmarks/finetune_rate_grid.py --checkpoint runs/seed1/pretrain/model.pt --seed 1
    python benchmarks/finetune_rate_grid.py --quick           # pretrains 1 epoch itself; seconds
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line, markdown_table  # noqa: E402

from simclrv2.config import from_mapping, to_dict  # noqa: E402
from simclrv2.commands.run import load_pipeline_config, packaged_config, plan  # noqa: E402
from simclrv2.engine import train  # noqa: E402
from simclrv2.stages.finetune import FinetuneConfig  # noqa: E402

RATES = (0.01, 0.03, 0.05, 0.1, 0.3)


def demo_stages(out: Path, seed: int, quick: bool) -> dict:
    """The demo's stage configs, by stage folder (2/class column only)."""
    overrides = ['labels=["2/class"]', f"seed={seed}"] + (["pretrain.epochs=1"] if quick else [])
    cfg = load_pipeline_config(str(packaged_config("demo")), overrides, {"out": str(out)})
    return {stage.id.folder: stage.cfg for stage in plan(cfg)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="pretraining checkpoint of the demo recipe (with --seed's split)")
    parser.add_argument("--seed", type=int, default=0, help="the seed the checkpoint's demo run used")
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--epochs", type=int, default=None, help="default: the demo's")
    parser.add_argument("--quick", action="store_true", help="1-epoch pretraining, 2 rates, 3 epochs: a smoke run")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        stages = demo_stages(Path(tmp), args.seed, args.quick)
        checkpoint = args.checkpoint
        if checkpoint is None:
            if not args.quick:
                parser.error("--checkpoint is required (or --quick)")
            train(stages["pretrain"])
            checkpoint = str(Path(stages["pretrain"].out) / "model.pt")
        rates = args.rates[:2] if args.quick else args.rates
        epochs = 3 if args.quick else args.epochs
        rows = []
        for init, stage in ((checkpoint, "finetune_2perclass"), ("scratch", "supervised_2perclass")):
            row = ["fine-tuned" if init != "scratch" else "baseline (from scratch)"]
            for rate in rates:
                base = {k: v for k, v in to_dict(stages[stage]).items() if k != "resume"}
                changes = {"from": init, "lr": rate, "out": str(Path(tmp) / f"{stage}_{rate}"), "overwrite": True}
                if epochs:
                    changes["epochs"] = epochs
                result = train(from_mapping(FinetuneConfig, {**base, **changes}))
                row.append(round(100 * result["holdout_top1"], 1))
            rows.append(row)
    print(f"machine: {machine_line(torch.device('cpu'))}")
    print(f"digits, 2 labels per class, seed {args.seed}, from {checkpoint if args.checkpoint else '(1-epoch pretraining)'}"
          f"; held-out top-1 % by learning rate{' (--quick)' if args.quick else ''}")
    print()
    print(markdown_table(["network"] + [f"lr {r}" for r in rates], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
