"""The ``simclrv2`` command line: one sub-command per task, one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import UserError

log = logging.getLogger("simclrv2")


def cmd_models(args: argparse.Namespace) -> int:
    """Print every registered encoder with its parameter count."""
    from .models import RELEASED, encoder_parameter_count, list_models

    print(f"{'model':<14} {'params (M)':>10}  small-image stem (M)  released")
    for name in list_models():
        params = encoder_parameter_count(name) / 1e6
        small = encoder_parameter_count(name, small_images=True) / 1e6
        print(f"{name:<14} {params:>10.1f}  {small:>19.1f}  {'yes' if name in RELEASED else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simclrv2",
        description="SimCLRv2: contrastive pretraining, fine-tuning from few labels, distillation.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("models", help="list the registered encoders and their parameter counts",
                       description=cmd_models.__doc__)
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"simclrv2: error: {exc}", file=sys.stderr)
        return exc.exit_code
