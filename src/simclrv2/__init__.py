"""SimCLRv2 in PyTorch (Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised
Learners", NeurIPS 2020): pretrain, fine-tune from few labels, distill."""

from .errors import UserError
from .models import (
    Classifier,
    ContrastiveModel,
    LinearHead,
    ProjectionHead,
    ResNet,
    build_model,
    create_model,
    list_models,
)

__version__ = "0.1.0"

__all__ = [
    "Classifier", "ContrastiveModel", "LinearHead", "ProjectionHead", "ResNet", "UserError",
    "build_model", "create_model", "list_models",
]
