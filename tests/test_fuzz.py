"""Property-based robustness: whatever a user or a damaged disk hands simclrv2, the outcome is a
result or one clean, one-line UserError (BadImage for images), never another exception or a hang.

Inputs: random config mappings (keys, values and types) for ``from_mapping(PretrainConfig)``,
random YAML text and bytes for ``load_yaml``, random and mutated image files for ``load_rgb``,
random and mutated checkpoint files (and their ``.sha256`` sidecars) for ``load_checkpoint``,
random plain-data payloads saved with ``torch.save``, and random CSV/TSV lists for
``open_images``. Plus one subprocess check: a bad YAML file on the command line gives exit code 2
and exactly one line on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from simclrv2.checkpoint import save_checkpoint, load_checkpoint
from simclrv2.config import from_mapping, load_yaml
from simclrv2.data import BadImage, load_rgb, open_images
from simclrv2.errors import UserError
from simclrv2.stages.pretrain import PretrainConfig

# SIMCLRV2_FUZZ_EXAMPLES=5000 runs a longer campaign; the default keeps the suite fast.
# Pillow and torch warn about the garbage they are fed (corrupt EXIF, odd pickle protocols).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUZZ = settings(max_examples=int(os.environ.get("SIMCLRV2_FUZZ_EXAMPLES", "100")), deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None)
HANG_SECONDS = 20  # one example taking this long counts as a hang


# ---------------------------------------------------------------- helpers

class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS):
    """Fail an example that runs longer than ``seconds`` (SIGALRM; the tests run in the main thread)."""
    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message.strip(), f"empty message from {type(exc).__name__}"
    assert len(message.splitlines()) == 1, f"multi-line message: {message!r}"
    return message


def outcome(fn, *args, allowed=UserError, **kwargs):
    """Run ``fn``; return its result or the allowed exception (checked to be one line)."""
    with no_hang():
        try:
            return fn(*args, **kwargs)
        except allowed as exc:
            assert_one_line(exc)
            return exc


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fresh_file(folder: Path, suffix: str, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


@st.composite
def mutated(draw, seeds: list[bytes]):
    """One of ``seeds`` with random byte flips, a truncation, an insertion or a splice."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
    return bytes(data)


# ---------------------------------------------------------------- configs

FIELDS = [f.name for f in dataclasses.fields(PretrainConfig)]
FLOAT_FIELDS = [f.name for f in dataclasses.fields(PretrainConfig)
                if "float" in str(f.type)]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 600)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["lars", "sgd", "auto", "on", "off", "bf16", "r18_0.25x_sk0", "digits",
                              "1e3", "nan", ".inf", "", "\n", "r50_1x_sk1\n"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
keys = st.sampled_from(FIELDS) | st.text(max_size=12) | st.sampled_from(["epoch", "Epochs", "lr ", "a\nb"])


@FUZZ
@given(st.dictionaries(keys, values, max_size=6), st.booleans())
@example({"lr": float("nan")}, True)
@example({"warmup_epochs": float("inf")}, True)
@example({"epochs\nx": 3}, True)
@example({"model": "no\nmodel"}, True)
def test_random_config_mappings(data, with_required):
    if with_required:
        data = {"data": "digits", "out": "run", **data}
    result = outcome(from_mapping, PretrainConfig, data)
    if isinstance(result, PretrainConfig):
        for name in FLOAT_FIELDS:
            value = getattr(result, name)
            assert value is None or (isinstance(value, float) and math.isfinite(value)), (name, value)


def test_non_dict_mappings_are_user_errors():
    for data in ([1, 2], "text", 3, [("a", 1, 2)]):
        with pytest.raises(UserError) as info:
            from_mapping(PretrainConfig, data)
        assert_one_line(info.value)


YAML_ALPHABET = st.sampled_from(list(":-[]{},#&*!|>'\"%@`?\n \t.0123456789eE+") + FIELDS[:10]
                                + ["true", "null", "~", ".nan", ".inf", "!!python/object:os.system",
                                   "!!binary", "<<:", "\xff", "\u2028", "\x00"])


@st.composite
def yaml_texts(draw):
    kind = draw(st.sampled_from(["tokens", "dumped", "mutated-dump"]))
    if kind == "tokens":
        return "".join(draw(st.lists(YAML_ALPHABET, max_size=40)))
    mapping = draw(st.dictionaries(keys, values, max_size=5))
    text = yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True)
    if kind == "mutated-dump":
        text = draw(mutated([text.encode()])).decode("utf-8", errors="replace")
    return text


# Nine levels of nine aliases: 9**9 list items if anything expands it (repr in a message did).
BILLION_LAUGHS = "epochs:\n  - &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  - &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


@FUZZ
@given(yaml_texts() | st.binary(max_size=200).map(lambda b: b.decode("latin-1")), st.booleans())
@example("epochs: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", False)
@example("? [a, b]\n: 1\n", False)
@example("epochs: !!python/object/apply:os.system [echo hi]\n", False)
@example("lr: .nan\n", False)
@example(BILLION_LAUGHS, False)
@example("&a [*a]", False)
@example("epochs: &a [*a]\n", False)
def test_random_yaml_files(scratch, text, as_bytes):
    data = text.encode("latin-1", errors="replace") if as_bytes else text.encode("utf-8", errors="replace")
    path = fresh_file(scratch, ".yaml", data)
    try:
        mapping = outcome(load_yaml, path)
        if isinstance(mapping, dict):
            assert isinstance(mapping, dict)
            outcome(from_mapping, PretrainConfig, mapping)
    finally:
        path.unlink()


def test_yaml_escape_past_the_last_code_point_is_a_one_line_error(tmp_path):
    path = tmp_path / "escape.yaml"
    path.write_text('model: "\\U10010000"\n')  # PyYAML's scanner raises ValueError from chr(), not YAMLError
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml(path)


def test_bad_yaml_config_file_on_the_command_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: [1, 2\nlr: {\n")
    proc = subprocess.run([sys.executable, "-m", "simclrv2", "pretrain", "--config", str(cfg),
                           "--data", "digits", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "not valid YAML" in lines[0] and str(cfg) in lines[0]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- images

def _image_bytes(array: np.ndarray | None, fmt: str, mode: str | None = None, **options) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (7, 5), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated
    seeds = [
        _image_bytes(rgb, "PNG"),
        _image_bytes(rgb, "PNG", "P", transparency=0),
        _image_bytes(rgb, "PNG", "LA"),
        _image_bytes(rgb, "PNG", "1"),
        _image_bytes(gray16, "PNG"),
        _image_bytes(rgb, "JPEG", quality=80),
        _image_bytes(rgb, "JPEG", "CMYK"),
        _image_bytes(rgb, "JPEG", exif=exif.tobytes()),
        _image_bytes(rgb, "GIF"),
        _image_bytes(rgb, "BMP"),
        _image_bytes(rgb, "TIFF"),
        _image_bytes(rgb, "TIFF", compression="tiff_lzw"),
        _image_bytes(gray16, "TIFF"),
        _image_bytes(rng.random((4, 6)).astype(np.float32), "TIFF"),
        _image_bytes(rgb, "WEBP", lossless=True),
        _image_bytes(rgb, "PPM"),
        _image_bytes(rgb, "ICO"),
        b"",
    ]
    return seeds


IMAGE_SEEDS = _seed_images()


@FUZZ
@given(mutated(IMAGE_SEEDS) | st.binary(max_size=300),
       st.sampled_from([".png", ".jpg", ".jpeg", ".bmp", ".tif", ".webp"]))
def test_random_image_files(scratch, data, suffix):
    path = fresh_file(scratch, suffix, data)
    try:
        result = outcome(load_rgb, path, allowed=BadImage)
        if isinstance(result, BadImage):
            assert str(path) in str(result)
        else:
            assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3
            assert result.shape[0] > 0 and result.shape[1] > 0
    finally:
        path.unlink()


def test_every_seed_image_decodes(scratch):
    """The mutation seeds themselves are good images (else the fuzzing above proves little)."""
    for data in IMAGE_SEEDS[:-1]:
        path = fresh_file(scratch, ".img", data)
        assert load_rgb(path).shape[2] == 3
        path.unlink()


# ---------------------------------------------------------------- checkpoints

def _seed_checkpoint() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ckpt.pt"
        record = {"stage": "pretrain", "model_config": {"kind": "contrastive", "encoder": "r18_1x_sk0"},
                  "image_size": 32, "config": {"lr": 0.1, "model": "r18_1x_sk0"}}
        save_checkpoint({"record": record, "model": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                                                     "b": torch.zeros(3, dtype=torch.int64)},
                         "progress": {"step": 3}}, path)
        return path.read_bytes()


CHECKPOINT_SEED = _seed_checkpoint()


def _legacy_seed() -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": "simclrv2-checkpoint", "model": {"w": torch.ones(2)}, "model_config": {}}, buffer,
               _use_new_zipfile_serialization=False)
    return buffer.getvalue()


@FUZZ
@given(mutated([CHECKPOINT_SEED, _legacy_seed()]) | st.binary(max_size=400))
@example(b"Q")  # the weights-only unpickler raised IndexError on these (found by this test)
@example(b"\x85")
def test_random_checkpoint_files(scratch, data):
    path = fresh_file(scratch, ".pt", data)
    try:
        result = outcome(load_checkpoint, path)
        if isinstance(result, dict):
            assert result["format"] == "simclrv2-checkpoint" and "model" in result
    finally:
        path.unlink()


def test_seed_checkpoint_loads(scratch):
    path = fresh_file(scratch, ".pt", CHECKPOINT_SEED)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(12.0).reshape(3, 4))
    path.unlink()


@FUZZ
@given(st.binary(max_size=100) | st.text(max_size=80).map(str.encode)
       | st.sampled_from([b"", b"\n", b"  \n", b"0" * 64, b"\xff\xfe", b"\x00" * 70]))
def test_random_checksum_sidecars(scratch, sidecar):
    """A damaged .sha256 file beside a good checkpoint: success or a clean error, never a crash."""
    path = fresh_file(scratch, ".pt", CHECKPOINT_SEED)
    side = path.with_name(path.name + ".sha256")
    side.write_bytes(sidecar)
    try:
        outcome(load_checkpoint, path)
    finally:
        path.unlink()
        side.unlink()


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
    | st.builds(torch.zeros, st.integers(0, 3)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    | st.tuples(inner, inner), max_leaves=8)


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "format": st.just("simclrv2-checkpoint") | plain, "version": plain, "model": plain,
    "model_config": plain, "stage": plain, "step": plain}) | plain)
@example({"format": "simclrv2-checkpoint", "version": "2", "model": {}, "model_config": {}})
@example({"format": "simclrv2-checkpoint", "version": None, "model": {}, "model_config": {}})
@example({"format": "simclrv2-checkpoint", "version": [1], "model": {}, "model_config": {}})
def test_random_payloads_saved_with_torch(scratch, payload):
    """Files ``torch.save`` wrote with any plain data: a checkpoint or a clean error."""
    path = fresh_file(scratch, ".pt", b"")
    torch.save(payload, path)
    try:
        outcome(load_checkpoint, path)
    finally:
        path.unlink()


# ---------------------------------------------------------------- image lists

@pytest.fixture(scope="module")
def list_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lists")
    (folder / "imgs").mkdir()
    for i, name in enumerate(["a.png", "b.jpg", "c d.png", "e,f.png"]):
        Image.new("RGB", (5, 4), (i * 40, 0, 0)).save(folder / "imgs" / name)
    return folder


LIST_TOKENS = st.sampled_from(["imgs/a.png", "imgs/b.jpg", "imgs/c d.png", '"imgs/e,f.png"', "imgs/e,f.png",
                               "path", "label", "cat", "dog", ",", "\t", "\n", "\r\n", '"', " ", "",
                               "missing.png", "\x00", "\ufeff", "~", "../x", "/", "a\nb"])


@FUZZ
@given(st.lists(LIST_TOKENS, max_size=30).map("".join).map(str.encode) | mutated([
    b"path,label\nimgs/a.png,cat\nimgs/b.jpg,dog\n", b"imgs/a.png\timgs\n"]) | st.binary(max_size=200),
       st.sampled_from([".csv", ".tsv", ".txt", ".CSV"]), st.booleans())
@example(b'"imgs/miss\ning.png",cat\n', ".csv", False)
@example(b"imgs/a.png,cat\n\x00,dog\n", ".csv", False)
@example(b"~\x00", ".csv", False)  # os.path.expanduser raised ValueError (found by this test)
def test_random_image_lists(list_folder, data, suffix, labeled):
    path = fresh_file(list_folder, suffix, data)
    try:
        result = outcome(open_images, str(path), labeled=labeled)
        if not isinstance(result, UserError):
            assert len(result) > 0 and all(os.path.isfile(p) for p in result.paths)
            if labeled:
                assert result.labeled
            for i in range(len(result)):  # every listed image still decodes or is a clean BadImage
                outcome(result.load, i, allowed=BadImage)
    finally:
        path.unlink()
