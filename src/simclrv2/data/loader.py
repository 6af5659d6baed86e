"""From an ImageSet to batches of uint8 tensors on the training device.

Decoding and resizing happen in DataLoader worker processes (or once, into an in-memory cache,
for datasets small enough, kept on the GPU when training there); the device receives uint8 tensors and does the augmentation itself
(``simclrv2.augment``). Two preprocessing modes:

- ``train``: the whole image squashed to ``load_size`` x ``load_size``, with its original aspect
  ratio alongside, so the device-side random crop can be drawn in the original geometry.
- ``eval``: the official evaluation view, a centre crop of ``crop_fraction`` of the shorter side
  (aspect preserved) resized to ``size`` x ``size`` (bicubic).

Batches follow a seeded per-epoch permutation split into *global* batches (every process gets
its own slice of each global batch, so no image appears twice in one), and an epoch can start
at any batch: a resumed run sees exactly the batches an uninterrupted one would.

Unreadable images (corrupt, truncated, not an image) are replaced by a readable one (up to 16
tries, then, in training, by a copy of a readable image of the same batch: a training batch keeps
its size on every process) and reported once each by the caller; with ``strict`` the first one is
an error.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..distributed import Runtime
from ..errors import UserError
from .images import BadImage
from .sources import ImageSet

log = logging.getLogger(__name__)

# Datasets whose preprocessed uint8 pixels fit in this budget are decoded once and kept in memory.
CACHE_BYTES = 2 << 30
MAX_SUBSTITUTES = 16


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """Worker processes for decoding: all cores but one, at most 8 per process."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, usable_cores() // max(local, 1) - 1))


def worker_count(workers: int | None) -> int:
    """``--workers`` as asked, at most the cores this process may use (more only wait for a core, and
    thousands of processes exhaust memory and file handles); None: ``default_workers``."""
    if workers is None:
        return default_workers()
    cores = usable_cores()
    if workers > cores:
        if workers not in _WARNED:
            _WARNED.add(workers)
            log.warning("--workers %d is more than the %d cores this process may use: using %d", workers, cores, cores)
        return cores
    return max(0, workers)


_WARNED: set[int] = set()


def preprocess(array: np.ndarray, mode: str, size: int, crop_fraction: float) -> tuple[np.ndarray, float]:
    """uint8 (H, W, 3) -> uint8 (3, size, size) and the original width / height."""
    height, width = array.shape[:2]
    image = Image.fromarray(array)
    if mode == "eval" and crop_fraction < 1.0:
        side = crop_fraction * min(height, width)
        crop_h, crop_w = int(round(side)), int(round(side))
        top = (height - crop_h + 1) // 2
        left = (width - crop_w + 1) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    elif mode == "eval":
        # No crop: centre the largest square, as the crop-free official eval of square inputs.
        side = min(height, width)
        top, left = (height - side + 1) // 2, (width - side + 1) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    out = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    return np.ascontiguousarray(out), (width / height if mode == "train" else 1.0)


def needed_side(mode: str, size: int, crop_fraction: float) -> int:
    """The shorter side a decoded image needs so that ``preprocess`` only ever shrinks it: the load size
    (train: the whole image is squashed to it), or the size over the centre-crop fraction (eval)."""
    return size if mode == "train" else int(np.ceil(size / min(crop_fraction, 1.0)))


class ImageDataset(Dataset):
    """Item i of an ImageSet, decoded and preprocessed; see the module docstring for ``mode``."""

    def __init__(self, images: ImageSet, mode: str, size: int, crop_fraction: float = 0.875,
                 strict: bool = False, substitute: bool = True):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        self.images, self.mode, self.size = images, mode, size
        self.crop_fraction, self.strict, self.substitute = crop_fraction, strict, substitute

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        skipped: list[str] = []
        n = len(self.images)
        for attempt in range(MAX_SUBSTITUTES if self.substitute else 1):
            j = (i + attempt * 7919) % n  # a large step: the substitute is rarely in the same batch
            try:
                array = self.images.load(j, needed_side(self.mode, self.size, self.crop_fraction))
            except BadImage as exc:
                skipped.append(str(exc))
                if self.strict:
                    break
                continue
            pixels, aspect = preprocess(array, self.mode, self.size, self.crop_fraction)
            return {"image": torch.from_numpy(pixels), "aspect": aspect,
                    "label": int(self.images.labels[j]), "index": j, "skipped": skipped, "ok": True}
        return {"image": None, "aspect": 1.0, "label": -1, "index": i, "skipped": skipped, "ok": False}


def collate(items: list[dict], full: bool = False) -> dict:
    """One batch of ``ImageDataset`` items; the unreadable ones (no readable substitute either) are left
    out, or with ``full`` replaced by copies of readable images of the same batch, so that the batch keeps
    its size: every process of a distributed step must contribute the same number of images to the
    collectives (NT-Xent's gather, global batch norm)."""
    good = [it for it in items if it["ok"]]
    if full and good and len(good) < len(items):
        good = good + [good[k % len(good)] for k in range(len(items) - len(good))]
    batch = {
        "skipped": [msg for it in items for msg in it["skipped"]],
        "failed": [it["index"] for it in items if not it["ok"]],
    }
    if good:
        batch.update(
            images=torch.stack([it["image"] for it in good]),
            aspect=torch.tensor([it["aspect"] for it in good], dtype=torch.float32),
            labels=torch.tensor([it["label"] for it in good], dtype=torch.long),
            indices=torch.tensor([it["index"] for it in good], dtype=torch.long),
        )
    return batch


@dataclass
class Batch:
    """One process's share of a global batch, on the training device."""

    images: torch.Tensor  # uint8 (N, 3, S, S)
    aspect: torch.Tensor  # float32 (N,): original width / height (1 in eval mode)
    labels: torch.Tensor  # int64 (N,), -1 where unknown
    indices: torch.Tensor  # int64 (N,): positions in the ImageSet
    views: Optional[torch.Tensor] = None  # the step's augmented inputs, when drawn ahead (``engine.loop``)


class EpochBatchSampler(Sampler):
    """This process's index lists for one epoch, from a given batch on.

    Every epoch draws a permutation seeded by (seed, epoch), cuts it into global batches of
    ``global_batch`` items (the incomplete last one dropped when ``drop_last``), and gives rank r
    the r-th slice of each. ``set_epoch(epoch, start)`` chooses the epoch and the first batch.
    """

    def __init__(self, n: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        if global_batch % world_size:
            raise UserError(f"batch size {global_batch} is not divisible by the {world_size} processes: "
                            "use a multiple of the process count")
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full if self.drop_last or not rest else full + 1

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        local = self.global_batch // self.world_size
        for b in range(self.start, self.batches_per_epoch()):
            chunk = order[b * self.global_batch:(b + 1) * self.global_batch]
            per_rank = -(-len(chunk) // self.world_size) if len(chunk) < self.global_batch else local
            yield chunk[self.rank * per_rank:(self.rank + 1) * per_rank]


@dataclass
class Cache:
    """Preprocessed pixels of a whole ImageSet in memory (bad images left out)."""

    images: torch.Tensor
    aspect: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    skipped: list[str] = field(default_factory=list)


def build_cache(images: ImageSet, mode: str, size: int, crop_fraction: float, workers: int,
                strict: bool) -> Cache:
    """Decode every image once (in parallel workers) into one uint8 tensor."""
    dataset = ImageDataset(images, mode, size, crop_fraction, strict, substitute=False)
    loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=collate)
    parts, skipped = [], []
    for batch in loader:
        skipped.extend(batch["skipped"])
        if strict and batch["skipped"]:
            raise UserError(f"{batch['skipped'][0]} (--strict-data stops at bad images; remove the file "
                            "or leave out --strict-data to skip it)")
        if "images" in batch:
            parts.append(batch)
    if not parts:
        raise UserError(f"no readable image in {images.name}: check the files")
    cache = Cache(*(torch.cat([p[k] for p in parts]) for k in ("images", "aspect", "labels", "indices")))
    cache.skipped = skipped
    return cache


class Loader:
    """Batches of one ImageSet for a training or evaluation loop.

    Args:
        images: the data.
        mode: "train" (squashed to ``load_size`` + aspect, for device-side augmentation) or "eval".
        size: ``load_size`` in train mode, the final image size in eval mode.
        global_batch: images per step over all processes.
        runtime: this process's rank, world size and device.
        shuffle / drop_last: per-epoch permutation; drop the incomplete last global batch.
        cache: "auto" (in memory when it fits ``CACHE_BYTES``), "on" or "off".
    """

    def __init__(self, images: ImageSet, mode: str, size: int, global_batch: int, runtime: Runtime,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True, workers: int | None = None,
                 cache: str = "auto", crop_fraction: float = 0.875, strict: bool = False):
        if len(images) == 0:
            raise UserError(f"{images.name} holds no images")
        self.images, self.mode, self.size = images, mode, size
        self.runtime = runtime
        self.workers = worker_count(workers)
        self.skipped_total = 0
        self._reported: set[str] = set()
        self.strict = strict
        self.cache: Cache | None = None
        if cache == "on" or (cache == "auto" and len(images) * 3 * size * size <= CACHE_BYTES):
            self.cache = build_cache(images, mode, size, crop_fraction, self.workers, strict)
            self._report(self.cache.skipped)
            n = len(self.cache.indices)
        else:
            n = len(images)
        if global_batch > n and drop_last:
            raise UserError(f"batch size {global_batch} is larger than the {n} images of {images.name}: "
                            "lower --batch-size")
        self.sampler = EpochBatchSampler(n, global_batch, runtime.rank, runtime.world_size, seed,
                                         shuffle, drop_last)
        self._loader = None
        if self.cache is None:
            dataset = ImageDataset(images, mode, size, crop_fraction, strict)
            self._loader = DataLoader(
                dataset, batch_sampler=self.sampler, num_workers=self.workers,
                collate_fn=functools.partial(collate, full=mode == "train" and drop_last),
                pin_memory=runtime.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers > 0 else None,
            )
        elif runtime.device.type == "cuda":
            # Kept on the GPU (at most CACHE_BYTES) and gathered there: indexing a pinned host copy makes a
            # fresh pageable tensor every step, whose "non-blocking" copy then blocks.
            c = self.cache
            c.images, c.aspect, c.labels = (t.to(runtime.device) for t in (c.images, c.aspect, c.labels))

    def __len__(self) -> int:
        return self.sampler.batches_per_epoch()

    @property
    def num_images(self) -> int:
        return self.sampler.n

    def _report(self, messages: list[str]) -> None:
        for msg in messages:
            if msg not in self._reported:
                self._reported.add(msg)
                self.skipped_total += 1
                log.warning("skipping unreadable image: %s", msg)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """This process's batches of ``epoch``, from batch ``start`` on, on the device."""
        self.sampler.set_epoch(epoch, start)
        device = self.runtime.device
        non_blocking = device.type == "cuda"
        if self.cache is not None:
            c = self.cache
            for positions in self.sampler:
                idx = torch.as_tensor(positions, dtype=torch.long)
                where = idx.to(c.images.device, non_blocking=non_blocking)  # the cache's device (GPU or host)
                yield Batch(c.images[where].to(device), c.aspect[where].to(device), c.labels[where].to(device),
                            c.indices[idx])
            return
        for batch in self._loader:
            if self.strict and batch["skipped"]:
                raise UserError(f"{batch['skipped'][0]} (--strict-data stops at bad images; remove the "
                                "file or leave out --strict-data to skip it)")
            self._report(batch["skipped"])
            if "images" not in batch:
                if self.sampler.drop_last and self.runtime.world_size > 1:
                    # the other processes would wait for this one's share in the step's collectives
                    raise UserError(f"no image of a whole batch of {self.images.name} could be read (each after "
                                    f"{MAX_SUBSTITUTES} substitutes): check the files, or run with --strict-data "
                                    "to stop at the first unreadable one")
                continue
            yield Batch(batch["images"].to(device, non_blocking=non_blocking),
                        batch["aspect"].to(device, non_blocking=non_blocking),
                        batch["labels"].to(device, non_blocking=non_blocking),
                        batch["indices"])

    def summary(self) -> None:
        """Log the count of unreadable images met so far (once per run, at the end)."""
        if self.skipped_total:
            log.warning("%d unreadable image(s) were skipped in %s", self.skipped_total, self.images.name)
