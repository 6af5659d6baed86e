"""The usual PyTorch SimCLR loop, written plainly, against ``simclrv2 pretrain``, side by side.

The *reference* is SimCLR as it is usually written in PyTorch (the recipe of a widely used peer
library): a ``Dataset`` that opens each JPEG with PIL and draws two views per image with per-image
PIL transforms (random resized crop, flip, colour jitter in random order with p 0.8, grayscale
p 0.2, Gaussian blur p 0.5 above 32 px, to a float tensor) in ``DataLoader`` worker processes;
the model called once per view (two forward passes); NT-Xent; SGD with momentum. No torchvision
here (its wheels need the CUDA torch), so the transforms are written with PIL, as torchvision's
own PIL code paths do them. The network is the same as ours: ``build_model`` of the pretraining
config (ResNet + 3-layer projection head), channels-first, fp32.

*Ours* is the real thing: the engine of a ``simclrv2 pretrain`` run built by the stage's own
``build`` from the same folder with every default (loader and its cache, workers, channels-last,
precision, LARS, the augmentation on the device), stepping with ``Engine.train_step``.

Two measurements, on the same folder of JPEGs (``--images`` files, written at the case's size):

- per step: blocks of ``--block`` steps of each loop alternate (``--rounds`` rounds); the first
  ``--skip`` steps of every block are dropped (the other loop's workers may still be prefetching);
  a step is timed from asking for the batch to the end of the optimizer step; medians.
- whole run: a one-epoch ``simclrv2 pretrain`` process against a one-epoch process of this
  script's reference (``python benchmarks/reference_loop.py train ...``, which also saves a
  checkpoint at the end, as such scripts do), alternated ``--runs`` times; wall-clock medians,
  start-up, cache fill and checkpoint writes included.

An image counts once (its two views are one image); ratio = ours / reference images/s.

    python benchmarks/reference_loop.py                          # r18 @ 32, r18 @ 96, r50 @ 96; batch 64
    python benchmarks/reference_loop.py --cases r18_1x_sk0:96:64 --ours channels_last=off channels_last=on
    python benchmarks/reference_loop.py --quick                  # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Case, machine_line, markdown_table, median  # noqa: E402
from data_path import write_jpegs  # noqa: E402

from simclrv2.config import from_mapping  # noqa: E402
from simclrv2.distributed import single_process  # noqa: E402
from simclrv2.engine import Engine, RunFolder, StepSettings  # noqa: E402
from simclrv2.models import build_model, contrastive_config  # noqa: E402
from simclrv2.stages import pretrain  # noqa: E402

DEFAULT_CASES = ("r18_1x_sk0:32:64", "r18_1x_sk0:96:64", "r50_1x_sk0:96:64")
QUICK_CASES = ("r18_0.25x_sk0:32:16",)


# ------------------------------------------------------------------ the reference loop

class ReferenceViews:
    """Two SimCLR views of a PIL image, drawn per image with PIL (torchvision's PIL code paths)."""

    def __init__(self, size: int):
        self.size = size
        self.strength = 0.5 if size <= 32 else 1.0  # SimCLR's CIFAR strength at small sizes
        self.blur = size > 32

    def crop(self, image: Image.Image, rng: random.Random) -> Image.Image:
        """RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)), bilinear."""
        width, height = image.size
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(0.08, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.randint(0, width - w), rng.randint(0, height - h)
                break
        else:
            w, h = min(width, height), min(width, height)
            left, top = (width - w) // 2, (height - h) // 2
        return image.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))

    def jitter(self, image: Image.Image, rng: random.Random) -> Image.Image:
        """ColorJitter(0.8s, 0.8s, 0.8s, 0.2s): the four adjustments in random order."""
        s = self.strength
        ops = [0, 1, 2, 3]
        rng.shuffle(ops)
        for op in ops:
            if op == 0:
                image = ImageEnhance.Brightness(image).enhance(rng.uniform(max(0, 1 - 0.8 * s), 1 + 0.8 * s))
            elif op == 1:
                image = ImageEnhance.Contrast(image).enhance(rng.uniform(max(0, 1 - 0.8 * s), 1 + 0.8 * s))
            elif op == 2:
                image = ImageEnhance.Color(image).enhance(rng.uniform(max(0, 1 - 0.8 * s), 1 + 0.8 * s))
            else:
                shift = rng.uniform(-0.2 * s, 0.2 * s)
                h, sat, v = image.convert("HSV").split()
                hue = np.asarray(h, dtype=np.uint8)
                h = Image.fromarray((hue.astype(np.int16) + int(shift * 255)).astype(np.uint8), "L")
                image = Image.merge("HSV", (h, sat, v)).convert("RGB")
        return image

    def view(self, image: Image.Image, rng: random.Random) -> torch.Tensor:
        x = self.crop(image, rng)
        if rng.random() < 0.5:
            x = x.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.8:
            x = self.jitter(x, rng)
        if rng.random() < 0.2:
            x = x.convert("L").convert("RGB")
        if self.blur and rng.random() < 0.5:
            x = x.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
        return torch.from_numpy(np.asarray(x, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


class TwoViewFolder(Dataset):
    """Every JPEG of a folder as two views."""

    def __init__(self, folder: Path, size: int):
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        self.views = ReferenceViews(size)
        self.rng = random.Random(0)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.paths[i]) as f:
            image = f.convert("RGB")
        return self.views.view(image, self.rng), self.views.view(image, self.rng)


def seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = random.Random(info.seed)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of SimCLR: each view against the other 2N - 1 (its positive is the other view)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class ReferenceLoop:
    """The usual loop: PIL views in ``workers`` processes, two forward passes, NT-Xent, SGD."""

    def __init__(self, folder: Path, case: Case, workers: int = 1, temperature: float = 0.1):
        torch.manual_seed(0)
        self.data = TwoViewFolder(folder, case.size)
        self.loader = DataLoader(self.data, batch_size=case.batch, shuffle=True, drop_last=True,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 worker_init_fn=seed_worker)
        self.model = build_model(contrastive_config(case.model, case.size <= 32))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
        self.temperature = temperature
        self.batches = iter(())
        self.model.train()

    def step(self) -> float:
        try:
            x1, x2 = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            x1, x2 = next(self.batches)
        z1, _ = self.model(x1)
        z2, _ = self.model(x2)
        loss = nt_xent(z1, z2, self.temperature)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def epoch(self) -> None:
        for _ in range(len(self.loader)):
            self.step()


def train_reference(folder: Path, case: Case, epochs: int, out: Path, workers: int) -> None:
    """The reference as a whole script: ``epochs`` epochs, then a checkpoint."""
    loop = ReferenceLoop(folder, case, workers)
    for _ in range(epochs):
        loop.epoch()
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict()},
                   out / "checkpoint.pt")


# ------------------------------------------------------------------ ours

class OurLoop:
    """The engine of a real ``simclrv2 pretrain`` run on ``folder`` (the stage's build, every default)."""

    def __init__(self, folder: Path, case: Case, out: Path, **settings):
        cfg = from_mapping(pretrain.PretrainConfig, {
            "data": str(folder), "out": str(out), "model": case.model, "image_size": case.size,
            "batch_size": case.batch, "epochs": 1000, "tensorboard": False, **settings})
        torch.manual_seed(0)
        runtime = single_process(cfg.device)
        self.engine = Engine(pretrain.build(cfg, runtime, StepSettings.of(cfg, runtime)), runtime, RunFolder(cfg.out))
        self.engine.step.train()
        self.epoch_index = 0
        self.batches = iter(())

    def step(self) -> None:
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = self.engine.loader.epoch(self.epoch_index)
            self.epoch_index += 1
            batch = next(self.batches)
        self.engine.train_step(batch)


def parse_settings(text: str) -> dict:
    """``key=value,key=value`` -> settings of ours ("default": none)."""
    if text == "default":
        return {}
    settings = {}
    for item in text.split(","):
        key, value = item.split("=", 1)
        settings[key] = {"true": True, "false": False}.get(value, value)
    return settings


def per_step(folder: Path, case: Case, variants: list[str], rounds: int, block: int, skip: int,
             workers: int) -> dict[str, float]:
    """Median seconds per step of the reference and of each variant of ours, alternated in blocks."""
    loops: dict[str, object] = {"reference": ReferenceLoop(folder, case, workers)}
    with tempfile.TemporaryDirectory(prefix="simclrv2_ref_") as tmp:
        for v in variants:
            loops[v] = OurLoop(folder, case, Path(tmp) / v.replace("=", "_").replace(",", "_"), **parse_settings(v))
        times: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(rounds):
            for name, loop in loops.items():
                for k in range(block):
                    start = time.perf_counter()
                    loop.step()
                    if k >= skip:
                        times[name].append(time.perf_counter() - start)
    return {name: median(t) for name, t in times.items()}


def whole_run(folder: Path, case: Case, runs: int, workers: int, variants: list[str]) -> dict[str, float]:
    """Median wall seconds of a one-epoch process: the reference script and ``simclrv2 pretrain``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    walls: dict[str, list[float]] = {"reference": []}
    walls.update({v: [] for v in variants})
    with tempfile.TemporaryDirectory(prefix="simclrv2_runs_") as tmp:
        for r in range(runs):
            for name in walls:
                out = Path(tmp) / f"{name}_{r}".replace("=", "_").replace(",", "_")
                if name == "reference":
                    command = [sys.executable, __file__, "train", str(folder), "--case",
                               f"{case.model}:{case.size}:{case.batch}", "--out", str(out), "--workers", str(workers)]
                else:
                    command = [sys.executable, "-m", "simclrv2", "pretrain", "--data", str(folder), "--model",
                               case.model, "--image-size", str(case.size), "--batch-size", str(case.batch),
                               "--epochs", "1", "--out", str(out), "--no-tensorboard"]
                    for key, value in parse_settings(name).items():
                        flag = key.replace("_", "-")
                        if isinstance(value, bool):
                            command.append(f"--{flag}" if value else f"--no-{flag}")
                        else:
                            command += [f"--{flag}", str(value)]
                start = time.perf_counter()
                done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                walls[name].append(time.perf_counter() - start)
                if done.returncode:
                    raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return {name: median(w) for name, w in walls.items()}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # the reference as a whole script (the whole-run measurement runs it)
        p = argparse.ArgumentParser(prog="reference_loop.py train")
        p.add_argument("folder", type=Path)
        p.add_argument("--case", required=True)
        p.add_argument("--epochs", type=int, default=1)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--workers", type=int, default=1)
        a = p.parse_args(argv[1:])
        train_reference(a.folder, Case.parse(a.case), a.epochs, a.out, a.workers)
        return {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="model:size:batch")
    parser.add_argument("--ours", nargs="+", default=["default"],
                        help="settings of ours to measure, each 'default' or key=value[,key=value] "
                             "(e.g. channels_last=on)")
    parser.add_argument("--images", type=int, default=512, help="JPEG files to write")
    parser.add_argument("--workers", type=int, default=1, help="the reference's DataLoader workers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=6)
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="whole-run repetitions (0: skip the whole runs)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.images, args.rounds, args.block, args.skip, args.runs = list(QUICK_CASES), 32, 1, 2, 1, 1
    rows, results = [], {}
    for text in args.cases:
        case = Case.parse(text)
        with tempfile.TemporaryDirectory(prefix="simclrv2_jpegs_") as tmp:
            folder = Path(tmp)
            write_jpegs(folder, args.images, case.size)
            steps = per_step(folder, case, args.ours, args.rounds, args.block, args.skip, args.workers)
            print(f"{text}: median s/step " + ", ".join(f"{k} {v:.3f}" for k, v in steps.items()), flush=True)
            walls = whole_run(folder, case, args.runs, args.workers, args.ours) if args.runs else {}
        results[text] = {"per_step_s": steps, "whole_run_s": walls}
        for name in args.ours:
            row = [f"{case.model} @ {case.size} px, B {case.batch}", name,
                   f"{case.batch / steps['reference']:.1f}", f"{case.batch / steps[name]:.1f}",
                   f"{steps['reference'] / steps[name]:.2f}"]
            if walls:
                row += [f"{walls['reference']:.1f}", f"{walls[name]:.1f}", f"{walls['reference'] / walls[name]:.2f}"]
            rows.append(row)
    headers = ["case", "ours", "reference img/s", "ours img/s", "per-step ratio"]
    if args.runs:
        headers += ["reference 1-epoch run s", "ours 1-epoch run s", "whole-run ratio"]
    print(f"# reference_loop ({datetime.date.today()})\n")
    print(machine_line(torch.device("cpu")) + f"; {args.images} JPEGs at the case's size, reference with "
          f"{args.workers} loader worker(s); per step: median of {args.rounds} x ({args.block} - {args.skip}) "
          f"alternated steps; whole run: median of {args.runs} alternated processes\n")
    print(markdown_table(headers, rows))
    return results


if __name__ == "__main__":
    main()
