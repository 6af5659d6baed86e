"""Stop signals: SIGTERM/SIGINT stop a run at once before training starts, and at the next step
boundary once it has (after a checkpoint); the exit code is 128 + the signal."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any


class Preempted(Exception):
    """Training stopped on a signal (after writing a checkpoint, once it had started); exit 128 + signal."""

    def __init__(self, signum: int, checkpoint: Path | None):
        where = f"checkpoint {checkpoint}" if checkpoint else "before training started; nothing was written"
        super().__init__(f"stopped by {signal.Signals(signum).name}; {where}")
        self.exit_code = 128 + signum
        self.checkpoint = checkpoint


class StopSignals:
    """SIGTERM/SIGINT: raise at once until ``defer()``, then a flag read at step boundaries."""

    def __init__(self):
        self.signum: int | None = None
        self.deferred = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def defer(self) -> None:
        self.deferred = True

    def _handle(self, signum, frame) -> None:
        if not self.deferred:
            raise Preempted(signum, None)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the step boundary
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
