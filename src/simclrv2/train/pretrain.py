"""Step 1 of SimCLRv2: task-agnostic contrastive pretraining on unlabeled images.

Two augmented views of every image go through the encoder and the 3-layer projection head in
one forward pass (BN statistics over both views, global across processes); the NT-Xent loss
contrasts each view with every other image of the global batch, and with the memory queue when
``--memory K`` is set. Optional monitors: a linear classifier on stop-gradient encoder features
(trained alongside when the images have labels) and a kNN accuracy on held-out images after
every epoch.
"""

from __future__ import annotations

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
from ..losses import NTXentLoss
from ..memory import MemoryQueue, MomentumEncoder
from ..optim import scale_learning_rate
from ..models import build_model, contrastive_config, parse_model_name
from .loop import LoopConfig, RunDir, Trainer, describe_model_size, use_channels_last, write_config
from .setup import (
    extract_features,
    input_view,
    knn_accuracy,
    make_optimizer,
    make_schedule,
    open_splits,
    prepare_model,
    stage_eval_loader,
)

log = logging.getLogger("simclrv2")

MONITOR_LR = 0.1  # per 256 images, linear scaling: the linear-evaluation rate of SPEC


@dataclass
class PretrainConfig(LoopConfig):
    """Contrastive pretraining. Defaults follow the paper's SimCLRv2 recipe (SPEC) except the
    batch size, epochs and warmup (512, 100 and 10 epochs, the official code's defaults; the
    paper used 4096, 800 and 5% of the epochs: see configs/imagenet_pretrain.yaml)."""

    model: str = option("r50_1x_sk1", "encoder, r{depth}_{width}x_sk{0|1} (see `simclrv2 models`)")
    temperature: float = option(0.1, "NT-Xent temperature", minimum=0, exclusive_minimum=True)
    head_layers: int = option(3, "projection head layers", minimum=1)
    head_hidden_dim: Optional[int] = option(None, "projection head width (default: the encoder's)", minimum=1)
    head_out_dim: int = option(128, "projection output dimension", minimum=1)
    color_strength: Optional[float] = option(None, "colour jitter strength s (default 1.0; 0.5 at <= 32 px)",
                                             minimum=0)
    blur: str = option("auto", "Gaussian blur with p 0.5 (auto: on above 32 px)", choices=("auto", "on", "off"))
    crop_min_area: float = option(0.08, "smallest random-crop area fraction", minimum=0.01, maximum=1.0)
    flip: bool = option(True, "random horizontal flips")
    memory: int = option(0, "memory-queue negatives from a momentum encoder (paper: 65536; 0: off)", minimum=0)
    memory_momentum: float = option(0.999, "EMA decay of the momentum encoder", minimum=0, maximum=1)
    global_bn: bool = option(True, "BN statistics over the global batch when distributed")
    linear_monitor: bool = option(True, "train a linear classifier on stop-gradient features when the "
                                  "images have labels (the official 'linear eval while pretraining')")
    knn_monitor: bool = option(True, "kNN accuracy on the held-out images after every epoch")
    knn_k: int = option(20, "neighbours of the kNN monitor", minimum=1)

    def check(self) -> None:
        parse_model_name(self.model)

    def augment_config(self) -> AugmentConfig:
        base = AugmentConfig.pretrain(self.image_size)
        blur_p = {"on": 0.5, "off": 0.0}.get(self.blur, base.blur_p)
        return base.replace(color_strength=self.color_strength, blur_p=blur_p,
                            crop_area=(self.crop_min_area, 1.0), flip=self.flip)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run contrastive pretraining as configured; returns the result (also in OUT/result.json)."""
    runtime = dist_utils.setup(cfg.device)
    run_dir = RunDir(cfg.out)
    run_dir.prepare(cfg.resume, cfg.overwrite, runtime.is_main)
    torch.manual_seed(cfg.seed)
    splits = open_splits(cfg, labeled=False)
    train = splits.train
    monitor_classes = len(train.class_names) if cfg.linear_monitor and (train.labels >= 0).any() else 0
    model_config = contrastive_config(cfg.model, cfg.uses_small_images(), cfg.head_hidden_dim,
                                      cfg.head_out_dim, cfg.head_layers, monitor_classes)
    model = build_model(model_config)
    log.info("pretraining %s (%s) on %d images of %s", cfg.model, describe_model_size(model), len(train),
             cfg.data)
    if cfg.batch_size > len(train):
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images: "
                        "lower it")
    model, train_model = prepare_model(model, cfg, runtime, cfg.global_bn)
    loader = Loader(train, "train", cfg.resolved_load_size(), cfg.batch_size, runtime, seed=cfg.seed,
                    workers=cfg.workers, cache=cfg.cache, strict=cfg.strict_data)
    optimizer = make_optimizer(cfg, model, no_adapt_prefixes=("monitor.",))
    schedule = make_schedule(cfg, len(loader))
    # The monitoring head is exempt from the LARS trust ratio, as the official head_supervised.
    # At the peak rates of sqrt scaling plain SGD on it diverges, so its rate follows the same
    # schedule scaled to the linear-evaluation peak (MONITOR_LR * B / 256).
    monitor_scale = scale_learning_rate(MONITOR_LR, cfg.batch_size, "linear") / max(float(schedule.max()), 1e-12)
    for group in optimizer.param_groups:
        if group["name"].startswith("head_"):
            group["lr_scale"] = monitor_scale
    augment = SimCLRAugment(cfg.augment_config())
    criterion = NTXentLoss(cfg.temperature)

    state: dict[str, Any] = {}
    momentum = queue = None
    if cfg.memory:
        momentum = MomentumEncoder(model, cfg.memory_momentum).to(runtime.device)
        queue = MemoryQueue(cfg.memory, cfg.head_out_dim, seed=cfg.seed).to(runtime.device)
        state = {"momentum_encoder": momentum, "queue": queue}
    pending: list[torch.Tensor] = []

    def step(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch.images.shape[0]
        views = torch.cat([augment(batch.images, batch.aspect, generator),
                           augment(batch.images, batch.aspect, generator)])
        views = input_view(views, runtime, cfg)
        z, monitor_logits = train_model(views)
        loss = criterion(z[:n], z[n:], queue.keys if queue is not None else None)
        logs = {"contrastive_loss": loss.detach()}
        if monitor_logits is not None:
            labels = torch.cat([batch.labels, batch.labels])
            known = labels >= 0
            count = known.sum().clamp_min(1)
            ce = F.cross_entropy(monitor_logits.float(), labels.clamp_min(0), reduction="none")
            ce = (ce * known).sum() / count
            loss = loss + ce
            logs["monitor_loss"] = ce.detach()
            logs["monitor_top1"] = ((monitor_logits.argmax(1) == labels) & known).sum() / count
        if momentum is not None:
            pending[:] = [momentum(views)]  # enqueued after the update: the loss still needs the queue
        return loss, logs

    def after_step() -> None:
        if momentum is not None:
            momentum.update(model)
            queue.enqueue(pending.pop())
            pending.clear()

    knn_loaders: list[Loader] = []
    channels_last = use_channels_last(cfg.channels_last, runtime.device)

    def after_epoch(epoch: int) -> dict[str, Any]:
        if not (cfg.knn_monitor and splits.holdout is not None and (train.labels >= 0).all()):
            return {}
        result: dict[str, Any] = {}
        if runtime.is_main:
            if not knn_loaders:
                knn_loaders.extend([stage_eval_loader(train, cfg, runtime), stage_eval_loader(splits.holdout, cfg, runtime)])
            model.eval()
            bank, bank_labels = extract_features(model.encoder, knn_loaders[0], runtime, channels_last)
            queries, query_labels = extract_features(model.encoder, knn_loaders[1], runtime, channels_last)
            result["knn_top1"] = knn_accuracy(bank, bank_labels, queries, query_labels, cfg.knn_k)
        dist_utils.barrier()
        return result

    write_config(run_dir, cfg, runtime.is_main)
    trainer = Trainer(stage="pretrain", cfg=cfg, runtime=runtime, model=model, optimizer=optimizer,
                      schedule=schedule, loader=loader, step_fn=step, model_config=model_config,
                      class_names=train.class_names or None, state=state, after_step=after_step,
                      after_epoch=after_epoch, run_dir=run_dir)
    result = trainer.fit()
    path = trainer.save_final(result)
    log.info("pretraining done: %s", path)
    return result
