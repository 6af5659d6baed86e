"""The option groups every training stage composes (``StageConfig``), and what the engine asks of them:
the saved form of a config (``with_absolute_paths``) and what may change on resume
(``resumable_changes``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from .options import MAX_IMAGE_SIZE, option, user_key

# -- The option groups every training stage composes ------------------------------------------
# A stage's config is StageConfig plus its own options; it changes a group's defaults with
# ``@defaults(...)``, never by declaring the option again.

# --recalibrate-bn's suggested value (off by default: on the demo's recipe it cost 0-2 points, BENCHMARKS.md
# section 7; it rescues runs too short for the moving averages to follow the weights)
RECALIBRATION_IMAGES = 4096


@dataclasses.dataclass
class DataOptions:
    """Which images, at what size, and which are held out."""

    data: str = option("", "training images: a folder, a CSV/TSV list, or 'digits'", required=True, path=True)
    eval_data: Optional[str] = option(None, "held-out images for evaluation (else --holdout of --data)", path=True)
    holdout: float = option(0.0, "fraction of --data held out for evaluation when --eval-data is not "
                            "given (stratified, seeded, never trained on)", minimum=0, maximum=0.9)
    image_size: int = option(224, "side of the training images in pixels", minimum=8, maximum=MAX_IMAGE_SIZE)
    load_size: Optional[int] = option(None, "side at which data no larger than it is cached whole and cropped on "
                                      "the device (larger images are cropped from full resolution by the "
                                      "workers; default: image size * 8/7, or the image size at <= 32 px)",
                                      minimum=8, maximum=MAX_IMAGE_SIZE)
    small_images: str = option("auto", "CIFAR stem (3x3/1 conv, no max pool): auto = image size <= 32",
                               choices=("auto", "on", "off"))
    seed: int = option(0, "random seed (data order, augmentations, initialisation)", minimum=0)

    def uses_small_images(self) -> bool:
        return self.small_images == "on" or (self.small_images == "auto" and self.image_size <= 32)

    def resolved_load_size(self) -> int:
        if self.load_size:
            return self.load_size
        return self.image_size if self.image_size <= 32 else int(round(self.image_size * 8 / 7))


@dataclasses.dataclass
class OptimOptions:
    """The optimizer and its per-step schedule: linear warmup, then cosine decay to 0."""

    epochs: int = option(100, "training epochs", minimum=1)
    batch_size: int = option(512, "global batch size (all processes together)", minimum=2)
    optimizer: str = option("lars", "optimizer", choices=("lars", "sgd", "adamw"))
    lr: float = option(0.1, "base learning rate, scaled by --lr-scaling", minimum=0)
    lr_scaling: str = option("sqrt", "learning-rate scaling: linear (lr*B/256) or sqrt (lr*sqrt(B))",
                             choices=("linear", "sqrt"))
    warmup_epochs: float = option(10.0, "linear warmup epochs before the cosine decay", minimum=0)
    weight_decay: float = option(1e-4, "weight decay (BN parameters and biases excluded)", minimum=0)
    momentum: float = option(0.9, "optimizer momentum", minimum=0, maximum=0.9999)
    micro_batch: Optional[int] = option(None, "images per forward pass on each process: the batch goes "
                                        "through in micro-batches, the step stays that of the whole batch "
                                        "(pretraining: gradient caching, every image keeps all its negatives; "
                                        "batch norm per micro-batch). Default: the whole batch at once",
                                        minimum=1)


@dataclasses.dataclass
class RecipeOptions:
    """The augmentation and batch-norm settings every stage's recipe has."""

    flip: bool = option(True, "random horizontal flips")
    crop_min_area: float = option(0.08, "smallest random-crop area fraction", minimum=0.01, maximum=1.0)
    global_bn: bool = option(True, "BN statistics over the global batch when distributed")


@dataclasses.dataclass
class RuntimeOptions:
    """Where and how the computation runs; changing these never changes what is trained."""

    device: str = option("auto", "training device", choices=("auto", "cpu", "cuda"))
    precision: str = option("auto", "bf16 autocast or fp32 (auto: bf16 on GPUs of compute capability >= 8 "
                            "and on CPUs with native bf16: AVX512-BF16, AMX, Arm BF16; else fp32)",
                            choices=("auto", "bf16", "fp32"))
    channels_last: str = option("auto", "channels-last memory format (auto: on GPU and on CPU with oneDNN)",
                                choices=("auto", "on", "off"))
    compile: bool = option(False, "torch.compile the model")
    compile_backend: str = option("inductor", "torch.compile backend of --compile (eager: trace only, to look for "
                                  "graph breaks with TORCH_LOGS=graph_breaks; aot_eager; cudagraphs)",
                                  choices=("inductor", "eager", "aot_eager", "cudagraphs"))
    check_memory: bool = option(True, "estimate a training step's peak memory before training (the real step traced "
                                "without data, about a second) and refuse a batch that would not fit")
    activation_checkpointing: bool = option(False, "keep only the input of each ResNet block in the forward pass and "
                                            "run the block again in the backward pass: about 1/3 more compute "
                                            "for a fraction of the activation memory")
    prefetch_views: bool = option(False, "draw the next step's augmented views in a thread while a step computes, "
                                  "on a side CUDA stream on a GPU (on 2 CPU cores it cost 0-25%: the step "
                                  "already uses every core)")
    workers: Optional[int] = option(None, "decoding worker processes (default: cores - 1, at most 8)",
                                    minimum=0)
    cache: str = option("auto", "keep the images in memory at the load size (auto: when they fit in 2 GiB and "
                        "none is larger than the load size, else the workers crop from full resolution; "
                        "on: also larger images, squashed: their crops lose resolution)",
                        choices=("auto", "on", "off"))
    strict_data: bool = option(False, "stop at the first unreadable image instead of skipping it")
    max_image_pixels: int = option(100_000_000, "largest image decoded, in pixels (after the reduced decoding of "
                                   "large JPEGs); a larger one is unreadable (skipped, or --strict-data stops)",
                                   minimum=1)
    on_nan: str = option("stop", "non-finite loss: stop (last good checkpoint kept) or skip the step "
                         "(skipping reads the loss every step)", choices=("stop", "skip"))


@dataclasses.dataclass
class RunOptions:
    """The run folder: where results go, how often checkpoints are written, resuming."""

    out: str = option("", "run folder for checkpoints, metrics and the final model", required=True)
    overwrite: bool = option(False, "replace a finished or unfinished run in --out (after every input "
                             "is checked)")
    resume: Optional[str] = option(None, "continue from this checkpoint, or 'auto' for the latest good "
                                   "one in the run folder", cli=False)
    log_every: int = option(10, "steps between metric lines", minimum=1)
    log_seconds: float = option(30.0, "seconds between two progress lines when not on a terminal (a log file, "
                                "a scheduler); the first and last step always get one; 0: every --log-every steps",
                                minimum=0)
    checkpoint_every: int = option(0, "steps between checkpoints (0: only every --checkpoint-epochs)",
                                   minimum=0)
    checkpoint_epochs: int = option(1, "epochs between checkpoints", minimum=1)
    checkpoint_minutes: float = option(1.0, "at most one --checkpoint-epochs checkpoint per this many minutes of "
                                       "training (short epochs: not one per step; 0: at every one); "
                                       "--checkpoint-every and stop signals always write one", minimum=0)
    keep_checkpoints: int = option(3, "checkpoints kept in the run folder", minimum=1)
    tensorboard: Optional[bool] = option(None, "also write TensorBoard logs (needs the tensorboard extra; "
                                         "default: when it is installed)")


@dataclasses.dataclass
class StageConfig(RunOptions, RuntimeOptions, RecipeOptions, OptimOptions, DataOptions):
    """Settings every training stage has, as option groups (fields in --help: data first)."""


def with_absolute_paths(cfg: Any) -> Any:
    """``cfg`` with every file or folder it names (data, eval data, checkpoints, out) made absolute,
    for what is saved: a run's config and record must mean the same files from any folder.
    Values that name no existing file ('digits', 'scratch') stay as they are."""
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if (f.metadata.get("path") or f.name == "out") and isinstance(value, str) and value and (
                f.name == "out" or Path(value).exists()):
            changes[f.name] = str(Path(value).absolute())
    return dataclasses.replace(cfg, **changes)


def resumable_changes(cls) -> frozenset[str]:
    """The keys of a stage config that may differ when a run is resumed: how it runs and where
    its files are (a moved run folder), not what is trained."""
    runtime = {f.name for group in (RunOptions, RuntimeOptions) for f in dataclasses.fields(group)}
    return frozenset(user_key(f) for f in dataclasses.fields(cls) if f.name in runtime or f.metadata.get("path"))
