"""``simclrv2 embed``: the features of every image, from any simclrv2 checkpoint.

The feature of an image is hiddens[J] of the SimCLRv2 projection head (J = 0, the default, is the
encoder's output; J = 1 the first head layer's, after BN-ReLU) on the evaluation view of the image
(centre crop, as ``evaluate``). Pretrained, fine-tuned, distilled and imported checkpoints all work;
a classifier keeps only the head layers it classifies from, so J is at most its head layer.

The output folder holds ``features.npy`` (float32, one row per image, NaN for an unreadable image)
and ``index.csv`` (path, label where the data has one, and the read error, one row per image in the
same order). Under ``torchrun`` each process embeds a contiguous share of the images and the first
writes the two files.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..checkpoint import atomic_write, atomic_write_bytes, written_together
from ..data import ImageSet, open_images
from ..errors import UserError

log = logging.getLogger("simclrv2")

FEATURES, INDEX = "features.npy", "index.csv"


def feature_fn(model: nn.Module, layer: int, source: str = "the checkpoint") -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> hiddens[layer] for a ContrastiveModel or Classifier (``models.simclr``)."""
    from ..models.simclr import Classifier, ContrastiveModel

    if isinstance(model, ContrastiveModel):
        layers, most = list(model.projection_head.layers), len(model.projection_head.layers)
    elif isinstance(model, Classifier):
        layers, most = list(model.head_layers), model.head_layer
    else:
        raise TypeError(f"no features for a {type(model).__name__}")
    if not 0 <= layer <= most:
        kept = "its projection head has" if isinstance(model, ContrastiveModel) else "its classifier keeps"
        raise UserError(f"--layer {layer}: {source} has no hiddens[{layer}] ({kept} {most} layer(s)): "
                        f"use a layer from 0 to {most}")

    def features(x: torch.Tensor) -> torch.Tensor:
        h = model.encoder(x)
        for block in layers[:layer]:
            h = block(h)
        return h

    return features


@dataclass
class Embedding:
    """Features of ``images`` (rows in their order); ``ok`` is False where an image could not be read."""

    features: np.ndarray  # float32 (N, D), NaN rows where not ok
    ok: np.ndarray  # bool (N,)
    images: ImageSet


@torch.no_grad()
def embed_images(fn: Callable[[torch.Tensor], torch.Tensor], images: ImageSet, image_size: int,
                 device: torch.device, batch_size: int = 256, workers: int | None = None,
                 progress: bool = False) -> Embedding:
    """``fn`` on the evaluation view of every image of ``images``, in one process."""
    from ..distributed import Runtime
    from ..metrics import eval_loader

    runtime = Runtime(0, 1, device.index or 0, device)
    loader = eval_loader(images, image_size, runtime, batch_size, workers, cache="off")
    rows: np.ndarray | None = None
    ok = np.zeros(len(images), dtype=bool)
    batches = loader.epoch(0)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=len(loader), desc="embedding", unit="batch", file=sys.stderr,
                       disable=None, mininterval=2.0)
    for batch in batches:
        out = fn(batch.images.float().div_(255)).float().cpu().numpy()
        if rows is None:
            rows = np.full((len(images), out.shape[1]), np.nan, dtype=np.float32)
        index = batch.indices.numpy()
        rows[index] = out
        ok[index] = True
    loader.summary()
    if rows is None:
        raise UserError(f"no image of {images.name} could be read: check the files")
    return Embedding(rows, ok, images)


def embed_checkpoint(model_path: str, images: ImageSet, layer: int = 0, image_size: int | None = None,
                     batch_size: int = 256, workers: int | None = None, device: str = "auto",
                     progress: bool = False) -> Embedding:
    """Embed ``images`` with the network in ``model_path``. Under torchrun each process embeds its
    share (:func:`share`) and every process receives all the rows."""
    from .. import distributed as dist_utils
    from ..models.checkpoints import load_model

    model, record = load_model(model_path)
    fn = feature_fn(model, layer, model_path)
    runtime = dist_utils.setup(device)  # joins the process group under torchrun
    model.to(runtime.device)
    lo, hi = share(len(images), runtime.rank, runtime.world_size)
    part = embed_images(fn, images.subset(np.arange(lo, hi)), image_size or record.image_size,
                        runtime.device, batch_size, workers, progress and runtime.is_main)
    if runtime.world_size == 1:
        return Embedding(part.features, part.ok, images)
    return Embedding(_gather_rows(part.features), _gather_rows(part.ok), images)


def share(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous rows [lo, hi) of ``n`` that process ``rank`` of ``world`` embeds."""
    return n * rank // world, n * (rank + 1) // world


def _gather_rows(rows: np.ndarray) -> np.ndarray:
    """Every process's rows, concatenated in rank order (shares may differ in length by one)."""
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return np.concatenate(parts)


def index_rows(embedding: Embedding) -> list[list[str]]:
    """[path, label, error] of each image, in the order of the features."""
    images = embedding.images
    names = images.class_names
    return [[images.describe(i), names[images.labels[i]] if images.labels[i] >= 0 else "",
             "" if embedding.ok[i] else "unreadable image"] for i in range(len(images))]


def write_embedding(embedding: Embedding, out: str | Path) -> tuple[Path, Path]:
    """``features.npy`` and ``index.csv`` in ``out``, written together (both or neither). A file name
    that is not valid UTF-8 is written as its own bytes (surrogate escapes), as the file system has it."""
    out = Path(out)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "error"])
    writer.writerows(index_rows(embedding))
    with written_together(out) as staging:
        atomic_write(staging / FEATURES, lambda f: np.save(f, embedding.features, allow_pickle=False))
        atomic_write_bytes(staging / INDEX, buf.getvalue().encode("utf-8", "surrogateescape"))
    return out / FEATURES, out / INDEX


@contextmanager
def locked_output(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock (as a run folder's: a second process writing there is refused, naming the first)
    while the block runs; a folder this created is removed again if the block fails."""
    from ..engine.run_folder import RunFolder

    folder = RunFolder(out)
    folder.claim()
    failed = True
    try:
        yield
        failed = False
    finally:
        folder.release(failed)


def check_out_folder(out: str | Path, option: str = "--out") -> Path:
    from ..engine.run_folder import check_not_dangling

    out = Path(out)
    check_not_dangling(out, option)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} is a file: give the folder to write into")
    return out


def cmd_embed(args: argparse.Namespace) -> int:
    from ..distributed import is_main_process

    out = check_out_folder(args.out)
    images = open_images(args.data, labeled=False)
    with locked_output(out) if is_main_process() else nullcontext():
        embedding = embed_checkpoint(args.model, images, args.layer, args.image_size, args.batch_size,
                                     args.workers, args.device, progress=True)
        if is_main_process():
            features, index = write_embedding(embedding, out)
            bad = int((~embedding.ok).sum())
            print(f"wrote {embedding.features.shape[0]} x {embedding.features.shape[1]} features to {features} "
                  f"and their index to {index}" + (f" ({bad} unreadable image(s): NaN rows)" if bad else ""),
                  file=sys.stderr)
    return 0
