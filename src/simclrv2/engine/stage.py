"""The contract between a stage and the engine: ``build(cfg, runtime, settings) -> Parts``, whose
``step`` is a ``TrainStep``.

A stage module (``simclrv2.stages.*``) declares its config (``StageConfig`` plus its own options), a
step class (one training step: batch in, loss out) and ``build``. Everything else — run folder, data
loading, optimizer, schedule, checkpoints, resume, signals, held-out evaluation, the final save, the
memory check — is the engine's (``simclrv2.engine.loop``), which reaches the step only through the
names declared here.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..config import StageConfig
from ..data import ImageSet
from ..data.loader import Batch, TrainCrops
from ..data.splits import LabeledSplits, micro_batch_size
from ..distributed import Runtime
from ..record import Record
from .placement import autocast_dtype, input_layout, use_channels_last


@dataclass(frozen=True)
class StepSettings:
    """What every training step needs and the engine decides, from the config and the device.

    Args:
        channels_last: the network and its inputs are in channels-last memory format.
        micro_batch: images per forward pass on each process (``--micro-batch``); None: the process's
            whole share of the batch in one pass.
        precision: the autocast dtype of the step (None: fp32); the engine enters the region.
    """

    channels_last: bool = False
    micro_batch: Optional[int] = None
    precision: Optional[torch.dtype] = None

    @classmethod
    def of(cls, cfg: StageConfig, runtime: Runtime) -> "StepSettings":
        return cls(use_channels_last(cfg.channels_last, runtime.device),
                   micro_batch_size(cfg.micro_batch, cfg.batch_size, runtime.world_size),
                   autocast_dtype(cfg.precision, runtime.device))


class TrainStep:
    """One training step of a stage. The engine calls, in this order:

    - ``train()`` before the first step and after every held-out evaluation (the step owns the
      train/eval modes of its modules);
    - per step ``index`` (0, 1, ...): ``step(batch, generator, index) -> (loss, logs)`` under the
      autocast of ``settings.precision``; then, unless ``computes_gradients``, ``loss.backward()``; the
      optimizer step; then ``after_update()`` (momentum-encoder updates). ``generator`` is the step's
      own random stream (the same on resume); ``logs`` are device tensors, read only at logging
      steps (no host sync);
    - ``state_dict()`` / ``load_state_dict()``: what to checkpoint beside the model and optimizer.

    What the engine, the memory estimate and the benchmarks read, by name: ``model`` (the plain
    network, saved), ``net`` (the network the step calls: ``model`` wrapped by DDP or compile),
    ``settings`` (channels-last, micro-batch, precision), ``modules()`` (every module the step
    holds, for the memory estimate's data-free twin) and ``headline`` (the logged figure the progress
    display shows, and its name), and ``crops`` (the random crops the data loader takes of each image
    for the step, from the full-resolution image: ``data.loader.TrainCrops``; None: the loader hands
    whole images). A step whose ``augment`` is a ``SimCLRAugment`` gets ``crops`` from it, one view
    per image unless its class sets ``views_per_image``.
    """

    headline: tuple[str, str] = ("loss", "loss")  # (key of the step's logs or "loss", the name it is shown by)
    views_per_image: int = 1

    def __init__(self, model: nn.Module, net: nn.Module, settings: StepSettings):
        self.model, self.net, self.settings = model, net, settings

    @property
    def micro_batch(self) -> Optional[int]:
        return self.settings.micro_batch

    @property
    def crops(self) -> Optional[TrainCrops]:
        augment = getattr(self, "augment", None)
        config = getattr(augment, "config", None)
        return None if config is None else TrainCrops.of(config, self.views_per_image)

    @property
    def computes_gradients(self) -> bool:
        """True: the step back-propagates itself (micro-batches) and the engine does not."""
        return self.settings.micro_batch is not None

    def __call__(self, batch: Batch, generator: torch.Generator,
                 index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """The network inputs of a batch as training draws them (all the step draws from ``generator``).
        Batch-norm recalibration runs them, and the engine may draw them ahead, in a thread, while the
        previous step computes (``batch.views``)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its training views")

    def inputs(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """``batch.views`` when the engine drew them ahead, else ``views(batch, generator)``."""
        return batch.views if batch.views is not None else self.views(batch, generator)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory format of the network (``settings.channels_last``)."""
        return input_layout(x, self.settings.channels_last)

    def train(self) -> None:
        self.model.train()

    def after_update(self) -> None:
        """Called after each optimizer step (momentum-encoder updates)."""

    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint beside the model and optimizer."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # -- what the memory estimate uses ---------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Every module the step holds, by attribute name (a step holding more extends this)."""
        return {"model": self.model, "net": self.net}

    def replaced(self, modules: dict[str, nn.Module], micro_batch: Optional[int] = None) -> "TrainStep":
        """A shallow copy holding ``modules`` instead (names from ``modules()``) and, if given, another
        micro-batch; ``self`` is unchanged."""
        twin = copy.copy(self)
        for name, module in modules.items():
            setattr(twin, name, module)
        if micro_batch is not None:
            twin.settings = dataclasses.replace(self.settings, micro_batch=micro_batch)
        return twin


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
        result: facts for result.json (labeled images, ...).
        recalibration_images: images whose training views re-estimate the batch-norm statistics after
            the last step (``models.batchnorm.recalibrate``); None: keep the moving averages.
        warnings: settings of this stage that run but usually train badly, each with its fix (logged
            when the run starts, after the engine's own: ``engine.schedule.recipe_warnings``).
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
    result: dict[str, Any] = field(default_factory=dict)
    recalibration_images: Optional[ImageSet] = None
    warnings: list[str] = field(default_factory=list)


Build = Callable[[Any, Runtime, StepSettings], Parts]
