"""The one training loop every stage runs (a stage only declares its parts: ``engine.stage``).

``run(cfg, build)`` checks the run folder, builds the stage, and trains it:

- the learning rate of step t is ``schedule[t]``, an array computed before training (warmup,
  cosine decay); bf16 autocast where asked; ``zero_grad(set_to_none=True)``;
- no host sync outside logging steps: losses accumulate on the device and are read every
  ``log_every`` steps (marked "host sync" below);
- checkpoints every N steps and every N epochs (those at most once a minute), written atomically
  from a host copy in a background thread, with everything needed to continue exactly: weights,
  optimizer, the step's state (queue, momentum encoder), progress, RNG state, and the typed record.
  Data order is a function of (seed, epoch) and augmentation a function of (seed, step, rank), so a
  resumed run repeats the uninterrupted one;
- SIGTERM/SIGINT: before training starts, the run stops at once (and a folder it created is
  removed); during training, a checkpoint at the next step boundary, then exit 128 + signal;
- a non-finite loss: stop, leaving the last good checkpoint intact, or skip the step;
- held-out evaluation every ``eval_every`` epochs and at the end; then ``model.pt`` and
  ``result.json`` (the "finished" marker), written by the main process.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import distributed as dist_utils
from ..config import StageConfig, flag_of, save_yaml, to_dict, with_absolute_paths
from ..checkpoint import list_checkpoints
from ..data.images import set_max_pixels
from ..data.loader import Batch, Loader
from ..distributed import Runtime
from ..errors import UserError
from ..optim import build_optimizer
from ..record import versions
from ..results import METRICS_FILE
from .checkpointing import Progress, check_resumable, resume_checkpoint, save_final, training_payload
from .display import Display
from .memory_estimate import GIB, check_memory
from .placement import autocast
from .recalibration import recalibrate_bn
from .run_folder import MetricsLog, RunFolder
from .schedule import make_schedule, recipe_warnings
from .signals import Preempted, StopSignals
from .stage import Build, Parts, StepSettings, TrainStep

log = logging.getLogger("simclrv2")


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The random stream of one training step on one process (same on resume)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def drawn_ahead(batches: Iterator[Batch], views: Callable[[Batch, int], torch.Tensor], first: int,
                device: torch.device | None = None) -> Iterator[Batch]:
    """``batches`` (those of steps ``first``, ``first + 1``, ...) with ``batch.views = views(batch, step)``
    computed in a thread one batch ahead: the views of step t + 1 are drawn while step t computes.

    On a CUDA ``device`` the thread queues its kernels on a side stream, so that they run beside the
    step's instead of behind them: the side stream waits for the batch's copy to the device, the step's
    stream waits for the views, and each tensor is recorded on the stream that uses it last (the
    caching allocator then does not hand its memory out early).

    The views of a step come from its own generator (``step_generator``), so they are the same as
    drawn in the step itself, and a resumed run still repeats the uninterrupted one."""
    side = torch.cuda.Stream(device) if device is not None and device.type == "cuda" else None

    def draw(batch: Batch, step: int, copied) -> tuple[Batch, object]:
        with torch.no_grad():
            if side is None:
                batch.views = views(batch, step)
                return batch, None
            with torch.cuda.stream(side):
                side.wait_event(copied)
                batch.images.record_stream(side)
                batch.views = views(batch, step)
                done = torch.cuda.Event()
                done.record(side)
            return batch, done

    with ThreadPoolExecutor(1, thread_name_prefix="views") as pool:
        def submit(batch: Batch | None, step: int):
            if batch is None:
                return None
            copied = None
            if side is not None:
                copied = torch.cuda.Event()
                copied.record()  # on this thread's stream, after the batch's copy was queued
            return pool.submit(draw, batch, step, copied)

        step = first
        pending = submit(next(batches, None), step)
        while pending is not None:
            ready, done = pending.result()
            if done is not None:
                stream = torch.cuda.current_stream(device)
                stream.wait_event(done)
                ready.views.record_stream(stream)
            step += 1
            pending = submit(next(batches, None), step)
            yield ready


class Window:
    """Device-side sums of the logged values between two logging steps."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = self.images = 0
        self.start = time.perf_counter()

    def add(self, logs: dict[str, torch.Tensor], images: int) -> None:
        for key, value in logs.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.steps += 1 if logs else 0
        self.images += images


class Engine:
    """Trains the parts of one stage in one run folder (see the module docstring)."""

    def __init__(self, parts: Parts, runtime: Runtime, folder: RunFolder, stop: StopSignals | None = None):
        cfg = self.cfg = parts.cfg
        self.parts, self.runtime, self.folder = parts, runtime, folder
        self.stop = stop or StopSignals()
        self.model, self.step = parts.model, parts.step
        self.loader = Loader(parts.train_images, "train", cfg.resolved_load_size(), cfg.batch_size, runtime,
                             seed=cfg.seed, workers=cfg.workers, cache=cfg.cache, strict=cfg.strict_data,
                             crops=self.step.crops)
        self.steps_per_epoch = len(self.loader)
        self.progress = Progress(total_steps=self.steps_per_epoch * cfg.epochs)
        self.optimizer = build_optimizer(cfg.optimizer, parts.param_groups, lr=0.0, momentum=cfg.momentum)
        self.schedule = make_schedule(cfg, self.steps_per_epoch)
        peak = float(self.schedule.max()) if len(self.schedule) else 0.0
        for group in self.optimizer.param_groups:
            if "peak_lr" in group:
                group["lr_scale"] = group["peak_lr"] / max(peak, 1e-12)
        if runtime.is_main:
            for warning in recipe_warnings(cfg, runtime.world_size, parts.labeled is not None) + parts.warnings:
                log.warning("%s", warning)
        self.autocast = self.step.settings.precision
        saved = with_absolute_paths(cfg)  # what config.yaml and the record say: valid from any folder
        # (the stage's record may already say which annotation file labels the held-out images)
        held_out = dataclasses.replace(parts.record.held_out, data=saved.data, eval_data=saved.eval_data,
                                       holdout=saved.holdout, seed=saved.seed)
        self.record = dataclasses.replace(parts.record, held_out=held_out, config=to_dict(saved), versions=versions())
        self.bad_steps = torch.zeros((), device=runtime.device)
        self.metrics = MetricsLog(folder.path / METRICS_FILE, runtime.is_main, cfg.tensorboard)
        self.display = Display(self.record.stage, self.progress.total_steps, 0, runtime.is_main, bar=False,
                               headline=self.step.headline, seconds=cfg.log_seconds)

    @property
    def draws_ahead(self) -> bool:
        """Whether the next step's views are drawn in a thread while a step computes (``--prefetch-views``),
        so that augmentation does not sit between two steps. Off by default: on a 2-core CPU the step
        already keeps both cores busy and the overlap cost 0-25% (BENCHMARKS.md); on a GPU the
        augmentation's kernels queue behind the step's anyway. Not with micro-batches (their views are
        drawn, and replayed, per micro-batch)."""
        return self.cfg.prefetch_views and not self.step.computes_gradients \
            and type(self.step).views is not TrainStep.views

    def _views(self, batch: Batch, step: int) -> torch.Tensor:
        return self.step.views(batch, step_generator(self.cfg.seed, step, self.runtime.rank, self.runtime.device))

    # -- one step (benchmarks time exactly this) ----------------------------------------------
    def train_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Learning rate, the stage's step under autocast, backward, optimizer step; logs ({} if skipped)."""
        p = self.progress
        if p.step >= p.total_steps:
            raise RuntimeError(f"train_step after the schedule's last step ({p.total_steps}): the run is over")
        lr = float(self.schedule[p.step])
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        generator = step_generator(self.cfg.seed, p.step, self.runtime.rank, self.runtime.device)
        with autocast(self.runtime.device, self.autocast):
            loss, logs = self.step(batch, generator, p.step)
        applied = self._update(loss)
        p.step += 1
        return loss, ({"loss": loss.detach().float(), **logs} if applied else {})

    def _update(self, loss: torch.Tensor) -> bool:
        """Backward and optimizer step; False if the step was skipped for a non-finite loss."""
        finite = torch.isfinite(loss.detach())
        if self.cfg.on_nan == "skip":
            # Deciding before the update needs the flag now: host sync every step.
            if dist_utils.all_reduce_mean(finite.float()).item() < 1.0:
                self.optimizer.zero_grad(set_to_none=True)
                self.progress.skipped_steps += 1
                log.warning("skipping step %d: non-finite loss", self.progress.step)
                return False
        else:
            self.bad_steps += (~finite).float()  # read at the next logging step
        if not self.step.computes_gradients:
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step.after_update()
        return True

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        p = self.progress
        self.display = Display(self.record.stage, p.total_steps, p.step, self.runtime.is_main, bar=True,
                               headline=self.step.headline, seconds=self.cfg.log_seconds)
        with self.display.active():
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        cfg, p, spe = self.cfg, self.progress, self.steps_per_epoch
        self.step.train()
        self.stop.defer()
        started = last_saved = time.perf_counter()
        started -= p.train_seconds
        window = Window()
        while p.step < p.total_steps:
            epoch, first = divmod(p.step, spe)
            batches = self.loader.epoch(epoch, first)
            if self.draws_ahead:
                batches = drawn_ahead(batches, self._views, p.step, self.runtime.device)
            for batch in batches:
                _, logs = self.train_step(batch)
                window.add(logs, batch.images.shape[0] * self.runtime.world_size)
                p.train_seconds = time.perf_counter() - started
                self.display.step()
                end_of_epoch = p.step % spe == 0
                if p.step % cfg.log_every == 0 or end_of_epoch:
                    self._log(window)  # host sync
                    window = Window()
                if end_of_epoch and self.parts.eval_every and (p.step // spe) % self.parts.eval_every == 0 \
                        and p.step < p.total_steps:
                    self._evaluate("epoch")
                want_checkpoint = (cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0) or (
                    end_of_epoch and (p.step // spe) % cfg.checkpoint_epochs == 0
                    and time.perf_counter() - last_saved >= 60 * cfg.checkpoint_minutes)
                stop_now = self._stop_requested()
                if (want_checkpoint or stop_now) and p.step < p.total_steps:
                    last_saved = time.perf_counter()
                    path = self.save(background=not stop_now)
                    if stop_now:
                        raise Preempted(self.stop.signum or signal.SIGTERM, path)
            if spe == 0:
                break
        self.folder.checkpoints.wait()
        self._check_finite()
        self.loader.summary()
        result = {"steps": p.step, "train_seconds": p.train_seconds, "skipped_steps": p.skipped_steps,
                  "skipped_images": self.loader.skipped_total}
        if self.runtime.device.type == "cuda":  # beside the estimate made before training (memory_estimate_gib)
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(self.runtime.device) / GIB, 3)
        if self.parts.recalibration_images is not None and p.total_steps:
            result["bn_recalibration_images"] = recalibrate_bn(self.step, self.parts.recalibration_images, cfg,
                                                               self.runtime, self.record.stage)
        result.update(self._evaluate("eval"))
        self.metrics.close()
        return result

    def _log(self, window: Window) -> None:
        if self.cfg.on_nan == "stop":
            self._check_finite()
        p = self.progress
        record = {"kind": "train", "stage": self.record.stage, "step": p.step, "epoch": p.step / self.steps_per_epoch,
                  "lr": float(self.schedule[p.step - 1])}
        for key, value in window.sums.items():
            record[key] = dist_utils.all_reduce_mean(value / max(window.steps, 1)).item()
        record["images_per_s"] = window.images / max(time.perf_counter() - window.start, 1e-9)
        if p.skipped_steps:
            record["skipped_steps"] = p.skipped_steps
        self.metrics.write(record)
        self.display.train(record)

    def _evaluate(self, kind: str) -> dict[str, Any]:
        """Held-out metrics from the main process (the others wait, or take their share:
        ``Parts.evaluate_everywhere``); logged as a metrics record."""
        if self.parts.evaluate is None:
            return {}
        metrics: dict[str, Any] = {}
        if self.runtime.is_main or self.parts.evaluate_everywhere:
            metrics = self.parts.evaluate()
        if not self.runtime.is_main:
            metrics = {}
        dist_utils.barrier()
        self.step.train()
        if metrics:
            p = self.progress
            self.metrics.write({"kind": kind, "stage": self.record.stage, "step": p.step,
                                "epoch": p.step // max(self.steps_per_epoch, 1), **metrics})
            self.display.evaluation(p.step // max(self.steps_per_epoch, 1), metrics)
        return metrics

    def _check_finite(self) -> None:
        if self.cfg.on_nan == "stop" and dist_utils.all_reduce_mean(self.bad_steps.float()).item() > 0:
            written = list_checkpoints(self.folder.checkpoints.directory)
            if self.folder.replacing:
                kept = "the run it was replacing is put back as it was"
            elif written:
                kept = f"the last good checkpoint, {written[-1]}, is kept"
            else:
                kept = "no checkpoint had been written"
            raise NonFiniteLoss(f"the loss became NaN or infinite near step {self.progress.step} ({kept}): lower --lr, "
                                "use --precision fp32, or --on-nan skip")

    def _stop_requested(self) -> bool:
        """Whether any process got a stop signal (agreed on by all processes)."""
        if not self.runtime.distributed:
            return self.stop.signum is not None
        # Every process must stop at the same step: agree every log interval (a tiny collective).
        if self.progress.step % self.cfg.log_every:
            return False
        flag = torch.tensor(1.0 if self.stop.signum is not None else 0.0, device=self.runtime.device)
        if dist_utils.all_reduce_mean(flag).item() > 0:
            self.stop.signum = self.stop.signum or signal.SIGTERM
            return True
        return False

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, background: bool = False) -> Path | None:
        """A training checkpoint (main process), after checking the loss is still finite. ``background``:
        written from a snapshot while training goes on (``CheckpointManager.save_in_background``);
        else on disk when this returns."""
        self._check_finite()
        path = None
        if self.runtime.is_main:
            checkpoints = self.folder.checkpoints
            payload = training_payload(self.record, self.model, self.optimizer, self.step.state_dict(), self.progress)
            if background:
                path = checkpoints.save_in_background(payload, self.progress.step)
            else:
                checkpoints.wait()
                path = checkpoints.save(payload, self.progress.step)
        dist_utils.barrier()
        return path

    def restore(self, path: Path, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint of this very run (``checkpointing.check_resumable``)."""
        check_resumable(path, payload, self.record, self.progress, type(self.cfg))
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step.load_state_dict(payload["state"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.progress = Progress(**payload["progress"])
        if self.runtime.is_main:
            self.metrics.truncate(self.progress.step)  # a killed run may have logged past its checkpoint
        log.info("resumed from %s at step %d of %d", path, self.progress.step, self.progress.total_steps)

    def save_final(self, result: dict[str, Any]) -> Path:
        """model.pt and result.json (main process; ``checkpointing.save_final``)."""
        path = self.folder.path / "model.pt"
        if self.runtime.is_main:
            path = save_final(self.folder, self.record, self.model, result)
        dist_utils.barrier()
        return path


def run(cfg: StageConfig, build: Build) -> dict[str, Any]:
    """Build a stage from ``cfg`` and train it in ``cfg.out``; the result (also in OUT/result.json).

    Every input is checked (data, labels, checkpoints, model) before the folder is changed; an
    earlier run (``--overwrite``) is moved aside only then, deleted once this run has finished and put
    back if it fails (``RunFolder.set_aside``).
    """
    runtime = dist_utils.setup(cfg.device)
    set_max_pixels(cfg.max_image_pixels)  # before any loader forks its workers
    folder = RunFolder(cfg.out, cfg.keep_checkpoints)
    with StopSignals() as stop:
        if runtime.is_main:
            folder.recover()
        folder.check(cfg.resume, cfg.overwrite, input_paths(cfg))
        resume = None if cfg.overwrite else resume_checkpoint(folder, cfg.resume)
        dist_utils.barrier()  # every process has checked the folder before the main one locks it
        if runtime.is_main:
            folder.claim()
        dist_utils.barrier()
        failed = True
        try:
            torch.manual_seed(cfg.seed)
            parts = build(cfg, runtime, StepSettings.of(cfg, runtime))
            # the step's settings, from the config as the stage resolved it (its batch may be capped)
            parts.step.settings = StepSettings.of(parts.cfg, runtime)
            engine = Engine(parts, runtime, folder, stop)
            estimate = check_memory(engine) if cfg.check_memory else None
            if resume is not None:
                engine.restore(*resume)
            if runtime.is_main:
                if cfg.overwrite:
                    folder.set_aside()  # deleted once the new run has finished, put back if it fails
                save_yaml(engine.record.config, folder.path / "config.yaml")
                if parts.labeled is not None:
                    parts.labeled.write_labeled(folder.path / "labeled.txt")
            dist_utils.barrier()
            result = {**engine.fit(), **parts.result}
            if estimate is not None:
                result["memory_estimate_gib"] = round(estimate.peak / GIB, 3)
            engine.save_final(result)
            failed = False
            if runtime.is_main:
                folder.drop_replaced()
        except BaseException as exc:
            # Stopped by a signal after a checkpoint: resumable, and a run it replaces waits in .replaced.
            resumable = isinstance(exc, Preempted) and exc.checkpoint is not None
            if runtime.is_main and not resumable and folder.restore_replaced():
                log.warning("%s holds the earlier run again, as it was: the --overwrite run did not finish",
                            folder.path)
            raise
        finally:
            if runtime.is_main:
                folder.release(failed)
    return result


def input_paths(cfg: StageConfig) -> dict[str, str]:
    """The files and folders a run reads, by flag (``--from``, ``--data``, ``--labels``, ...)."""
    return {flag_of(f): getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("path") and isinstance(getattr(cfg, f.name), str)}


def train(cfg: StageConfig) -> dict[str, Any]:
    """Train the registered stage whose config ``cfg`` is (``simclrv2.stages``) in ``cfg.out``; the result (also
    in OUT/result.json). The Python API's one call: ``train(from_mapping(PretrainConfig, {...}))``."""
    from ..config import validate
    from ..stages import stage_of_config

    return run(validate(cfg), stage_of_config(cfg).build)
