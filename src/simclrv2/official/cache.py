"""``official:`` names to simclrv2 checkpoints: downloaded, verified, converted and cached once.

``resolve_checkpoint(spec)`` returns a file path unchanged and, for an official name, the converted
checkpoint in the cache (``$SIMCLRV2_HOME/official/<folder>/<model>/model.pt``), making it first if
need be, under a lock (``fcntl.flock`` on ``.lock`` in the model's cache folder) so that concurrent
processes, the ranks of a torchrun job among them, fetch and convert it once: the others wait and
then read the same file.

Making it: the TF1 files of the release folder (``catalogue``) are fetched into ``tf/`` beside it
(``fetch``: resumed, MD5-verified), converted exactly as ``simclrv2 import-tf`` converts them (the
trained weights; the pretrained models' linear-eval head becomes the monitor, the fine-tuned ones
are classifiers on the head layer the paper used), with the 1000 ImageNet class names, and
``tf/`` is removed once ``model.pt`` is written. Files already in ``tf/`` are used as they are, so
a cache can be filled by hand; a local folder or ``file://`` URL in ``SIMCLRV2_OFFICIAL_URL`` is
converted in place, nothing copied. With ``SIMCLRV2_OFFLINE=1`` nothing is fetched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Union

from ..errors import UserError
from .catalogue import OfficialName, base_url, imagenet_class_names, is_official, local_folder, offline, parse_official
from .fetch import NotFound, Unreachable, download

try:
    import fcntl
except ImportError:  # not POSIX: no lock (concurrent first uses may both convert; the writes stay atomic)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("simclrv2")

STATE_FILE = "checkpoint"
LOCK_FILE = ".lock"


def resolve_checkpoint(spec: Union[str, os.PathLike]) -> Path:
    """The checkpoint file ``spec`` stands for: a path as it is, an official name fetched into the cache."""
    if not is_official(spec):
        return Path(spec)
    return fetch_official(parse_official(str(spec)))


def fetch_official(name: OfficialName) -> Path:
    """The cached checkpoint of ``name``, downloaded and converted if it is not there yet."""
    if name.cached.is_file():
        return name.cached
    base = base_url()
    folder = local_folder(base)
    if offline() and folder is None and not _complete(name.cache_dir / "tf"):
        raise UserError(f"{name.spec} is not in the cache and SIMCLRV2_OFFLINE=1 forbids downloading it: "
                        f"unset SIMCLRV2_OFFLINE, or copy the files of {name.source(base)}/ (checkpoint, "
                        f"model.ckpt-*.index and .data-*) into {name.cache_dir / 'tf'}")
    name.cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(name.cache_dir / LOCK_FILE, name.spec):
        if name.cached.is_file():  # another process made it while this one waited
            return name.cached
        if folder is not None:
            _convert(name, _release_folder(name, folder, base), base)
        else:
            tf_dir = name.cache_dir / "tf"
            _fetch_release_folder(name, base, tf_dir)
            _convert(name, tf_dir, base)
            shutil.rmtree(tf_dir, ignore_errors=True)
    return name.cached


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is fetching %s (lock %s)", what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _release_folder(name: OfficialName, root: Path, base: str) -> Path:
    folder = root / name.release_path
    if not (folder / STATE_FILE).is_file():
        raise UserError(f"{folder} has no '{STATE_FILE}' file: SIMCLRV2_OFFICIAL_URL={base} must be the folder "
                        f"holding the release's simclrv2/ folder (copy gs://simclr-checkpoints/{name.release_path}/ "
                        f"to {folder}/)")
    return folder


def _prefix_of(state_file: Path, where: str) -> str:
    """The checkpoint prefix (``model.ckpt-<step>``) a TF ``checkpoint`` state file names."""
    text = state_file.read_text(errors="replace")
    match = re.search(r'^model_checkpoint_path:\s*"(.*)"', text, re.M)
    prefix = match.group(1).replace("\\", "/").rsplit("/", 1)[-1] if match else ""
    if not re.fullmatch(r"[\w.-]+", prefix) or prefix.startswith("."):
        raise UserError(f"{where} names no checkpoint (no model_checkpoint_path line with a file name): the "
                        "release folder is not a TF checkpoint folder; check SIMCLRV2_OFFICIAL_URL")
    return prefix


def _shards(index: Path) -> int:
    """How many ``.data-*`` shards the ``.index`` file's header announces (1 if it cannot tell)."""
    from ..convert.tf_bundle import BundleFormatError, parse_index

    try:
        return max(1, parse_index(index.read_bytes(), verify=True)[1])
    except BundleFormatError as exc:
        raise UserError(f"{index} is not a valid TensorFlow checkpoint index ({exc}): the file is damaged; "
                        "delete it and run again") from None


def _complete(tf_dir: Path) -> bool:
    """Whether ``tf_dir`` holds a whole checkpoint: state file, index and every shard."""
    try:
        prefix = _prefix_of(tf_dir / STATE_FILE, str(tf_dir / STATE_FILE))
        count = _shards(tf_dir / f"{prefix}.index")
    except (OSError, UserError):
        return False
    return all((tf_dir / f"{prefix}.data-{i:05d}-of-{count:05d}").is_file() for i in range(count))


def _fetch_release_folder(name: OfficialName, base: str, tf_dir: Path) -> None:
    """Fetch the state file, then the index it leads to, then every shard the index names."""

    def get(file: str) -> Path:
        dest = tf_dir / file
        if dest.is_file():
            return dest
        url = f"{name.source(base)}/{file}"
        if offline():
            raise UserError(f"{name.spec} needs {url}, and SIMCLRV2_OFFLINE=1 forbids downloading it: unset "
                            f"SIMCLRV2_OFFLINE, or copy that file into {tf_dir}")
        try:
            download(url, dest, f"{name.spec} {file}")
        except NotFound:
            raise UserError(f"{url} does not exist (HTTP 404): SIMCLRV2_OFFICIAL_URL={base} must hold the "
                            "release's simclrv2/ folder as the public bucket does") from None
        except Unreachable as exc:
            raise UserError(f"cannot download {url} ({exc}): check the network or set SIMCLRV2_OFFICIAL_URL to a "
                            f"mirror, or copy {name.source(base)}/ (checkpoint, model.ckpt-*.index and .data-*) "
                            f"into {tf_dir} by hand") from None
        return dest

    prefix = _prefix_of(get(STATE_FILE), f"{name.source(base)}/{STATE_FILE}")
    count = _shards(get(f"{prefix}.index"))
    for i in range(count):
        get(f"{prefix}.data-{i:05d}-of-{count:05d}")


def _convert(name: OfficialName, folder: Path, base: str) -> None:
    """Import the TF checkpoint in ``folder`` as ``name`` and write it atomically into the cache."""
    from ..checkpoint import save_checkpoint
    from ..convert.tf_import import convert_tf_checkpoint

    log.info("converting %s (%s) into %s", name.spec, name.variant.what, name.cached)
    try:
        result = convert_tf_checkpoint(folder, name.model, head_layer=name.variant.head_layer)
    except UserError as exc:
        raise UserError(f"{name.spec}: {exc} (nothing was cached; delete {folder} to download it again)"
                        if folder.parent == name.cache_dir else f"{name.spec}: {exc}") from None
    record = result.payload["record"]
    if record["model_config"].get("kind") == "classifier":
        classes = record["model_config"].get("num_classes")
    else:
        classes = record["model_config"].get("monitor_classes")
    if classes == 1000:
        record["class_names"] = imagenet_class_names()
    record["source"] = name.spec
    record["config"]["official"] = {"name": name.spec, "url": name.source(base), "what": name.variant.what}
    save_checkpoint(result.payload, name.cached)
    log.info("%s", result.report.summary(name.cached))
