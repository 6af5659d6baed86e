"""``simclrv2 import-tf``: an official SimCLRv2 TensorFlow checkpoint in, a simclrv2 checkpoint out
(the conversion itself is ``simclrv2.convert.tf_import``)."""

from __future__ import annotations

import argparse

from ..convert.tf_import import import_with_report


def cmd_import_tf(args: argparse.Namespace) -> int:
    """Convert an official TensorFlow checkpoint and print what was mapped and ignored."""
    path, report = import_with_report(args.ckpt_path, args.model, args.out, ema=args.ema,
                           head_layer=args.head_layer, small_images=args.small_images)
    print(report.summary(path))
    return 0
