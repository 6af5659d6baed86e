"""The ``simclrv2`` command line: one sub-command per task, one-line errors with exit code 2.

Training sub-commands take their flags from the stage's config dataclass (``simclrv2.config``),
so ``--help`` lists every setting with its default, and ``--config FILE.yaml`` plus
``--set key=value`` give the same settings from a file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Callable

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


def _run_stage(stage) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from .config import from_args
        from .engine import run

        from .engine.summary import summary_text

        cfg = from_args(stage.config, args, args.config, args.set)
        result = run(cfg, stage.build)
        if is_main_process():
            print(summary_text({"stage": stage.name, **result}, cfg.out))
        return 0

    return handler


def add_stage_command(sub, stage) -> argparse.ArgumentParser:
    """A training sub-command whose flags come from the stage's config dataclass."""
    from .config import add_arguments

    doc = (stage.config.__doc__ or "").strip()
    p = sub.add_parser(stage.command, help=stage.help, description=f"{stage.help}. {doc}")
    p.add_argument("--config", metavar="FILE", help="YAML file with any of the settings below (flags override it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of --config (repeatable)")
    p.add_argument("--resume", nargs="?", const="auto", default=argparse.SUPPRESS, metavar="CKPT",
                   help="continue an interrupted run: from CKPT, or without a value from the latest good "
                        "checkpoint in --out")
    add_arguments(p, stage.config)
    p.set_defaults(func=_run_stage(stage))
    return p


def build_parser() -> argparse.ArgumentParser:
    from .stages import STAGES

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
    for stage in STAGES.values():
        add_stage_command(sub, stage)
    from . import embed, evaluate, pipeline, predict, report
    from .selection import command as select
    from .convert import export, tf_import

    evaluate.register(sub)
    predict.register(sub)
    embed.register(sub)
    select.register(sub)
    pipeline.register(sub)
    report.register(sub)
    tf_import.register(sub)
    export.register(sub)
    return parser


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix (disk, memory), else None."""
    if isinstance(exc, OSError):
        what = f"{exc.filename}: " if exc.filename else ""
        return f"cannot write or read {what}{exc.strerror or exc}: free disk space, fix the permissions, or choose " \
               "another --out"
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or (
            isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))):
        return "out of memory: lower --batch-size (or --image-size)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Under torchrun the other ranks log only warnings and errors: one progress log, not N.
    level = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    from .engine import Preempted

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
        message = user_error(exc)
        if message is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"simclrv2: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        from . import distributed

        distributed.teardown()
