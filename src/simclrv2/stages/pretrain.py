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
from torch import nn

from ..augment import AugmentConfig, SimCLRAugment
from ..config import StageConfig, option
from ..data.loader import Batch
from ..data.splits import Splits, open_splits
from ..distributed import Runtime
from ..errors import UserError
from ..losses import NTXentLoss
from ..memory import MemoryQueue, MomentumEncoder
from ..metrics import eval_loader, extract_features, knn_accuracy
from ..models import build_model, contrastive_config, count_parameters, parse_model_name
from ..optim import param_groups, scale_learning_rate
from ..record import Record
from ..engine.placement import input_layout, prepare_model, use_channels_last
from ..engine.stage import Parts, TrainStep

log = logging.getLogger("simclrv2")

MONITOR_LR = 0.1  # per 256 images, linear scaling: the linear-evaluation rate of SPEC


@dataclass
class PretrainConfig(StageConfig):
    """Contrastive pretraining. Defaults follow the paper's SimCLRv2 recipe (SPEC) except the
    batch size, epochs and warmup (512, 100 and 10 epochs, the official code's defaults; the
    paper used 4096, 800 and 5% of the epochs: see configs/imagenet_pretrain.yaml)."""

    model: str = option("r50_1x_sk1", "encoder, r{depth}_{width}x_sk{0|1} (see `simclrv2 models`)")
    temperature: float = option(0.1, "NT-Xent temperature", minimum=0, exclusive_minimum=True)
    head_layers: int = option(3, "projection head layers", minimum=1)
    head_hidden_dim: Optional[int] = option(None, "projection head width (default: the encoder's)", minimum=1)
    head_out_dim: int = option(128, "projection output dimension", minimum=1)
    color_strength: Optional[float] = option(None, "colour jitter strength s (default: 1.0, or 0.5 at <= 32 px)",
                                             minimum=0)
    blur: str = option("auto", "Gaussian blur with p 0.5 (auto: on above 32 px)", choices=("auto", "on", "off"))
    memory: int = option(0, "memory-queue negatives from a momentum encoder (paper: 65536; 0: off)", minimum=0)
    memory_momentum: float = option(0.999, "EMA decay of the momentum encoder", minimum=0, maximum=1)
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


class ContrastiveStep(TrainStep):
    """Two views per image, one forward pass, NT-Xent (+ the memory queue, + the monitor's CE).

    With a memory queue, the momentum encoder embeds the same views; its keys enter the queue
    after the optimizer step (the loss of this step still contrasts with the old queue).
    """

    def __init__(self, model: nn.Module, net: nn.Module, augment: SimCLRAugment, criterion: NTXentLoss,
                 channels_last: bool = False, momentum: MomentumEncoder | None = None,
                 queue: MemoryQueue | None = None):
        self.model, self.net, self.augment, self.criterion = model, net, augment, criterion
        self.channels_last = channels_last
        self.momentum, self.queue = momentum, queue
        self._keys: torch.Tensor | None = None

    def __call__(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch.images.shape[0]
        views = torch.cat([self.augment(batch.images, batch.aspect, generator),
                           self.augment(batch.images, batch.aspect, generator)])
        views = input_layout(views, self.channels_last)
        z, monitor_logits = self.net(views)
        loss = self.criterion(z[:n], z[n:], self.queue.keys if self.queue is not None else None)
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
        if self.momentum is not None:
            self._keys = self.momentum(views)
        return loss, logs

    def after_update(self) -> None:
        if self.momentum is not None:
            self.momentum.update(self.model)
            self.queue.enqueue(self._keys)
            self._keys = None

    def state_dict(self) -> dict[str, Any]:
        if self.momentum is None:
            return {}
        return {"momentum_encoder": self.momentum.state_dict(), "queue": self.queue.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.momentum is not None:
            self.momentum.load_state_dict(state["momentum_encoder"])
            self.queue.load_state_dict(state["queue"])


def build(cfg: PretrainConfig, runtime: Runtime) -> Parts:
    return contrastive_parts(cfg, runtime, open_splits(cfg, labeled=False))


def contrastive_parts(cfg: PretrainConfig, runtime: Runtime, splits: Splits) -> Parts:
    """Pretraining on ``splits.train`` (kNN-monitored on ``splits.holdout`` when it has labels)."""
    train = splits.train
    if cfg.batch_size > len(train):
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images: "
                        "lower it")
    monitor_classes = len(train.class_names) if cfg.linear_monitor and (train.labels >= 0).any() else 0
    model_config = contrastive_config(cfg.model, cfg.uses_small_images(), cfg.head_hidden_dim,
                                      cfg.head_out_dim, cfg.head_layers, monitor_classes)
    model = build_model(model_config)
    log.info("pretraining %s (%.2fM parameters) on %d images of %s", cfg.model, count_parameters(model) / 1e6,
             len(train), cfg.data)
    model, net = prepare_model(model, cfg, runtime, cfg.global_bn)
    groups = param_groups(model, cfg.weight_decay, no_adapt_prefixes=("monitor.",))
    # The monitoring head is exempt from the LARS trust ratio, as the official head_supervised.
    # At the peak rates of sqrt scaling plain SGD on it diverges, so its rate follows the same
    # schedule scaled to the linear-evaluation peak (MONITOR_LR * B / 256).
    for group in groups:
        if group["name"].startswith("head_"):
            group["peak_lr"] = scale_learning_rate(MONITOR_LR, cfg.batch_size, "linear")
    momentum = queue = None
    if cfg.memory:
        momentum = MomentumEncoder(model, cfg.memory_momentum).to(runtime.device)
        queue = MemoryQueue(cfg.memory, cfg.head_out_dim, seed=cfg.seed).to(runtime.device)
    channels_last = use_channels_last(cfg.channels_last, runtime.device)
    step = ContrastiveStep(model, net, SimCLRAugment(cfg.augment_config()), NTXentLoss(cfg.temperature),
                           channels_last, momentum, queue)

    evaluate = None
    if cfg.knn_monitor and splits.holdout is not None and (train.labels >= 0).all():
        loaders = []

        def evaluate() -> dict[str, Any]:
            if not loaders:  # built on first use: the main process alone evaluates
                loaders.extend(eval_loader(s, cfg.image_size, runtime, 256, cfg.workers, cfg.cache, cfg.strict_data)
                               for s in (train, splits.holdout))
            model.eval()
            bank, bank_labels = extract_features(model.encoder, loaders[0], channels_last)
            queries, query_labels = extract_features(model.encoder, loaders[1], channels_last)
            return {"knn_top1": knn_accuracy(bank, bank_labels, queries, query_labels, cfg.knn_k)}

    record = Record("pretrain", model_config, cfg.image_size, train.class_names or None)
    return Parts(cfg, record, model, step, train, groups, evaluate, eval_every=1)
