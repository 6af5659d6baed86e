"""The networks of the three SimCLRv2 stages, built from an encoder and heads.

- ``ContrastiveModel`` (pretraining): encoder + projection head, and optionally a linear
  classifier on stop-gradient encoder features that monitors the representation while
  pretraining (the official "linear eval while pretraining").
- ``Classifier`` (fine-tuning, linear eval, distillation students): encoder + the first j
  projection-head layers + a linear classifier on hiddens[j].

Both are described by a plain-data ``model_config`` dict that checkpoints carry, so that a
checkpoint rebuilds its network without pickled code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .batchnorm import BatchNorm
from ..errors import UserError
from ..host import available_memory
from .heads import LinearHead, ProjectionHead
from ..names import parse_model_name
from .registry import create_model


class ContrastiveModel(nn.Module):
    """Encoder f(.) and projection head g(.); ``forward`` returns (z, monitor logits or None).

    The monitor is a linear classifier on the stop-gradient encoder output. Unlike the
    official head it first standardises the features (BN without affine parameters, as the
    linear probes of MAE), which keeps it stable whatever the scale of the features.
    """

    def __init__(self, encoder: nn.Module, head: ProjectionHead, monitor_classes: int = 0):
        super().__init__()
        self.encoder = encoder
        self.projection_head = head
        self.monitor = None
        if monitor_classes:
            self.monitor = nn.Sequential(BatchNorm(encoder.out_dim, affine=False),
                                         LinearHead(encoder.out_dim, monitor_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(x)
        z = self.projection_head(h)
        logits = self.monitor(h.detach()) if self.monitor is not None else None
        return z, logits


class Classifier(nn.Module):
    """Encoder, projection-head layers 1..j kept from pretraining, and a linear classifier.

    ``head_layer`` j = 0 classifies the encoder output, j = 1 (the SimCLRv2 default for 1% and
    10% labels) the output of the first head layer after BN-ReLU.
    """

    def __init__(self, encoder: nn.Module, head_layers: list[nn.Module], in_dim: int,
                 num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head_layers = nn.ModuleList(head_layers)
        self.classifier = LinearHead(in_dim, num_classes)

    @property
    def head_layer(self) -> int:
        return len(self.head_layers)

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """hiddens[j]: the input of the linear classifier."""
        h = self.encoder(x)
        for layer in self.head_layers:
            h = layer(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.representation(x))


def contrastive_config(encoder: str, small_images: bool = False, head_hidden_dim: int | None = None,
                       head_out_dim: int = 128, head_layers: int = 3,
                       monitor_classes: int = 0) -> dict[str, Any]:
    """The plain-data description of a ContrastiveModel."""
    return {
        "kind": "contrastive", "encoder": encoder, "small_images": bool(small_images),
        "head_hidden_dim": head_hidden_dim, "head_out_dim": head_out_dim,
        "head_layers": head_layers, "monitor_classes": monitor_classes,
    }


def classifier_config(encoder: str, num_classes: int, head_layer: int = 0, small_images: bool = False,
                      head_hidden_dim: int | None = None, head_out_dim: int = 128,
                      head_layers: int = 3) -> dict[str, Any]:
    """The plain-data description of a Classifier keeping ``head_layer`` head layers."""
    return {
        "kind": "classifier", "encoder": encoder, "small_images": bool(small_images),
        "head_hidden_dim": head_hidden_dim, "head_out_dim": head_out_dim,
        "head_layers": head_layers, "head_layer": head_layer, "num_classes": num_classes,
    }


def build_model(config: dict[str, Any]) -> nn.Module:
    """Rebuild a ContrastiveModel or Classifier from its ``model_config``; a model whose weights would not fit
    in the memory available is refused before any of it is allocated (``check_model_size``)."""
    check_model_size(config)
    return _build(config)


def weight_bytes(config: dict[str, Any]) -> int:
    """The bytes of the weights and buffers of the model ``config`` describes, counted on the meta device
    (shapes only: nothing is allocated, a 100x-wide ResNet included)."""
    with torch.device("meta"):
        model = _build(config)
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def check_model_size(config: dict[str, Any], available: int | None = None) -> None:
    """Refuse (one line) a model whose weights alone need more than 90% of the available memory: building
    it would end in the kernel's out-of-memory kill, not an error."""
    available = available_memory() if available is None else available
    if not available or _weight_bound(config) < 0.5 * available:
        return  # (the count on the meta device costs a second the first time: only for models that may not fit)
    needed = weight_bytes(config)
    if needed > 0.9 * available:
        gib = 1 << 30
        classes = int(config.get("num_classes") or 0)
        fix = (f"its classifier has {classes} classes: check the labels or the checkpoint's record"
               if classes > 100_000 else "choose a smaller --model (a narrower width or depth)")
        raise UserError(f"model {config.get('encoder')} ({config.get('kind')}) has {needed / gib:.1f} GiB of weights, "
                        f"more than this machine's {available / gib:.1f} GiB of available memory allows (training needs "
                        f"about 3x the weights, plus the batch): {fix}")


def _weight_bound(config: dict[str, Any]) -> float:
    """More bytes than the weights of ``config`` take: r152_1x_sk1 has under 100M parameters, and a width
    multiplier w scales them by about w**2; a classifier adds its (classes x features) layer."""
    try:
        spec = parse_model_name(config["encoder"])
        width = max(1.0, float(spec.width))
        features = 2048 * width
        return 4 * (100e6 * width ** 2 + 2 * features ** 2 + features * float(config.get("num_classes") or 0)
                    + features * float(config.get("monitor_classes") or 0))
    except Exception:  # noqa: BLE001 - a malformed config: count it exactly (build_model then says what is wrong)
        return float("inf")


def _build(config: dict[str, Any]) -> nn.Module:
    encoder = create_model(config["encoder"], config.get("small_images", False))
    head = ProjectionHead(encoder.out_dim, config.get("head_hidden_dim"),
                          config.get("head_out_dim", 128), config.get("head_layers", 3))
    if config["kind"] == "contrastive":
        return ContrastiveModel(encoder, head, config.get("monitor_classes", 0))
    if config["kind"] == "classifier":
        j = config.get("head_layer", 0)
        if not 0 <= j <= len(head.layers) - 1:
            raise UserError(
                f"head layer {j} is beyond the projection head: it has {len(head.layers)} layers, "
                f"so use a head layer from 0 to {len(head.layers) - 1}"
            )
        dims = [encoder.out_dim] + [layer.linear.out_features for layer in head.layers]
        return Classifier(encoder, list(head.layers[:j]), dims[j], config["num_classes"])
    raise UserError(f"unknown model kind {config['kind']!r} in the checkpoint's model_config")
