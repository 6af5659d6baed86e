"""SimCLRv2 in PyTorch (Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised
Learners", NeurIPS 2020): pretrain, fine-tune from few labels, distill."""

from __future__ import annotations

from typing import Any

from .errors import UserError

__version__ = "0.1.0"

__all__ = [
    "Classifier", "ContrastiveModel", "LinearHead", "ProjectionHead", "ResNet", "UserError",
    "build_model", "create_model", "list_models",
]


def __getattr__(name: str) -> Any:
    """The networks of ``simclrv2.models``, imported on first use: ``import simclrv2`` (and so the
    command line's ``--help``) does not import torch."""
    if name in __all__:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
