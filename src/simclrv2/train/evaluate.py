"""``simclrv2 evaluate``: top-1, top-5, per-class accuracy and the confusion matrix of a classifier.

Images get the evaluation preprocessing of SPEC (centre crop of 87.5% of the shorter side,
aspect kept, bicubic resize; no crop at 32 px or less). Without ``--data`` a checkpoint is
evaluated on the images its run held out (``--eval-data``, or the ``--holdout`` part of its
``--data``, re-split with its seed), which training never saw.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_bytes
from ..data import ImageSet, holdout_split, open_images
from ..distributed import Runtime
from ..errors import UserError
from .setup import eval_loader, extract_features
from .weights import class_names, load_classifier


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: ImageSet, image_size: int, runtime: Runtime,
                   batch_size: int = 256, workers: int | None = None, cache: str = "auto",
                   strict: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every image (CPU tensors), in the order of ``images``."""
    was_training = model.training
    model.eval()
    loader = eval_loader(images, image_size, runtime, batch_size, workers, cache, strict)
    logits, labels = extract_features(model, loader, runtime)
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


def training_eval_split(payload: dict[str, Any], source: str) -> ImageSet:
    """The held-out images of the run that wrote ``payload``."""
    cfg = payload.get("config") or {}
    if cfg.get("eval_data"):
        return open_images(cfg["eval_data"], labeled=True)
    if cfg.get("holdout", 0) > 0 and cfg.get("data"):
        images = open_images(cfg["data"], labeled=True)
        _, held = holdout_split(images.labels, cfg["holdout"], cfg.get("seed", 0))
        return images.subset(held)
    raise UserError(f"{source} was trained without held-out images (no --holdout or --eval-data): pass "
                    "--data with the images to evaluate on")


def check_classes(names: list[str], data: ImageSet, model_source: str) -> None:
    """The data's classes must be the classifier's, in the same order."""
    if data.class_names != names:
        raise UserError(f"{model_source} classifies {len(names)} classes ({', '.join(names[:4])}...), "
                        f"{data.name} has {len(data.class_names)} ({', '.join(data.class_names[:4])}...): "
                        "evaluate on data with the classes the model was trained on")


def evaluate(model_path: str, data: str | None = None, out: str | None = None, image_size: int | None = None,
             batch_size: int = 256, workers: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Evaluate the classifier in ``model_path``; writes evaluation.json/.txt to ``out`` if given."""
    from .. import distributed as dist_utils

    model, payload = load_classifier(model_path)
    names = class_names(payload)
    images = open_images(data, labeled=True) if data else training_eval_split(payload, model_path)
    check_classes(names, images, model_path)
    size = image_size or (payload.get("config") or {}).get("image_size") or (32 if payload["model_config"].get(
        "small_images") else 224)
    runtime = dist_utils.single_process(device)
    logits, labels = predict_logits(model.to(runtime.device), images, size, runtime, batch_size, workers)
    metrics = classification_metrics(logits, labels, names)
    metrics.update({"model": str(model_path), "data": data or "held-out split of the training run",
                    "image_size": size})
    text = format_metrics(metrics, f"{model_path} on {images.name}")
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "evaluation.json", json.dumps(metrics, indent=2).encode())
        atomic_write_bytes(folder / "evaluation.txt", text.encode())
    return {"metrics": metrics, "text": text}


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = evaluate(args.model, args.data, args.out, args.image_size, args.batch_size, args.workers, args.device)
    print(result["text"], end="")
    if args.json:
        print(json.dumps(result["metrics"], indent=2))
    return 0


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``evaluate`` to the command line."""
    p = sub.add_parser("evaluate", help="top-1/top-5, per-class accuracy and confusion matrix of a classifier",
                       description=__doc__)
    p.add_argument("--model", required=True, metavar="CKPT", help="fine-tuned classifier or distilled student")
    p.add_argument("--data", default=None, help="labeled images (folder, list or 'digits'); default: the "
                                                "images the checkpoint's run held out")
    p.add_argument("--out", default=None, metavar="DIR", help="write evaluation.json and evaluation.txt here")
    p.add_argument("--image-size", type=int, default=None, help="default: the size the model was trained at")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: cores - 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)
    return p


__all__ = ["classification_metrics", "evaluate", "format_metrics", "predict_logits"]
