"""TensorFlow checkpoints (tensor-bundle format V2, ``tensorflow/core/util/tensor_bundle``) in numpy.

``PREFIX.index`` is a LevelDB-style SSTable mapping tensor names to ``BundleEntryProto`` records
(``tensorflow/core/protobuf/tensor_bundle.proto``; the empty key holds the ``BundleHeaderProto``)
that point into the raw ``PREFIX.data-*`` shards; blocks and tensors carry crc32c (Castagnoli).
Files this reader cannot handle (compressed index, partitioned variables, rare dtypes) are read
with ``tf.train.load_checkpoint`` when TensorFlow is installed. Nothing here knows our models.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

from ..errors import UserError

TF_INSTALL_HINT = "pip install simclrv2[tf]"

_CRC_POLY = 0x82F63B78
_CRC_MASK_DELTA = 0xA282EAD8


@functools.lru_cache(maxsize=1)
def _crc_tables() -> tuple[np.ndarray, list[int], np.ndarray]:
    """Byte table (numpy and list) and a 16-bit table that consumes two bytes per step."""
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_CRC_POLY if c & 1 else 0)
        table[i] = c
    wide = np.arange(65536, dtype=np.uint32)
    for _ in range(2):
        wide = table[wide & 0xFF] ^ (wide >> 8)
    return table, [int(v) for v in table], wide


def _crc_bytes(data: bytes, crc: int = 0) -> int:
    """Plain byte-at-a-time crc32c, continuing from ``crc``."""
    table = _crc_tables()[1]
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


@functools.lru_cache(maxsize=32)
def _crc_shift_tables(nbytes: int) -> tuple[list[int], ...]:
    """Tables of the linear map "append ``nbytes`` zero bytes" to a crc, one per input byte."""
    table = _crc_tables()[0]
    basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
    for _ in range(nbytes):
        basis = table[basis & 0xFF] ^ (basis >> 8)
    values = np.arange(256)
    tables = []
    for k in range(4):
        acc = np.zeros(256, np.uint32)
        for bit in range(8):
            acc ^= np.where((values >> bit) & 1, basis[8 * k + bit], 0).astype(np.uint32)
        tables.append([int(v) for v in acc])
    return tuple(tables)


def crc32c(data: bytes | memoryview) -> int:
    """crc32c of ``data``, fast enough in pure numpy to check every tensor of a checkpoint.

    Large buffers are cut into equal lanes whose crcs run in parallel (two bytes per numpy
    step) and are then chained with the crc-combine identity
    ``crc(A + B) = shift_len(B)(crc(A)) ^ crc(B)``.
    """
    buf = np.frombuffer(data, np.uint8)
    n = buf.size
    if n < 2048:
        return _crc_bytes(buf.tobytes())
    lane = 1 << max(6, (n.bit_length() + 1) // 2)
    lanes = n // lane
    words = buf[: lanes * lane].view("<u2").reshape(lanes, lane // 2).T.copy()
    wide = _crc_tables()[2]
    reg = np.full(lanes, 0xFFFFFFFF, np.uint32)
    for column in words:
        reg = wide[(reg ^ column) & 0xFFFF] ^ (reg >> 16)
    t0, t1, t2, t3 = _crc_shift_tables(lane)
    total = 0
    for i, c in enumerate((reg ^ np.uint32(0xFFFFFFFF)).tolist()):
        if i:
            total = t0[total & 0xFF] ^ t1[(total >> 8) & 0xFF] ^ t2[(total >> 16) & 0xFF] ^ t3[total >> 24]
        total ^= c
    return _crc_bytes(buf[lanes * lane:].tobytes(), total)


def unmask_crc(masked: int) -> int:
    """TF stores crcs "masked" (rotated and offset) so that crcs of crcs stay useful."""
    rot = (masked - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


class BundleFormatError(Exception):
    """The files are not a valid tensor bundle (damaged, truncated, or something else)."""


class BundleUnsupported(Exception):
    """A valid bundle that uses a feature this reader leaves to TensorFlow."""


_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48
_DT_STRING = 7
# TF DataType enum -> little-endian numpy dtype; bfloat16 (14) is widened to float32 on read.
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?",
           14: "<u2", 17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8"}
_DT_BFLOAT16 = 14
_ENTRY_FIELDS = {1: "dtype", 3: "shard", 4: "offset", 5: "size", 6: "crc"}  # plain BundleEntryProto fields


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise BundleFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BundleFormatError("varint longer than 10 bytes")


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message; enough of the wire format."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise BundleFormatError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise BundleFormatError("truncated protobuf message")
        yield number, value


@dataclass(frozen=True)
class BundleEntry:
    """One tensor's ``BundleEntryProto``: where its bytes are and how to read them."""

    dtype: int
    shape: tuple[int, ...]
    shard: int = 0
    offset: int = 0
    size: int = 0
    crc: int | None = None
    sliced: bool = False


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, value in _proto_fields(buf):
        if number == 2:
            size = 0
            for sub, sub_value in _proto_fields(value):
                if sub == 1:
                    size = sub_value - (1 << 64) if sub_value >= 1 << 63 else sub_value  # int64
            dims.append(size)
        elif number == 3 and value:
            raise BundleFormatError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(buf: bytes) -> BundleEntry:
    fields: dict[str, Any] = {"dtype": 0, "shape": ()}
    for number, value in _proto_fields(buf):
        if number in _ENTRY_FIELDS:
            fields[_ENTRY_FIELDS[number]] = value
        elif number == 2:
            fields["shape"] = _parse_shape(value)
        elif number == 7:
            fields["sliced"] = True
    return BundleEntry(**fields)


def _read_block(data: bytes, offset: int, size: int, verify: bool) -> bytes:
    """A table block and its 5-byte trailer (compression type, masked crc32c)."""
    end = offset + size
    if end + 5 > len(data):
        raise BundleFormatError("block runs past the end of the index file")
    contents, kind = data[offset:end], data[end]
    if verify:
        stored = unmask_crc(int.from_bytes(data[end + 1:end + 5], "little"))
        if crc32c(data[offset:end + 1]) != stored:
            raise BundleFormatError("crc32c mismatch in an index block")
    if kind == 1:
        raise BundleUnsupported("a snappy-compressed index")
    if kind != 0:
        raise BundleFormatError(f"unknown block compression {kind}")
    return contents


def _block_items(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Key/value pairs of a block: prefix-compressed keys, then the restart-point array."""
    if len(block) < 4:
        raise BundleFormatError("block too short")
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise BundleFormatError("bad restart count in a block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > limit:
            raise BundleFormatError("corrupt block entry")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def parse_index(data: bytes, verify: bool = True) -> tuple[dict[str, BundleEntry], int, int]:
    """Parse a ``.index`` file: (entries by tensor name, number of shards, endianness)."""
    if len(data) < _FOOTER_LEN or int.from_bytes(data[-8:], "little") != _TABLE_MAGIC:
        raise BundleFormatError("no table magic number at the end of the file")
    footer = data[-_FOOTER_LEN:]
    _, pos = _varint(footer, 0)  # metaindex offset: TF writes no meta blocks
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    entries: dict[str, BundleEntry] = {}
    shards, endianness = 1, 0
    for _, handle in _block_items(_read_block(data, index_offset, index_size, verify)):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        for key, value in _block_items(_read_block(data, offset, size, verify)):
            if key == b"":
                for number, field_value in _proto_fields(value):
                    if number == 1:
                        shards = int(field_value)
                    elif number == 2:
                        endianness = int(field_value)
                continue
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise BundleFormatError("tensor name is not UTF-8") from None
            entries[name] = _parse_entry(value)
    return entries, shards, endianness


class CheckpointReader(Protocol):
    kind: str

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def read(self, key: str) -> np.ndarray: ...

    def close(self) -> None: ...


class TensorBundleReader:
    """Reads TF checkpoints (``PREFIX.index`` + ``PREFIX.data-0000x-of-0000y``) with numpy."""

    kind = "builtin"

    def __init__(self, prefix: str | Path, verify: bool = True):
        self.prefix = Path(prefix)
        self.verify = verify
        index = Path(f"{self.prefix}.index")
        try:
            data = index.read_bytes()
        except OSError as exc:
            raise BundleFormatError(f"cannot read {index.name}: {exc.strerror}") from None
        self._entries, self._shards, endianness = parse_index(data, verify)
        if endianness != 0:
            raise BundleUnsupported("big-endian tensor data")
        for name, entry in self._entries.items():
            if entry.sliced:
                raise BundleUnsupported(f"partitioned variables (e.g. {name!r})")
            if entry.dtype not in _DTYPES and entry.dtype != _DT_STRING:
                raise BundleUnsupported(f"TF dtype {entry.dtype} (in {name!r})")
        self._files: dict[int, Any] = {}
        for shard in sorted({e.shard for e in self._entries.values() if e.size}):
            if not self._shard_path(shard).is_file():
                raise UserError(f"checkpoint {self.prefix} is incomplete: its data file "
                                f"{self._shard_path(shard).name} is missing (copy every .data-* shard)")

    def _shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self._shards:05d}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry.shape for name, entry in self._entries.items()}

    def read(self, key: str) -> np.ndarray:
        """The tensor ``key`` as a numpy array (bfloat16 widened to float32)."""
        entry = self._entries[key]
        if entry.dtype == _DT_STRING:
            raise BundleUnsupported(f"string tensor {key!r}")
        if entry.shard not in self._files:
            self._files[entry.shard] = open(self._shard_path(entry.shard), "rb")
        f = self._files[entry.shard]
        f.seek(entry.offset)
        raw = f.read(entry.size)
        if len(raw) != entry.size:
            raise BundleFormatError(f"{self._shard_path(entry.shard).name} is truncated")
        if self.verify and entry.crc is not None and crc32c(raw) != unmask_crc(entry.crc):
            raise BundleFormatError(f"crc32c mismatch in tensor {key!r}")
        array = np.frombuffer(raw, _DTYPES[entry.dtype])
        if entry.dtype == _DT_BFLOAT16:
            array = (array.astype("<u4") << 16).view("<f4")
        if array.size != math.prod(entry.shape):
            raise BundleFormatError(f"tensor {key!r} has {array.size} values for shape {entry.shape}")
        return array.reshape(entry.shape)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class TensorFlowReader:
    """The fallback: ``tf.train.load_checkpoint`` for files the built-in reader leaves alone."""

    kind = "tensorflow"

    def __init__(self, prefix: str | Path):
        import tensorflow as tf  # optional dependency: simclrv2[tf]

        try:
            self._reader = tf.train.load_checkpoint(str(prefix))
        except Exception as exc:  # TF raises assorted errors types for unreadable files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleFormatError(f"TensorFlow cannot read it either: {reason}") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v) for k, v in self._reader.get_variable_to_shape_map().items()}

    def read(self, key: str) -> np.ndarray:
        array = np.asarray(self._reader.get_tensor(key))
        if array.dtype.name == "bfloat16":
            array = array.astype(np.float32)
        return array

    def close(self) -> None:
        pass


def resolve_checkpoint_prefix(path: str | Path) -> Path:
    """The ``PREFIX`` of a TF checkpoint given as prefix, ``.index`` or ``.data-*`` file, or folder.

    A folder may hold a ``checkpoint`` state file, a SavedModel (``variables/variables.index``)
    or exactly one ``*.index`` file.
    """
    p = Path(path)
    if not p.exists() and not Path(f"{p}.index").exists():
        raise UserError(f"TensorFlow checkpoint {p} does not exist: pass the checkpoint prefix "
                        "(e.g. r50_1x_sk1/model.ckpt-250228), its .index file or its folder")
    if p.is_dir():
        return _prefix_in_folder(p)
    name = p.name
    match = re.match(r"^(.*)\.data-\d{5}-of-\d{5}$", name)
    if name.endswith(".index"):
        prefix = p.with_name(name[: -len(".index")])
    elif match:
        prefix = p.with_name(match.group(1))
    else:
        prefix = p
    if not Path(f"{prefix}.index").is_file():
        raise UserError(f"{p} is not a TensorFlow checkpoint: there is no {prefix.name}.index beside "
                        "it (pass the prefix of a TF checkpoint, e.g. model.ckpt-250228, its .index "
                        "file or its folder)")
    return prefix


def _prefix_in_folder(folder: Path) -> Path:
    state = folder / "checkpoint"
    if state.is_file():
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(errors="replace"), re.M)
        if match:
            # The state file may name the path the checkpoint was trained at: look beside it.
            for candidate in (folder / match.group(1), folder / Path(match.group(1)).name):
                if Path(f"{candidate}.index").is_file():
                    return candidate
    saved_model = folder / "variables" / "variables"
    if Path(f"{saved_model}.index").is_file():
        return saved_model
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_name(indexes[0].name[: -len(".index")])
    if not indexes:
        raise UserError(f"{folder} holds no TensorFlow checkpoint (no *.index file): pass the folder "
                        "of a checkpoint such as r50_1x_sk1/ with model.ckpt-250228.index in it")
    names = ", ".join(i.name[: -len(".index")] for i in indexes[:5])
    raise UserError(f"{folder} holds {len(indexes)} checkpoints ({names}): pass one prefix")


def open_checkpoint(path: str | Path) -> CheckpointReader:
    """A reader for the checkpoint at ``path``: the built-in one, TensorFlow where it must."""
    prefix = resolve_checkpoint_prefix(path)
    try:
        return TensorBundleReader(prefix)
    except BundleUnsupported as exc:
        try:
            return TensorFlowReader(prefix)
        except ImportError:
            raise UserError(f"cannot read {prefix}: it uses {exc}, which the built-in reader does not handle; "
                            f"install TensorFlow to read it: {TF_INSTALL_HINT}") from None
    except BundleFormatError as exc:
        reason = f"{prefix}.index is not a valid TensorFlow checkpoint index ({exc})"
        try:
            # A second opinion where TensorFlow is installed; without it the file is judged here.
            return TensorFlowReader(prefix)
        except (ImportError, BundleFormatError):
            raise UserError(f"{reason}: the file is damaged or not a checkpoint; download it again") from None

