"""Step 3 of SimCLRv2: distillation on the unlabeled images.

The fine-tuned network is a fixed teacher (eval mode, no gradient, not wrapped in DDP, so its
weights and BN statistics never change); a student learns its softened predictions on the
same augmented view (crop + flip):

    L = - sum_x sum_y P_T(y|x; tau) log P_S(y|x; tau),   P = softmax(logits / tau)

with tau = 0.1 for self-distillation (student = teacher's encoder) and 1.0 for a smaller
student. ``--alpha A --labels ...`` mixes in the labels: (1 - A) * CE(labels) + A * L, the CE
averaged over the labeled images of each batch. Students drop the projection head (a linear
classifier on the encoder output) and start from random weights or from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import AugmentConfig, SimCLRAugment
from ..data import ImageSet
from ..data.loader import Batch
from ..data.splits import annotated_held_out, open_labeled_splits, open_splits
from ..distributed import Runtime
from ..errors import UserError
from ..losses import at_least_float32, distillation_loss, teacher_entropy
from ..models import build_model, classifier_config, count_parameters
from ..models.checkpoints import load_classifier, read_trained, transplant
from ..optim import param_groups
from ..record import Record
from ..engine.placement import prepare_model
from ..engine.stage import Parts, StepSettings, TrainStep
from .common import accumulate, holdout_evaluation
from .configs import DistillConfig

log = logging.getLogger("simclrv2")


class DistillStep(TrainStep):
    """The student learns the fixed teacher's softened predictions on the same augmented view.

    The loss it minimises is the cross-entropy to the teacher's softened predictions: it levels off at the
    teacher's entropy, and at tau 0.1 its early values are in the hundreds. What the progress display shows,
    and the report plots, is the KL divergence from teacher to student times tau^2 (``distill_kl_t2``: 0
    when the student matches; tau^2 as Hinton et al. 2015 scale soft-target terms, so that figures at
    different temperatures compare).
    """

    headline = ("distill_kl_t2", "KL to teacher x tau^2")

    def __init__(self, model: nn.Module, net: nn.Module, teacher: nn.Module, augment: SimCLRAugment,
                 temperature: float, alpha: float, settings: StepSettings):
        super().__init__(model, net, settings)  # micro-batches: gradient accumulation, as ClassifierStep's
        self.teacher, self.augment, self.temperature, self.alpha = teacher, augment, temperature, alpha

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "teacher": self.teacher}

    def train(self) -> None:
        self.model.train()
        self.teacher.eval()

    def views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        """The augmented views the network trains on."""
        return self.layout(self.augment(batch.images, batch.sizes, generator))

    def __call__(self, batch: Batch, generator: torch.Generator,
                 index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return accumulate(self, self.inputs(batch, generator), batch)

    def loss(self, x: torch.Tensor, batch: Batch, rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the images ``rows`` of the batch: their mean distillation loss, and the
        label cross-entropy over the labeled images of the whole batch (scaled to its share)."""
        x = x[rows]
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = self.net(x)
        kd = distillation_loss(student_logits, teacher_logits, self.temperature)
        # The cross-entropy levels off at the teacher's entropy (large at tau 1); the KL
        # divergence, cross-entropy minus that entropy, goes to 0 as the student matches.
        kl = kd.detach() - teacher_entropy(teacher_logits, self.temperature)
        logs = {"distill_loss": kd.detach(), "distill_kl": kl, "distill_kl_t2": kl * self.temperature ** 2,
                "agreement": (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()}
        if self.alpha >= 1:
            return kd, logs
        labels = batch.labels[rows]
        known = labels >= 0
        ce = F.cross_entropy(at_least_float32(student_logits), labels.clamp_min(0), reduction="none")
        ce = (ce * known).sum() / (batch.labels >= 0).sum().clamp_min(1) * (batch.labels.shape[0] / x.shape[0])
        logs["label_loss"] = ce.detach()
        return (1 - self.alpha) * ce + self.alpha * kd, logs


def training_images(cfg: DistillConfig, names: list[str]) -> tuple[ImageSet, ImageSet | None]:
    """The images the student learns on (labels kept only for --labels) and the held-out images."""
    if cfg.labels is None:
        splits = open_splits(cfg, labeled=False)
        train, holdout = splits.train, splits.holdout
        if train.class_names and len(train.class_names) != len(names):
            raise UserError(f"the teacher {cfg.teacher} has {len(names)} classes, --data {cfg.data} has "
                            f"{len(train.class_names)}: distill on data of the teacher's task")
        train = dataclasses.replace(train, labels=np.full(len(train), -1), class_names=train.class_names or names)
    else:
        splits = open_labeled_splits(cfg, cfg.labels)
        if len(splits.labeled.class_names) != len(names):
            raise UserError(f"the teacher {cfg.teacher} has {len(names)} classes, --labels data {cfg.data} has "
                            f"{len(splits.labeled.class_names)}: use labels of the teacher's task")
        unlabeled = splits.unlabeled
        train = ImageSet(
            paths=(splits.labeled.paths + unlabeled.paths) if unlabeled.paths is not None else None,
            arrays=np.concatenate([splits.labeled.arrays, unlabeled.arrays]) if unlabeled.arrays is not None else None,
            labels=np.concatenate([splits.labeled.labels, np.full(len(unlabeled), -1)]),
            class_names=splits.labeled.class_names, name=splits.labeled.name, root=splits.labeled.root)
        holdout = splits.holdout
    if holdout is not None and holdout.class_names != names:
        raise UserError(f"the held-out images have classes {holdout.class_names[:4]}..., the teacher "
                        f"{names[:4]}...: use held-out data of the teacher's task")
    return train, holdout


def build(cfg: DistillConfig, runtime: Runtime, settings: StepSettings) -> Parts:
    teacher, teacher_record = load_classifier(cfg.teacher)
    return distill_parts(cfg, runtime, settings, teacher, teacher_record)


def distill_parts(cfg: DistillConfig, runtime: Runtime, settings: StepSettings, teacher: nn.Module,
                  teacher_record: Record, images: tuple[ImageSet, ImageSet | None] | None = None) -> Parts:
    """The student of ``teacher`` learning on ``images`` (training, held-out; default: from ``cfg``)."""
    names = teacher_record.named_classes()
    student_name = cfg.student or teacher_record.encoder
    student_init = None
    if cfg.student_from != "scratch":
        student_init = read_trained(cfg.student_from)
        if student_init.record.encoder != student_name:
            raise UserError(f"--student-from {cfg.student_from} holds {student_init.record.encoder}, the student "
                            f"is {student_name}: pass a checkpoint of the student's encoder")
    tau = cfg.temperature if cfg.temperature is not None else (0.1 if student_name == teacher_record.encoder else 1.0)
    cfg = dataclasses.replace(cfg, student=student_name, temperature=tau,
                              image_size=cfg.image_size or teacher_record.image_size,
                              small_images="on" if teacher_record.small_images else "off")
    train, holdout = images or training_images(cfg, names)
    if cfg.batch_size > len(train):
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images: lower it")
    model_config = classifier_config(student_name, len(names), 0, cfg.uses_small_images())
    torch.manual_seed(cfg.seed)  # the student's initialisation depends on the seed alone, not on the teacher
    student = build_model(model_config)
    if student_init is not None:
        transplant(student, student_init)
    log.info("distilling %s (teacher, tau %g) into %s (%.2fM parameters) on %d images", teacher_record.encoder,
             tau, student_name, count_parameters(student) / 1e6, len(train))
    teacher = teacher.to(runtime.device).eval()
    if settings.channels_last:  # the views come in channels-last: the teacher's weights in the same layout
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student, net = prepare_model(student, cfg, runtime, cfg.global_bn)
    augment = SimCLRAugment(AugmentConfig.finetune(cfg.image_size, flip=cfg.flip, crop_area=(cfg.crop_min_area, 1.0)))
    step = DistillStep(student, net, teacher, augment, tau, cfg.alpha, settings)

    evaluate = None
    if holdout is not None:
        of_student = holdout_evaluation(student, holdout, names, cfg, runtime, settings)
        of_teacher = holdout_evaluation(teacher, holdout, names, cfg, runtime, settings, prefix="teacher_holdout")

        def evaluate() -> dict[str, Any]:
            return {**of_student(), **of_teacher()}

    record = Record("distill", model_config, cfg.image_size, names, cfg.teacher, annotated_held_out(cfg.labels))
    # Unlike fine-tuning, the student's classifier keeps the LARS trust ratio: it trains from
    # random weights at the pretraining rate (0.1 * sqrt(B)), where plain SGD on it diverges.
    return Parts(cfg, record, student, step, train, param_groups(student, cfg.weight_decay), evaluate,
                 result={"student": student_name, "teacher": cfg.teacher, "temperature": tau, "alpha": cfg.alpha},
                 recalibration_images=train if cfg.recalibrate_bn else None)
