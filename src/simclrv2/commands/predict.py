"""``simclrv2 predict``: class and probability of each image, from a fine-tuned or distilled model.

Images get the evaluation preprocessing (centre crop 87.5%, bicubic resize). Class names come
from the training data stored in the checkpoint. An unreadable file gets a row with an empty
class and the reason, so that the output has one row per input.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed as dist_utils
from ..checkpoint import atomic_write_bytes
from ..data import ImageSet, open_images
from ..errors import UserError
from ..engine.placement import autocast, autocast_dtype
from ..metrics import eval_loader
from ..models.checkpoints import load_classifier
from .outputs import check_output_file


def _image_set(inputs: list[str]) -> ImageSet:
    """One folder (scanned recursively) or a list of image files."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return open_images(inputs[0], labeled=False)
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            raise UserError(f"{item} is a folder: pass one folder alone, or image files")
        if not path.is_file():
            raise UserError(f"image {item} does not exist: check the path")
        paths.append(str(path))
    if not paths:
        raise UserError("no images given: pass image files or a folder")
    return ImageSet(paths=paths, arrays=None, labels=np.full(len(paths), -1), class_names=[],
                    name=", ".join(inputs[:2]) + ("..." if len(inputs) > 2 else ""))


@torch.no_grad()
def predict(model_path: str, inputs: list[str], top_k: int = 1, image_size: int | None = None,
            batch_size: int = 64, workers: int | None = 0, device: str = "auto",
            precision: str = "auto") -> list[dict[str, Any]]:
    """One row per image: path, the top-k classes and their probabilities (or the read error)."""
    model, record = load_classifier(model_path)
    names = record.named_classes()
    images = _image_set(inputs)
    size = image_size or record.image_size
    runtime = dist_utils.single_process(device)
    model = model.to(runtime.device).eval()
    loader = eval_loader(images, size, runtime, batch_size, workers, cache="off")
    rows: dict[int, dict[str, Any]] = {}
    k = min(top_k, len(names))
    dtype = autocast_dtype(precision, runtime.device)
    for batch in loader.epoch(0):
        with autocast(runtime.device, dtype):
            logits = model(batch.images.float().div_(255))
        probs = logits.float().softmax(1)
        top_p, top_i = (t.cpu().tolist() for t in probs.topk(k, dim=1))  # one copy to the host per batch
        for i, p, c in zip(batch.indices.tolist(), top_p, top_i):
            rows[i] = {"path": images.describe(i), "classes": [names[j] for j in c],
                       "probabilities": [round(q, 6) for q in p]}
    for i in range(len(images)):
        rows.setdefault(i, {"path": images.describe(i), "classes": [], "probabilities": [],
                            "error": "unreadable image"})
    return [rows[i] for i in range(len(images))]


def to_csv(rows: list[dict[str, Any]], top_k: int) -> str:
    """CSV with columns path, class, probability (class_2, probability_2, ... for top-k > 1)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["path"]
    for r in range(top_k):
        suffix = "" if r == 0 else f"_{r + 1}"
        header += [f"class{suffix}", f"probability{suffix}"]
    writer.writerow(header + ["error"])
    for row in rows:
        cells = [row["path"]]
        for r in range(top_k):
            if r < len(row["classes"]):
                cells += [row["classes"][r], f"{row['probabilities'][r]:.6f}"]
            else:
                cells += ["", ""]
        writer.writerow(cells + [row.get("error", "")])
    return buf.getvalue()


def cmd_predict(args: argparse.Namespace) -> int:
    if args.out:  # before anything runs: never over the model or an image, over a file only when asked
        check_output_file(args.out, [args.model, *args.images], args.overwrite, "CSV file")
    rows = predict(args.model, args.images, args.top_k, args.image_size, args.batch_size, args.workers, args.device,
                   args.precision)
    text = to_csv(rows, min(args.top_k, max((len(r["classes"]) for r in rows), default=1) or 1))
    # A file name that is not valid UTF-8 is written as its own bytes (surrogate escapes), as the file system has it.
    data = text.encode("utf-8", "surrogateescape")
    if args.out:
        out = check_output_file(args.out, [args.model, *args.images], args.overwrite, "CSV file")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, data)
        print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
    return 0
