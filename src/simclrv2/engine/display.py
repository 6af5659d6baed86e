"""What a training run shows while it runs: a progress bar on a terminal, plain log lines elsewhere.

On a terminal (stderr is a TTY) the main process draws one tqdm bar per stage: steps done, rate, time
left, and the latest loss, learning rate and held-out figure; log messages print above it. When stderr
is a file or a pipe (CI, ``nohup``, a job scheduler) a plain line with the same figures is logged at most
every ``--log-seconds`` (30 by default; and at the first and the last step), which a log file keeps readable: a
stage whose epochs are one step long (fine-tuning on 20 labels) would otherwise write a line per step. Under torchrun
only the first process shows anything.

The loss shown is the step's ``headline`` (``TrainStep.headline``): the loss it minimises, or a figure that
says more and is named (distillation: the KL divergence to the teacher times tau^2).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from typing import Any, Callable, Iterator

log = logging.getLogger("simclrv2")



class Display:
    """The progress of one stage (see the module docstring)."""

    def __init__(self, stage: str, total: int, done: int, main: bool, bar: bool = True, stream: Any = None,
                 headline: tuple[str, str] = ("loss", "loss"), seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stage, self.total, self.main = stage, total, main
        self.stream = stream or sys.stderr
        self.bar = None
        self.figures: dict[str, str] = {}
        self.headline, self.seconds, self.clock = headline, seconds, clock
        self.last_line: float | None = None
        if main and bar and _is_terminal(self.stream):
            from tqdm import tqdm

            # (a terminal that reports no size, as a bare pseudo-terminal, gets $COLUMNS/$LINES or 100 x 20:
            # tqdm would draw a bar 0 columns wide, on no line)
            size = None if _reports_size(self.stream) else shutil.get_terminal_size((100, 20))
            self.bar = tqdm(total=total, initial=done, desc=stage, unit="step", file=self.stream,
                            dynamic_ncols=size is None, ncols=size and size.columns, nrows=size and size.lines,
                            mininterval=0.5, smoothing=0.1)

    @contextlib.contextmanager
    def active(self) -> Iterator["Display"]:
        """While training: log messages go above the bar instead of through it; the bar closes after."""
        if self.bar is None:
            yield self
            return
        from tqdm.contrib.logging import logging_redirect_tqdm

        try:
            with logging_redirect_tqdm():
                yield self
        finally:
            self.bar.close()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def train(self, record: dict[str, Any]) -> None:
        """A logging step's figures (``metrics.jsonl``'s train record)."""
        if not self.main:
            return
        key, label = self.headline
        value = record.get(key, float("nan"))
        if self.bar is not None:
            self.figures.update({label: f"{value:.4f}", "lr": f"{record['lr']:.3g}"})
            self.bar.set_postfix(self.figures, refresh=False)
            return
        now = self.clock()
        due = self.last_line is None or now - self.last_line >= self.seconds or record["step"] >= self.total
        if not due:
            return
        self.last_line = now
        also = f" (loss {record['loss']:.4f})" if key != "loss" and "loss" in record else ""
        log.info("%s step %d/%d epoch %.2f %s %.4f%s lr %.4g %.1f img/s", self.stage, record["step"], self.total,
                 record["epoch"], label, value, also, record["lr"], record["images_per_s"])

    def evaluation(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Held-out figures: kept on the bar, and logged (a line above the bar on a terminal)."""
        if not self.main:
            return
        shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
        if self.bar is not None and shown:
            key = next(iter(shown))
            self.figures[key.replace("holdout_", "held-out ")] = f"{shown[key]:.4f}"
            self.bar.set_postfix(self.figures, refresh=False)
        log.info("%s epoch %d: %s", self.stage, epoch, ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _reports_size(stream: Any) -> bool:
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns > 0 and size.lines > 0
    except (AttributeError, ValueError, OSError):
        return False
