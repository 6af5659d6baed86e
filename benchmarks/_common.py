"""Helpers shared by the benchmark scripts: machine description, timing, markdown tables, and the
real training steps of the stages on synthetic in-memory data (``stage_engine``)."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from simclrv2.augment import SimCLRAugment
from simclrv2.checkpoint import save_checkpoint
from simclrv2.config import DataOptions, from_mapping
from simclrv2.data import ImageSet
from simclrv2.data.loader import Batch
from simclrv2.distributed import single_process
from simclrv2.engine import Engine, RunFolder, StepSettings
from simclrv2.stages import stage_named
from simclrv2.stages.configs import PretrainConfig


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line(device: torch.device) -> str:
    """One line naming the CPU, cores, torch and (on CUDA) the GPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"cpu: {cpu_model()}", f"cores: {cores}", f"torch threads: {torch.get_num_threads()}",
             f"torch {torch.__version__}"]
    if hasattr(os, "getloadavg"):
        parts.append("1-min load average %.1f at report time (this run included)" % os.getloadavg()[0])
    if device.type == "cuda":
        parts.append(f"gpu: {torch.cuda.get_device_name(device)}")
        parts.append(f"cuda {torch.version.cuda}")
    return ", ".join(parts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------ the real training steps

SCHEDULE_STEPS = 10_000  # the learning-rate schedule of a benchmark engine: more steps than any run takes


@dataclass
class Case:
    """A model, an image side and a (global) batch size: ``model:size:batch`` on the command line."""

    model: str
    size: int
    batch: int

    @classmethod
    def parse(cls, text: str) -> "Case":
        model, size, batch = text.split(":")
        return cls(model, int(size), int(batch))

    @property
    def load_size(self) -> int:
        """The side of the squashed images the loader hands the step (the --load-size default)."""
        return DataOptions(image_size=self.size).resolved_load_size()


def make_batch(case: Case, device: torch.device, classes: int = 0, seed: int = 0) -> tuple[ImageSet, Batch]:
    """A synthetic data set of ``case.batch`` images and all of them as one batch, as the Loader
    hands it from its cache: uint8 (N, 3, L, L) at the load size, float32 original sizes (square L x L at
    <= 32 px; above, photo-like: height L, width / height in [0.6, 1.7]), labels in [0, classes) (-1
    without)."""
    g = torch.Generator().manual_seed(seed)
    n, side = case.batch, case.load_size
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    if case.size <= 32:
        aspect = torch.ones(n)
    else:
        aspect = torch.exp(math.log(0.6) + (math.log(1.7) - math.log(0.6)) * torch.rand(n, generator=g))
    sizes = torch.stack([torch.full((n,), float(side)), (side * aspect).round()], 1)
    labels = torch.randint(0, classes, (n,), generator=g) if classes else torch.full((n,), -1)
    data = ImageSet(paths=None, arrays=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy(),
                    class_names=[str(c) for c in range(classes)], name="synthetic")
    return data, Batch(images.to(device), sizes.to(device), labels.to(device), torch.arange(n))


def cropped_batch(batch: Batch, size: int, views: int = 2, seed: int = 0) -> Batch:
    """``batch`` as the Loader's workers hand it for images larger than the load size: ``views`` uint8 crops
    of ``size`` per image, already cut from the full-resolution image (ImageNet-like 375 x 500 originals)."""
    g = torch.Generator().manual_seed(seed)
    n = batch.images.shape[0]
    crops = torch.randint(0, 256, (n, views, 3, size, size), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[375.0, 500.0]]).expand(n, 2)
    device = batch.images.device
    return Batch(crops.to(device), sizes.to(device), batch.labels, batch.indices)


def pretrain_augment(case: Case) -> SimCLRAugment:
    """The pretraining step's augmentation (``PretrainConfig``'s defaults at ``case.size``)."""
    return SimCLRAugment(PretrainConfig(model=case.model, image_size=case.size).augment_config())


def stage_engine(stage: str, case: Case, data: ImageSet, device: torch.device, precision: str = "auto",
                 channels_last: str = "auto", compile_backend: str | None = None,
                 micro_batch: int | None = None, settings: dict | None = None) -> Engine:
    """The engine of a real run of the registered ``stage`` (``simclrv2.stages``) on ``data``, ready for
    ``engine.train_step(batch)``: its step, optimizer, schedule and autocast are the run's.

    The stage's own ``build`` makes the network, the step and the optimizer groups from its config: the
    stage's defaults, its ``example`` settings, and the checkpoints its ``needs`` name, made first by the
    same function (an untrained model.pt of the stage needed: weights do not change the timing). What
    differs from a run: ``--data`` is a folder of tiny PNGs with ``data``'s labels (class folders, every class
    present; flat without labels), about as many as ``data`` has (the steps take ``make_batch``'s batches, not
    the loader's);
    the schedule has ``SCHEDULE_STEPS`` steps and no warmup; no worker processes, no image cache.
    ``compile_backend``: ``--compile --compile-backend``. ``settings``: more options of the stage's config
    (``{"memory": 65536, "activation_checkpointing": True}``).
    """
    spec = stage_named(stage)
    runtime = single_process(str(device))
    common = {"data": _image_folder(data), "image_size": case.size, "batch_size": case.batch,
              "epochs": SCHEDULE_STEPS, "warmup_epochs": 0.0, "device": device.type, "precision": precision,
              "channels_last": channels_last, "workers": 0, "cache": "off", "tensorboard": False,
              "check_memory": False}
    needed = {key: str(_checkpoint_of(other, case, data, device, common)) for key, other in spec.needs.items()}
    options = {f.name for f in dataclasses.fields(spec.config)}
    own = {"model": case.model} if "model" in options and not spec.needs else {}
    compiled = {"compile": True, "compile_backend": compile_backend} if compile_backend else {}
    cfg = from_mapping(spec.config, {**common, **spec.example, **own, **needed, **compiled,
                                     "micro_batch": micro_batch, "out": str(Path(_runs().name) / stage),
                                     **(settings or {})})
    torch.manual_seed(0)
    parts = spec.build(cfg, runtime, StepSettings.of(cfg, runtime))
    parts.step.settings = StepSettings.of(parts.cfg, runtime)  # as engine.run does
    engine = Engine(parts, runtime, RunFolder(parts.cfg.out))
    engine.step.train()  # as Engine.fit does before its first step
    return engine


def _image_folder(data: ImageSet) -> str:
    """A folder of 8x8 PNGs standing for ``data``: one per image, in class folders when labeled (each of its
    classes with at least one image, so that a classifier has all of them); made once."""
    key = (id(data), len(data), tuple(data.labels.tolist()))
    if key not in _FOLDERS:
        from PIL import Image

        root = Path(tempfile.mkdtemp(prefix="data_", dir=_runs().name))
        labels = list(data.labels)
        if (data.labels >= 0).any():
            labels += sorted(set(range(len(data.class_names))) - set(labels))
        for i, label in enumerate(labels):
            folder = root / data.class_names[label] if label >= 0 else root
            folder.mkdir(exist_ok=True)
            pixels = ((i * 37 + np.arange(192)) % 256).astype(np.uint8).reshape(8, 8, 3)
            Image.fromarray(pixels).save(folder / f"{i:06d}.png")
        _FOLDERS[key] = str(root)
    return _FOLDERS[key]


_FOLDERS: dict[tuple, str] = {}


def _checkpoint_of(stage: str, case: Case, data: ImageSet, device: torch.device, common: dict) -> Path:
    """An untrained model.pt of ``stage`` (its record as a run writes it), for a stage that needs one."""
    path = Path(_runs().name) / f"needed_{stage}_{case.model}_{case.size}_{_image_folder(data)[-8:]}.pt"
    if not path.is_file():
        engine = stage_engine(stage, case, data, device, common["precision"], common["channels_last"])
        save_checkpoint({"record": engine.record.to_data(), "model": engine.model.state_dict()}, path)
    return path


@functools.cache
def _runs() -> tempfile.TemporaryDirectory:
    """Where the engines' run folders, data and needed checkpoints are (``train_step`` writes nothing); removed
    at exit."""
    return tempfile.TemporaryDirectory(prefix="simclrv2_bench_")


def measured_peak(engine: Engine, batch: Batch, steps: int = 2) -> int:
    """Bytes alive at the highest point of ``steps`` real training steps of ``engine`` (the memory estimate's
    reference). CUDA: ``torch.cuda.max_memory_allocated``. CPU: the step's weights and buffers plus the
    highest running sum of the CPU allocator's allocations and frees (the profiler's memory events)."""
    device = engine.runtime.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            engine.train_step(batch)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    from torch.profiler import ProfilerActivity, profile

    held = {id(t): t for m in engine.step.modules().values() for t in [*m.parameters(), *m.buffers()]}
    resident = sum(t.untyped_storage().nbytes() for t in held.values())
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(steps):
            engine.train_step(batch)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return resident + peak
