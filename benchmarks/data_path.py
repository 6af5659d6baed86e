"""Input pipeline vs training step: which one limits pretraining throughput?

Writes ``--images`` random-ish JPEGs (smooth colour fields plus noise, ``--jpeg-size`` px square,
quality 90) to a temporary folder, opens it as ``simclrv2.data.open_images`` does, and runs the
pretraining data path through ``simclrv2.data.loader.Loader`` (train mode, cache off, with 0
and 1 worker processes): header, the two crop boxes, decode (reduced where the boxes allow), the two
crops resampled to the image size, collate, then the two augmented views
of the pretraining step's augmentation, as the step makes them. Its images/s (an image = its two
views; one epoch after a warm-up epoch) is set against the rate of the real pretraining step
(``Engine.train_step``, from ``step_overhead.py``: same model, size and batch), measured in the
same run unless ``--step-rate`` gives it. "decode only" stops at the uint8 batch on the device (no views).

With 0 workers, loading and the step alternate in one process: the combined rate is
1 / (1 / data + 1 / step). With workers, decoding overlaps the step (on other cores).

    python benchmarks/data_path.py                         # r50_1x_sk0 @ 96 px, batch 16, 512 JPEGs
    python benchmarks/data_path.py --case r18_1x_sk0:32:64
    python benchmarks/data_path.py --quick                 # seconds: a smoke run
    python benchmarks/data_path.py --photos 8              # 4000x3000 JPEG photos: decode per core, full vs reduced
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Case, machine_line, markdown_table, pretrain_augment, resolve_device, sync  # noqa: E402
from step_overhead import measure  # noqa: E402

from simclrv2.data import open_images  # noqa: E402
from simclrv2.data.loader import Loader, TrainCrops  # noqa: E402
from simclrv2.distributed import Runtime  # noqa: E402
from simclrv2.engine.loop import step_generator  # noqa: E402


def write_jpegs(folder: Path, count: int, size: int | tuple[int, int], seed: int = 0) -> int:
    """``count`` photo-like JPEGs in ``folder`` (``size``: a side, or (width, height)); returns their total
    size in bytes."""
    rng = np.random.default_rng(seed)
    width, height = (size, size) if isinstance(size, int) else size
    total = 0
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(field + noise, 0, 255).astype(np.uint8)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def _jpeg_size(text: str) -> int | tuple[int, int]:
    if "x" in text:
        width, height = text.split("x")
        return int(width), int(height)
    return int(text)


def _size_text(size: int | tuple[int, int]) -> str:
    return f"{size}x{size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"


def data_rate(folder: Path, case: Case, workers: int, device: torch.device, epochs: int = 1,
              views: bool = True) -> dict:
    """Images/s from JPEG files to the two augmented views (or, ``views`` False, to the uint8
    batch on the device), through the Loader."""
    images = open_images(str(folder), labeled=False)
    runtime = Runtime(0, 1, 0, device)
    augment = pretrain_augment(case)
    start = time.perf_counter()
    loader = Loader(images, "train", case.load_size, case.batch, runtime, seed=0, workers=workers, cache="off",
                    crops=TrainCrops.of(augment.config, views=2))
    count, step, first_batch_s = 0, 0, None
    t0 = None
    for epoch in range(epochs + 1):  # epoch 0 warms up (worker start, first decodes)
        for batch in loader.epoch(epoch):
            if views:
                g = step_generator(0, step, 0, device)
                out = torch.cat([augment(batch.images, batch.sizes, g, view=0),
                                 augment(batch.images, batch.sizes, g, view=1)])
                del out
            step += 1
            if first_batch_s is None:
                sync(device)
                first_batch_s = time.perf_counter() - start
            if epoch > 0:
                count += batch.images.shape[0]
        if epoch == 0:
            sync(device)
            t0 = time.perf_counter()
    sync(device)
    elapsed = time.perf_counter() - t0
    if loader._loader is not None and workers > 0:  # stop persistent workers
        del loader
    return {"workers": workers, "ips": count / elapsed, "first_batch_s": first_batch_s, "images": count}


def photo_decode(count: int, width: int, height: int, cases: list[tuple[str, int, float]], repeats: int = 3) -> list:
    """Per-core images/s of decode + preprocess of large JPEG photos, decoded in full and at the reduced
    JPEG scale the loader now asks for (``load_rgb(path, at_least)``), alternated, median of ``repeats``."""
    from simclrv2.data.images import load_rgb
    from simclrv2.data.loader import needed_side, preprocess

    rows = []
    with tempfile.TemporaryDirectory(prefix="simclrv2_photos_") as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(count):
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
            pixels = np.clip(field + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
            paths.append(Path(tmp) / f"photo_{i}.jpg")
            Image.fromarray(pixels).save(paths[-1], quality=90)
        mib = sum(p.stat().st_size for p in paths) / count / 2**20
        for mode, size, crop in cases:
            times = {"full": [], "reduced": []}
            for _ in range(repeats):
                for name, side in (("full", None), ("reduced", needed_side(mode, size, crop))):
                    start = time.perf_counter()
                    for path in paths:
                        preprocess(load_rgb(path, side), mode, size, crop)
                    times[name].append((time.perf_counter() - start) / count)
            full, reduced = float(np.median(times["full"])), float(np.median(times["reduced"]))
            rows.append([f"{width}x{height} JPEG ({mib:.1f} MiB) -> {mode} {size} px", f"{1 / full:.1f}",
                         f"{1 / reduced:.1f}", f"{full / reduced:.1f}x"])
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="r50_1x_sk0:96:16", help="model:size:batch of the training step")
    parser.add_argument("--images", type=int, default=512, help="JPEG files to write")
    parser.add_argument("--jpeg-size", type=_jpeg_size, default=256,
                        help="side of the JPEGs in pixels, or WIDTHxHEIGHT")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="Loader worker counts")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per worker count")
    parser.add_argument("--step-rate", type=float, default=None,
                        help="full-step images/s (skip measuring it here)")
    parser.add_argument("--step-warmup", type=int, default=2)
    parser.add_argument("--step-steps", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--photos", type=int, default=None, metavar="N",
                        help="instead: decode images/s per core of N large JPEG photos (--photo-size), in full "
                             "and at reduced JPEG scale")
    parser.add_argument("--photo-size", default="4000x3000", help="WIDTHxHEIGHT of the --photos JPEGs")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.photos:
        width, height = (int(v) for v in args.photo_size.lower().split("x"))
        rows = photo_decode(args.photos, width, height, [("train", 256, 1.0), ("eval", 224, 0.875),
                                                         ("train", 146, 1.0)])
        print(f"# data_path --photos ({datetime.date.today()})\n")
        print(machine_line(torch.device("cpu")) + f"; one process, {args.photos} photos, median of 3 passes\n")
        print(markdown_table(["photo -> loader output", "full decode img/s per core", "reduced decode img/s per core",
                              "speed-up"], rows))
        return {"photos": rows}
    device = resolve_device(args.device)
    if args.quick:
        args.case, args.images, args.jpeg_size = "r18_0.25x_sk0:16:8", 32, 64
        args.step_warmup, args.step_steps = 1, 1
    case = Case.parse(args.case)

    with tempfile.TemporaryDirectory(prefix="simclrv2_jpegs_") as tmp:
        folder = Path(tmp)
        nbytes = write_jpegs(folder, args.images, args.jpeg_size)
        rates = [data_rate(folder, case, w, device, args.epochs) for w in args.workers]
        decode = [data_rate(folder, case, w, device, args.epochs, views=False) for w in args.workers]

    if args.step_rate is not None:
        step_ips, step_note = args.step_rate, "given (--step-rate)"
    else:
        precision = "bf16" if device.type == "cuda" else "fp32"
        result = measure(case, device, args.step_warmup, args.step_steps, precision,
                         channels_last=device.type == "cuda")
        step_ips, step_note = result["full_ips"], f"measured (median of {args.step_steps})"

    print(f"# data_path ({datetime.date.today()})\n")
    print(machine_line(device) + f", device: {device}; {args.images} JPEGs of {_size_text(args.jpeg_size)} "
          f"({nbytes / args.images / 1024:.0f} KiB each), load size {case.load_size}, "
          f"{case.model} @ {case.size} px, batch {case.batch}\n")
    rows = []
    for r, d in zip(rates, decode):
        if r["workers"] == 0:
            combined = 1 / (1 / r["ips"] + 1 / step_ips)
            note = "loading and step alternate in one process"
        else:
            combined = min(r["ips"], step_ips)
            note = "decoding overlaps the step (upper bound)"
        limit = "data" if r["ips"] < step_ips else "step"
        rows.append([f"Loader, workers={r['workers']}, cache off -> 2 views", f"{d['ips']:.1f}", f"{r['ips']:.1f}",
                     f"{step_ips:.1f}", limit, f"{combined:.1f}", note])
    print(markdown_table(["data path", "decode only img/s", "data img/s", "step img/s", "limits", "combined img/s",
                          "note"], rows))
    print(f"\nstep: full pretraining step of {case.model} @ {case.size} px, batch {case.batch}, {step_note}; "
          f"first batch after start: " + ", ".join(f"workers={r['workers']} {r['first_batch_s']:.2f} s" for r in rates))
    return {"rates": rates, "step_ips": step_ips}


if __name__ == "__main__":
    main()
