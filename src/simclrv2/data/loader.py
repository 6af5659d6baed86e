"""From an ImageSet to batches of uint8 tensors on the training device.

Decoding happens in DataLoader worker processes (or once, into an in-memory cache, for data small
enough, kept on the GPU when training there); the device receives uint8 tensors and does the rest of
the augmentation itself (``simclrv2.augment``). Preprocessing modes:

- ``train`` with ``crops`` (the training stages): the random crops come from the full-resolution
  image, as the official code takes them. A worker reads the image's size from its header, draws
  each view's box on that pixel grid (``crops.sample_boxes``, from a generator seeded by (seed,
  epoch, position in the epoch): the same views with any number of workers, and after a resume),
  decodes the JPEG at the largest DCT reduction that keeps every box at least the training size in
  decoded pixels (often 1/2 to 1/8 for phone photos), and resamples each box to the training size
  (``crops.crop_pixels``): uint8 (V, 3, size, size) per image. Data whose images are all no larger
  than ``load_size`` (nothing is lost by keeping them at that size) and that fits ``CACHE_BYTES``
  is cached whole instead, and the device draws the boxes (on the original grid) itself.
- ``train`` without ``crops``: the whole image squashed to ``load_size`` x ``load_size``, with its
  original height and width alongside.
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

from ..crops import AREA_RANGE, RATIO_RANGE, crop_pixels, min_covered_for, sample_boxes
from ..distributed import Runtime
from ..errors import UserError
from .images import BadImage, upright_size
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


@dataclass(frozen=True)
class TrainCrops:
    """The random crops a training stage takes of each image: ``views`` boxes, resampled to ``size``."""

    size: int
    views: int = 1
    area: tuple[float, float] = AREA_RANGE
    ratio: tuple[float, float] = RATIO_RANGE

    @classmethod
    def of(cls, config, views: int) -> "TrainCrops":
        """From an ``augment.AugmentConfig``."""
        return cls(config.size, views, tuple(config.crop_area), tuple(config.crop_ratio))

    def boxes(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """``views`` boxes (top, left, h, w) on a ``height`` x ``width`` image."""
        h = torch.full((self.views,), height, dtype=torch.int64)
        w = torch.full((self.views,), width, dtype=torch.int64)
        return sample_boxes(h, w, generator, self.area, self.ratio, min_covered_for(self.area[0]))


def item_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the crops of the image at ``position`` of ``epoch``'s order (any worker, any process)."""
    words = np.random.SeedSequence([seed, epoch, position]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def reduced_side(shorter: int, box_side: int, size: int) -> int | None:
    """The shorter side to ask of a reduced JPEG decode (``load_rgb``'s ``at_least``) so that a box whose
    shorter side is ``box_side`` source pixels keeps at least ``size`` decoded pixels; None: full size."""
    if box_side <= size:
        return None
    return -(-shorter * size // box_side)


def preprocess(array: np.ndarray, mode: str, size: int, crop_fraction: float) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 (H, W, 3) -> uint8 (3, size, size) and (H, W), the decoded size (the original's unless a large
    JPEG was decoded at a reduced scale: never for images no larger than the load size)."""
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
    return np.ascontiguousarray(out), (height, width)


def needed_side(mode: str, size: int, crop_fraction: float) -> int:
    """The shorter side a decoded image needs so that ``preprocess`` only ever shrinks it: the load size
    (train: the whole image is squashed to it), or the size over the centre-crop fraction (eval)."""
    return size if mode == "train" else int(np.ceil(size / min(crop_fraction, 1.0)))


class ImageDataset(Dataset):
    """Item i of an ImageSet, decoded and preprocessed; see the module docstring for ``mode``.

    With ``crops`` the items are keyed by (index, seed) pairs (``EpochBatchSampler(seeded=True)``) and
    hold the cropped views, uint8 (V, 3, crops.size, crops.size).
    """

    def __init__(self, images: ImageSet, mode: str, size: int, crop_fraction: float = 0.875,
                 strict: bool = False, substitute: bool = True, crops: TrainCrops | None = None):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        self.images, self.mode, self.size = images, mode, size
        self.crop_fraction, self.strict, self.substitute = crop_fraction, strict, substitute
        self.crops = crops if mode == "train" else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, seed = key if isinstance(key, tuple) else (key, 0)
        skipped: list[str] = []
        n = len(self.images)
        for attempt in range(MAX_SUBSTITUTES if self.substitute else 1):
            j = (i + attempt * 7919) % n  # a large step: the substitute is rarely in the same batch
            try:
                if self.crops is not None:
                    pixels, original = self.cropped(j, seed)
                else:
                    array = self.images.load(j, needed_side(self.mode, self.size, self.crop_fraction))
                    pixels, original = preprocess(array, self.mode, self.size, self.crop_fraction)
                    pixels = torch.from_numpy(pixels)
            except BadImage as exc:
                skipped.append(str(exc))
                if self.strict:
                    break
                continue
            return {"image": pixels, "size": original,
                    "label": int(self.images.labels[j]), "index": j, "skipped": skipped, "ok": True}
        return {"image": None, "size": (1, 1), "label": -1, "index": i, "skipped": skipped, "ok": False}

    def cropped(self, j: int, seed: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image ``j``'s views: boxes drawn on its full-resolution grid, then the decode (reduced where
        every box keeps ``crops.size`` pixels) and the resampling of each box. Also returns its size."""
        crops = self.crops
        generator = torch.Generator().manual_seed(seed)
        drawn: dict = {}

        def decode_side(height: int, width: int) -> int | None:
            drawn["size"], drawn["boxes"] = (height, width), crops.boxes(height, width, generator)
            return reduced_side(min(height, width), int(drawn["boxes"][:, 2:].min()), crops.size)

        array = self.images.load(j, decode_side)
        (height, width), boxes = drawn["size"], drawn["boxes"].to(torch.float64)
        scale = torch.tensor([array.shape[0] / height, array.shape[1] / width] * 2, dtype=torch.float64)
        return crop_pixels(torch.from_numpy(array), boxes * scale, crops.size), (height, width)


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
            sizes=torch.tensor([it["size"] for it in good], dtype=torch.float32),
            labels=torch.tensor([it["label"] for it in good], dtype=torch.long),
            indices=torch.tensor([it["index"] for it in good], dtype=torch.long),
        )
    return batch


@dataclass
class Batch:
    """One process's share of a global batch, on the training device."""

    images: torch.Tensor  # uint8 (N, 3, S, S) whole images, or (N, V, 3, S, S) the views the workers cropped
    sizes: torch.Tensor  # float32 (N, 2): each image's original height and width
    labels: torch.Tensor  # int64 (N,), -1 where unknown
    indices: torch.Tensor  # int64 (N,): positions in the ImageSet
    views: Optional[torch.Tensor] = None  # the step's augmented inputs, when drawn ahead (``engine.loop``)


class EpochBatchSampler(Sampler):
    """This process's index lists for one epoch, from a given batch on.

    Every epoch draws a permutation seeded by (seed, epoch), cuts it into global batches of
    ``global_batch`` items (the incomplete last one dropped when ``drop_last``), and gives rank r
    the r-th slice of each. ``set_epoch(epoch, start)`` chooses the epoch and the first batch.
    ``seeded``: each item is an (index, seed) pair, the seed a function of (seed, epoch, position
    in the epoch) alone (``item_seed``), for the random crops the workers draw.
    """

    def __init__(self, n: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True, seeded: bool = False):
        if global_batch % world_size:
            raise UserError(f"batch size {global_batch} is not divisible by the {world_size} processes: "
                            "use a multiple of the process count")
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.seed, self.shuffle, self.drop_last, self.seeded = seed, shuffle, drop_last, seeded
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
            first = self.rank * per_rank
            mine = chunk[first:first + per_rank]
            if self.seeded:
                origin = b * self.global_batch + first
                mine = [(i, item_seed(self.seed, self.epoch, origin + k)) for k, i in enumerate(mine)]
            yield mine


def cached(images: ImageSet, size: int, cache: str, crops: TrainCrops | None) -> bool:
    """Whether a ``Loader`` keeps ``images`` in memory at ``size`` (see its ``cache`` argument)."""
    if cache != "auto":
        return cache == "on"
    return len(images) * 3 * size * size <= CACHE_BYTES and (crops is None or no_larger_than(images, size))


def worker_crops(images: ImageSet, size: int, cache: str, crops: TrainCrops | None) -> TrainCrops | None:
    """The crops the workers take in a training run with these settings: ``crops``, or None where the run
    caches the images whole and the device crops them. For loaders that must draw the views a run draws
    without building its cache (``simclrv2 views``, batch-norm recalibration: ``cache="off"``)."""
    return None if cached(images, size, cache, crops) else crops


def no_larger_than(images: ImageSet, side: int) -> bool:
    """Whether no image of ``images`` has a side longer than ``side`` pixels (read from the headers;
    stops at the first larger one). Unreadable files are left to the decoding to report."""
    if images.arrays is not None:
        return max(images.arrays.shape[1:3]) <= side
    for path in images.paths:
        try:
            if max(upright_size(path)) > side:
                return False
        except BadImage:
            continue
    return True


@dataclass
class Cache:
    """Preprocessed pixels of a whole ImageSet in memory (bad images left out)."""

    images: torch.Tensor
    sizes: torch.Tensor
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
    cache = Cache(*(torch.cat([p[k] for p in parts]) for k in ("images", "sizes", "labels", "indices")))
    cache.skipped = skipped
    return cache


class Loader:
    """Batches of one ImageSet for a training or evaluation loop.

    Args:
        images: the data.
        mode: "train" (``crops``, or squashed to ``load_size``, for device-side augmentation) or "eval".
        size: ``load_size`` in train mode, the final image size in eval mode.
        crops: in train mode, the views the workers crop from the full-resolution images (the
            module docstring); data no larger than ``load_size`` is cached whole instead.
        global_batch: images per step over all processes.
        runtime: this process's rank, world size and device.
        shuffle / drop_last: per-epoch permutation; drop the incomplete last global batch.
        cache: "auto" (in memory when it fits ``CACHE_BYTES`` and, with ``crops``, when no image is larger
            than ``load_size``), "on" (also larger images, squashed: their crops lose resolution) or "off".
    """

    def __init__(self, images: ImageSet, mode: str, size: int, global_batch: int, runtime: Runtime,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True, workers: int | None = None,
                 cache: str = "auto", crop_fraction: float = 0.875, strict: bool = False,
                 crops: TrainCrops | None = None):
        if len(images) == 0:
            raise UserError(f"{images.name} holds no images")
        self.images, self.mode, self.size = images, mode, size
        self.runtime = runtime
        self.workers = worker_count(workers)
        self.skipped_total = 0
        self._reported: set[str] = set()
        self.strict = strict
        self.cache: Cache | None = None
        crops = crops if mode == "train" else None
        if cached(images, size, cache, crops):
            self.cache = build_cache(images, mode, size, crop_fraction, self.workers, strict)
            self._report(self.cache.skipped)
            n = len(self.cache.indices)
        else:
            n = len(images)
        if global_batch > n and drop_last:
            raise UserError(f"batch size {global_batch} is larger than the {n} images of {images.name}: "
                            "lower --batch-size")
        self.crops = crops if self.cache is None else None  # the workers crop; else the device does
        self.sampler = EpochBatchSampler(n, global_batch, runtime.rank, runtime.world_size, seed,
                                         shuffle, drop_last, seeded=self.crops is not None)
        self._loader = None
        if self.cache is None:
            dataset = ImageDataset(images, mode, size, crop_fraction, strict, crops=self.crops)
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
            c.images, c.sizes, c.labels = (t.to(runtime.device) for t in (c.images, c.sizes, c.labels))

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
                yield Batch(c.images[where].to(device), c.sizes[where].to(device), c.labels[where].to(device),
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
                        batch["sizes"].to(device, non_blocking=non_blocking),
                        batch["labels"].to(device, non_blocking=non_blocking),
                        batch["indices"])

    def summary(self) -> None:
        """Log the count of unreadable images met so far (once per run, at the end)."""
        if self.skipped_total:
            log.warning("%d unreadable image(s) were skipped in %s", self.skipped_total, self.images.name)
