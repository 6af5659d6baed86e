"""``simclrv2 models``: every registered encoder with its parameter count."""

from __future__ import annotations

import argparse


def cmd_models(args: argparse.Namespace) -> int:
    """Print every registered encoder with its parameter count."""
    from ..models import RELEASED, encoder_parameter_count, list_models

    print(f"{'model':<14} {'params (M)':>10}  released")
    for name in list_models():
        params = encoder_parameter_count(name) / 1e6
        print(f"{name:<14} {params:>10.1f}  {'yes' if name in RELEASED else ''}")
    print("\nAny width works (e.g. r18_0.25x_sk0 for quick CPU runs); --small-images on swaps in the CIFAR stem.")
    return 0
