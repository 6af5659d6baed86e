"""The ``simclrv2`` command line: one sub-command per task, one-line errors with exit code 2.

Training sub-commands take their flags from the stage's config dataclass (``simclrv2.config``),
so ``--help`` lists every setting with its default, and ``--config FILE.yaml`` plus
``--set key=value`` give the same settings from a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from typing import Any, Callable

from .distributed import is_main_process
from .errors import UserError

log = logging.getLogger("simclrv2")

EXIT_USER_ERROR = 2


def cmd_models(args: argparse.Namespace) -> int:
    """Print every registered encoder with its parameter count."""
    from .models import RELEASED, encoder_parameter_count, list_models

    print(f"{'model':<14} {'params (M)':>10}  released")
    for name in list_models():
        params = encoder_parameter_count(name) / 1e6
        print(f"{name:<14} {params:>10.1f}  {'yes' if name in RELEASED else ''}")
    print("\nAny width works (e.g. r18_0.25x_sk0 for quick CPU runs); --small-images on swaps in the CIFAR stem.")
    return 0


def _run_stage(cfg_cls, run: Callable[[Any], dict]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from .config import from_args

        cfg = from_args(cfg_cls, args, args.config, args.set)
        result = run(cfg)
        if is_main_process():
            print(json.dumps(result, indent=2, default=float))
        return 0

    return handler


def add_stage_command(sub, name: str, cfg_cls, run: Callable[[Any], dict], help: str,
                      resumable: bool = True) -> argparse.ArgumentParser:
    """A training/evaluation sub-command whose flags come from ``cfg_cls``."""
    from .config import add_arguments

    doc = (cfg_cls.__doc__ or "").strip()
    p = sub.add_parser(name, help=help, description=f"{help}. {doc}")
    p.add_argument("--config", metavar="FILE", help="YAML file with any of the settings below (flags override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of --config (repeatable)")
    if resumable:
        p.add_argument("--resume", nargs="?", const="auto", default=argparse.SUPPRESS, metavar="CKPT",
                       help="continue an interrupted run: from CKPT, or without a value from the latest good "
                            "checkpoint in --out")
    add_arguments(p, cfg_cls)
    p.set_defaults(func=_run_stage(cfg_cls, run))
    return p


def build_parser() -> argparse.ArgumentParser:
    from .train.pretrain import PretrainConfig, pretrain

    parser = argparse.ArgumentParser(
        prog="simclrv2",
        description="SimCLRv2: contrastive pretraining, fine-tuning from few labels, distillation. "
                    "Errors print one line and exit with code 2; a run stopped by SIGTERM/SIGINT "
                    "writes a checkpoint and exits with 128 + the signal number (143 / 130).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("models", help="list the registered encoders and their parameter counts",
                       description=cmd_models.__doc__)
    p.set_defaults(func=cmd_models)
    add_stage_command(sub, "pretrain", PretrainConfig, pretrain,
                      "step 1: contrastive pretraining on unlabeled images")
    from .train.finetune import FinetuneConfig, finetune
    from .train.linear_eval import LinearEvalConfig, linear_eval

    add_stage_command(sub, "finetune", FinetuneConfig, finetune,
                      "step 2: fine-tune a pretrained network on the labeled images (or --from scratch)")
    add_stage_command(sub, "linear-eval", LinearEvalConfig, linear_eval,
                      "linear classifier on frozen features (the standard representation measure)")
    from .train.distill import DistillConfig, distill

    add_stage_command(sub, "distill", DistillConfig, distill,
                      "step 3: distill a fine-tuned teacher into a student on unlabeled images")
    from .convert import export, tf_import
    from .train import evaluate, predict

    evaluate.register(sub)
    predict.register(sub)
    from . import pipeline, report

    pipeline.register(sub)
    report.register(sub)
    tf_import.register(sub)
    export.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Under torchrun the other ranks log only warnings and errors: one progress log, not N.
    level = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    from .train.loop import Preempted

    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"simclrv2: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Preempted as exc:
        print(f"simclrv2: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("simclrv2: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        import torch

        if isinstance(exc, torch.OutOfMemoryError) and not args.debug:
            print("simclrv2: error: out of memory: lower --batch-size (or --image-size)", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    finally:
        from . import distributed

        distributed.teardown()
