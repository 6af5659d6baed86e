"""Pieces every stage assembles the same way: data splits, the wrapped model, optimizer, schedule."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist_utils
from ..data import ImageSet, holdout_split, open_images, select_labeled, write_index_list
from ..data.loader import Loader
from ..distributed import Runtime
from ..errors import UserError
from ..optim import build_optimizer, param_groups, scale_learning_rate, warmup_cosine_schedule
from .loop import LoopConfig, use_channels_last

log = logging.getLogger("simclrv2")


def eval_crop_fraction(image_size: int) -> float:
    """The official centre crop keeps 87.5% of the shorter side; small (<= 32 px) images keep all."""
    return 1.0 if image_size <= 32 else 0.875


def capped_batch(requested: int, labeled: int, world_size: int) -> int:
    """The global batch for training on ``labeled`` images: at most all of them, and a multiple
    of the process count (each process takes an equal slice)."""
    batch = min(requested, labeled)
    batch -= batch % world_size
    if batch < world_size:
        raise UserError(f"{labeled} labeled images cannot be split over {world_size} processes: "
                        "label more images or use fewer processes")
    if batch < requested:
        log.info("batch size %d capped at %d (%d labeled images, %d processes)", requested, batch,
                 labeled, world_size)
    return batch


@dataclass
class Splits:
    """Training images and the held-out images evaluation uses (None when there are none)."""

    train: ImageSet
    holdout: ImageSet | None


def open_splits(cfg: LoopConfig, labeled: bool) -> Splits:
    """``--data`` (minus the ``--holdout`` fraction) and ``--eval-data`` or that held-out part.

    The held-out split is stratified and seeded, and never overlaps the training images.
    """
    images = open_images(cfg.data, labeled=labeled)
    if cfg.eval_data:
        return Splits(images, open_images(cfg.eval_data, labeled=True))
    if cfg.holdout > 0:
        train_idx, holdout_idx = holdout_split(images.labels, cfg.holdout, cfg.seed)
        return Splits(images.subset(train_idx), images.subset(holdout_idx))
    return Splits(images, None)


@dataclass
class LabeledSplits:
    """The labeled training subset, the unlabeled rest of the training images, and the held-out images."""

    labeled: ImageSet
    unlabeled: ImageSet
    holdout: ImageSet | None


def open_labeled_splits(cfg: LoopConfig, labels: str, record: Path | None = None) -> LabeledSplits:
    """``--data`` split into held-out images (``--holdout``, or ``--eval-data``) and training images,
    and the ``--labels`` subset of the training images ("all", "1%", "5/class" or a subset file).

    The subset is class-balanced and seeded, never overlaps the held-out images, and is written
    to ``record`` (one file per line, readable back as a subset file).
    """
    images = open_images(cfg.data, labeled=True)
    holdout = open_images(cfg.eval_data, labeled=True) if cfg.eval_data else None
    pool = np.arange(len(images))
    if holdout is None and cfg.holdout > 0:
        pool, held = holdout_split(images.labels, cfg.holdout, cfg.seed)
        holdout = images.subset(held)
    if holdout is not None and holdout.class_names != images.class_names:
        raise UserError(f"--eval-data {cfg.eval_data} has classes {holdout.class_names[:5]}..., --data "
                        f"{cfg.data} has {images.class_names[:5]}...: both need the same class folders")
    if labels == "all":
        chosen = pool[images.labels[pool] >= 0]
    else:
        chosen = select_labeled(images, labels, cfg.seed, pool=pool)
    if len(chosen) == 0:
        raise UserError(f"{cfg.data} has no labeled training images: give it class sub-folders or a "
                        "path,label list")
    if record is not None:
        write_index_list(record, images, chosen)
    rest = np.setdiff1d(pool, chosen)
    return LabeledSplits(images.subset(chosen), images.subset(rest), holdout)


def prepare_model(model: nn.Module, cfg: LoopConfig, runtime: Runtime, global_bn: bool) -> tuple[nn.Module, nn.Module]:
    """Move to the device, then global BN, DDP and torch.compile as configured.

    Returns (model, train_model): the plain module (saved in checkpoints) and the wrapped one
    the training step calls.
    """
    model = model.to(runtime.device)
    if use_channels_last(cfg.channels_last, runtime.device):
        model = model.to(memory_format=torch.channels_last)
    if runtime.distributed and global_bn:
        model = dist_utils.convert_to_global_bn(model, runtime.device)
    train_model: nn.Module = model
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if cfg.compile:
        train_model = torch.compile(train_model)
    return model, train_model


def make_optimizer(cfg: LoopConfig, model: nn.Module, no_adapt_prefixes: tuple[str, ...] = ()) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, no_adapt_prefixes)
    return build_optimizer(cfg.optimizer, groups, lr=0.0, momentum=cfg.momentum)


def make_schedule(cfg: LoopConfig, steps_per_epoch: int) -> np.ndarray:
    """Per-step learning rates: scaled peak, linear warmup, cosine decay to 0."""
    peak = scale_learning_rate(cfg.lr, cfg.batch_size, cfg.lr_scaling)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    return warmup_cosine_schedule(peak, total, warmup)


def input_view(x: torch.Tensor, runtime: Runtime, cfg: LoopConfig) -> torch.Tensor:
    if use_channels_last(cfg.channels_last, runtime.device):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def eval_loader(images: ImageSet, image_size: int, runtime: Runtime, batch_size: int = 256,
                workers: int | None = None, cache: str = "auto", strict: bool = False) -> Loader:
    """Evaluation views (centre crop, no augmentation) of every image, in order, for this process alone."""
    local = Runtime(0, 1, runtime.local_rank, runtime.device)
    return Loader(images, "eval", image_size, min(batch_size, len(images)), local, shuffle=False,
                  drop_last=False, workers=workers, cache=cache, crop_fraction=eval_crop_fraction(image_size),
                  strict=strict)


def stage_eval_loader(images: ImageSet, cfg: LoopConfig, runtime: Runtime) -> Loader:
    """``eval_loader`` with a training stage's settings."""
    return eval_loader(images, cfg.image_size, runtime, 256, cfg.workers, cfg.cache, cfg.strict_data)


@torch.no_grad()
def extract_features(fn, loader: Loader, runtime: Runtime, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn`` applied to every batch of an evaluation loader; (outputs, labels) on the device."""
    outs, labels = [], []
    for batch in loader.epoch(0):
        x = batch.images.float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(fn(x).float())
        labels.append(batch.labels)
    return torch.cat(outs), torch.cat(labels)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN top-1 (cosine similarity, exp(sim / T) votes; Wu et al. 2018, as DINO)."""
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    classes = int(max(bank_labels.max().item(), query_labels.max().item())) + 1
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, queries.shape[0], 1024):
        q = queries[start:start + 1024]
        sims, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], (sims / temperature).exp())
        correct += (votes.argmax(1) == query_labels[start:start + 1024]).sum().item()
    return correct / max(queries.shape[0], 1)
