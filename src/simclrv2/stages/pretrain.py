"""Step 1 of SimCLRv2: task-agnostic contrastive pretraining on unlabeled images.

Two augmented views of every image go through the encoder and the 3-layer projection head in
one forward pass (BN statistics over both views, global across processes); the NT-Xent loss
contrasts each view with every other image of the global batch, and with the memory queue when
``--memory K`` is set. Optional monitors: a linear classifier on stop-gradient encoder features
(trained alongside when the images have labels) and a kNN accuracy on held-out images after
every epoch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import SimCLRAugment
from ..data import ImageSet
from ..data.loader import Batch
from ..data.splits import Splits, open_splits
from ..distributed import Runtime, no_sync
from ..errors import UserError
from ..losses import NTXentLoss, at_least_float32
from ..memory import MemoryQueue, MomentumEncoder
from ..metrics import eval_loader, extract_shared, knn_accuracy, own_share
from ..models import build_model, contrastive_config, count_parameters
from ..models.batchnorm import frozen_running_stats
from ..models.checkpoints import Trained, check_same_encoder, continue_from, read_trained
from ..optim import param_groups, scale_learning_rate
from ..record import Record
from ..engine.placement import autocast, prepare_model
from ..engine.stage import Parts, StepSettings, TrainStep
from .configs import PretrainConfig

log = logging.getLogger("simclrv2")

MONITOR_LR = 0.1  # per 256 images, linear scaling: the linear-evaluation rate of SPEC
# The kNN monitor's bank and queries: every image of a small data set, a fixed sample of a large one
# (on ImageNet the whole training set would take the main process minutes an epoch while the others wait).
KNN_BANK = 100_000
KNN_QUERIES = 20_000


class ContrastiveStep(TrainStep):
    """Two views per image, one forward pass, NT-Xent (+ the memory queue, + the monitor's CE).

    With a memory queue, the momentum encoder embeds the same views; its keys enter the queue
    after the optimizer step (the loss of this step still contrasts with the old queue).

    ``micro_batch`` M: gradient caching (Gao et al., "Scaling Deep Contrastive Learning Batch Size
    under Memory Limited Setup", 2021). The views of M images at a time are embedded without
    keeping activations; the loss and its gradient with respect to the embeddings are computed on
    the whole batch (every image keeps all 2N - 2 negatives); then each micro-batch runs again with
    autograd and back-propagates its slice of that gradient. Augmentation is drawn per micro-batch
    and replayed from the saved generator state in the second pass (both passes see the same views,
    and no view of the whole batch is held). Memory is that of one micro-batch, compute about 4/3 of
    the plain step. Batch norm normalises each micro-batch with its own statistics (ghost BN) and
    records them once, in the second pass.
    """

    views_per_image = 2

    def __init__(self, model: nn.Module, net: nn.Module, augment: SimCLRAugment, criterion: NTXentLoss,
                 settings: StepSettings, momentum: MomentumEncoder | None = None, queue: MemoryQueue | None = None):
        super().__init__(model, net, settings)
        self.augment, self.criterion = augment, criterion
        self.momentum, self.queue = momentum, queue
        self._keys: torch.Tensor | None = None

    def modules(self) -> dict[str, nn.Module]:
        extra = {"momentum": self.momentum, "queue": self.queue} if self.momentum is not None else {}
        return {**super().modules(), **extra}

    def __call__(self, batch: Batch, generator: torch.Generator,
                 index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        queue = self.queue.keys if self.queue is not None else None
        if self.micro_batch is not None:
            return self._cached(batch, generator, queue)
        n = batch.images.shape[0]
        views = self.inputs(batch, generator)
        z, monitor_logits = self.net(views)
        loss = self.criterion(z[:n], z[n:], queue)
        logs = {"contrastive_loss": loss.detach()}
        if monitor_logits is not None:
            labels = torch.cat([batch.labels, batch.labels])
            ce, logs["monitor_top1"] = monitor_terms(monitor_logits, labels, (labels >= 0).sum().clamp_min(1))
            loss = loss + ce
            logs["monitor_loss"] = ce.detach()
        if self.momentum is not None:
            self._keys = self.momentum(views)
        return loss, logs

    def views(self, batch: Batch, generator: torch.Generator) -> torch.Tensor:
        return self._views(batch, generator, slice(0, batch.images.shape[0]))

    def _views(self, batch: Batch, generator: torch.Generator, rows: slice) -> torch.Tensor:
        """Both augmented views of the images ``rows`` (view 1 of every image, then view 2)."""
        images, sizes = batch.images[rows], batch.sizes[rows]
        return self.layout(torch.cat([self.augment(images, sizes, generator, view=0),
                                      self.augment(images, sizes, generator, view=1)]))

    def _cached(self, batch: Batch, generator: torch.Generator,
                queue: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The gradient-caching step (see the class docstring); returns the loss, gradients are set."""
        m, labels = self.micro_batch, batch.labels
        parts = [slice(i, i + m) for i in range(0, labels.shape[0], m)]
        states, zs, keys = [], [], []
        with torch.no_grad(), frozen_running_stats(self.model):
            for rows in parts:
                states.append(generator.get_state())
                views = self._views(batch, generator, rows)
                zs.append(self.net(views)[0])
                if self.momentum is not None:
                    keys.append(self.momentum(views))
        z1 = torch.cat([z[:m] for z in zs]).requires_grad_()
        z2 = torch.cat([z[m:] for z in zs]).requires_grad_()
        loss = self.criterion(z1, z2, queue)
        g1, g2 = torch.autograd.grad(loss, [z1, z2])
        logs = {"contrastive_loss": loss.detach()}
        count = 2 * (labels >= 0).sum().clamp_min(1)  # labeled views of the whole batch
        for k, (rows, state) in enumerate(zip(parts, states)):
            generator.set_state(state)
            with no_sync(self.net, last=k == len(parts) - 1):
                z, monitor_logits = self.net(self._views(batch, generator, rows))
                surrogate = (z * torch.cat([g1[rows], g2[rows]]).to(z.dtype)).sum()
                if monitor_logits is not None:
                    ce, top1 = monitor_terms(monitor_logits, torch.cat([labels[rows]] * 2), count)
                    surrogate = surrogate + ce
                    logs["monitor_loss"] = logs.get("monitor_loss", 0) + ce.detach()
                    logs["monitor_top1"] = logs.get("monitor_top1", 0) + top1
                surrogate.backward()
        if self.momentum is not None:
            self._keys = torch.cat(keys)
        return loss.detach() + logs.get("monitor_loss", 0), logs

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


def monitor_terms(logits: torch.Tensor, labels: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The monitor's cross-entropy and correct predictions on the labeled views (label >= 0), each
    summed and divided by ``count``, the labeled views of the whole batch."""
    known = labels >= 0
    ce = F.cross_entropy(at_least_float32(logits), labels.clamp_min(0), reduction="none")
    return (ce * known).sum() / count, ((logits.argmax(1) == labels) & known).sum() / count


def few_negatives(cfg: PretrainConfig) -> list[str]:
    """The warning for a batch too small for NT-Xent's negatives (without a memory queue), if it applies."""
    if cfg.batch_size >= 128 or cfg.memory:
        return []
    return [f"--batch-size {cfg.batch_size}: NT-Xent sees {2 * cfg.batch_size - 2} negatives per image "
            "(the paper: 8190); use a larger batch (--micro-batch keeps the memory of a small one) or "
            "a memory queue (--memory)"]


def build(cfg: PretrainConfig, runtime: Runtime, settings: StepSettings) -> Parts:
    source = None
    if cfg.init != "scratch":
        source = read_trained(cfg.init)
        cfg = continued(cfg, source)
    return contrastive_parts(cfg, runtime, settings, open_splits(cfg, labeled=False), source)


def continued(cfg: PretrainConfig, source: Trained) -> PretrainConfig:
    """``cfg`` with the network of the checkpoint that pretraining continues from (``--from``)."""
    record = source.record
    if record.kind != "contrastive":
        raise UserError(f"--from {cfg.init} holds a classifier, not a contrastive model (encoder + projection "
                        "head): continue pretraining from a pretrain or import-tf checkpoint, or from official:<model> "
                        "without /finetuned_*")
    default_model = next(f.default for f in dataclasses.fields(PretrainConfig) if f.name == "model")
    if cfg.model != default_model:
        check_same_encoder(record, cfg.model, cfg.init)
    mc = record.model_config
    return dataclasses.replace(cfg, model=record.encoder, small_images="on" if record.small_images else "off",
                               head_layers=record.head_layers, head_hidden_dim=mc.get("head_hidden_dim"),
                               head_out_dim=mc.get("head_out_dim", 128))


def contrastive_parts(cfg: PretrainConfig, runtime: Runtime, settings: StepSettings, splits: Splits,
                      source: Trained | None = None) -> Parts:
    """Pretraining on ``splits.train`` (kNN-monitored on ``splits.holdout`` when it has labels), from
    random weights or from ``source``'s encoder and projection head."""
    train = splits.train
    if cfg.batch_size > len(train):
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images: "
                        "lower it")
    monitor_classes = len(train.class_names) if cfg.linear_monitor and (train.labels >= 0).any() else 0
    model_config = contrastive_config(cfg.model, cfg.uses_small_images(), cfg.head_hidden_dim,
                                      cfg.head_out_dim, cfg.head_layers, monitor_classes)
    model = build_model(model_config)
    if source is not None:
        continue_from(model, source)
    log.info("pretraining %s (%.2fM parameters, from %s) on %d images of %s", cfg.model, count_parameters(model) / 1e6,
             "random weights" if source is None else cfg.init, len(train), cfg.data)
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
    step = ContrastiveStep(model, net, SimCLRAugment(cfg.augment_config()), NTXentLoss(cfg.temperature),
                           settings, momentum, queue)

    evaluate = None
    if cfg.knn_monitor and splits.holdout is not None and (train.labels >= 0).all():
        # a fixed sample of a large data set; every process embeds its share (in the training precision: on
        # ImageNet the monitor embeds 120,000 images an epoch), and every process gets all the features
        shares = [own_share(at_most(s, n, cfg.seed), runtime)
                  for s, n in ((train, KNN_BANK), (splits.holdout, KNN_QUERIES))]
        loaders = []

        def evaluate() -> dict[str, Any]:
            if not loaders:  # built on first use, then kept (their image cache, their workers)
                loaders.extend(eval_loader(mine, cfg.image_size, runtime, 256, cfg.workers, cfg.cache, cfg.strict_data)
                               for mine, _ in shares)
            model.eval()
            with autocast(runtime.device, settings.precision):
                bank, bank_labels = extract_shared(model.encoder, loaders[0], shares[0][1], settings.channels_last)
                queries, query_labels = extract_shared(model.encoder, loaders[1], shares[1][1], settings.channels_last)
            return {"knn_top1": knn_accuracy(bank, bank_labels, queries, query_labels, cfg.knn_k)}

    record = Record("pretrain", model_config, cfg.image_size, train.class_names or None,
                    None if source is None else cfg.init)
    return Parts(cfg, record, model, step, train, groups, evaluate, eval_every=cfg.knn_every,
                 evaluate_everywhere=True, warnings=few_negatives(cfg))


def at_most(images: ImageSet, count: int, seed: int) -> ImageSet:
    """``images``, or a fixed random ``count`` of them (sorted) when there are more."""
    if len(images) <= count:
        return images
    return images.subset(np.sort(np.random.default_rng([11, seed]).choice(len(images), count, replace=False)))
