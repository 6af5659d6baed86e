"""SimCLRv2 networks: ResNet encoders, heads, and the stage models built from them."""

from ..names import RELEASED, SK_RATIO, parse_model_name
from .heads import LinearHead, ProjectionHead, ProjectionLayer
from .registry import count_parameters, create_model, encoder_parameter_count, list_models
from .resnet import ResNet
from .simclr import (
    Classifier,
    ContrastiveModel,
    build_model,
    classifier_config,
    contrastive_config,
)

__all__ = [
    "Classifier", "ContrastiveModel", "LinearHead", "ProjectionHead", "ProjectionLayer",
    "RELEASED", "ResNet", "SK_RATIO", "build_model", "classifier_config", "contrastive_config",
    "count_parameters", "create_model", "encoder_parameter_count", "list_models",
    "parse_model_name",
]
