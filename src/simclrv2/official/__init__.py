"""The official SimCLRv2 weights by name (``official:r152_3x_sk1``, ``official:r50_1x_sk1/finetuned_1pct``).

``catalogue`` names the 13 released encoders, their release folders and the paper's results;
``fetch`` downloads one file (resumed, MD5-verified, with a progress bar); ``cache`` turns a name
into a converted simclrv2 checkpoint in ``$SIMCLRV2_HOME`` (once, under a lock). Everything that
opens a checkpoint calls ``resolve_checkpoint``, so a name is accepted wherever a file is.
"""

from __future__ import annotations

from .cache import fetch_official, resolve_checkpoint
from .catalogue import all_names, is_official, parse_official

__all__ = ["all_names", "fetch_official", "is_official", "parse_official", "resolve_checkpoint"]
