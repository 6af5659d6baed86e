"""Where a command that writes one file (``export``, ``predict --out``) may write it: never over one of its
own inputs, and over an existing file only when asked (``--overwrite``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import UserError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(out: str | Path, inputs: Iterable[str | Path], overwrite: bool, what: str = "file") -> Path:
    """``out`` if writing it loses nothing: not a folder, not an input (whatever the flags), and not an
    existing file unless ``overwrite``."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give the {what} to write")
    for source in inputs:
        if _same_file(out, Path(source)):
            raise UserError(f"--out {out} is the input {source}: writing it would destroy it; choose another --out")
    if os.path.lexists(out) and not overwrite:
        raise UserError(f"--out {out} exists: pass --overwrite to replace it or choose another --out")
    return out
