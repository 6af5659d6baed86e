"""JPEG decoders for the training crops: images/s per CPU core of each candidate, the two crops included.

The training loader's workers now crop from the full-resolution image (``ImageDataset.cropped``): per
image they read the header, draw the two official boxes (``TrainCrops(224, views=2)``, TF's
``sample_distorted_bounding_box``), decode at the largest JPEG DCT reduction (1/2, 1/4, 1/8) that keeps
the smaller box's shorter side at 224 decoded pixels or more (``reduced_side``), and resample both boxes
to 224 x 224 (``crops.crop_pixels``). This script writes photo-like JPEGs (smooth colour fields, hard
edged shapes, sensor-like noise, quality 90) at the ImageNet-typical 500x375 and a phone's 4000x3000 to a
temporary folder and measures, in this one process on one thread, images per CPU second (so: per core;
the process's CPU time, which other processes on a shared machine do not inflate) for each decoder:

  full decode     file -> uint8 (H, W, 3) at full size;
  reduced decode  the same at the reduced scale the image's two boxes allow;
  + 2 crops       the whole per-image work of a worker: header, the two boxes, the reduced decode and the
                  two crops to 224 px, through simclrv2's own ``TrainCrops`` and ``crop_pixels`` (for
                  Pillow: ``ImageDataset.cropped`` itself, the loader's code path).

Candidates: Pillow with ``draft`` (``simclrv2.data.images.load_rgb``, what the loader uses); simplejpeg
(``decode_jpeg(min_height=, min_width=)``), held to the 1/2, 1/4, 1/8 scales Pillow uses and at its own
choice of any k/8 scale; PyTurboJPEG (``scaling_factor``) where its libturbojpeg loads
(``--turbojpeg-lib`` names one); torchvision's nvJPEG ``decode_jpeg`` on CUDA where a GPU and torchvision
exist (images/s per GPU). And the old path for comparison: decode at the 256 px reduction and squash the
whole image to 256 x 256 with Pillow bicubic (the loader before the crops moved to the workers; the
crops then happened on the device). Each image keeps its crop seed across decoders; "views vs Pillow" is
the mean absolute difference of a decoder's uint8 views from Pillow's (0: the same pixels).

    python benchmarks/decode.py                   # 48 files of 500x375, 12 of 4000x3000, median of 3 passes
    python benchmarks/decode.py --sizes 4000x3000 --files 24
    python benchmarks/decode.py --turbojpeg-lib /path/to/libturbojpeg.so.0   # PyTurboJPEG 1.x: libjpeg-turbo 2.x
    python benchmarks/decode.py --quick           # seconds: a smoke run on small files
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line, markdown_table  # noqa: E402

from simclrv2.crops import crop_pixels  # noqa: E402
from simclrv2.data import ImageSet  # noqa: E402
from simclrv2.data.images import load_rgb  # noqa: E402
from simclrv2.data.loader import ImageDataset, TrainCrops, item_seed, needed_side, preprocess, reduced_side  # noqa: E402

CROP = 224  # the training size of the crops (r50 at ImageNet resolution)
OLD_SIZE = 256  # the load size the old path squashed every image to
_ORIENTATION = 0x0112


# ------------------------------------------------------------------ the test photos

def photo(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like uint8 (height, width, 3) image: a smooth colour field (a bicubic upsampling of a coarse
    random grid, as sky, walls and out-of-focus backgrounds), a few hard-edged shapes (object boundaries,
    the high-frequency content JPEG spends its bits on) and per-pixel noise of a phone sensor."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = min(width, x0 + int(rng.integers(width // 20 + 1, width // 3 + 2)))
        y1 = min(height, y0 + int(rng.integers(height // 20 + 1, height // 3 + 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 6.0
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"photo_{width}x{height}_{i:03d}.jpg"
        Image.fromarray(photo(width, height, rng)).save(path, "JPEG", quality=90)
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------ the decoders

def pow2_factor(height: int, width: int, at_least: int | None) -> int:
    """The reduction Pillow's ``draft`` picks in ``load_rgb``: the largest of 8, 4, 2 whose decoded sides
    keep ``at_least`` pixels (only when the shorter side is twice that or more), else 1."""
    if not at_least or min(height, width) < 2 * at_least:
        return 1
    scale = min(width // at_least, height // at_least)
    return next(k for k in (8, 4, 2, 1) if scale >= k)


def pillow_header(data: bytes) -> tuple[int, int]:
    """The upright (height, width) from the header, EXIF orientation included (``images.upright_size``)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_ORIENTATION, 1)
        except Exception:  # noqa: BLE001 - a damaged EXIF block counts as upright, as in images.py
            orientation = 1
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


@dataclass
class Decoder:
    """A candidate: ``decode(data, height, width, at_least)`` -> uint8 (h, w, 3) from the file's bytes."""

    name: str
    decode: Callable[[bytes, int, int, int | None], np.ndarray] | None
    skipped: str = ""  # why it does not run here
    note: str = ""


def simplejpeg_decoders() -> list[Decoder]:
    try:
        import simplejpeg
    except ImportError:
        return [Decoder("simplejpeg", None, skipped="not installed (pip install simplejpeg)")]

    def pow2(data: bytes, height: int, width: int, at_least: int | None) -> np.ndarray:
        k = pow2_factor(height, width, at_least)
        if k == 1:
            return simplejpeg.decode_jpeg(data, "RGB")
        return simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // k), min_width=-(-width // k))

    def any_scale(data: bytes, height: int, width: int, at_least: int | None) -> np.ndarray:
        return simplejpeg.decode_jpeg(data, "RGB", min_height=at_least or 0, min_width=at_least or 0)

    version = getattr(simplejpeg, "__version__", "?")
    return [Decoder(f"simplejpeg {version} (1/2, 1/4, 1/8)", pow2),
            Decoder(f"simplejpeg {version} (any k/8)", any_scale,
                    note="scaled decode at the smallest of libjpeg-turbo's k/8 scales that keeps the sides")]


def turbojpeg_decoder(lib_path: str | None) -> Decoder:
    try:
        import turbojpeg
    except ImportError:
        return Decoder("PyTurboJPEG", None, skipped="not installed (pip install PyTurboJPEG)")
    try:
        jpeg = turbojpeg.TurboJPEG(lib_path) if lib_path else turbojpeg.TurboJPEG()
    except Exception as exc:  # noqa: BLE001 - no libturbojpeg, or one of the wrong major version
        reason = " ".join(str(exc).split())
        return Decoder("PyTurboJPEG", None, skipped=f"its libturbojpeg does not load: {reason[:160]}")

    def decode(data: bytes, height: int, width: int, at_least: int | None) -> np.ndarray:
        k = pow2_factor(height, width, at_least)
        return jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=None if k == 1 else (1, k))

    return Decoder(f"PyTurboJPEG {getattr(turbojpeg, '__version__', '')} (1/2, 1/4, 1/8)".replace("  ", " "), decode)


def gpu_decode_reason() -> str:
    """Why the nvJPEG row cannot run here ("" when it can)."""
    reasons = []
    if not torch.cuda.is_available():
        reasons.append(f"no CUDA device (torch {torch.__version__})")
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        reasons.append("torchvision not installed")
    return "; ".join(reasons)


# ------------------------------------------------------------------ the measurements

@dataclass
class Files:
    """A set of photos of one size, with each image's crop seed and the decode side its two boxes allow."""

    label: str
    paths: list[str]
    height: int
    width: int
    seeds: list[int] = field(default_factory=list)
    sides: list[int | None] = field(default_factory=list)
    mib: float = 0.0

    def __post_init__(self) -> None:
        crops = TrainCrops(CROP, views=2)
        self.seeds = [item_seed(0, 0, j) for j in range(len(self.paths))]
        self.sides = []
        for seed in self.seeds:
            boxes = crops.boxes(self.height, self.width, torch.Generator().manual_seed(seed))
            self.sides.append(reduced_side(min(self.height, self.width), int(boxes[:, 2:].min()), CROP))
        self.mib = sum(os.path.getsize(p) for p in self.paths) / len(self.paths) / 2**20


def crops_with(decoder: Decoder, data: bytes, seed: int) -> torch.Tensor:
    """``ImageDataset.cropped`` with ``decoder`` in place of Pillow: header, the two boxes, the reduced
    decode, the two crops."""
    crops = TrainCrops(CROP, views=2)
    height, width = pillow_header(data)
    boxes = crops.boxes(height, width, torch.Generator().manual_seed(seed))
    side = reduced_side(min(height, width), int(boxes[:, 2:].min()), CROP)
    array = decoder.decode(data, height, width, side)
    scale = torch.tensor([array.shape[0] / height, array.shape[1] / width] * 2, dtype=torch.float64)
    return crop_pixels(torch.from_numpy(array), boxes.to(torch.float64) * scale, CROP)


def each(results) -> None:
    """Run a generator of calls, dropping each result at once (a worker holds one image at a time)."""
    for _ in results:
        pass


def tasks(files: Files, decoders: list[Decoder]) -> dict[str, dict[str, Callable[[], object]]]:
    """Per row, its measurements: each a function that does every file once."""
    dataset = ImageDataset(ImageSet(paths=files.paths, arrays=None, labels=np.full(len(files.paths), -1),
                                    class_names=[], name="decode"), "train", CROP, crops=TrainCrops(CROP, views=2))
    n = range(len(files.paths))
    old_side = needed_side("train", OLD_SIZE, 1.0)
    rows: dict[str, dict[str, Callable[[], object]]] = {
        "Pillow draft (load_rgb, the loader's)": {
            "full": lambda: each(load_rgb(p) for p in files.paths),
            "reduced": lambda: each(load_rgb(p, s) for p, s in zip(files.paths, files.sides)),
            "crops": lambda: each(dataset.cropped(j, files.seeds[j]) for j in n),
        },
    }
    for decoder in decoders:
        if decoder.decode is None:
            continue
        rows[decoder.name] = {
            "full": lambda d=decoder: each(d.decode(Path(p).read_bytes(), files.height, files.width, None)
                                           for p in files.paths),
            "reduced": lambda d=decoder: each(d.decode(Path(p).read_bytes(), files.height, files.width, s)
                                              for p, s in zip(files.paths, files.sides)),
            "crops": lambda d=decoder: each(crops_with(d, Path(p).read_bytes(), files.seeds[j])
                                            for j, p in enumerate(files.paths)),
        }
    crops = TrainCrops(CROP, views=2)
    decoded = []  # Pillow's reduced decode of each file and its two boxes in the decoded grid
    for path, seed, side in zip(files.paths, files.seeds, files.sides):
        boxes = crops.boxes(files.height, files.width, torch.Generator().manual_seed(seed)).to(torch.float64)
        array = torch.from_numpy(load_rgb(path, side))
        scale = torch.tensor([array.shape[0] / files.height, array.shape[1] / files.width] * 2, dtype=torch.float64)
        decoded.append((array, boxes * scale))
    rows["the two crop_pixels alone (decoded in advance)"] = {
        "crops": lambda: each(crop_pixels(array, boxes, CROP) for array, boxes in decoded),
    }
    rows[f"old path: Pillow, whole image squashed to {OLD_SIZE} (no crops)"] = {
        "reduced": lambda: each(load_rgb(p, old_side) for p in files.paths),
        "crops": lambda: each(preprocess(load_rgb(p, old_side), "train", OLD_SIZE, 1.0) for p in files.paths),
    }
    return rows


def measure(files: Files, decoders: list[Decoder], passes: int) -> dict[str, dict[str, float]]:
    """Images per CPU second of every (row, measurement): the median over ``passes`` passes (one warm-up
    pass first), rows interleaved within a pass. This process's CPU time (``time.process_time``, one
    thread) is the time the work takes on a core of its own: a core shared with other processes slows
    the wall clock, not it (shared caches and memory bandwidth still can)."""
    rows = tasks(files, decoders)
    times: dict[str, dict[str, list[float]]] = {r: {m: [] for m in fns} for r, fns in rows.items()}
    for p in range(passes + 1):
        for row, fns in rows.items():
            for what, fn in fns.items():
                start = time.process_time()
                fn()
                if p:
                    times[row][what].append(time.process_time() - start)
    count = len(files.paths)
    return {row: {what: count / statistics.median(ts) for what, ts in ms.items()} for row, ms in times.items()}


def view_difference(files: Files, decoders: list[Decoder]) -> dict[str, float]:
    """Mean |difference| (uint8 levels) of each decoder's two views from Pillow's, over the files."""
    dataset = ImageDataset(ImageSet(paths=files.paths, arrays=None, labels=np.full(len(files.paths), -1),
                                    class_names=[], name="decode"), "train", CROP, crops=TrainCrops(CROP, views=2))
    reference = [dataset.cropped(j, files.seeds[j])[0].to(torch.int16) for j in range(len(files.paths))]
    out = {}
    for decoder in decoders:
        if decoder.decode is not None:
            diffs = [(crops_with(decoder, Path(p).read_bytes(), files.seeds[j]).to(torch.int16) - reference[j])
                     .abs().float().mean().item() for j, p in enumerate(files.paths)]
            out[decoder.name] = float(np.mean(diffs))
    return out


def gpu_rates(files: Files, passes: int) -> dict[str, float]:
    """torchvision's nvJPEG decode on the GPU, batched: full decode, and full decode + the two crops on the
    device (nvJPEG has no DCT scaling); images/s per GPU, the file reads included."""
    import torchvision.io

    device = torch.device("cuda")
    crops = TrainCrops(CROP, views=2)

    def full() -> list:
        datas = [torchvision.io.read_file(p) for p in files.paths]
        out = torchvision.io.decode_jpeg(datas, mode=torchvision.io.ImageReadMode.RGB, device=device)
        torch.cuda.synchronize(device)
        return out

    def with_crops() -> list:
        views = []
        for j, image in enumerate(full()):
            height, width = image.shape[1:]
            boxes = crops.boxes(height, width, torch.Generator().manual_seed(files.seeds[j])).to(torch.float64)
            views.append(crop_pixels(image.permute(1, 2, 0), boxes, CROP))
        torch.cuda.synchronize(device)
        return views

    times: dict[str, list[float]] = {"full": [], "crops": []}
    for p in range(passes + 1):
        for what, fn in (("full", full), ("crops", with_crops)):
            start = time.perf_counter()
            fn()
            if p:
                times[what].append(time.perf_counter() - start)
    return {what: len(files.paths) / statistics.median(ts) for what, ts in times.items()}


def size_of(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["500x375", "4000x3000"], help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--files", type=int, nargs="+", default=[48, 12],
                        help="JPEG files per size (one number: the same for every size)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the files (median)")
    parser.add_argument("--gpu-rate", type=float, default=3000.0,
                        help="images/s one GPU trains at (r50 at 224 px: about 3,000), for the cores column")
    parser.add_argument("--turbojpeg-lib", default=os.environ.get("TURBOJPEG_LIB"),
                        help="path of libturbojpeg.so for PyTurboJPEG (default: its own search)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.files, args.passes = ["320x240", "1200x900"], [3, 2], 1
    files_per_size = args.files * len(args.sizes) if len(args.files) == 1 else args.files
    if len(files_per_size) != len(args.sizes):
        parser.error("--files takes one number or one per --sizes")
    torch.set_num_threads(1)  # per core: the loader's workers run one thread each

    decoders = simplejpeg_decoders() + [turbojpeg_decoder(args.turbojpeg_lib)]
    gpu_reason = gpu_decode_reason()
    headers = ["JPEG", "decoder", "full decode img/s", "reduced decode img/s", f"+ 2 crops to {CROP} img/s",
               "vs Pillow (+ 2 crops)", f"cores per GPU at {args.gpu_rate:.0f} img/s",
               "views vs Pillow (mean abs, uint8)"]
    table, results = [], {}
    with tempfile.TemporaryDirectory(prefix="simclrv2_decode_") as tmp:
        for text, count in zip(args.sizes, files_per_size):
            width, height = size_of(text)
            files = Files(text, write_photos(Path(tmp), count, width, height), height, width)
            rates = measure(files, decoders, args.passes)
            diffs = view_difference(files, decoders)
            pillow = rates["Pillow draft (load_rgb, the loader's)"]["crops"]
            reduced = sum(s is not None and pow2_factor(height, width, s) > 1 for s in files.sides)
            label = f"{text} ({files.mib:.2f} MiB; {reduced}/{count} reduced)"
            for row, r in rates.items():
                diff = 0.0 if row.startswith("Pillow") else diffs.get(row)
                table.append([label, row, r.get("full", "-"), r.get("reduced", "-"), r["crops"],
                              f"{r['crops'] / pillow:.2f}x", f"{args.gpu_rate / r['crops']:.1f}",
                              "-" if diff is None else f"{diff:.2f}"])
            if not gpu_reason:
                g = gpu_rates(files, args.passes)
                table.append([label, f"torchvision nvJPEG on {torch.cuda.get_device_name()} (per GPU)", g["full"],
                              "-", g["crops"], "-", "-", "-"])
                rates["nvjpeg"] = g
            results[text] = rates

    print(f"# decode ({datetime.date.today()})\n")
    print(machine_line(torch.device("cpu")) + f"; one process, one thread: images per CPU second (per core), "
          f"median of {args.passes} pass(es) over the files\n")
    print(markdown_table(headers, table))
    print(f"\nfull decode: file -> uint8 (H, W, 3) at full size; reduced decode: at the 1/2, 1/4, 1/8 scale "
          f"the image's two {CROP} px boxes allow (\"any k/8\": simplejpeg's own scale choice); + 2 crops: the "
          f"worker's whole per-image work (file read, header and EXIF by Pillow, the two TrainCrops({CROP}, "
          f"views=2) boxes, reduced decode, crop_pixels of both). \"n/m reduced\": images whose boxes allow a "
          f"1/2 or smaller scale. Old path: decode at the {OLD_SIZE} px reduction and squash to {OLD_SIZE} x "
          f"{OLD_SIZE} (its crops ran on the device).")
    for decoder in decoders:
        if decoder.skipped:
            print(f"skipped: {decoder.name}: {decoder.skipped}")
    if gpu_reason:
        print(f"skipped: GPU decode (torchvision.io.decode_jpeg on CUDA): {gpu_reason}")
    return results


if __name__ == "__main__":
    main()
