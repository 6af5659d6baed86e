"""One file over HTTP(S), done right: resumed, verified, shown (standard library + tqdm).

The file grows as ``NAME.part`` beside its destination and is renamed to ``NAME`` only once it is
whole and verified, so a killed download leaves a ``.part`` that the next call continues with an
HTTP Range request. Verification: the size the server announced, and the MD5 that Google Cloud
Storage sends in its ``x-goog-hash`` header (``md5=<base64>``; composite objects carry only a
``crc32c=``, which is checked instead). The hashes of the first response are kept in
``NAME.part.json``, so a resumed transfer is checked against the whole file's. A file that fails is
deleted and fetched again from the start; after ``ATTEMPTS`` tries it is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mmap
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError

log = logging.getLogger("simclrv2")

ATTEMPTS = 3
RETRY_WAIT_S = 2.0  # before the second try; doubled before each next one
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "simclrv2 (official SimCLRv2 checkpoints)"


class Unreachable(Exception):
    """The server could not be reached or broke off (the caller says what to do offline)."""


class NotFound(Exception):
    """The server answered 404: the file is not there."""


def parse_goog_hash(values: list[str]) -> dict[str, str]:
    """``x-goog-hash`` headers (``crc32c=..., md5=...``, one or several) -> {"md5": b64, "crc32c": b64}."""
    hashes = {}
    for value in values:
        for part in value.split(","):
            key, sep, digest = part.strip().partition("=")
            if sep and key.strip().lower() in ("md5", "crc32c"):
                hashes[key.strip().lower()] = digest.strip()
    return hashes


def _md5_b64(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK * 8)
            if not block:
                break
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def _crc32c_b64(path: Path) -> str:
    from ..convert.tf_bundle import crc32c

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            value = crc32c(b"")
        else:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                value = crc32c(view)
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def check_file(path: Path, size: Optional[int], hashes: dict[str, str]) -> Optional[str]:
    """What is wrong with a downloaded file (size, MD5 or crc32c), or None when it is whole."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"{actual} bytes of the {size} the server announced"
    if "md5" in hashes:
        digest = _md5_b64(path)
        if digest != hashes["md5"]:
            return f"MD5 {digest}, the server's x-goog-hash says {hashes['md5']}"
    elif "crc32c" in hashes:
        digest = _crc32c_b64(path)
        if digest != hashes["crc32c"]:
            return f"crc32c {digest}, the server's x-goog-hash says {hashes['crc32c']}"
    return None


def _show_progress() -> bool:
    return sys.stderr.isatty()


def _open(url: str, start: int):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise NotFound(url) from None
        if exc.code == 416 and start:
            return None  # the .part is as long as the file or longer: start again
        raise Unreachable(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise Unreachable(str(reason)) from None


def _transfer(url: str, part: Path, meta_path: Path, label: str) -> tuple[Optional[int], dict[str, str], str]:
    """Fetch ``url`` into ``part`` (continuing it); the file's size and hashes as first announced, and
    how much came how fast."""
    meta: dict[str, Any] = {}
    if part.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
    start = part.stat().st_size if part.is_file() and meta else 0
    response = _open(url, start)
    if response is None:
        part.unlink(missing_ok=True)
        meta, start = {}, 0
        response = _open(url, 0)
    with response:
        hashes = parse_goog_hash(response.headers.get_all("x-goog-hash") or [])
        if response.status == 206:
            match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != start:
                raise Unreachable(f"the server answered the range request with {response.headers.get('Content-Range')}")
            size = int(match.group(2)) if match.group(2) != "*" else None
        else:
            start = 0  # a full answer (the server ignores ranges): start again
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
            meta = {}
        # The first answer's size and hashes are the whole file's; a resumed one must agree.
        if meta and (meta.get("size") not in (None, size) or any(
                meta.get("hashes", {}).get(k) not in (None, v) for k, v in hashes.items())):
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise Unreachable("the file changed on the server since the interrupted download")
        if not meta:
            meta = {"size": size, "hashes": hashes}
            meta_path.write_text(json.dumps(meta))
        done = start
        began = time.monotonic()
        bar = None
        if _show_progress():
            from tqdm import tqdm

            bar = tqdm(total=size, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                       leave=False, dynamic_ncols=True, file=sys.stderr)
        try:
            with open(part, "ab" if start else "wb") as f:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, ValueError) as exc:  # connection reset, IncompleteRead, timeout
                        raise Unreachable(f"the transfer broke off after {done} bytes ({exc})") from None
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if bar is not None:
                        bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar is not None:
                bar.close()
        if size is not None and done < size:  # the server closed the connection early: resume
            raise Unreachable(f"the transfer broke off after {done} of {size} bytes")
        elapsed = max(time.monotonic() - began, 1e-6)
        speed = f"{_size(done - start)} in {elapsed:.1f} s ({_size((done - start) / elapsed)}/s)"
    return meta.get("size"), meta.get("hashes", {}), speed


def download(url: str, dest: Path, label: str) -> None:
    """``url`` to ``dest``, resumed from ``dest.part`` and verified; raises ``Unreachable``,
    ``NotFound`` or, for a file that stays corrupt, ``UserError``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    problem = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            size, hashes, speed = _transfer(url, part, meta_path, label)
        except Unreachable as exc:
            if attempt == ATTEMPTS:
                raise
            log.warning("%s: %s; trying again (%d of %d)", label, exc, attempt + 1, ATTEMPTS)
            time.sleep(RETRY_WAIT_S * 2 ** (attempt - 1))
            continue
        problem = check_file(part, size, hashes) or ""
        if not problem:
            checked = ("MD5 verified" if "md5" in hashes else "crc32c verified" if hashes else
                       "no hash from the server: the import checks the checkpoint's own crc32c")
            log.info("%s: %s, %s", label, speed, checked)
            os.replace(part, dest)
            meta_path.unlink(missing_ok=True)
            return
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        if attempt < ATTEMPTS:
            log.warning("%s is corrupt (%s); downloading it again (%d of %d)", label, problem, attempt + 1, ATTEMPTS)
    raise UserError(f"{url} arrived corrupt {ATTEMPTS} times ({problem}); nothing was kept: try again later, or "
                    "set SIMCLRV2_OFFICIAL_URL to a mirror")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
