"""What every training stage shares: the run folder, the step loop, checkpoints and resume.

A stage (pretrain, finetune, linear-eval, distill) builds its model, data and a ``step_fn`` that
turns a batch into a loss; ``Trainer.fit`` does the rest, the same way for all of them:

- the learning rate of step t is ``schedule[t]``, an array computed before training;
- bf16 autocast where asked, ``zero_grad(set_to_none=True)``, no host sync outside logging
  steps (losses accumulate on the device and are read every ``log_every`` steps);
- checkpoints every N steps and every N epochs, written atomically with everything needed to
  continue exactly: weights, optimizer, stage state (EMA model, queue), step, RNG states,
  config as plain data. Data order is a function of (seed, epoch) and augmentation randomness
  a function of (seed, step, rank), so a resumed run repeats the uninterrupted one;
- SIGTERM/SIGINT: a checkpoint at the next step boundary, then exit 128 + signal number;
- a non-finite loss: stop, leaving the last good checkpoint intact, or skip the step.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from .. import distributed as dist_utils
from ..checkpoint import CheckpointManager, atomic_write_bytes, load_checkpoint, save_checkpoint
from ..config import option, save_yaml, to_dict
from ..data.loader import Batch, Loader
from ..distributed import Runtime
from ..errors import UserError

log = logging.getLogger("simclrv2")

RESULT_FILE = "result.json"
MODEL_FILE = "model.pt"


@dataclass
class LoopConfig:
    """Settings every training stage has (stage configs extend it)."""

    data: str = option("", "training images: a folder, a CSV/TSV list, or 'digits'", required=True)
    out: str = option("", "run folder for checkpoints, metrics and the final model", required=True)
    epochs: int = option(100, "training epochs", minimum=1)
    batch_size: int = option(512, "global batch size (all processes together)", minimum=2)
    optimizer: str = option("lars", "optimizer", choices=("lars", "sgd", "adamw"))
    lr: float = option(0.1, "base learning rate, scaled by --lr-scaling", minimum=0)
    lr_scaling: str = option("sqrt", "learning-rate scaling: linear (lr*B/256) or sqrt (lr*sqrt(B))",
                             choices=("linear", "sqrt"))
    warmup_epochs: float = option(10.0, "linear warmup epochs before the cosine decay", minimum=0)
    weight_decay: float = option(1e-4, "weight decay (BN parameters and biases excluded)", minimum=0)
    momentum: float = option(0.9, "optimizer momentum", minimum=0, maximum=0.9999)
    image_size: int = option(224, "side of the training images in pixels", minimum=8)
    load_size: Optional[int] = option(None, "side of the squashed images the loader hands to the "
                                      "device (default: image size * 8/7, or the image size at <= 32 px)",
                                      minimum=8)
    small_images: str = option("auto", "CIFAR stem (3x3/1 conv, no max pool): auto = image size <= 32",
                               choices=("auto", "on", "off"))
    eval_data: Optional[str] = option(None, "held-out images for evaluation (else --holdout of --data)")
    holdout: float = option(0.0, "fraction of --data held out for evaluation when --eval-data is not "
                            "given (stratified, seeded, never trained on)", minimum=0, maximum=0.9)
    precision: str = option("auto", "bf16 autocast or fp32 (auto: bf16 on GPU, fp32 on CPU)",
                            choices=("auto", "bf16", "fp32"))
    channels_last: str = option("auto", "channels-last memory format (auto: on GPU)",
                                choices=("auto", "on", "off"))
    compile: bool = option(False, "torch.compile the model")
    device: str = option("auto", "training device", choices=("auto", "cpu", "cuda"))
    workers: Optional[int] = option(None, "decoding worker processes (default: cores - 1, at most 8)",
                                    minimum=0)
    cache: str = option("auto", "keep decoded images in memory (auto: when they fit in 2 GiB)",
                        choices=("auto", "on", "off"))
    strict_data: bool = option(False, "stop at the first unreadable image instead of skipping it")
    seed: int = option(0, "random seed (data order, augmentations, initialisation)", minimum=0)
    log_every: int = option(10, "steps between metric lines", minimum=1)
    checkpoint_every: int = option(0, "steps between checkpoints (0: only every --checkpoint-epochs)",
                                   minimum=0)
    checkpoint_epochs: int = option(1, "epochs between checkpoints", minimum=1)
    keep_checkpoints: int = option(3, "checkpoints kept in the run folder", minimum=1)
    on_nan: str = option("stop", "non-finite loss: stop (last good checkpoint kept) or skip the step "
                         "(skipping reads the loss every step)", choices=("stop", "skip"))
    resume: Optional[str] = option(None, "continue from this checkpoint, or 'auto' for the latest good "
                                   "one in the run folder", cli=False)
    overwrite: bool = option(False, "replace a finished or unfinished run in --out")
    tensorboard: bool = option(True, "also write TensorBoard logs when tensorboard is installed")

    def uses_small_images(self) -> bool:
        return self.small_images == "on" or (self.small_images == "auto" and self.image_size <= 32)

    def resolved_load_size(self) -> int:
        if self.load_size:
            return self.load_size
        return self.image_size if self.image_size <= 32 else int(round(self.image_size * 8 / 7))


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint; exit code 128 + signal."""

    def __init__(self, signum: int, checkpoint: Path | None):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint}")
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


class StopSignals:
    """Turn SIGTERM/SIGINT into a flag the loop reads at step boundaries."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading_is_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the step boundary
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class RunDir:
    """The run folder: config.yaml, metrics.jsonl, checkpoints/, model.pt and result.json."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = CheckpointManager(self.path / "checkpoints")
        self.resume_checkpoint: tuple[str, dict[str, Any]] | None = None  # (path, payload) read by prepare

    @property
    def finished(self) -> bool:
        return (self.path / RESULT_FILE).is_file()

    def prepare(self, resume: str | None, overwrite: bool, is_main: bool) -> None:
        """Refuse to clobber a run unless asked; ``--overwrite`` removes only simclrv2's files."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder: choose another --out")
        has_ckpt = bool(list((self.path / "checkpoints").glob("ckpt-*.pt"))) if self.path.is_dir() else False
        if overwrite:
            if is_main:
                for name in (RESULT_FILE, MODEL_FILE, MODEL_FILE + ".sha256", "metrics.jsonl", "tensorboard",
                             "checkpoints", "config.yaml"):
                    target = self.path / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
            dist_utils.barrier()
        elif self.finished and not resume:
            raise UserError(f"{self.path} holds a finished run: pass --overwrite to replace it or "
                            "choose another --out")
        elif has_ckpt and not resume:
            raise UserError(f"{self.path} holds an unfinished run: pass --resume to continue it or "
                            "--overwrite to start again")
        if resume and resume != "auto":
            # Read a named checkpoint now, before the data scan and the model build: a bad file
            # is then the only line the user sees, and no time is spent first. Trainer.restore
            # takes the payload from here instead of reading the file twice.
            self.resume_checkpoint = (resume, load_checkpoint(resume, map_location="cpu"))
        if is_main:
            self.path.mkdir(parents=True, exist_ok=True)
        dist_utils.barrier()

    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / RESULT_FILE, json.dumps(result, indent=2).encode())

    def read_result(self) -> dict[str, Any]:
        return json.loads((self.path / RESULT_FILE).read_text())


class MetricsLog:
    """Metrics as JSON lines (and TensorBoard when installed), written by the main process only."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool):
        self.path = path
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(path.parent / "tensorboard"))
            except Exception:  # tensorboard missing or broken: JSON lines are enough
                self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where asked (auto: on GPUs that support it), else None (fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def use_channels_last(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The random stream of one training step on one process (same on resume)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


StepFn = Callable[[Batch, torch.Generator], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class Trainer:
    """The step loop of a stage. See the module docstring for what it guarantees.

    Args:
        stage: "pretrain", "finetune", "linear-eval" or "distill" (stored in checkpoints).
        cfg: the stage's config (a LoopConfig subclass).
        runtime: rank, world size and device.
        model: the network being trained (unwrapped; it is saved and restored).
        train_model: what ``step_fn`` calls (DDP / compiled wrapper of ``model``), for reference.
        optimizer: its optimizer; ``schedule``: the learning rate of every step.
        loader: the training batches.
        step_fn: batch, generator -> (loss, tensors to log).
        model_config: plain-data description of ``model`` (``simclrv2.models.build_model``).
        state: extra objects with state_dict/load_state_dict saved alongside (EMA, queue).
        after_step: called after each optimizer step (EMA updates).
        after_epoch: epoch -> dict of metrics (monitoring), called at every epoch end.
    """

    def __init__(self, *, stage: str, cfg: LoopConfig, runtime: Runtime, model: nn.Module,
                 optimizer: torch.optim.Optimizer, schedule: np.ndarray, loader: Loader, step_fn: StepFn,
                 model_config: dict[str, Any], class_names: list[str] | None = None,
                 state: dict[str, Any] | None = None, after_step: Callable[[], None] | None = None,
                 after_epoch: Callable[[int], dict[str, Any]] | None = None,
                 run_dir: RunDir | None = None, extra_payload: dict[str, Any] | None = None):
        self.stage, self.cfg, self.runtime = stage, cfg, runtime
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.loader, self.step_fn = loader, step_fn
        self.model_config, self.class_names = model_config, class_names
        self.state = state or {}
        self.after_step, self.after_epoch = after_step, after_epoch
        self.run_dir = run_dir or RunDir(cfg.out)
        self.extra_payload = extra_payload or {}
        self.steps_per_epoch = len(loader)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if len(schedule) != self.total_steps:
            raise ValueError(f"schedule has {len(schedule)} steps, training has {self.total_steps}")
        self.step = 0
        self.autocast = autocast_dtype(cfg.precision, runtime.device)
        self.metrics = MetricsLog(self.run_dir.path / "metrics.jsonl", runtime.is_main, cfg.tensorboard)
        self.skipped_steps = 0

    # -- checkpoints -------------------------------------------------------------------------
    def payload(self, final: bool = False) -> dict[str, Any]:
        payload = {
            "stage": self.stage, "model_config": self.model_config, "model": self.model.state_dict(),
            "class_names": self.class_names, "config": to_dict(self.cfg), "step": self.step,
            "epoch": self.step // max(self.steps_per_epoch, 1), "total_steps": self.total_steps,
            **self.extra_payload,
        }
        if not final:
            payload["optimizer"] = self.optimizer.state_dict()
            payload["state"] = {name: obj.state_dict() for name, obj in self.state.items()}
            payload["rng"] = rng_state()
            payload["skipped_steps"] = self.skipped_steps
        return payload

    def save(self) -> Path | None:
        path = None
        if self.runtime.is_main:
            path = self.run_dir.checkpoints.save(self.payload(), self.step)
        dist_utils.barrier()
        return path

    def restore(self, resume: str) -> None:
        if resume == "auto":
            found = self.run_dir.checkpoints.latest(map_location="cpu")
            if found is None:
                log.info("no checkpoint in %s: starting from the beginning", self.run_dir.checkpoints.directory)
                return
            path, payload = found
        else:
            cached, self.run_dir.resume_checkpoint = self.run_dir.resume_checkpoint, None
            payload = cached[1] if cached is not None and cached[0] == resume else \
                load_checkpoint(resume, map_location="cpu")
            path = Path(resume)
        if payload.get("stage") != self.stage:
            raise UserError(f"checkpoint {path} is from stage '{payload.get('stage')}', not '{self.stage}': "
                            "resume with a checkpoint of this stage")
        if payload["model_config"] != self.model_config:
            raise UserError(f"checkpoint {path} holds a different model ({payload['model_config'].get('encoder')}) "
                            f"than this run ({self.model_config.get('encoder')}): use the same settings to resume")
        if payload.get("total_steps") != self.total_steps:
            raise UserError(f"checkpoint {path} was for {payload.get('total_steps')} steps, this run has "
                            f"{self.total_steps}: resume with the same --epochs, --batch-size and data")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        for name, obj in self.state.items():
            obj.load_state_dict(payload["state"][name])
        set_rng_state(payload.get("rng", {}))
        self.step = int(payload["step"])
        self.skipped_steps = int(payload.get("skipped_steps", 0))
        log.info("resumed from %s at step %d of %d", path, self.step, self.total_steps)

    # -- the loop ----------------------------------------------------------------------------
    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def _check_finite(self, bad_steps: torch.Tensor) -> None:
        bad = dist_utils.all_reduce_mean(bad_steps.float()).item()
        if bad > 0:
            raise NonFiniteLoss(
                f"the loss became NaN or infinite near step {self.step}: the last good checkpoint is kept in "
                f"{self.run_dir.checkpoints.directory}; lower --lr, use --precision fp32, or --on-nan skip")

    def fit(self) -> dict[str, Any]:
        cfg, runtime = self.cfg, self.runtime
        if cfg.resume:
            self.restore(cfg.resume)
        self.model.train()
        start = time.perf_counter()
        window_start, window_images = time.perf_counter(), 0
        sums: dict[str, torch.Tensor] = {}
        window_steps = 0
        bad_steps = torch.zeros((), device=runtime.device)
        epoch_records: dict[str, Any] = {}
        with StopSignals() as stop:
            while self.step < self.total_steps:
                epoch, first = divmod(self.step, self.steps_per_epoch)
                for batch in self.loader.epoch(epoch, first):
                    self._set_lr(float(self.schedule[self.step]))
                    generator = step_generator(cfg.seed, self.step, runtime.rank, runtime.device)
                    with torch.autocast(runtime.device.type, dtype=self.autocast or torch.float32,
                                        enabled=self.autocast is not None):
                        loss, logs = self.step_fn(batch, generator)
                    applied = self._apply(loss, bad_steps)
                    self.step += 1
                    window_steps += int(applied)
                    window_images += batch.images.shape[0] * runtime.world_size
                    logs = {"loss": loss.detach().float(), **logs} if applied else {}
                    for key, value in logs.items():
                        sums[key] = sums[key] + value.detach().float() if key in sums else value.detach().float()

                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if self.step % cfg.log_every == 0 or end_of_epoch or self.step == self.total_steps:
                        if cfg.on_nan == "stop":
                            self._check_finite(bad_steps)
                        elapsed = time.perf_counter() - window_start
                        record = {"kind": "train", "stage": self.stage, "step": self.step,
                                  "epoch": self.step / self.steps_per_epoch,
                                  "lr": float(self.schedule[self.step - 1])}
                        for key, value in sums.items():
                            record[key] = dist_utils.all_reduce_mean(value / max(window_steps, 1)).item()
                        record["images_per_s"] = window_images / max(elapsed, 1e-9)
                        if self.skipped_steps:
                            record["skipped_steps"] = self.skipped_steps
                        self.metrics.write(record)
                        if runtime.is_main:
                            log.info("%s step %d/%d epoch %.2f loss %.4f lr %.4g %.1f img/s", self.stage,
                                     self.step, self.total_steps, record["epoch"], record["loss"],
                                     record["lr"], record["images_per_s"])
                        sums, window_steps = {}, 0
                        window_start, window_images = time.perf_counter(), 0

                    if end_of_epoch and self.after_epoch is not None:
                        epoch_records = self.after_epoch(self.step // self.steps_per_epoch) or {}
                        if epoch_records:
                            self.metrics.write({"kind": "epoch", "stage": self.stage, "step": self.step,
                                                "epoch": self.step // self.steps_per_epoch, **epoch_records})
                            if runtime.is_main:
                                log.info("%s epoch %d: %s", self.stage, self.step // self.steps_per_epoch,
                                         ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in epoch_records.items()))
                        self.model.train()

                    want_ckpt = (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or (
                        end_of_epoch and (self.step // self.steps_per_epoch) % cfg.checkpoint_epochs == 0)
                    stop_now = self._stop_requested(stop)
                    if (want_ckpt or stop_now) and self.step < self.total_steps:
                        if cfg.on_nan == "stop":
                            self._check_finite(bad_steps)
                        path = self.save()
                        if stop_now:
                            raise Preempted(stop.signum or signal.SIGTERM, path)
                if self.steps_per_epoch == 0:
                    break
        if cfg.on_nan == "stop":
            self._check_finite(bad_steps)
        self.loader.summary()
        self.metrics.close()
        return {"steps": self.step, "train_seconds": time.perf_counter() - start,
                "skipped_steps": self.skipped_steps, "skipped_images": self.loader.skipped_total,
                **epoch_records}

    def _apply(self, loss: torch.Tensor, bad_steps: torch.Tensor) -> bool:
        """Backward and optimizer step; False if the step was skipped for a non-finite loss."""
        finite = torch.isfinite(loss.detach())
        if self.cfg.on_nan == "skip":
            # Deciding before the update needs the flag now: one host sync per step.
            if dist_utils.all_reduce_mean(finite.float()).item() < 1.0:
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                log.warning("skipping step %d: non-finite loss", self.step)
                return False
        else:
            bad_steps += (~finite).float()  # read at the next logging step, no sync here
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step()
        return True

    def _stop_requested(self, stop: StopSignals) -> bool:
        """Whether any process got a stop signal (agreed on by all processes)."""
        if not self.runtime.distributed:
            return stop.signum is not None
        # Every process must stop at the same step: agree every log interval (a tiny collective).
        if self.step % self.cfg.log_every:
            return False
        flag = torch.tensor(1.0 if stop.signum is not None else 0.0, device=self.runtime.device)
        if dist_utils.all_reduce_mean(flag).item() > 0:
            stop.signum = stop.signum or signal.SIGTERM
            return True
        return False

    def save_final(self, result: dict[str, Any]) -> Path:
        """model.pt (weights and plain data, no optimizer) and result.json, the 'done' marker."""
        path = self.run_dir.path / MODEL_FILE
        if self.runtime.is_main:
            save_checkpoint({**self.payload(final=True), "result": result}, path)
            self.run_dir.write_result({"stage": self.stage, **result})
        dist_utils.barrier()
        return path


def write_config(run_dir: RunDir, cfg: Any, is_main: bool) -> None:
    if is_main:
        save_yaml(to_dict(cfg), run_dir.path / "config.yaml")


def describe_model_size(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{n / 1e6:.2f}M trainable parameters"

