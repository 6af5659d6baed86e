"""What a stage declares: its config, a ``build`` that returns its ``Parts``, and a step class.

A stage module (``simclrv2.stages.*``) is a config dataclass (``StageConfig`` plus its own
options), a step class (one training step: batch in, loss out) and ``build(cfg, runtime) ->
Parts``. Everything else — run folder, data loading, optimizer, schedule, checkpoints, resume,
signals, held-out evaluation, the final save — is the engine's (``simclrv2.engine.loop``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..config import StageConfig
from ..data import ImageSet
from ..data.loader import Batch
from ..data.splits import LabeledSplits
from ..distributed import Runtime
from ..record import Record


class TrainStep:
    """One training step of a stage: ``step(batch, generator) -> (loss, logs)``.

    The engine calls it under autocast, then does backward and the optimizer step, then calls
    ``after_update``. ``logs`` are device tensors (read only at logging steps, so no host sync).
    A step owns its state (a memory queue, a momentum encoder) and the train/eval modes of its
    modules: ``train()`` is called before the first step and after every evaluation.
    """

    model: nn.Module
    computes_gradients = False  # True: the step back-propagates itself (micro-batches); the engine does not

    def __call__(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """The network inputs of a batch as training draws them (all the step draws from ``generator``).
        Batch-norm recalibration runs them, and the engine may draw them ahead, in a thread, while the
        previous step computes (``batch.views``)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its training views")

    def inputs(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """``batch.views`` when the engine drew them ahead, else ``views(batch, generator)``."""
        return batch.views if batch.views is not None else self.views(batch, generator)

    def train(self) -> None:
        self.model.train()

    def after_update(self) -> None:
        """Called after each optimizer step (momentum-encoder updates)."""

    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint beside the model and optimizer."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class Parts:
    """What a stage's ``build`` hands the engine.

    Args:
        cfg: the config with every data- and checkpoint-dependent default filled in (saved as
            config.yaml and in every checkpoint's record).
        record: how the model is made (stage, model_config, image size, class names, source);
            the engine adds the held-out split, the config and the versions.
        model: the network trained and saved (plain module, on the device).
        step: the training step, calling the wrapped (DDP, compiled) network.
        train_images: what the loader draws batches from.
        param_groups: optimizer groups (``simclrv2.optim.param_groups``); a group with a
            ``peak_lr`` follows the schedule's shape scaled to that peak instead of the schedule's.
        evaluate: held-out metrics (run on the main process), at the end and every
            ``eval_every`` epochs; None when nothing is held out.
        evaluate_everywhere: ``evaluate`` runs on every process (each embedding its share of the images);
            the main process's metrics are the ones logged.
        labeled: the labeled subset, written to OUT/labeled.txt.
        recalibration_images: images whose evaluation views re-estimate the batch-norm statistics after
            the last step (``models.batchnorm.recalibrate``); None: keep the moving averages.
    """

    cfg: StageConfig
    record: Record
    model: nn.Module
    step: TrainStep
    train_images: ImageSet
    param_groups: list[dict]
    evaluate: Optional[Callable[[], dict[str, Any]]] = None
    eval_every: int = 0
    evaluate_everywhere: bool = False
    labeled: Optional[LabeledSplits] = None
    result: dict[str, Any] = field(default_factory=dict)  # facts for result.json (labeled images, ...)
    recalibration_images: Optional[ImageSet] = None


Build = Callable[[Any, Runtime], Parts]
