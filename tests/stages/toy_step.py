"""The toy stage's step and ``build`` (see toy_stage): imported when the stage runs, and it imports torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simclrv2.augment import AugmentConfig, SimCLRAugment
from simclrv2.data.loader import Batch
from simclrv2.data.splits import open_splits
from simclrv2.distributed import Runtime
from simclrv2.engine.placement import prepare_model
from simclrv2.engine.stage import Parts, StepSettings, TrainStep
from simclrv2.models import build_model, classifier_config
from simclrv2.optim import param_groups
from simclrv2.record import Record
from toy_stage import ToyConfig


class BrightnessStep(TrainStep):
    """Mean squared error between the network's one output and each view's mean brightness, weighted by
    min(1, (index + 1) / ramp_steps)."""

    def __init__(self, model, net, augment: SimCLRAugment, ramp_steps: int, settings: StepSettings):
        super().__init__(model, net, settings)
        self.augment, self.ramp_steps = augment, ramp_steps

    def views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        return self.layout(self.augment(batch.images, batch.sizes, generator))

    def __call__(self, batch: Batch, generator: torch.Generator, index: int):
        x = self.inputs(batch, generator)
        target = x.float().mean(dim=(1, 2, 3))
        weight = min(1.0, (index + 1) / self.ramp_steps)
        loss = weight * F.mse_loss(self.net(x)[:, 0].float(), target)
        return loss, {"ramp": torch.tensor(weight, device=x.device)}


def build(cfg: ToyConfig, runtime: Runtime, settings: StepSettings) -> Parts:
    train = open_splits(cfg, labeled=False).train
    model_config = classifier_config(cfg.model, 1, 0, cfg.uses_small_images())
    model, net = prepare_model(build_model(model_config), cfg, runtime, global_bn=False)
    augment = SimCLRAugment(AugmentConfig.finetune(cfg.image_size, flip=cfg.flip, crop_area=(cfg.crop_min_area, 1.0)))
    step = BrightnessStep(model, net, augment, cfg.ramp_steps, settings)
    record = Record("toy", model_config, cfg.image_size, ["brightness"])
    return Parts(cfg, record, model, step, train, param_groups(model, cfg.weight_decay))
