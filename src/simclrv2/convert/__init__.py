"""Conversions of official SimCLRv2 TensorFlow checkpoints into simclrv2 checkpoints.

- ``tf_import``: TF1 name-based and TF2 object-graph checkpoints (mapped in ``tf_layouts``) into
  simclrv2 checkpoints, read without TensorFlow by ``tf_bundle``.

Exporting classifiers for deployment is a command: ``simclrv2.commands.export``. The sub-modules
are imported lazily so that ``import simclrv2.convert`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["convert_tf_checkpoint", "import_tf_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in ("convert_tf_checkpoint", "import_tf_checkpoint"):
        from . import tf_import

        return getattr(tf_import, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
