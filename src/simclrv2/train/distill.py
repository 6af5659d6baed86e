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
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed as dist_utils
from ..augment import AugmentConfig, SimCLRAugment
from ..checkpoint import load_checkpoint
from ..config import option
from ..data import ImageSet
from ..data.loader import Batch, Loader
from ..errors import UserError
from ..losses import distillation_loss, teacher_entropy
from ..models import build_model, classifier_config, parse_model_name
from .evaluate import classification_metrics, predict_logits
from .loop import LoopConfig, RunDir, Trainer, describe_model_size, write_config
from .setup import input_view, make_optimizer, make_schedule, open_labeled_splits, prepare_model
from .weights import class_names, load_classifier, transplant

log = logging.getLogger("simclrv2")


@dataclass
class DistillConfig(LoopConfig):
    """Distillation of a fine-tuned teacher into a student on unlabeled images. Defaults follow
    SPEC: the pretraining optimizer settings (LARS, lr 0.1 * sqrt(B), weight decay 1e-4),
    crop + flip, 400 epochs (the paper's; the batch here is the official code's default 512).
    SPEC states no warmup; none by default, 5% of the epochs in the ImageNet presets."""

    teacher: str = option("", "fine-tuned classifier checkpoint that teaches", required=True)
    student: Optional[str] = option(None, "student encoder (default: the teacher's, i.e. self-distillation)")
    student_from: str = option("scratch", "initialise the student from random weights ('scratch') or from "
                               "a checkpoint's encoder (pretrain, import-tf, fine-tune)")
    temperature: Optional[float] = option(None, "distillation temperature tau (default: 0.1 for "
                                          "self-distillation, 1.0 for another student)", minimum=0,
                                          exclusive_minimum=True)
    alpha: float = option(1.0, "weight of the distillation loss; 1 - alpha goes to cross-entropy on "
                          "--labels", minimum=0, maximum=1)
    labels: Optional[str] = option(None, "labeled images for --alpha < 1: 'all', '1%', '5/class' or a subset file")
    epochs: int = option(400, "training epochs", minimum=1)
    warmup_epochs: float = option(0.0, "linear warmup epochs before the cosine decay", minimum=0)
    image_size: Optional[int] = option(None, "side of the training images (default: the teacher's)", minimum=8)
    flip: bool = option(True, "random horizontal flips")
    crop_min_area: float = option(0.08, "smallest random-crop area fraction", minimum=0.01, maximum=1.0)
    global_bn: bool = option(True, "BN statistics over the global batch when distributed")

    def check(self) -> None:
        if self.student:
            parse_model_name(self.student)
        if self.alpha < 1 and not self.labels:
            raise UserError(f"--alpha {self.alpha} mixes in labels: pass --labels (e.g. --labels 1%) or "
                            "use --alpha 1")


def _training_images(cfg: DistillConfig, num_classes: int, teacher_names: list[str]) -> tuple[ImageSet, ImageSet | None]:
    """The images the student learns on (labels kept only for --labels) and the held-out images."""
    if cfg.labels is None:
        from .setup import open_splits

        splits = open_splits(cfg, labeled=False)
        train, holdout = splits.train, splits.holdout
        if train.class_names and len(train.class_names) != num_classes:
            raise UserError(f"the teacher {cfg.teacher} has {num_classes} classes, --data {cfg.data} has "
                            f"{len(train.class_names)}: distill on data of the teacher's task")
        return ImageSet(train.paths, train.arrays, np.full(len(train), -1), train.class_names or teacher_names,
                        train.name, train.root), holdout
    splits = open_labeled_splits(cfg, cfg.labels, None)
    if len(splits.labeled.class_names) != num_classes:
        raise UserError(f"the teacher {cfg.teacher} has {num_classes} classes, --labels data {cfg.data} has "
                        f"{len(splits.labeled.class_names)}: use labels of the teacher's task")
    unlabeled = splits.unlabeled
    merged = ImageSet(
        paths=(splits.labeled.paths + unlabeled.paths) if unlabeled.paths is not None else None,
        arrays=np.concatenate([splits.labeled.arrays, unlabeled.arrays]) if unlabeled.arrays is not None else None,
        labels=np.concatenate([splits.labeled.labels, np.full(len(unlabeled), -1)]),
        class_names=splits.labeled.class_names, name=splits.labeled.name, root=splits.labeled.root)
    return merged, splits.holdout


def distill(cfg: DistillConfig) -> dict[str, Any]:
    """Distill the teacher into the student as configured; returns the result (also in OUT/result.json)."""
    cfg.check()
    runtime = dist_utils.setup(cfg.device)
    run_dir = RunDir(cfg.out)
    teacher, teacher_payload = load_classifier(cfg.teacher)
    names = class_names(teacher_payload)
    num_classes = len(names)
    teacher_encoder = teacher_payload["model_config"]["encoder"]
    student_name = cfg.student or teacher_encoder
    student_init = None
    if cfg.student_from != "scratch":
        student_init = load_checkpoint(cfg.student_from, map_location="cpu")
        if student_init.get("model_config", {}).get("encoder") != student_name:
            raise UserError(f"--student-from {cfg.student_from} holds "
                            f"{student_init.get('model_config', {}).get('encoder')}, the student is {student_name}: "
                            "pass a checkpoint of the student's encoder")
    run_dir.prepare(cfg.resume, cfg.overwrite, runtime.is_main)
    teacher_cfg = teacher_payload.get("config") or {}
    tau = cfg.temperature if cfg.temperature is not None else (0.1 if student_name == teacher_encoder else 1.0)
    cfg = dataclasses.replace(cfg, student=student_name, temperature=tau,
                              image_size=cfg.image_size or teacher_cfg.get("image_size") or 224,
                              small_images="on" if teacher_payload["model_config"].get("small_images") else "off")
    torch.manual_seed(cfg.seed)
    train, holdout = _training_images(cfg, num_classes, names)
    if cfg.batch_size > len(train):
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images: lower it")

    model_config = classifier_config(student_name, num_classes, 0, cfg.uses_small_images())
    student = build_model(model_config)
    if student_init is not None:
        transplant(student, student_init, cfg.student_from)
    log.info("distilling %s (teacher, tau %g) into %s (%s) on %d images", teacher_encoder, tau, student_name,
             describe_model_size(student), len(train))
    teacher = teacher.to(runtime.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student, train_student = prepare_model(student, cfg, runtime, cfg.global_bn)
    loader = Loader(train, "train", cfg.resolved_load_size(), cfg.batch_size, runtime, seed=cfg.seed,
                    workers=cfg.workers, cache=cfg.cache, strict=cfg.strict_data)
    # Unlike fine-tuning, the student's classifier keeps the LARS trust ratio: it trains from
    # random weights at the pretraining rate (0.1 * sqrt(B)), where plain SGD on it diverges.
    optimizer = make_optimizer(cfg, student)
    schedule = make_schedule(cfg, len(loader))
    augment = SimCLRAugment(AugmentConfig.finetune(cfg.image_size, flip=cfg.flip,
                                                   crop_area=(cfg.crop_min_area, 1.0)))

    def step(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = input_view(augment(batch.images, batch.aspect, generator), runtime, cfg)
        with torch.no_grad():
            teacher_logits = teacher(x)
        student_logits = train_student(x)
        kd = distillation_loss(student_logits, teacher_logits, tau)
        # The cross-entropy levels off at the teacher's entropy (large at tau 1); the KL
        # divergence, cross-entropy minus that entropy, goes to 0 as the student matches.
        logs = {"distill_loss": kd.detach(), "distill_kl": kd.detach() - teacher_entropy(teacher_logits, tau),
                "agreement": (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean()}
        if cfg.alpha >= 1:
            return kd, logs
        known = batch.labels >= 0
        ce = F.cross_entropy(student_logits.float(), batch.labels.clamp_min(0), reduction="none")
        ce = (ce * known).sum() / known.sum().clamp_min(1)
        logs["label_loss"] = ce.detach()
        return (1 - cfg.alpha) * ce + cfg.alpha * kd, logs

    write_config(run_dir, cfg, runtime.is_main)
    trainer = Trainer(stage="distill", cfg=cfg, runtime=runtime, model=student, optimizer=optimizer,
                      schedule=schedule, loader=loader, step_fn=step, model_config=model_config,
                      class_names=names, run_dir=run_dir, extra_payload={"teacher": cfg.teacher})
    result = trainer.fit()
    if holdout is not None and runtime.is_main:
        if holdout.class_names != names:
            raise UserError(f"the held-out images have classes {holdout.class_names[:4]}..., the teacher "
                            f"{names[:4]}...: use held-out data of the teacher's task")
        for who, net in (("student", student), ("teacher", teacher)):
            logits, labels = predict_logits(net, holdout, cfg.image_size, runtime, 256, cfg.workers,
                                            cfg.cache, cfg.strict_data)
            metrics = classification_metrics(logits, labels, names)
            prefix = "holdout" if who == "student" else "teacher_holdout"
            result.update({f"{prefix}_top1": metrics["top1"], f"{prefix}_top5": metrics["top5"]})
    result.update({"student": student_name, "teacher": cfg.teacher, "temperature": tau, "alpha": cfg.alpha})
    trainer.save_final(result)
    log.info("distillation done: %s", {k: v for k, v in result.items() if "top" in k})
    return result
