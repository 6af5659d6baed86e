"""Step 2 of SimCLRv2: supervised fine-tuning on the few labeled images.

The classifier keeps the pretrained encoder and the first j projection-head layers and puts a
new linear layer on hiddens[j] (j = 1 is the paper's choice for 1% and 10% labels); the whole
network is trained with SPEC's recipe: LARS, no weight decay, no warmup, crop + flip only,
lr 0.005 * sqrt(B) for r50_1x_sk0 and smaller networks, 0.002 * sqrt(B) for wider or SK ones.
The new linear layer is exempt from the LARS trust ratio, as the official ``head_supervised``.

``--from scratch`` trains the same classifier from random weights on the same labels: the
supervised baseline. ``--head-layer auto`` fine-tunes once per j on part of the labeled images,
scores each on the rest, and keeps the best.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed as dist_utils
from ..augment import AugmentConfig, SimCLRAugment
from ..checkpoint import atomic_write_bytes, load_checkpoint
from ..config import option
from ..data import ImageSet, holdout_split
from ..data.loader import Batch, Loader
from ..distributed import Runtime
from ..errors import UserError
from ..models import build_model, classifier_config, parse_model_name
from .evaluate import classification_metrics, predict_logits
from .loop import LoopConfig, RunDir, Trainer, describe_model_size, write_config
from .setup import LabeledSplits, capped_batch, input_view, make_optimizer, make_schedule, open_labeled_splits, prepare_model
from .weights import check_same_encoder, classifier_from, transplant

log = logging.getLogger("simclrv2")

SEARCH_DIR = "head_layer_search"
LABELED_LIST = "labeled.txt"


# The paper fine-tunes 60 epochs on 1% of ImageNet's labels and 30 on 10% and 100%; label
# shares below this one count as "1%".
FEW_LABELS_SHARE = 0.05


def default_finetune_lr(model: str) -> float:
    """SPEC: 0.005 (times sqrt(B)) for r50_1x_sk0, 0.002 for wider or SK models.

    SPEC names no rate for the deeper 1x sk0 encoders (r101, r152); they get r50_1x_sk0's.
    """
    spec = parse_model_name(model)
    return 0.002 if (spec.width > 1 or spec.sk) else 0.005


@dataclass
class FinetuneConfig(LoopConfig):
    """Fine-tuning (or the supervised baseline with --from scratch). Defaults are the paper's
    1%-label recipe (SPEC); the batch is capped at the number of labeled images."""

    init: str = option("", "pretrained checkpoint to start from (pretrain, import-tf or a classifier), "
                       "or 'scratch' for the supervised baseline", required=True, flag="--from")
    model: Optional[str] = option(None, "encoder; needed with --from scratch, else taken from the checkpoint")
    labels: str = option("all", "labeled images used: 'all', a percentage ('1%'), a count per class "
                         "('5/class') or a subset file (e.g. the official 1percent.txt)")
    head_layer: Optional[str] = option(None, "classify hiddens[j]: 0 = encoder output, 1 = after the first "
                                       "head layer, ...; 'auto' tries each on held-out labeled images "
                                       "(default: the paper's, 1 for a label subset, 0 for --labels all)")
    head_search_fraction: float = option(0.3, "share of the labeled images scoring --head-layer auto",
                                         minimum=0.05, maximum=0.9)
    epochs: Optional[int] = option(None, "training epochs (default: the paper's, 60 when under 5% of the "
                                   "images are labeled, as at 1%, else 30, as at 10% and 100%)", minimum=1)
    batch_size: int = option(1024, "global batch size, capped at the number of labeled images", minimum=2)
    lr: Optional[float] = option(None, "base learning rate, scaled by --lr-scaling (default: 0.005 for "
                                 "1x sk0 encoders such as r50_1x_sk0, 0.002 for wider or SK ones)", minimum=0)
    warmup_epochs: float = option(0.0, "linear warmup epochs before the cosine decay", minimum=0)
    weight_decay: float = option(0.0, "weight decay (BN parameters and biases excluded)", minimum=0)
    image_size: Optional[int] = option(None, "side of the training images (default: the pretraining "
                                       "run's, else 224)", minimum=8)
    flip: bool = option(True, "random horizontal flips")
    crop_min_area: float = option(0.08, "smallest random-crop area fraction", minimum=0.01, maximum=1.0)
    global_bn: bool = option(True, "BN statistics over the global batch when distributed")
    eval_every: int = option(0, "evaluate on the held-out images every N epochs (0: at the end only)",
                             minimum=0)

    def check(self) -> None:
        if self.model:
            parse_model_name(self.model)
        if self.init == "scratch" and not self.model:
            raise UserError("--from scratch needs --model (e.g. --model r50_1x_sk0)")
        if self.head_layer not in (None, "auto"):
            try:
                if int(self.head_layer) < 0:
                    raise ValueError
            except ValueError:
                raise UserError(f"--head-layer {self.head_layer!r} is not a layer number (0, 1, 2) or 'auto'") from None


def _source(cfg: FinetuneConfig) -> dict[str, Any] | None:
    """The checkpoint payload to start from (None for scratch)."""
    if cfg.init == "scratch":
        return None
    payload = load_checkpoint(cfg.init, map_location="cpu")
    config = payload.get("model_config")
    if not isinstance(config, dict) or config.get("kind") not in ("contrastive", "classifier"):
        raise UserError(f"--from {cfg.init} holds no network to fine-tune: give a pretraining, import-tf or "
                        "fine-tuning checkpoint")
    check_same_encoder(payload, cfg.model, cfg.init)
    return payload


def _resolved(cfg: FinetuneConfig, source: dict[str, Any] | None, labeled: int, pool: int,
              world_size: int = 1) -> FinetuneConfig:
    """Fill in the defaults that depend on the checkpoint and the data (``labeled`` of ``pool``
    training images carry the labels used)."""
    model = cfg.model or source["model_config"]["encoder"]
    trained = (source or {}).get("config") or {}
    image_size = cfg.image_size or trained.get("image_size") or 224
    small = cfg.small_images
    if source is not None:
        small = "on" if source["model_config"].get("small_images") else "off"
    lr = cfg.lr if cfg.lr is not None else default_finetune_lr(model)
    batch = capped_batch(cfg.batch_size, labeled, world_size)
    few_labels = cfg.labels != "all" and labeled < FEW_LABELS_SHARE * pool
    epochs = cfg.epochs if cfg.epochs is not None else (60 if few_labels else 30)
    head_layer = cfg.head_layer if cfg.head_layer is not None else ("0" if cfg.labels == "all" else "1")
    return dataclasses.replace(cfg, model=model, image_size=image_size, small_images=small, lr=lr,
                               batch_size=batch, epochs=epochs, head_layer=head_layer)


def _model_config(cfg: FinetuneConfig, source: dict[str, Any] | None, head_layer: int,
                  num_classes: int) -> dict[str, Any]:
    if source is None:
        return classifier_config(cfg.model, num_classes, head_layer, cfg.uses_small_images())
    return classifier_from(source, head_layer, num_classes)


def train_classifier(cfg: FinetuneConfig, runtime: Runtime, run_dir: RunDir, labeled: ImageSet,
                     holdout: ImageSet | None, source: dict[str, Any] | None, head_layer: int,
                     stage: str = "finetune") -> dict[str, Any]:
    """One fine-tuning (or from-scratch) run into ``run_dir``; its result, with held-out accuracy."""
    model_config = _model_config(cfg, source, head_layer, len(labeled.class_names))
    model = build_model(model_config)
    if source is not None:
        copied = transplant(model, source, cfg.init)
        log.info("%s: %d tensors from %s (encoder and %d head layer(s)), new %d-class classifier", stage,
                 len(copied), cfg.init, head_layer, len(labeled.class_names))
    log.info("%s %s from %s on %d labeled images (%s)", stage, cfg.model,
             "random weights" if source is None else cfg.init, len(labeled), describe_model_size(model))
    model, train_model = prepare_model(model, cfg, runtime, cfg.global_bn)
    loader = Loader(labeled, "train", cfg.resolved_load_size(), cfg.batch_size, runtime, seed=cfg.seed,
                    workers=cfg.workers, cache=cfg.cache, strict=cfg.strict_data)
    optimizer = make_optimizer(cfg, model, no_adapt_prefixes=("classifier.",))
    schedule = make_schedule(cfg, len(loader))
    augment = SimCLRAugment(AugmentConfig.finetune(cfg.image_size, flip=cfg.flip,
                                                   crop_area=(cfg.crop_min_area, 1.0)))

    def step(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = input_view(augment(batch.images, batch.aspect, generator), runtime, cfg)
        logits = train_model(x)
        loss = F.cross_entropy(logits.float(), batch.labels)
        return loss, {"train_top1": (logits.argmax(1) == batch.labels).float().mean()}

    def evaluate_holdout() -> dict[str, Any]:
        if holdout is None:
            return {}
        result: dict[str, Any] = {}
        if runtime.is_main:
            logits, labels = predict_logits(model, holdout, cfg.image_size, runtime, 256, cfg.workers,
                                            cfg.cache, cfg.strict_data)
            metrics = classification_metrics(logits, labels, labeled.class_names)
            result = {"holdout_top1": metrics["top1"], "holdout_top5": metrics["top5"]}
        dist_utils.barrier()
        return result

    def after_epoch(epoch: int) -> dict[str, Any]:
        if cfg.eval_every and epoch % cfg.eval_every == 0 and epoch < cfg.epochs:
            return evaluate_holdout()
        return {}

    write_config(run_dir, cfg, runtime.is_main)
    trainer = Trainer(stage=stage, cfg=cfg, runtime=runtime, model=model, optimizer=optimizer,
                      schedule=schedule, loader=loader, step_fn=step, model_config=model_config,
                      class_names=labeled.class_names, after_epoch=after_epoch, run_dir=run_dir,
                      extra_payload={"source": cfg.init})
    result = trainer.fit()
    result.update(evaluate_holdout())
    result.update({"head_layer": head_layer, "labeled_images": len(labeled), "from": cfg.init,
                   "model": cfg.model})
    if "holdout_top1" in result:
        trainer.metrics.write({"kind": "eval", "stage": stage, "step": trainer.step,
                               "epoch": cfg.epochs, "holdout_top1": result["holdout_top1"]})
    trainer.save_final(result)
    return result


def _search_head_layer(cfg: FinetuneConfig, runtime: Runtime, run_dir: RunDir, labeled: ImageSet,
                       source: dict[str, Any] | None) -> int:
    """Fine-tune once per head layer on part of the labeled images; the layer scoring best on the rest."""
    depth = (source or {}).get("model_config", {}).get("head_layers", 3)
    layers = list(range(depth))  # hiddens[0 .. depth-1]; the 128-d output is not a candidate
    fit_idx, score_idx = holdout_split(labeled.labels, cfg.head_search_fraction, cfg.seed)
    scored_classes = np.unique(labeled.labels[score_idx])
    if len(scored_classes) < len(labeled.class_names):
        raise UserError(f"--head-layer auto needs at least 2 labeled images per class to score the layers "
                        f"(--labels {cfg.labels} gives fewer): use more labels or a fixed --head-layer")
    scores: dict[str, float] = {}
    for j in layers:
        sub = RunDir(run_dir.path / SEARCH_DIR / f"head_layer_{j}")
        if sub.finished:
            result = sub.read_result()
        else:
            sub.prepare("auto" if cfg.resume else None, cfg.overwrite, runtime.is_main)
            sub_cfg = dataclasses.replace(cfg, out=str(sub.path), batch_size=min(cfg.batch_size, len(fit_idx)),
                                          resume="auto" if cfg.resume else None)
            result = train_classifier(sub_cfg, runtime, sub, labeled.subset(fit_idx), labeled.subset(score_idx),
                                      source, j, stage="finetune")
        scores[str(j)] = float(result["holdout_top1"])
        log.info("head layer %d: %.4f top-1 on %d held-out labeled images", j, scores[str(j)], len(score_idx))
    best = max(layers, key=lambda j: (scores[str(j)], -abs(j - 1)))  # ties: closest to the paper's j = 1
    if runtime.is_main:
        record = {"chosen": best, "top1": scores, "fit_images": len(fit_idx), "score_images": len(score_idx)}
        atomic_write_bytes(run_dir.path / f"{SEARCH_DIR}.json", json.dumps(record, indent=2).encode())
    return best


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune (or train from scratch) as configured; returns the result (also in OUT/result.json)."""
    cfg.check()
    runtime = dist_utils.setup(cfg.device)
    run_dir = RunDir(cfg.out)
    source = _source(cfg)
    run_dir.prepare(cfg.resume, cfg.overwrite, runtime.is_main)
    splits: LabeledSplits = open_labeled_splits(cfg, cfg.labels,
                                                run_dir.path / LABELED_LIST if runtime.is_main else None)
    cfg = _resolved(cfg, source, len(splits.labeled), len(splits.labeled) + len(splits.unlabeled),
                    runtime.world_size)
    torch.manual_seed(cfg.seed)
    stage = "finetune" if source is not None else "supervised"
    if cfg.head_layer == "auto":
        head_layer = 0 if source is None else _search_head_layer(cfg, runtime, run_dir, splits.labeled, source)
    else:
        head_layer = int(cfg.head_layer)
    result = train_classifier(cfg, runtime, run_dir, splits.labeled, splits.holdout, source, head_layer, stage)
    log.info("%s done: %s%s", stage, run_dir.path / "model.pt",
             f", held-out top-1 {result['holdout_top1']:.4f}" if "holdout_top1" in result else "")
    return result


__all__ = ["FinetuneConfig", "default_finetune_lr", "finetune", "train_classifier"]
