"""Batch-norm recalibration after the last step (``--recalibrate-bn N``, PreciseBN): the moving
averages replaced by the mean batch statistics of training views of up to N training images."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ..config import StageConfig
from ..data import ImageSet
from ..data.loader import Loader, worker_crops
from ..distributed import Runtime
from .stage import TrainStep

log = logging.getLogger("simclrv2")


def recalibrate_bn(step: TrainStep, images: ImageSet, cfg: StageConfig, runtime: Runtime, stage: str) -> int:
    """Re-estimate the batch-norm statistics of ``step.model`` on the step's own training views (its
    augmentation) of up to ``cfg.recalibrate_bn`` of ``images`` (``models.batchnorm.recalibrate``); returns how
    many images.

    Every process takes an equal share, in batches of its training batch, so that global batch norm
    sees batches like those it trained on and all processes run the same number of batches."""
    from ..models.batchnorm import recalibrate

    count = min(len(images), cfg.recalibrate_bn) // runtime.world_size * runtime.world_size
    if count < runtime.world_size:
        return 0
    chosen = np.sort(np.random.default_rng([5, cfg.seed]).permutation(len(images))[:count])
    share = count // runtime.world_size
    mine = images.subset(chosen[runtime.rank * share:(runtime.rank + 1) * share])
    batch = max(1, min(cfg.micro_batch or cfg.batch_size // runtime.world_size, share))
    alone = Runtime(0, 1, runtime.local_rank, runtime.device)
    # the crops where training takes them: in the workers, or on the device for data training caches whole
    load_size = cfg.resolved_load_size()
    crops = worker_crops(images, load_size, cfg.cache, step.crops)
    loader = Loader(mine, "train", load_size, batch, alone, seed=cfg.seed, shuffle=False,
                    drop_last=False, workers=cfg.workers, cache="off", strict=cfg.strict_data, crops=crops)
    generator = torch.Generator(device=runtime.device).manual_seed(cfg.seed + 7919 * (runtime.rank + 1))
    started = time.perf_counter()
    n = recalibrate(step.model, (step.views(b, generator) for b in loader.epoch(0)))
    step.train()
    log.info("%s: batch-norm statistics re-estimated on %d images (%d batches, %.1f s)", stage, count, n,
             time.perf_counter() - started)
    return count
