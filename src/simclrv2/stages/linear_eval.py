"""Linear evaluation: a linear classifier on frozen features, the standard measure of a representation.

The encoder (and the kept head layers, hiddens[j], j = 0 by default) is frozen in eval mode,
so that neither its weights nor its BN statistics change, as in the official code; only the
linear layer is trained, with SPEC's settings: Nesterov momentum SGD, lr 0.1 * B / 256,
weight decay 1e-6, no warmup, crop + flip, 90 epochs. The result is an ordinary classifier
checkpoint that ``evaluate``, ``predict`` and ``export`` take.
"""

from __future__ import annotations

import dataclasses

from ..augment import AugmentConfig, SimCLRAugment
from ..data.splits import capped_batch, open_labeled_splits
from ..distributed import Runtime
from ..errors import UserError
from ..models import build_model
from ..models.checkpoints import classifier_from, read_trained, transplant
from ..optim import param_groups
from ..record import Record
from ..engine.placement import prepare_model
from ..engine.stage import Parts, StepSettings
from .common import ClassifierStep, holdout_evaluation
from .configs import LinearEvalConfig


class LinearStep(ClassifierStep):
    """The classifier step on a frozen backbone: the encoder and kept head layers stay in eval
    mode (their BN statistics do not change); ``build`` turns off their gradients."""

    def train(self) -> None:
        self.model.train()
        self.model.encoder.eval()
        self.model.head_layers.eval()


def build(cfg: LinearEvalConfig, runtime: Runtime, settings: StepSettings) -> Parts:
    source = read_trained(cfg.init)
    if cfg.head_layer > source.record.head_layers - 1:
        raise UserError(f"--head-layer {cfg.head_layer} is beyond the projection head of {cfg.init} "
                        f"({source.record.head_layers} layers): use 0 to {source.record.head_layers - 1}")
    splits = open_labeled_splits(cfg, cfg.labels)
    cfg = dataclasses.replace(
        cfg, image_size=cfg.image_size or source.record.image_size,
        small_images="on" if source.record.small_images else "off",
        batch_size=capped_batch(cfg.batch_size, len(splits.labeled), runtime.world_size))
    names = splits.labeled.class_names
    model_config = classifier_from(source.record, cfg.head_layer, len(names))
    model = build_model(model_config)
    transplant(model, source)
    for module in (model.encoder, model.head_layers):  # frozen before DDP, which wraps trainable ones only
        for p in module.parameters():
            p.requires_grad_(False)
    augment = SimCLRAugment(AugmentConfig.finetune(cfg.image_size, flip=cfg.flip, crop_area=(cfg.crop_min_area, 1.0)))
    model, net = prepare_model(model, cfg, runtime, global_bn=False)
    step = LinearStep(model, net, augment, settings)
    record = Record("linear_eval", model_config, cfg.image_size, names, cfg.init)
    return Parts(cfg, record, model, step, splits.labeled, param_groups(model, cfg.weight_decay, ("classifier.",)),
                 holdout_evaluation(model, splits.holdout, names, cfg, runtime, settings), labeled=splits,
                 result={"head_layer": cfg.head_layer, "labeled_images": len(splits.labeled), "from": cfg.init})
