"""The run folder: its files, its lock, and the rules that keep a run from being lost or mixed.

``OUT/config.yaml`` (the resolved config), ``metrics.jsonl``, ``checkpoints/ckpt-STEP.pt``,
``model.pt`` and ``result.json`` (written last: the "finished" marker). The rules:

- one live process per folder: ``OUT/.lock`` is held with ``flock`` for the whole run, so a
  second run on the same folder is refused (naming the holder's pid) even with ``--overwrite``;
  the kernel drops the lock when its holder dies, so a SIGKILLed run never blocks ``--resume``;
- a finished run is never retrained: ``--resume`` on it is refused, ``--overwrite`` replaces it;
- ``--overwrite`` replaces the old run only once the new one has finished: right before training
  starts (every input checked, the new run built) the old run's files are moved into
  ``OUT/.replaced/``; they are deleted after the new ``result.json`` is written, and moved back if the
  new run fails. A run stopped by a signal (a checkpoint written) or killed keeps them there:
  ``--resume`` continues the new run (and deletes them when it finishes), ``--overwrite`` starts it
  again (the files of the killed attempt are discarded, the old run stays in ``.replaced``);
- an input of an ``--overwrite`` run may not be one of the files it would replace (``--from OUT/model.pt``);
- ``--overwrite`` and ``--resume`` together are refused: one starts afresh, the other continues;
- a start that fails before any checkpoint (bad input, out of memory, a signal) leaves no folder
  behind that it created.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointManager, atomic_write_bytes, list_checkpoints
from ..errors import UserError
from ..results import METRICS_FILE, RESULT_FILE, parse_line

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded against each other
    fcntl = None

log = logging.getLogger("simclrv2")

MODEL_FILE = "model.pt"
LOCK_FILE = ".lock"
REPLACED = ".replaced"  # the run an --overwrite replaces, until the new one has finished
# The two halves of moving the old run aside (or back): a kill between two renames leaves one of these,
# and the next start finishes the move back (``recover``).
MOVING_ASIDE, MOVING_BACK = ".replaced.moving", ".replaced.restoring"
# What a run writes at the top of its folder; --overwrite removes these and nothing else.
RUN_FILES = (RESULT_FILE, MODEL_FILE, MODEL_FILE + ".sha256", METRICS_FILE, "tensorboard", "checkpoints",
             "config.yaml", "labeled.txt",
             # `simclrv2 report` of the folder: stale once the run is replaced
             "report.md", "training_curves.png", "confusion_matrix.png", "embedding_tsne.png", "evaluation")


def check_not_dangling(path: Path, option: str = "--out") -> None:
    """Refuse an output that is a symbolic link to nothing, or to itself (a loop of links)."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP or (path.is_symlink() and exc.errno == errno.ENOENT):
            raise UserError(f"{option} {path} is a symbolic link that points to itself, into a loop or to nothing: "
                            f"fix or remove the link, or choose another {option}") from None


class RunFolder:
    """One run's folder (see the module docstring for its rules)."""

    def __init__(self, path: str | Path, keep_checkpoints: int = 3):
        self.path = Path(path)
        self.checkpoints = CheckpointManager(self.path / "checkpoints", keep=keep_checkpoints)
        self._lock_fd: int | None = None
        self._created = False
        self._set_aside = False  # this process moved the old run into .replaced

    @property
    def replacing(self) -> bool:
        """Whether this process moved an earlier run into .replaced (``--overwrite``), to put back if it fails."""
        return self._set_aside

    @property
    def finished(self) -> bool:
        return (self.path / RESULT_FILE).is_file()

    def has_checkpoints(self) -> bool:
        return bool(list_checkpoints(self.checkpoints.directory))

    def check(self, resume: str | None, overwrite: bool, inputs: dict[str, str] | None = None) -> None:
        """Refuse what would lose or mix a run; reads only. ``inputs``: the files the run reads, by flag."""
        check_not_dangling(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a folder: choose another --out")
        if overwrite and resume:
            raise UserError("--overwrite starts the run again and --resume continues it: pass only one of them")
        if overwrite:
            self._check_inputs(inputs or {})
        holder = self._holder()
        if holder is not None:
            raise UserError(f"{self.path} is in use by a running simclrv2 process (pid {holder}): wait for it "
                            "to end or choose another --out")
        if self.finished and not overwrite:
            if resume:
                raise UserError(f"{self.path} holds a finished run: there is nothing to resume (pass "
                                "--overwrite to train it again, or choose another --out)")
            raise UserError(f"{self.path} holds a finished run: pass --overwrite to replace it or "
                            "choose another --out")
        if self.has_checkpoints() and not resume and not overwrite:
            aside = f" (the run it replaces waits in {self.path / REPLACED})" if (self.path / REPLACED).is_dir() else ""
            raise UserError(f"{self.path} holds an unfinished run{aside}: pass --resume to continue it or "
                            "--overwrite to start again")

    def _check_inputs(self, inputs: dict[str, str]) -> None:
        """An --overwrite run may not read a file it replaces (``finetune --from OUT/model.pt --out OUT``)."""
        replaced = [(self.path / name).resolve() for name in RUN_FILES]
        for flag, value in inputs.items():
            if not value or not Path(value).exists():
                continue
            where = Path(value).resolve()
            if any(where == r or r in where.parents for r in replaced):
                raise UserError(f"{flag} {value} is a file of the run in {self.path}, which --overwrite would "
                                "replace: copy it elsewhere first or choose another --out")

    # -- --overwrite: the old run moved aside, deleted once the new one has finished ------------------
    def set_aside(self) -> None:
        """Move the earlier run's files into OUT/.replaced (``--overwrite``, right before training). When
        .replaced exists already (an --overwrite that was killed), it keeps the run it holds, and the
        killed attempt's files at the top are deleted."""
        aside = self.path / REPLACED
        self._set_aside = True
        if aside.is_dir():
            self.clear()
            return
        moving = self.path / MOVING_ASIDE
        moving.mkdir(exist_ok=True)
        for name in RUN_FILES:
            if os.path.lexists(self.path / name):
                os.replace(self.path / name, moving / name)
        os.replace(moving, aside)  # one rename: the old run is either wholly aside or (see recover) put back

    def restore_replaced(self) -> bool:
        """Put the run that .replaced holds back in place of the new run's files, when this process moved it
        there (a failed --overwrite); whether it did."""
        aside = self.path / REPLACED
        if not self._set_aside or not aside.is_dir():
            return False
        self._set_aside = False
        self.clear()
        os.replace(aside, self.path / MOVING_BACK)
        self._move_back(self.path / MOVING_BACK)
        return True

    def drop_replaced(self) -> None:
        """The new run has finished: the run it replaced goes."""
        shutil.rmtree(self.path / REPLACED, ignore_errors=True)

    def recover(self) -> None:
        """Finish a move aside or back that a kill cut short: the old run's files go back to the top (no
        file of a new run exists yet while they are moved aside; none is left while they are moved back)."""
        for name in (MOVING_ASIDE, MOVING_BACK):
            if (self.path / name).is_dir() and self._holder() is None:
                self._move_back(self.path / name)

    def _move_back(self, folder: Path) -> None:
        for item in folder.iterdir():
            os.replace(item, self.path / item.name)
        folder.rmdir()

    def remove_stale_temporaries(self) -> None:
        """Temporary files of atomic writes that a kill cut short (``.model.pt.*.tmp``, ...): the lock is
        ours, so no write of another process is under way."""
        for folder in (self.path, self.checkpoints.directory):
            if folder.is_dir():
                for stale in folder.glob(".*.tmp"):
                    if stale.is_dir() and not stale.is_symlink():
                        shutil.rmtree(stale, ignore_errors=True)
                    else:
                        stale.unlink(missing_ok=True)

    def _holder(self) -> int | None:
        """The pid holding the folder's lock, or None when nobody holds it."""
        lock = self.path / LOCK_FILE
        if fcntl is None or not lock.is_file():
            return None
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = lock.read_text().strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)  # closing drops the probe's shared lock
        return None

    def claim(self) -> None:
        """Create the folder if needed and hold its lock until ``release``."""
        self._created = not self.path.exists() or not any(p.name != LOCK_FILE for p in self.path.iterdir())
        self.path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.path} is in use by a running simclrv2 process (pid {self._holder()}): "
                            "wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        _LOCK_FDS.add(fd)
        self.remove_stale_temporaries()

    def release(self, failed: bool) -> None:
        """Drop the lock (and its file); after a failed start, remove the folder if this run created
        it and no checkpoint was written into it (a nested run's included)."""
        if self._lock_fd is not None:
            _LOCK_FDS.discard(self._lock_fd)
            os.close(self._lock_fd)
            self._lock_fd = None
        if failed and self._created and not any(self.path.rglob("ckpt-*.pt")):
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            (self.path / LOCK_FILE).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove an earlier run's files (``--overwrite``); other files in the folder stay."""
        for name in RUN_FILES:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()  # a file, or a link (never what it points to)


# The lock fds this process holds. A forked child (a DataLoader worker) shares the lock with its copy of
# the fd: closed in every child at once, so that a worker outliving a killed parent holds no run folder.
_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class MetricsLog:
    """Metrics as JSON lines (and TensorBoard), written by the main process only.

    Nothing is written before the first record: a log made while a run is being set up leaves
    the folder as it was.
    """

    def __init__(self, path: Path, enabled: bool, tensorboard: bool | None):
        self.path = path
        self.enabled = enabled
        self._writer_class = None
        self._tb = None
        if enabled and tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    raise UserError("--tensorboard needs the tensorboard package: pip install "
                                    "'simclrv2[tensorboard]' (or leave out --tensorboard)") from None
            else:
                self._writer_class = SummaryWriter

    def truncate(self, step: int) -> None:
        """Drop the records after ``step`` (written after the checkpoint a run resumes from)."""
        if not self.enabled or not self.path.is_file():
            return
        # (a kill may have left a partial last line: it is dropped with the records past the checkpoint)
        kept = [line for line in self.path.read_text(errors="replace").splitlines()
                if (record := parse_line(line)) is not None and record.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer_class is not None and self._tb is None:
            self._tb = self._writer_class(str(self.path.parent / "tensorboard"))
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
