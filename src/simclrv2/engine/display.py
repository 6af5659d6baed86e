"""What a training run shows while it runs: a progress bar on a terminal, plain log lines elsewhere.

On a terminal (stderr is a TTY) the main process draws one tqdm bar per stage: steps done, rate, time
left, and the latest loss, learning rate and held-out figure; log messages print above it. When stderr
is a file or a pipe (CI, ``nohup``, a job scheduler) a plain line is logged every ``--log-every`` steps
instead, which a log file keeps readable. Under torchrun only the first process shows anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from typing import Any, Iterator

log = logging.getLogger("simclrv2")


class Display:
    """The progress of one stage (see the module docstring)."""

    def __init__(self, stage: str, total: int, done: int, main: bool, bar: bool = True, stream: Any = None):
        self.stage, self.total, self.main = stage, total, main
        self.stream = stream or sys.stderr
        self.bar = None
        self.figures: dict[str, str] = {}
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
        loss = record.get("loss", float("nan"))
        if self.bar is not None:
            self.figures.update(loss=f"{loss:.4f}", lr=f"{record['lr']:.3g}")
            self.bar.set_postfix(self.figures, refresh=False)
            return
        log.info("%s step %d/%d epoch %.2f loss %.4f lr %.4g %.1f img/s", self.stage, record["step"], self.total,
                 record["epoch"], loss, record["lr"], record["images_per_s"])

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
