"""Step 2 of SimCLRv2: supervised fine-tuning on the few labeled images.

The classifier keeps the pretrained encoder and the first j projection-head layers and puts a
new linear layer on hiddens[j] (j = 1 is the paper's choice for 1% and 10% labels); the whole
network is trained with SPEC's recipe: LARS, no weight decay, no warmup, crop + flip only,
lr 0.005 * sqrt(B) for r50_1x_sk0 and smaller networks, 0.002 * sqrt(B) for wider or SK ones.
The new linear layer is exempt from the LARS trust ratio, as the official ``head_supervised``.

``--from scratch`` trains the same classifier from random weights on the same labels: the
supervised baseline (stage "supervised"). ``--head-layer auto`` fine-tunes once per j on part of
the labeled images, scores each on the rest, and keeps the best.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..augment import AugmentConfig, SimCLRAugment
from ..checkpoint import atomic_write_bytes
from ..data import ImageSet, holdout_split
from ..data.splits import LabeledSplits, annotated_held_out, capped_batch, open_labeled_splits
from ..distributed import Runtime
from ..errors import UserError
from ..models import build_model, classifier_config, count_parameters, parse_model_name
from ..models.checkpoints import Trained, check_same_encoder, classifier_from, read_trained, transplant
from ..optim import param_groups
from ..record import Record
from ..results import read_result
from ..engine.placement import prepare_model
from ..engine.stage import Parts, StepSettings
from .common import ClassifierStep, holdout_evaluation
from .configs import FinetuneConfig

log = logging.getLogger("simclrv2")

SEARCH_DIR = "head_layer_search"

# The paper fine-tunes 60 epochs on 1% of ImageNet's labels and 30 on 10% and 100%; label
# shares below this one count as "1%".
FEW_LABELS_SHARE = 0.05


def default_finetune_lr(model: str) -> float:
    """SPEC: 0.005 (times sqrt(B)) for r50_1x_sk0, 0.002 for wider or SK models.

    SPEC names no rate for the deeper 1x sk0 encoders (r101, r152); they get r50_1x_sk0's.
    """
    spec = parse_model_name(model)
    return 0.002 if (spec.width > 1 or spec.sk) else 0.005


def resolve(cfg: FinetuneConfig, source: Trained | None, labeled: int, pool: int, world_size: int = 1) -> FinetuneConfig:
    """Fill in the defaults that depend on the checkpoint and the data (``labeled`` of ``pool``
    training images carry the labels used)."""
    model = cfg.model or source.record.encoder
    image_size = cfg.image_size or (source.record.image_size if source is not None else 224)
    small = cfg.small_images if source is None else ("on" if source.record.small_images else "off")
    lr = cfg.lr if cfg.lr is not None else default_finetune_lr(model)
    few_labels = cfg.labels != "all" and labeled < FEW_LABELS_SHARE * pool
    epochs = cfg.epochs if cfg.epochs is not None else (60 if few_labels else 30)
    head_layer = cfg.head_layer if cfg.head_layer is not None else ("0" if cfg.labels == "all" else "1")
    return dataclasses.replace(cfg, model=model, image_size=image_size, small_images=small, lr=lr,
                               batch_size=capped_batch(cfg.batch_size, labeled, world_size), epochs=epochs,
                               head_layer=head_layer)


def classifier_parts(cfg: FinetuneConfig, runtime: Runtime, settings: StepSettings, labeled: ImageSet,
                     holdout: ImageSet | None, source: Trained | None, head_layer: int) -> Parts:
    """A classifier on hiddens[head_layer] of ``source`` (or from random weights) trained on ``labeled``."""
    names = labeled.class_names
    if source is None:
        model_config = classifier_config(cfg.model, len(names), head_layer, cfg.uses_small_images())
    else:
        model_config = classifier_from(source.record, head_layer, len(names))
    model = build_model(model_config)
    if source is not None:
        copied = transplant(model, source)
        log.info("finetune: %d tensors from %s (encoder and %d head layer(s)), new %d-class classifier",
                 len(copied), cfg.init, head_layer, len(names))
    log.info("%s %s from %s on %d labeled images (%.2fM parameters)", "finetune" if source else "supervised",
             cfg.model, "random weights" if source is None else cfg.init, len(labeled), count_parameters(model) / 1e6)
    model, net = prepare_model(model, cfg, runtime, cfg.global_bn)
    augment = SimCLRAugment(AugmentConfig.finetune(cfg.image_size, flip=cfg.flip, crop_area=(cfg.crop_min_area, 1.0)))
    step = ClassifierStep(model, net, augment, settings)
    record = Record("finetune" if source is not None else "supervised", model_config, cfg.image_size, names,
                    cfg.init if source is not None else None, annotated_held_out(cfg.labels, cfg.label_conflicts))
    return Parts(cfg, record, model, step, labeled, param_groups(model, cfg.weight_decay, ("classifier.",)),
                 holdout_evaluation(model, holdout, names, cfg, runtime, settings), cfg.eval_every,
                 result={"head_layer": head_layer, "labeled_images": len(labeled), "from": cfg.init,
                         "model": cfg.model})


def search_head_layer(cfg: FinetuneConfig, labeled: ImageSet, source: Trained) -> int:
    """Fine-tune once per head layer on part of the labeled images (each a run of its own in
    OUT/head_layer_search/); the layer scoring best on the rest."""
    from ..engine.loop import run
    from ..engine.run_folder import RunFolder

    layers = list(range(source.record.head_layers))  # hiddens[0 .. depth-1]; the output is not a candidate
    fit_idx, score_idx = holdout_split(labeled.labels, cfg.head_search_fraction, cfg.seed)
    if len(np.unique(labeled.labels[score_idx])) < len(labeled.class_names):
        raise UserError(f"--head-layer auto needs at least 2 labeled images per class to score the layers "
                        f"(--labels {cfg.labels} gives fewer): use more labels or a fixed --head-layer")
    fit, score = labeled.subset(fit_idx), labeled.subset(score_idx)
    scores: dict[str, float] = {}
    for j in layers:
        sub = RunFolder(Path(cfg.out) / SEARCH_DIR / f"head_layer_{j}")
        if sub.finished and not cfg.overwrite:
            result = read_result(sub.path)
        else:
            sub_cfg = dataclasses.replace(cfg, out=str(sub.path), batch_size=min(cfg.batch_size, len(fit_idx)),
                                          resume="auto" if sub.has_checkpoints() and not cfg.overwrite else None,
                                          head_layer=str(j))
            result = run(sub_cfg, lambda c, rt, st, j=j: classifier_parts(c, rt, st, fit, score, source, j))
        scores[str(j)] = float(result["holdout_top1"])
        log.info("head layer %d: %.4f top-1 on %d held-out labeled images", j, scores[str(j)], len(score_idx))
    best = max(layers, key=lambda j: (scores[str(j)], -abs(j - 1)))  # ties: closest to the paper's j = 1
    record = {"chosen": best, "top1": scores, "fit_images": len(fit_idx), "score_images": len(score_idx)}
    atomic_write_bytes(Path(cfg.out) / f"{SEARCH_DIR}.json", json.dumps(record, indent=2).encode())
    return best


def build(cfg: FinetuneConfig, runtime: Runtime, settings: StepSettings) -> Parts:
    source = None
    if cfg.init != "scratch":
        source = read_trained(cfg.init)
        check_same_encoder(source.record, cfg.model, cfg.init)
    splits: LabeledSplits = open_labeled_splits(cfg, cfg.labels)
    cfg = resolve(cfg, source, len(splits.labeled), len(splits.labeled) + len(splits.unlabeled), runtime.world_size)
    if cfg.head_layer == "auto":
        head_layer = 0 if source is None else search_head_layer(cfg, splits.labeled, source)
        torch.manual_seed(cfg.seed)
    else:
        head_layer = int(cfg.head_layer)
    parts = classifier_parts(cfg, runtime, settings, splits.labeled, splits.holdout, source, head_layer)
    parts.labeled = splits
    parts.recalibration_images = splits.training_images() if cfg.recalibrate_bn else None
    return parts
