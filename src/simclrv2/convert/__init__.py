"""Conversions in and out of simclrv2 checkpoints.

- ``tf_import``: official SimCLRv2 TensorFlow checkpoints (TF1 name-based and TF2 object-graph,
  mapped in ``tf_layouts``) into simclrv2 checkpoints, read without TensorFlow by ``tf_bundle``.
- ``export``: fine-tuned or distilled classifiers out to ONNX, TorchScript or safetensors.

The sub-modules are imported lazily so that ``import simclrv2.convert`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["convert_tf_checkpoint", "export_model", "import_tf_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in ("convert_tf_checkpoint", "import_tf_checkpoint"):
        from . import tf_import

        return getattr(tf_import, name)
    if name == "export_model":
        from . import export

        return export.export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
