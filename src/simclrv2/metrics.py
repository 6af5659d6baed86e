"""Measuring a network on held-out images: evaluation views, features, kNN and classification metrics.

Images get the evaluation preprocessing of SPEC (centre crop of 87.5% of the shorter side,
aspect kept, bicubic resize; no crop at 32 px or less). The kNN accuracy is the weighted vote of
Wu et al. (2018), as DINO uses it to monitor self-supervised features.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as dist_utils
from .data import ImageSet
from .data.loader import Loader
from .distributed import Runtime
from .engine.placement import autocast
from .errors import UserError


def eval_crop_fraction(image_size: int) -> float:
    """The official centre crop keeps 87.5% of the shorter side; small (<= 32 px) images keep all."""
    return 1.0 if image_size <= 32 else 0.875


def eval_loader(images: ImageSet, image_size: int, runtime: Runtime, batch_size: int = 256,
                workers: int | None = None, cache: str = "auto", strict: bool = False) -> Loader:
    """Evaluation views (centre crop, no augmentation) of every image, in order, for this process alone."""
    local = Runtime(0, 1, runtime.local_rank, runtime.device)
    return Loader(images, "eval", image_size, min(batch_size, len(images)), local, shuffle=False,
                  drop_last=False, workers=workers, cache=cache, crop_fraction=eval_crop_fraction(image_size),
                  strict=strict)


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], loader: Loader,
                     channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn`` applied to every batch of an evaluation loader; (outputs, labels) on the device."""
    outs, labels = [], []
    for batch in loader.epoch(0):
        x = batch.images.float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(fn(x).float())
        labels.append(batch.labels)
    return torch.cat(outs), torch.cat(labels)


def own_share(images: ImageSet, runtime: Runtime) -> tuple[ImageSet, bool]:
    """The images this process embeds when the processes share the work, and whether they are shared: a
    contiguous 1/world_size of them (all of them, not shared, with one process or fewer images than processes)."""
    if not len(images) >= runtime.world_size > 1:
        return images, False
    return images.subset(np.array_split(np.arange(len(images)), runtime.world_size)[runtime.rank]), True


def extract_shared(fn: Callable[[torch.Tensor], torch.Tensor], loader: Loader, shared: bool,
                   channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``extract_features`` over a loader of this process's ``own_share``; with ``shared`` (the images were
    split among the processes) every process gets the features of all of them, in order. Every process
    must call it."""
    outs, labels = extract_features(fn, loader, channels_last)
    if not shared:
        return outs, labels
    return dist_utils.gather_rows(outs), dist_utils.gather_rows(labels)


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


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: ImageSet, image_size: int, runtime: Runtime,
                   batch_size: int = 256, workers: int | None = None, cache: str = "auto",
                   strict: bool = False, precision: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels of every image (CPU tensors), in the order of ``images``; the network
    under ``precision`` autocast (None: fp32)."""
    was_training = model.training
    model.eval()
    loader = eval_loader(images, image_size, runtime, batch_size, workers, cache, strict)
    with autocast(runtime.device, precision):
        logits, labels = extract_features(model, loader)
    model.train(was_training)
    loader.summary()
    return logits.cpu(), labels.cpu()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """Top-1, top-5, per-class accuracy (recall) and the confusion matrix (rows: true class)."""
    labels = labels.long()
    num_classes = logits.shape[1]
    if labels.numel() and int(labels.max()) >= num_classes:
        raise UserError(f"the data has labels up to class {int(labels.max())}, the classifier only "
                        f"{num_classes} outputs")
    pred = logits.argmax(1)
    k = min(5, num_classes)
    top5 = (logits.topk(k, dim=1).indices == labels[:, None]).any(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = {}
    for c, name in enumerate(names):
        count = int(confusion[c].sum())
        per_class[name] = {"images": count, "accuracy": float(confusion[c, c]) / count if count else None}
    n = max(labels.numel(), 1)
    return {
        "images": int(labels.numel()),
        "top1": float((pred == labels).sum()) / n,
        "top5": float(top5.sum()) / n,
        "per_class": per_class,
        "class_names": names,
        "confusion_matrix": confusion.tolist(),
    }


def format_metrics(metrics: dict[str, Any], title: str = "") -> str:
    """The metrics as a text report: headline figures, per-class table, confusion matrix."""
    lines = [title] if title else []
    lines.append(f"images {metrics['images']}   top-1 {100 * metrics['top1']:.2f}%   "
                 f"top-5 {100 * metrics['top5']:.2f}%")
    lines.append("")
    width = max(8, *(len(n) for n in metrics["class_names"]))
    lines.append(f"{'class':<{width}}  images  accuracy")
    for name, row in metrics["per_class"].items():
        acc = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(f"{name:<{width}}  {row['images']:>6}  {acc:>8}")
    if len(metrics["class_names"]) <= 30:
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        cell = max(4, len(str(max(max(r) for r in metrics["confusion_matrix"]))) + 1)
        lines.append(" " * width + "".join(f"{n[:cell - 1]:>{cell}}" for n in metrics["class_names"]))
        for name, row in zip(metrics["class_names"], metrics["confusion_matrix"]):
            lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines) + "\n"
