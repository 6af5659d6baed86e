"""What several stages share: the classifier step (fine-tuning, linear evaluation), gradient
accumulation over micro-batches (those two and distillation), and held-out evaluation of a classifier.

Stages import from here and from the layers below, never from each other.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import SimCLRAugment
from ..config import StageConfig
from ..data import ImageSet
from ..data.loader import Batch
from ..distributed import Runtime, no_sync
from ..losses import at_least_float32
from ..metrics import classification_metrics, predict_logits
from ..engine.stage import StepSettings, TrainStep


class ClassifierStep(TrainStep):
    """Cross-entropy of an augmented view (crop + flip) on the labels: fine-tuning, linear evaluation.

    ``settings.micro_batch`` M: the batch goes through M images at a time, each back-propagating its
    share of the batch's mean loss (gradient accumulation: exact for this per-image loss, up to batch
    norm, which normalises each micro-batch with its own statistics).
    """

    def __init__(self, model: nn.Module, net: nn.Module, augment: SimCLRAugment, settings: StepSettings):
        super().__init__(model, net, settings)
        self.augment = augment

    def loss(self, x: torch.Tensor, batch: Batch, rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean loss of the images ``rows`` of the batch."""
        logits = self.net(x[rows])
        labels = batch.labels[rows]
        return F.cross_entropy(at_least_float32(logits), labels), {"train_top1": (logits.argmax(1) == labels).float().mean()}

    def views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """The augmented views the network trains on."""
        return self.layout(self.augment(batch.images, batch.sizes, generator))

    def __call__(self, batch: Batch, generator: torch.Generator,
                 index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return accumulate(self, self.inputs(batch, generator), batch)


def accumulate(step: TrainStep, x: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``step.loss`` of the whole batch at once, or the mean of its micro-batches' losses, each
    back-propagated as it is computed (DDP all-reduces after the last)."""
    n, m = x.shape[0], step.micro_batch
    if m is None:
        return step.loss(x, batch, slice(0, n))
    total, sums = 0.0, {}
    for start in range(0, n, m):
        with no_sync(step.net, last=start + m >= n):
            loss, logs = step.loss(x, batch, slice(start, start + m))
            (loss * (m / n)).backward()
        total = total + loss.detach() * (m / n)
        sums = {k: sums.get(k, 0) + v.detach() * (m / n) for k, v in logs.items()}
    return total, sums


def holdout_evaluation(model: nn.Module, holdout: ImageSet | None, names: list[str], cfg: StageConfig,
                       runtime: Runtime, settings: StepSettings, prefix: str = "holdout"):
    """The held-out top-1/top-5 of a classifier (``PREFIX_top1``, ``PREFIX_top5``) in the training
    precision, as a Parts.evaluate (None without held-out images)."""
    if holdout is None:
        return None

    def evaluate() -> dict[str, Any]:
        logits, labels = predict_logits(model, holdout, cfg.image_size, runtime, 256, cfg.workers, cfg.cache,
                                        cfg.strict_data, settings.precision)
        metrics = classification_metrics(logits, labels, names)
        return {f"{prefix}_top1": metrics["top1"], f"{prefix}_top5": metrics["top5"]}

    return evaluate
