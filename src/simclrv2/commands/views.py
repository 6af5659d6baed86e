"""``simclrv2 views``: the two training views of a few images, as pretraining draws them.

Nobody can judge an augmentation from its parameters; this writes the pixels the network sees.
The views come from the objects pretraining uses: the training images of ``--data`` (less the
``--holdout`` part, as ``open_splits``), the same ``Loader`` in "train" mode at the resolved load
size (the workers' crops from full resolution, or, for data training caches whole, the whole images), the
same ``SimCLRAugment`` of ``PretrainConfig.augment_config()`` (crop where the loader did not, flip,
colour, blur) and the random stream of step 0 (``engine.loop.step_generator(seed, 0, rank 0,
device)``), called twice on the batch: view a, then view b. They are the views of the first ``--n``
images of step 0 of a one-process run with the same options, ``--batch-size`` (default: ``--n``;
the random numbers are drawn per batch, so another batch size draws others) and device (CPU and CUDA
have different random streams). Unreadable images are replaced as the uncached loader does (the
views do not decode the whole data set; with unreadable images a cached run's order may differ).

The output folder holds ``<i>_a.png`` and ``<i>_b.png`` for i = 0 .. N-1 (zero-padded to the same
width): lossless 8-bit RGB at the training size, value = round(255 * v) of the view v in [0, 1],
before any normalisation (rounded to nearest, ties to even: at most 0.5/255 from the view);
``contact_sheet.png`` (each pair side by side, captioned with the source file's name where it fits);
and ``views.csv`` (i, source, view_a, view_b). Everything is written in a temporary folder beside
``--out`` and renamed into place: a failure leaves no half-written folder.
"""

# torch is imported only when the command runs: the command line reads VIEW_OPTIONS for --help.

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import os
import shutil
import sys
import tempfile
import typing
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..stages.configs import PretrainConfig

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("simclrv2")

# The options of PretrainConfig that decide which images the first step sees and how they are
# augmented (tests/commands/test_views.py checks that augment_config and the load size read no other),
# plus the cache setting (whether training crops on the device or in the loader) and the device,
# whose random stream they are drawn from.
VIEW_OPTIONS = ("data", "holdout", "image_size", "load_size", "seed", "flip", "crop_min_area",
                "color_strength", "blur", "cache", "device")
CSV_NAME, SHEET_NAME = "views.csv", "contact_sheet.png"
SHEET_PAIRS = 64  # pairs on the contact sheet at most (every pair still gets its PNGs)
SHEET_CELL = 96  # views smaller than this are blown up (nearest neighbour) on the sheet
GAP, CAPTION = 4, 14


def view_options() -> type:
    """``PretrainConfig``'s ``VIEW_OPTIONS`` as a dataclass of their own, for ``config.add_arguments``:
    the same flags, help texts, defaults and limits as ``simclrv2 pretrain``'s, declared once."""
    hints = typing.get_type_hints(PretrainConfig)
    chosen = [(f.name, hints[f.name], dataclasses.field(default=f.default, metadata=f.metadata))
              for f in dataclasses.fields(PretrainConfig) if f.name in VIEW_OPTIONS]
    return dataclasses.make_dataclass("ViewOptions", chosen)


@dataclasses.dataclass
class Views:
    """The two views of ``n`` images, uint8 (N, size, size, 3) each, and where each image came from."""

    a: np.ndarray
    b: np.ndarray
    sources: list[str]


def to_pixels(views) -> np.ndarray:
    """float (N, 3, S, S) in [0, 1] -> uint8 (N, S, S, 3): round(255 * v), clamped to 0..255."""
    import torch

    return (views.detach().float() * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def draw_views(cfg: PretrainConfig, n: int, batch_size: int | None = None) -> Views:
    """The views a and b of the first ``n`` images of pretraining's step 0 at ``batch_size`` (default ``n``)."""
    import torch

    from ..augment import SimCLRAugment
    from ..data.loader import Loader, TrainCrops, worker_crops
    from ..data.splits import open_splits
    from ..distributed import single_process
    from ..engine.loop import step_generator

    runtime = single_process(cfg.device)
    train = open_splits(cfg, labeled=False).train
    n = min(n, len(train))
    batch_size = n if batch_size is None else batch_size
    if batch_size < n:
        raise UserError(f"--batch-size {batch_size} is smaller than --n {n}: use a batch of at least --n images")
    if batch_size > len(train):
        raise UserError(f"--batch-size {batch_size} is larger than the {len(train)} training images of "
                        f"{cfg.data}: lower it")
    augment = SimCLRAugment(cfg.augment_config())
    # the crops as training takes them: by the loader from full-resolution images, or, for data that
    # training caches whole (no image larger than the load size), on the device from the whole image
    load_size = cfg.resolved_load_size()
    crops = worker_crops(train, load_size, cfg.cache, TrainCrops.of(augment.config, views=2))
    loader = Loader(train, "train", load_size, batch_size, runtime, seed=cfg.seed, workers=0, cache="off",
                    crops=crops)
    batch = next(iter(loader.epoch(0)))
    generator = step_generator(cfg.seed, 0, runtime.rank, runtime.device)
    with torch.no_grad():
        a = augment(batch.images, batch.sizes, generator, view=0)
        b = augment(batch.images, batch.sizes, generator, view=1)
    loader.summary()
    sources = [train.describe(int(i)) for i in batch.indices[:n]]
    return Views(to_pixels(a[:n]), to_pixels(b[:n]), sources)


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 (H, W, 3) as a PNG file's bytes (lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def names(count: int) -> list[tuple[str, str]]:
    """The file names of each pair: ``<i>_a.png``, ``<i>_b.png``, i zero-padded so that they sort."""
    width = len(str(max(count - 1, 0)))
    return [(f"{i:0{width}d}_a.png", f"{i:0{width}d}_b.png") for i in range(count)]


def contact_sheet(views: Views) -> bytes:
    """Each image's pair side by side (at most ``SHEET_PAIRS``), captioned with its source file's name
    where it fits, else its number; views under ``SHEET_CELL`` px are blown up with nearest neighbour."""
    from PIL import Image, ImageDraw

    count, size = min(len(views.sources), SHEET_PAIRS), views.a.shape[1]
    side = size * max(1, -(-SHEET_CELL // size))
    pair_w = 2 * side + GAP
    columns = max(1, min(count, 4, 1800 // (pair_w + 3 * GAP)))
    rows = -(-count // columns)
    cell_w, cell_h = pair_w + 3 * GAP, side + CAPTION + 2 * GAP
    sheet = Image.new("RGB", (columns * cell_w + GAP, max(rows, 1) * cell_h + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for k in range(count):
        x, y = GAP + (k % columns) * cell_w, GAP + (k // columns) * cell_h
        for j, pixels in enumerate((views.a[k], views.b[k])):
            image = Image.fromarray(pixels, "RGB")
            if side != size:
                image = image.resize((side, side), Image.NEAREST)
            sheet.paste(image, (x + j * (side + GAP), y))
        caption = f"{k}: {os.path.basename(views.sources[k])}"
        if draw.textlength(caption) > pair_w:
            caption = str(k)
        draw.text((x, y + side + 1), caption, fill="black")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or a folder with files in it (``--overwrite`` replaces an
    earlier views folder, one holding ``views.csv``, and nothing else)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder to write the views into")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} is not empty: pass --overwrite to replace its views, or choose another folder")
        if not (out / CSV_NAME).is_file():
            raise UserError(f"--out {out} holds files but no {CSV_NAME} (not a views folder): --overwrite replaces "
                            "only views; choose another folder")


def write_views(views: Views, out: str | Path, overwrite: bool = False) -> Path:
    """The PNGs, the contact sheet and ``views.csv`` in a temporary folder beside ``out``, then renamed to
    ``out`` (an earlier views folder there is removed only once the new one is in place)."""
    out = Path(out)
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(["i", "source", "view_a", "view_b"])
        for i, (name_a, name_b) in enumerate(names(len(views.sources))):
            (tmp / name_a).write_bytes(png_bytes(views.a[i]))
            (tmp / name_b).write_bytes(png_bytes(views.b[i]))
            writer.writerow([i, views.sources[i], name_a, name_b])
        (tmp / SHEET_NAME).write_bytes(contact_sheet(views))
        (tmp / CSV_NAME).write_text(table.getvalue(), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private; the views are not
        if out.is_dir():
            if any(out.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
                os.replace(out, old / out.name)
            else:
                out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old / out.name, out)  # put the earlier views back
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cmd_views(args: argparse.Namespace) -> int:
    from ..config import from_args

    check_out(Path(args.out), args.overwrite)  # before any image is decoded
    cfg = from_args(PretrainConfig, args)
    views = draw_views(cfg, args.n, args.views_batch)
    out = write_views(views, args.out, args.overwrite)
    size = views.a.shape[1]
    print(f"wrote the views a and b of {len(views.sources)} image(s) of {cfg.data} ({size} x {size} px, "
          f"seed {cfg.seed}, step 0 of a batch of {args.views_batch or len(views.sources)}) to {out}; "
          f"side by side in {out / SHEET_NAME}", file=sys.stderr)
    return 0
