"""Checkpoints: atomic writes, verified loads, no pickled code.

A checkpoint is one ``torch.save`` file holding only tensors and plain data (dicts, lists,
strings, numbers), so it loads with ``weights_only=True``: a file that carries pickled Python
objects is refused. Files are written to a temporary name in the same folder, flushed to disk
and renamed over the target (``os.replace``), so a crash leaves either the old file or the new
one, never half of one. A ``.sha256`` file beside each checkpoint lets a load detect a file
that was damaged later (truncated copy, bit rot); loading falls back to an older checkpoint.

Keys every checkpoint has: ``format``, ``version``, ``record`` (how the network was made, see
``simclrv2.record``; it rebuilds the network without code) and ``model`` (its state dict).
Training checkpoints add ``progress``, ``optimizer``, ``rng`` and the step's own state;
``model.pt`` adds ``result``. Version-1 files kept the record's keys at the top level.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
import torch

from .errors import UserError

log = logging.getLogger(__name__)

FORMAT = "simclrv2-checkpoint"
VERSION = 2
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)\.pt$")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files are created as open() would create them (0666 less the umask: 0644 by default), not with
# mkstemp's private 0600, so that colleagues sharing a machine can read the models.
FILE_MODE = 0o666 & ~_current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it into place: readers
    see the old file or the new one, never a mix, and a failed write leaves the old one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)  # (a partial file would hold the space a full disk needs)
        raise _naming(exc, path)
    _fsync_dir(path.parent)


def _naming(exc: BaseException, path: Path) -> BaseException:
    """``exc``, or for an OSError that names no file (a failed flush), the same error naming ``path``."""
    if isinstance(exc, OSError) and not exc.filename and exc.errno:
        renamed = OSError(exc.errno, exc.strerror or str(exc), str(path))
        renamed.__cause__ = exc
        return renamed
    return exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


@contextmanager
def written_together(folder: str | os.PathLike, last: str | None = None, stale: Iterable[str] = ()) -> Iterator[Path]:
    """Outputs that belong together appear together: the block writes them into the folder it is given
    (hidden, inside ``folder``); when it ends without error they are renamed into ``folder`` (``last``, the
    "finished" marker, is removed first and renamed last; the files named in ``stale`` that this write does
    not replace are removed). An error or a kill inside the block leaves ``folder`` as it was (a kill leaves
    a hidden ``.staging.*.tmp`` folder, which the next write there removes)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(".staging.*.tmp"):
        shutil.rmtree(old, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging.", suffix=".tmp", dir=folder))
    try:
        yield staging
        names = sorted(p.name for p in staging.iterdir())
        if last in names:
            names.remove(last)
            names.append(last)
        if last:
            (folder / last).unlink(missing_ok=True)
        for name in stale:
            if name not in names and (folder / name).is_file():
                (folder / name).unlink()
        for name in names:
            os.replace(staging / name, folder / name)
        _fsync_dir(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` through a temporary file and ``os.replace``; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            torch_save_to(obj, f, path)
            f.flush()
            os.fsync(f.fileno())
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)  # (a partial file would hold the space a full disk needs)
        raise _naming(exc, path)
    _fsync_dir(path.parent)
    return digest


class _WriteErrors:
    """A file for ``torch.save`` that remembers the OSError of a failed write: torch's zip writer turns it
    into a RuntimeError with a garbled text ("unexpected pos 704 vs 598")."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            self.error = exc
            raise


def torch_save_to(obj: Any, file: BinaryIO, path: str | os.PathLike) -> None:
    """``torch.save(obj, file)``; a failed write (a full disk) raises its OSError, naming ``path``."""
    recorder = _WriteErrors(file)
    try:
        torch.save(obj, recorder)
        recorder.flush()
    except (RuntimeError, OSError) as exc:
        error = recorder.error
        if error is None:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from exc


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plain_data(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with NumPy values turned into Python numbers / tensors; TypeError for anything
    that ``weights_only`` loading would refuse (so a bad checkpoint fails when written, not read)."""
    if isinstance(obj, torch.Tensor) or obj is None or type(obj) in (str, bool, int, float):
        return obj
    if isinstance(obj, str):  # a str subclass (torch.__version__) would be pickled as its class
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return type(obj)((k, plain_data(v, f"{where}[{k!r}]")) for k, v in obj.items()) \
            if isinstance(obj, OrderedDict) else {k: plain_data(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, torch.device):
        return str(obj)
    raise TypeError(f"{where} holds a {type(obj).__name__}, which a weights-only checkpoint cannot store")


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically save a checkpoint dict (plain data and tensors only) with its checksum."""
    path = Path(path)
    payload = plain_data(payload)
    sidecar = path.with_name(path.name + ".sha256")
    # A stale checksum from an earlier file of the same name would condemn the new one.
    sidecar.unlink(missing_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    digest = atomic_torch_save(payload, path)
    atomic_write_bytes(sidecar, f"{digest}  {path.name}\n".encode())
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; a one-line UserError for anything that is not a good one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass the path of a .pt file written by simclrv2")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        # A damaged sidecar (not text, not a digest) condemns the file: it cannot be verified.
        fields = sidecar.read_bytes().decode("ascii", errors="replace").split()
        expected = fields[0] if fields else ""
        if expected and file_sha256(path) != expected:
            raise UserError(f"checkpoint {path} is corrupt (its sha256 does not match {sidecar.name}): "
                            "use an earlier checkpoint or re-create it")
    else:
        # No checksum file (a copy without it): the zip's own CRC-32s still catch flipped bytes
        # in the tensor data, which torch.load does not check.
        damaged = _bad_crc(path)
        if damaged:
            raise UserError(f"checkpoint {path} is corrupt ({damaged}): use an earlier checkpoint "
                            "or re-create it")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if _CARRIES_OBJECTS.search(str(exc)):
            raise UserError(f"refusing to load {path}: it carries pickled Python objects, not only "
                            "tensors and plain data (load only checkpoints you trust, and convert them "
                            "to tensors-only files)") from None
        # torch wraps every weights-only failure in a long multi-line text: give only its cause.
        reason = _unpickler_reason(str(exc))
        raise UserError(f"checkpoint {path} is truncated or corrupt (unreadable data{reason}): "
                        "use an earlier checkpoint or re-create it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = _first_line(exc)
        raise UserError(f"checkpoint {path} is truncated or corrupt ({reason}): "
                        "use an earlier checkpoint or re-create it") from None
    except MemoryError:
        raise UserError(f"checkpoint {path} does not fit in memory (or is corrupt): "
                        "load it on a machine with more memory, or re-create it") from None
    except Exception as exc:  # noqa: BLE001 - on garbage bytes torch's weights-only unpickler
        # raises IndexError, KeyError, TypeError, struct.error, ...: all mean a damaged file.
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: "
                        f"{_first_line(exc)}): use an earlier checkpoint or re-create it") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a simclrv2 checkpoint (no '{FORMAT}' marker): convert official "
                        "TensorFlow checkpoints with `simclrv2 import-tf`")
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"checkpoint {path} has a malformed format version ({str(version)[:40]!r}): "
                        "it is damaged or was not written by simclrv2; re-create it")
    if version > VERSION:
        raise UserError(f"checkpoint {path} has format version {payload['version']}, newer than this "
                        f"simclrv2 reads ({VERSION}): upgrade simclrv2")
    for key in ("record" if version >= 2 else "model_config", "model"):
        if key not in payload:
            raise UserError(f"checkpoint {path} has no '{key}' entry: it is incomplete; re-create it")
    _check_finite_weights(path, payload["model"])
    return payload


def _check_finite_weights(path: Path, state: Any) -> None:
    """Refuse weights holding NaN or infinity: a model that evaluates and predicts, silently, nonsense."""
    if not isinstance(state, dict):
        return
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"checkpoint {path} holds non-finite weights ({bad} of {tensor.numel()} values of {name} "
                            "are NaN or infinite): the training that wrote it diverged; use an earlier checkpoint "
                            "or train again (lower --lr)")


# What torch's weights-only unpickler says when a file holds classes or functions (not garbage).
_CARRIES_OBJECTS = re.compile(r"GLOBAL \S+|Can only (create|build) |must be imported to load")


def _bad_crc(path: Path) -> str | None:
    """The CRC-32 mismatch of a zip (torch.save) file, if any; None also for files that are not
    zips or that zipfile cannot read (torch.load judges those)."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:  # written without CRC-32 (torch.serialization.set_crc32_options)
                    continue
                with archive.open(info) as member:
                    while member.read(1 << 20):
                        pass
    except zipfile.BadZipFile as exc:
        if "CRC" in str(exc):
            return _first_line(exc)
    except Exception:  # noqa: BLE001 - anything else zipfile dislikes is left to torch.load
        pass
    return None


def _first_line(exc: BaseException) -> str:
    """The cause in a few words: the first line, its first sentence when that line is long."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0] if len(lines[0]) > 120 else lines[0]


def _unpickler_reason(message: str) -> str:
    match = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    if match:
        return ": " + match.group(1).strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return f": {lines[0]}" if lines and "Weights only load failed" not in lines[0] else ""


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The ``ckpt-STEP.pt`` files of a folder, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to host memory (a snapshot training cannot change)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, host_copy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointManager:
    """Numbered training checkpoints in one folder: save, keep the last K, find the latest good one.

    ``save_in_background`` takes a host copy of the payload and writes it in a thread while training
    goes on (serialising, checksumming and flushing a large network's file takes seconds); at most one
    write is under way, and ``wait`` returns when it is on disk (re-raising its error, if any).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3):
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def save_in_background(self, payload: dict[str, Any], step: int) -> Path:
        """Snapshot ``payload`` now and write it as :meth:`save` does, in a thread; returns the path it
        will have. The previous background write is finished first."""
        self.wait()
        snapshot = plain_data(host_copy(payload))  # a payload that cannot be stored fails here, now

        def write() -> None:
            try:
                self.save(snapshot, step)
            except BaseException as exc:  # handed to the training thread by wait()
                self._error = exc

        # Not a daemon: an interpreter that exits (a crash elsewhere) still finishes the file.
        self._writer = threading.Thread(target=write, name=f"checkpoint-{step}")
        self._writer.start()
        return self.directory / f"ckpt-{step:09d}.pt"

    def wait(self) -> None:
        """Return when no background write is under way; raise the error of the last one, if it failed."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def save(self, payload: dict[str, Any], step: int) -> Path:
        path = save_checkpoint(payload, self.directory / f"ckpt-{step:09d}.pt")
        for old in list_checkpoints(self.directory)[: -self.keep]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)
        # Temporary files of earlier writes that a crash or SIGKILL cut short (each as large as
        # a checkpoint): this write has renamed its own, so any left are stale.
        for stale in self.directory.glob(".ckpt-*.tmp"):
            stale.unlink(missing_ok=True)
        return path

    def latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads and verifies; damaged newer ones are reported and skipped."""
        for path in reversed(list_checkpoints(self.directory)):
            try:
                return path, load_checkpoint(path, map_location)
            except UserError as exc:
                log.warning("skipping %s", exc)
        return None
