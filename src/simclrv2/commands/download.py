"""Fetch official SimCLRv2 weights into the cache and print where they are: downloaded from the
release (resumed, MD5-verified), converted once into a simclrv2 checkpoint, nothing run.

A name is official:<model> (pretrained, with its linear-eval head) or official:<model>/finetuned_1pct,
/finetuned_10pct, /finetuned_100pct (classifiers); `simclrv2 models --official` lists them. Every
command that takes a checkpoint takes a name too, and fetches it the same way on first use.

environment:
  SIMCLRV2_HOME          the cache (default ~/.cache/simclrv2); the model is SIMCLRV2_HOME/official/...
  SIMCLRV2_OFFICIAL_URL  the URL or local folder that holds the release's simclrv2/ folder
                         (default https://storage.googleapis.com/simclr-checkpoints)
  SIMCLRV2_OFFLINE=1     use only the cache

examples:
  simclrv2 download official:r50_1x_sk1
  simclrv2 download official:r152_3x_sk1/finetuned_1pct
  SIMCLRV2_OFFICIAL_URL=/mnt/mirror simclrv2 download official:r50_1x_sk0
"""

from __future__ import annotations

import argparse


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch and convert each name (once; later calls find it in the cache) and print its file."""
    from ..official import parse_official, resolve_checkpoint

    for spec in args.names:
        parse_official(spec)  # every name is checked before anything is downloaded
    for spec in args.names:
        print(resolve_checkpoint(spec), flush=True)
    return 0
