"""Batch-norm recalibration at the end of fine-tuning and distillation: held-out top-1 with and without.

`--recalibrate-bn N` (off by default) replaces the BN moving averages by the mean batch statistics of
the training views (the stage's augmentation) of N training images once the last step is done (PreciseBN).
This runs the demo's fine-tuning and distillation (configs/demo.yaml, digits, 20% held out) from a
pretraining checkpoint twice, identical but for the recalibration, at the demo's length and in short
runs (2 epochs, where the moving averages lag most).

    python benchmarks/bn_recalibration.py --checkpoint runs/demo/pretrain/model.pt
    python benchmarks/bn_recalibration.py --quick       # pretrains 1 epoch itself, 2-epoch runs: a smoke run
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
from simclrv2.models.batchnorm import RECALIBRATION_IMAGES  # noqa: E402
from simclrv2.commands.run import load_pipeline_config, packaged_config, plan  # noqa: E402
from simclrv2.engine import train  # noqa: E402
from simclrv2.stages import stage_of_kind  # noqa: E402


def demo_stages(out: Path, seed: int, quick: bool) -> dict:
    overrides = ['labels=["2/class", "10%"]', f"seed={seed}", "skip=[supervised, linear_eval]",
                 "distill.students=[self]"] + (["pretrain.epochs=1"] if quick else [])
    cfg = load_pipeline_config(str(packaged_config("demo")), overrides, {"out": str(out)})
    return {stage.id.folder: stage for stage in plan(cfg)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="pretraining checkpoint of the demo recipe (with --seed's split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1-epoch pretraining, 2-epoch runs only")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stages = demo_stages(Path(tmp), args.seed, args.quick)
        checkpoint = args.checkpoint
        if checkpoint is None:
            if not args.quick:
                parser.error("--checkpoint is required (or --quick)")
            train(stages["pretrain"].cfg)
            checkpoint = str(Path(stages["pretrain"].cfg.out) / "model.pt")
        cases = [("finetune_2perclass", None), ("finetune_2perclass", 2), ("finetune_10pct", None),
                 ("finetune_10pct", 2), ("distill_self_2perclass", None), ("distill_self_2perclass", 2)]
        if args.quick:
            cases = [(name, 2) for name, epochs in cases if epochs and "10pct" not in name]
        teachers: dict[str, str] = {}
        for name, epochs in cases:
            stage = stages[name]
            base = {k: v for k, v in to_dict(stage.cfg).items() if k != "resume"}
            if stage.id.kind == "finetune":
                base["from"] = checkpoint
            else:
                base["teacher"] = teachers["finetune_2perclass"]
            scores = []
            for images in (0, RECALIBRATION_IMAGES):
                changes = {"out": str(Path(tmp) / f"{name}_{epochs}_{images}"), "overwrite": True}
                if epochs:
                    changes["epochs"] = epochs
                changes["recalibrate_bn"] = images
                cfg = from_mapping(stage_of_kind(stage.id.kind).config, {**base, **changes})
                result = train(cfg)
                scores.append(100 * result["holdout_top1"])
                if stage.id.kind == "finetune" and epochs is None and images == 0:  # the default's teacher
                    teachers[name] = str(Path(cfg.out) / "model.pt")
            if stage.id.kind == "finetune" and name not in teachers:
                teachers[name] = str(Path(tmp) / f"{name}_{epochs}_0" / "model.pt")
            length = f"{epochs} epochs" if epochs else f"demo ({stage.cfg.epochs} epochs)"
            rows.append([name, length, f"{scores[0]:.1f}", f"{scores[1]:.1f}", f"{scores[1] - scores[0]:+.1f}"])
            print(rows[-1], file=sys.stderr, flush=True)
    print(f"machine: {machine_line(torch.device('cpu'))}")
    print(f"digits, demo recipe, seed {args.seed}, from {checkpoint if args.checkpoint else '(1-epoch pretraining)'}: "
          "held-out top-1 %")
    print()
    print(markdown_table(["stage", "length", "moving averages (default)", f"recalibrated ({RECALIBRATION_IMAGES})",
                          "difference"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
