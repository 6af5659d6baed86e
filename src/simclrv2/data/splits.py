"""A stage's images: training images, the labeled subset, and the held-out images it never trains on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataOptions
from ..errors import UserError
from ..record import HeldOut
from .sources import ImageSet, open_images
from .annotations import read_annotations, relabeled
from .subsets import holdout_split, parse_label_spec, select_labeled, write_index_list

log = logging.getLogger("simclrv2")


@dataclass
class Splits:
    """Training images and the held-out images evaluation uses (None when there are none)."""

    train: ImageSet
    holdout: ImageSet | None


def open_splits(cfg: DataOptions, labeled: bool) -> Splits:
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
    images: ImageSet  # all of --data; ``chosen`` and ``rest`` index it
    chosen: np.ndarray
    rest: np.ndarray

    def training_images(self) -> ImageSet:
        """Every image not held out, labeled or not (their labels are not needed to estimate BN statistics)."""
        return self.images.subset(np.union1d(self.chosen, self.rest))

    def write_labeled(self, path: str | Path) -> None:
        """The labeled images, one per line, readable back as a subset file (``--labels FILE``)."""
        write_index_list(path, self.images, self.chosen)


def open_labeled_splits(cfg: DataOptions, labels: str) -> LabeledSplits:
    """``--data`` split into held-out images (``--holdout``, or ``--eval-data``) and training images,
    and the ``--labels`` subset of the training images ("all", "1%", "5/class" or a subset file).

    The subset is class-balanced and seeded and never overlaps the held-out images. With a ``.csv``
    of path,label rows (labels from annotation) the labels are the file's (see :func:`annotated`).
    """
    if annotation_file(labels):
        return _annotated_splits(cfg, labels, getattr(cfg, "label_conflicts", "error"))
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
    rest = np.setdiff1d(pool, chosen)
    return LabeledSplits(images.subset(chosen), images.subset(rest), holdout, images, chosen, rest)


def annotation_file(labels: str | None) -> str | None:
    """The ``--labels`` value when it is a .csv of path,label rows or a Label Studio export (labels from
    annotation), else None."""
    if not labels or labels == "all":
        return None
    return labels if parse_label_spec(labels).annotations else None


def annotated_held_out(labels: str | None, conflicts: str = "error") -> HeldOut:
    """The part of a checkpoint's record a stage knows of its held-out images: the annotation CSV
    or Label Studio export (absolute) whose labels they carry, when ``--labels`` is one, and the rule
    that settled disagreeing annotators; the engine adds the rest."""
    path = annotation_file(labels)
    if not path:
        return HeldOut()
    return HeldOut(annotations=str(Path(path).expanduser().absolute()),
                   label_conflicts=None if conflicts == "error" else conflicts)


def annotated(data: str, path: str, holdout: float, seed: int,
              conflicts: str | None = None) -> tuple[ImageSet, np.ndarray, np.ndarray]:
    """``data`` labeled by the annotation CSV or Label Studio export ``path`` (``conflicts``: see
    ``data.label_studio.RULES``): (images, labeled training items, held-out items).

    The data's own labels (class folders), if any, are ignored: the file's classes are the task.
    With ``holdout`` > 0 that fraction of the annotated images of each class is held out (the
    unannotated images have no label to score).
    """
    images = open_images(data, labeled=False)
    items, labels, names = read_annotations(images, path, conflicts or "error")
    images = relabeled(images, items, labels, names)
    if holdout > 0:
        train, held = holdout_split(labels, holdout, seed)
        return images, items[train], items[held]
    return images, items, np.empty(0, np.int64)


def _annotated_splits(cfg: DataOptions, path: str, conflicts: str) -> LabeledSplits:
    images, chosen, held = annotated(cfg.data, path, 0.0 if cfg.eval_data else cfg.holdout, cfg.seed, conflicts)
    holdout = images.subset(held) if len(held) else None
    if cfg.eval_data:
        holdout = open_images(cfg.eval_data, labeled=True)
        if holdout.class_names != images.class_names:
            raise UserError(f"--eval-data {cfg.eval_data} has classes {holdout.class_names[:5]}..., the labels "
                            f"of {path} are {images.class_names[:5]}...: label the same classes in both")
    elif holdout is None:
        log.info("no held-out images to score on: pass --eval-data (labeled images of the classes of %s) or "
                 "--holdout to hold out part of the annotated images", path)
    rest = np.setdiff1d(np.setdiff1d(np.arange(len(images)), held), chosen)
    return LabeledSplits(images.subset(chosen), images.subset(rest), holdout, images, chosen, rest)


def micro_batch_size(micro: int | None, global_batch: int, world_size: int) -> int | None:
    """``--micro-batch`` checked against the per-process batch; None when it is the whole batch."""
    if micro is None:
        return None
    local = global_batch // world_size
    if micro > local or local % micro:
        divisors = [d for d in range(1, local + 1) if local % d == 0]
        near = [max(d for d in divisors if d < micro)] + [d for d in divisors if d > micro][:1]
        raise UserError(f"--micro-batch {micro} does not divide the per-process batch of {local} images (--batch-size "
                        f"{global_batch} over {world_size} process(es)): use {' or '.join(map(str, sorted(near)))}")
    return None if micro == local else micro


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
