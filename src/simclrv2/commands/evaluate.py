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

from ..checkpoint import atomic_write_bytes
from ..data import ImageSet, holdout_split, open_images
from ..errors import UserError
from ..engine.placement import autocast_dtype
from ..metrics import classification_metrics, format_metrics, predict_logits
from ..models.checkpoints import load_classifier
from ..record import Record


def training_eval_split(record: Record, source: str) -> ImageSet:
    """The held-out images of the run that wrote a checkpoint (from its record)."""
    held = record.held_out
    if held.annotations and not held.eval_data and held.holdout > 0 and held.data:
        from ..data.splits import annotated

        images, _, index = annotated(held.data, held.annotations, held.holdout, held.seed,
                                     held.label_conflicts)
        return images.subset(index)
    if held.eval_data:
        return open_images(held.eval_data, labeled=True)
    if held.holdout > 0 and held.data:
        images = open_images(held.data, labeled=True)
        _, index = holdout_split(images.labels, held.holdout, held.seed)
        return images.subset(index)
    raise UserError(f"{source} was trained without held-out images (no --holdout or --eval-data): pass "
                    "--data with the images to evaluate on")


def check_classes(names: list[str], data: ImageSet, model_source: str) -> None:
    """The data's classes must be the classifier's, in the same order."""
    if data.class_names != names:
        raise UserError(f"{model_source} classifies {len(names)} classes ({', '.join(names[:4])}...), "
                        f"{data.name} has {len(data.class_names)} ({', '.join(data.class_names[:4])}...): "
                        "evaluate on data with the classes the model was trained on")


def evaluate(model_path: str, data: str | None = None, out: str | None = None, image_size: int | None = None,
             batch_size: int = 256, workers: int | None = None, device: str = "auto",
             precision: str = "auto") -> dict[str, Any]:
    """Evaluate the classifier in ``model_path``; writes evaluation.json/.txt to ``out`` if given."""
    from .. import distributed as dist_utils

    model, record = load_classifier(model_path)
    names = record.named_classes()
    images = open_images(data, labeled=True) if data else training_eval_split(record, model_path)
    check_classes(names, images, model_path)
    size = image_size or record.image_size
    runtime = dist_utils.single_process(device)
    logits, labels = predict_logits(model.to(runtime.device), images, size, runtime, batch_size, workers,
                                    precision=autocast_dtype(precision, runtime.device))
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
    result = evaluate(args.model, args.data, args.out, args.image_size, args.batch_size, args.workers, args.device,
                      args.precision)
    print(result["text"], end="")
    if args.json:
        print(json.dumps(result["metrics"], indent=2))
    return 0


__all__ = ["evaluate"]
