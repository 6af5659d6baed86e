"""Linear evaluation: a linear classifier on frozen features, the standard measure of a representation.

The encoder (and the kept head layers, hiddens[j], j = 0 by default) is frozen in eval mode,
so that neither its weights nor its BN statistics change, as in the official code; only the
linear layer is trained, with SPEC's settings: Nesterov momentum SGD, lr 0.1 * B / 256,
weight decay 1e-6, no warmup, crop + flip, 90 epochs. The result is an ordinary classifier
checkpoint that ``evaluate``, ``predict`` and ``export`` take.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .. import distributed as dist_utils
from ..augment import AugmentConfig, SimCLRAugment
from ..config import option
from ..data.loader import Batch, Loader
from ..errors import UserError
from ..models import Classifier, build_model
from .evaluate import classification_metrics, predict_logits
from .loop import LoopConfig, RunDir, Trainer, write_config
from .setup import capped_batch, input_view, make_optimizer, make_schedule, open_labeled_splits, prepare_model
from .weights import classifier_from, load_model, transplant

log = logging.getLogger("simclrv2")


class FrozenBackbone:
    """Keeps a classifier's encoder and head layers frozen: no gradients, BN in eval mode.

    ``Classifier.train()`` is called by the training loop every epoch; ``apply`` after it puts
    the backbone back in eval mode (done explicitly in the step, not hidden in ``forward``).
    """

    def __init__(self, model: Classifier):
        self.model = model
        for module in (model.encoder, model.head_layers):
            for p in module.parameters():
                p.requires_grad_(False)

    def apply(self) -> None:
        self.model.encoder.eval()
        self.model.head_layers.eval()


@dataclass
class LinearEvalConfig(LoopConfig):
    """Linear evaluation on frozen features (SPEC: SGD with Nesterov momentum, lr 0.1 * B / 256,
    weight decay 1e-6, 90 epochs; batch 4096, capped at the number of labeled images)."""

    init: str = option("", "checkpoint whose features are evaluated (pretrain, import-tf, fine-tune or "
                       "distill)", required=True, flag="--from")
    labels: str = option("all", "labeled images used: 'all', a percentage, a count per class or a subset file")
    head_layer: int = option(0, "classify hiddens[j] (0: the encoder output)", minimum=0)
    epochs: int = option(90, "training epochs", minimum=1)
    batch_size: int = option(4096, "global batch size, capped at the number of labeled images", minimum=2)
    optimizer: str = option("sgd", "optimizer", choices=("lars", "sgd", "adamw"))
    lr: float = option(0.1, "base learning rate, scaled by --lr-scaling", minimum=0)
    lr_scaling: str = option("linear", "learning-rate scaling: linear (lr*B/256) or sqrt (lr*sqrt(B))",
                             choices=("linear", "sqrt"))
    warmup_epochs: float = option(0.0, "linear warmup epochs before the cosine decay", minimum=0)
    weight_decay: float = option(1e-6, "weight decay of the linear layer", minimum=0)
    image_size: Optional[int] = option(None, "side of the images (default: the checkpoint's run, else 224)",
                                       minimum=8)
    flip: bool = option(True, "random horizontal flips")


def linear_eval(cfg: LinearEvalConfig) -> dict[str, Any]:
    """Train a linear classifier on frozen features; returns the result (also in OUT/result.json)."""
    runtime = dist_utils.setup(cfg.device)
    run_dir = RunDir(cfg.out)
    source_model, source = load_model(cfg.init, purpose="linear evaluation needs a trained network")
    del source_model
    depth = source["model_config"].get("head_layers", 3)
    if cfg.head_layer > depth - 1:
        raise UserError(f"--head-layer {cfg.head_layer} is beyond the projection head of {cfg.init} "
                        f"({depth} layers): use 0 to {depth - 1}")
    run_dir.prepare(cfg.resume, cfg.overwrite, runtime.is_main)
    splits = open_labeled_splits(cfg, cfg.labels, run_dir.path / "labeled.txt" if runtime.is_main else None)
    trained = source.get("config") or {}
    cfg = dataclasses.replace(
        cfg, image_size=cfg.image_size or trained.get("image_size") or 224,
        small_images="on" if source["model_config"].get("small_images") else "off",
        batch_size=capped_batch(cfg.batch_size, len(splits.labeled), runtime.world_size))
    torch.manual_seed(cfg.seed)
    model_config = classifier_from(source, cfg.head_layer, len(splits.labeled.class_names))
    model = build_model(model_config)
    transplant(model, source, cfg.init)
    frozen = FrozenBackbone(model)
    model, train_model = prepare_model(model, cfg, runtime, global_bn=False)
    loader = Loader(splits.labeled, "train", cfg.resolved_load_size(), cfg.batch_size, runtime, seed=cfg.seed,
                    workers=cfg.workers, cache=cfg.cache, strict=cfg.strict_data)
    optimizer = make_optimizer(cfg, model, no_adapt_prefixes=("classifier.",))
    schedule = make_schedule(cfg, len(loader))
    augment = SimCLRAugment(AugmentConfig.finetune(cfg.image_size, flip=cfg.flip))

    def step(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        frozen.apply()
        x = input_view(augment(batch.images, batch.aspect, generator), runtime, cfg)
        logits = train_model(x)
        loss = F.cross_entropy(logits.float(), batch.labels)
        return loss, {"train_top1": (logits.argmax(1) == batch.labels).float().mean()}

    write_config(run_dir, cfg, runtime.is_main)
    trainer = Trainer(stage="linear-eval", cfg=cfg, runtime=runtime, model=model, optimizer=optimizer,
                      schedule=schedule, loader=loader, step_fn=step, model_config=model_config,
                      class_names=splits.labeled.class_names, run_dir=run_dir, extra_payload={"source": cfg.init})
    result = trainer.fit()
    if splits.holdout is not None and runtime.is_main:
        logits, labels = predict_logits(model, splits.holdout, cfg.image_size, runtime, 256, cfg.workers,
                                        cfg.cache, cfg.strict_data)
        metrics = classification_metrics(logits, labels, splits.labeled.class_names)
        result.update({"holdout_top1": metrics["top1"], "holdout_top5": metrics["top5"]})
    result.update({"head_layer": cfg.head_layer, "labeled_images": len(splits.labeled), "from": cfg.init})
    trainer.save_final(result)
    log.info("linear evaluation done: %s", {k: v for k, v in result.items() if "top" in k})
    return result
