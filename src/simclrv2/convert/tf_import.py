"""Import the official SimCLRv2 TensorFlow checkpoints into simclrv2 checkpoints.

Two layouts exist (google-research/simclr):

- TF1 (``run.py``; ``model.ckpt-250228``): name-based keys such as ``base_model/conv2d_3/kernel``.
  Layers are numbered in creation order within ``base_model`` (``conv2d``, ``conv2d_1``, ...,
  ``batch_normalization``, ``batch_normalization_1``, ...); in a block with a projection shortcut
  the shortcut conv/BN are created first. Heads: ``head_contrastive/nl_{j}/...`` and
  ``head_supervised/linear_layer/dense/...``; EMA copies of the weights live under ``ema_model/``.
- TF2 (``tf2/run.py``): object-graph keys such as
  ``model/resnet_model/block_groups/0/layers/0/projection_layers/1/conv2d/kernel/.ATTRIBUTES/...``,
  with list positions that count the weightless layers (padding, pools, dropblock) too.

Layout changes: conv kernels HWIO -> OIHW, dense kernels [in, out] -> [out, in], BN
gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var; the last
projection layer has gamma but no beta (our ``layers.2.scale``).

Which model is built:

- without ``head_layer``: a ``contrastive`` model (encoder + projection head). The supervised
  head of the pretraining checkpoints ("with linear eval head": a linear classifier trained on
  stop-gradient encoder outputs) becomes its ``monitor``.
- with ``head_layer`` j: a ``classifier`` keeping projection layers 1..j under the supervised
  head, for the fine-tuned (and distilled or supervised) checkpoints. Their supervised head's
  input width cannot tell j apart (the hidden width of the head equals the encoder width at every
  width multiplier), so the user says it. The released models: ``finetuned_1pct`` and
  ``finetuned_10pct`` use j=1, ``finetuned_100pct`` uses j=0. Sources: the SimCLRv2 paper ("by
  default we fine-tune from the first layer of the projection head for 1%/10% of labeled
  examples, but from the input of the projection head when 100% labels are present", quoted
  and explained by the authors in google-research/simclr issue #109) and the official README,
  whose 1%-label fine-tuning command passes ``--num_proj_layers=3 --ft_proj_selector=1``.
  Distilled students drop the projection head (the paper's distillation set-up; not checked
  against the released distill_* files) and the supervised baselines never used it: j=0.

Checkpoints are read without TensorFlow by a small reader of TF's tensor-bundle format (the
``.index`` SSTable of ``BundleEntryProto`` records and the raw ``.data-*`` shards, with crc32c
checks). Files it cannot handle (compressed index, partitioned variables, rare dtypes) are read
with ``tf.train.load_checkpoint`` when TensorFlow is installed (``pip install simclrv2[tf]``).
"""

from __future__ import annotations

import argparse
import functools
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..errors import UserError
from ..models import LinearHead, build_model, classifier_config, contrastive_config
from ..models.layers import AvgPoolDown2x2, AvgPoolSame2x2, SelectiveKernelConv
from ..models.registry import SK_RATIO, EncoderSpec, parse_model_name
from ..models.resnet import BLOCKS_PER_GROUP, Bottleneck, ResNet

TF_INSTALL_HINT = "pip install simclrv2[tf]"

# ---------------------------------------------------------------------------------------------
# crc32c (Castagnoli), as TF checks its index blocks and tensors
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# TF tensor-bundle reader (checkpoint format V2), without TensorFlow
# ---------------------------------------------------------------------------------------------

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


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


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
                    size = _int64(sub_value)
            dims.append(size)
        elif number == 3 and value:
            raise BundleFormatError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(buf: bytes) -> BundleEntry:
    fields: dict[str, Any] = {"dtype": 0, "shape": ()}
    for number, value in _proto_fields(buf):
        if number == 1:
            fields["dtype"] = value
        elif number == 2:
            fields["shape"] = _parse_shape(value)
        elif number == 3:
            fields["shard"] = value
        elif number == 4:
            fields["offset"] = value
        elif number == 5:
            fields["size"] = value
        elif number == 6:
            fields["crc"] = value
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
        return _tensorflow_reader(prefix, f"it uses {exc}, which the built-in reader does not handle")
    except BundleFormatError as exc:
        reason = f"{prefix}.index is not a valid TensorFlow checkpoint index ({exc})"
        try:
            # A second opinion where TensorFlow is installed; without it the file is judged here.
            return TensorFlowReader(prefix)
        except (ImportError, BundleFormatError):
            raise UserError(f"{reason}: the file is damaged or not a checkpoint; download it again") from None


def _tensorflow_reader(prefix: Path, reason: str) -> CheckpointReader:
    try:
        return TensorFlowReader(prefix)
    except ImportError:
        raise UserError(f"cannot read {prefix}: {reason}; install TensorFlow to read it: "
                        f"{TF_INSTALL_HINT}") from None


# ---------------------------------------------------------------------------------------------
# Where each of our tensors lives in the two official layouts
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One TF tensor and the parameter/buffer of ours it fills; ``kind`` says how to transpose."""

    tf_key: str
    ours: str
    kind: str  # "conv" (HWIO -> OIHW), "dense" ([in, out] -> [out, in]) or "vector"


def _encoder_units(encoder: ResNet) -> Iterator[tuple[str, str, str]]:
    """(conv|bn, our module path, TF2 object path) in TF creation order (= TF1 numbering).

    TF2 list positions count weightless layers: the SK stem is conv, BN, conv, BN, conv,
    identity, BN, pool; a bottleneck is conv, BN, dropblock, SK conv (or conv, BN), dropblock,
    conv, BN, dropblock; a ResNet-D shortcut is [pad,] pool, conv, BN.
    """
    stem = encoder.stem
    conv_at, bn_at = ((0, 2, 4), (1, 3, 6)) if len(stem.convs) == 3 else ((0,), (2,))
    for i in range(len(stem.convs)):
        yield "conv", f"stem.convs.{i}", f"initial_conv_relu_max_pool/{conv_at[i]}/conv2d"
        yield "bn", f"stem.bns.{i}", f"initial_conv_relu_max_pool/{bn_at[i]}/bn"
    for g, group in enumerate((encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4)):
        for b, block in enumerate(group):
            ours, tf = f"layer{g + 1}.{b}.", f"block_groups/{g}/layers/{b}/"
            bottleneck = isinstance(block, Bottleneck)
            if block.shortcut is not None:
                first = {AvgPoolDown2x2: 2, AvgPoolSame2x2: 1}.get(type(block.shortcut.pool), 0)
                seq = tf + ("projection_layers/" if bottleneck else "shortcut_layers/")
                yield "conv", ours + "shortcut.conv", f"{seq}{first}/conv2d"
                yield "bn", ours + "shortcut.bn", f"{seq}{first + 1}/bn"
            if not bottleneck:
                seq = tf + "conv2d_bn_layers/"
                yield "conv", ours + "conv1", seq + "0/conv2d"
                yield "bn", ours + "bn1", seq + "1/bn"
                yield "conv", ours + "conv2", seq + "2/conv2d"
                yield "bn", ours + "bn2", seq + "3/bn"
                continue
            seq = tf + "conv_relu_dropblock_layers/"
            yield "conv", ours + "conv1", seq + "0/conv2d"
            yield "bn", ours + "bn1", seq + "1/bn"
            if isinstance(block.conv2, SelectiveKernelConv):
                yield "conv", ours + "conv2.conv", seq + "3/conv2d_fixed_padding/conv2d"
                yield "bn", ours + "conv2.bn", seq + "3/batch_norm_relu/bn"
                yield "conv", ours + "conv2.fc1", seq + "3/conv2d_0"
                yield "bn", ours + "conv2.fc1_bn", seq + "3/batch_norm_relu_1/bn"
                yield "conv", ours + "conv2.fc2", seq + "3/conv2d_1"
                last = 5
            else:
                yield "conv", ours + "conv2", seq + "3/conv2d"
                yield "bn", ours + "bn2", seq + "4/bn"
                last = 6
            yield "conv", ours + "conv3", f"{seq}{last}/conv2d"
            yield "bn", ours + "bn3", f"{seq}{last + 1}/bn"


_BN_FIELDS = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
              ("moving_variance", "running_var"))


def _bn_entries(tf_base: str, ours: str, suffix: str, last_head_layer: str | None = None) -> list[Entry]:
    """BN tensors; the last projection layer keeps gamma in ``scale`` and has no beta."""
    entries = []
    for tf_name, our_name in _BN_FIELDS:
        if last_head_layer is not None and tf_name == "beta":
            continue
        target = f"{last_head_layer}.scale" if last_head_layer and tf_name == "gamma" else f"{ours}.{our_name}"
        entries.append(Entry(f"{tf_base}/{tf_name}{suffix}", target, "vector"))
    return entries


class Layout:
    """Key names of one official checkpoint layout (TF1 name-based or TF2 object-graph)."""

    name = ""
    suffix = ""
    encoder_prefix = ""
    supervised_kernel = ""
    head_kernel_pattern: re.Pattern[str]
    head_key_pattern: re.Pattern[str]

    def encoder_entries(self, encoder: ResNet, ours: str = "encoder.") -> list[Entry]:
        raise NotImplementedError

    def head_layer_base(self, j: int) -> tuple[str, str]:
        """(dense base, BN base) of projection layer j."""
        raise NotImplementedError

    def head_layer_entries(self, j: int, ours: str, last: bool) -> list[Entry]:
        dense, bn = self.head_layer_base(j)
        entries = [Entry(f"{dense}/kernel{self.suffix}", f"{ours}.linear.weight", "dense")]
        return entries + _bn_entries(bn, f"{ours}.bn", self.suffix, ours if last else None)

    def supervised_entries(self, ours: str) -> list[Entry]:
        base = self.supervised_kernel[: -len("/kernel" + self.suffix)]
        return [Entry(self.supervised_kernel, f"{ours}.linear.weight", "dense"),
                Entry(f"{base}/bias{self.suffix}", f"{ours}.linear.bias", "vector")]

    def ignored_category(self, key: str) -> str | None:
        """The category of a bookkeeping tensor (optimizer, counters) or None for model weights."""
        raise NotImplementedError


class TF1Layout(Layout):
    name = "tf1"
    encoder_prefix = "base_model/"
    supervised_kernel = "head_supervised/linear_layer/dense/kernel"
    head_kernel_pattern = re.compile(r"^head_contrastive/nl_(\d+)/dense/kernel$")
    head_key_pattern = re.compile(r"^head_contrastive/nl_(\d+)/")
    _SLOTS = {"Momentum", "momentum", "Adam", "Adam_1", "RMSProp", "RMSProp_1", "LARS", "Lars"}
    _OPTIMIZER = {"beta1_power", "beta2_power"}

    def encoder_entries(self, encoder: ResNet, ours: str = "encoder.") -> list[Entry]:
        entries, convs, bns = [], 0, 0
        for kind, path, _ in _encoder_units(encoder):
            if kind == "conv":
                name = "conv2d" if convs == 0 else f"conv2d_{convs}"
                entries.append(Entry(f"base_model/{name}/kernel", f"{ours}{path}.weight", "conv"))
                convs += 1
            else:
                name = "batch_normalization" if bns == 0 else f"batch_normalization_{bns}"
                entries += _bn_entries(f"base_model/{name}", ours + path, "")
                bns += 1
        return entries

    def head_layer_base(self, j: int) -> tuple[str, str]:
        return f"head_contrastive/nl_{j}/dense", f"head_contrastive/nl_{j}/batch_normalization"

    def ignored_category(self, key: str) -> str | None:
        last = key.rsplit("/", 1)[-1]
        if key == "global_step" or last == "global_step":
            return "step counter"
        if last in self._SLOTS or key in self._OPTIMIZER:
            return "optimizer state"
        return None


class TF2Layout(Layout):
    name = "tf2"
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    encoder_prefix = "model/resnet_model/"
    supervised_kernel = "model/supervised_head/linear_layer/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    head_kernel_pattern = re.compile(
        r"^model/_projection_head/linear_layers/(\d+)/dense/kernel/\.ATTRIBUTES/VARIABLE_VALUE$")
    head_key_pattern = re.compile(r"^model/_projection_head/linear_layers/(\d+)/")

    def encoder_entries(self, encoder: ResNet, ours: str = "encoder.") -> list[Entry]:
        entries = []
        for kind, path, tf in _encoder_units(encoder):
            base = self.encoder_prefix + tf
            if kind == "conv":
                entries.append(Entry(f"{base}/kernel{self.suffix}", f"{ours}{path}.weight", "conv"))
            else:
                entries += _bn_entries(base, ours + path, self.suffix)
        return entries

    def head_layer_base(self, j: int) -> tuple[str, str]:
        base = f"model/_projection_head/linear_layers/{j}"
        return f"{base}/dense", f"{base}/bn_relu/bn"

    def ignored_category(self, key: str) -> str | None:
        if key == "_CHECKPOINTABLE_OBJECT_GRAPH":
            return "object graph"
        if "/.OPTIMIZER_SLOT/" in key or key.startswith("optimizer/"):
            return "optimizer state"
        if key.startswith(("save_counter/", "global_step/")):
            return "step counter"
        return None


EMA_PREFIX = "ema_model/"


def detect_layout(keys: set[str] | dict[str, Any], source: str) -> Layout:
    """TF2 keys carry ``/.ATTRIBUTES/``; TF1 keys start with ``base_model/`` (or its EMA copy)."""
    if any(k.startswith(TF2Layout.encoder_prefix) for k in keys):
        return TF2Layout()
    if any(k.startswith((TF1Layout.encoder_prefix, EMA_PREFIX + TF1Layout.encoder_prefix)) for k in keys):
        return TF1Layout()
    sample = ", ".join(sorted(keys)[:3]) or "no tensors at all"
    raise UserError(f"{source} is a TensorFlow checkpoint but not a SimCLR one: expected TF1 keys under "
                    f"base_model/ or TF2 keys under model/resnet_model/, found {sample}")


# ---------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------

@dataclass
class HeadInfo:
    """What the checkpoint's heads look like: projection layers and supervised classes."""

    layers: int = 0
    in_dim: int = 0
    hidden_dim: int = 0
    out_dim: int = 128
    num_classes: int = 0


@dataclass
class ImportReport:
    """What an import mapped and what it left out, by category."""

    source: str
    format: str
    reader: str
    model: str
    kind: str
    ema: bool
    mapped: int = 0
    values: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    ema_fallbacks: int = 0
    defaults: int = 0
    neutral_norms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, out_path: str | Path | None = None) -> str:
        """One paragraph for the command line."""
        layout = {"tf1": "TF1 name-based", "tf2": "TF2 object-graph"}[self.format]
        text = (f"Imported {layout} checkpoint {self.source} ({self.reader} reader) as {self.model} "
                f"{self.kind}{' from its EMA weights' if self.ema else ''}: mapped {self.mapped} "
                f"tensors ({self.values / 1e6:.1f}M values)")
        if self.ema_fallbacks:
            text += f", {self.ema_fallbacks} of them without an EMA copy (taken as trained)"
        if self.ignored:
            parts = ", ".join(f"{name} {count}" for name, count in sorted(self.ignored.items()))
            text += f"; ignored {sum(self.ignored.values())} ({parts})"
        else:
            text += "; ignored none"
        if self.defaults:
            text += f"; {self.defaults} BN batch counters have no TF counterpart and start at 0"
        if self.neutral_norms:
            text += "; the monitor's feature BN (not in the official head) is set to the identity"
        return text + (f". Wrote {out_path}." if out_path else ".")


@dataclass
class ImportResult:
    payload: dict[str, Any]
    report: ImportReport


def _head_info(shapes: dict[str, tuple[int, ...]], layout: Layout) -> HeadInfo:
    info = HeadInfo()
    kernels = {}
    for key, shape in shapes.items():
        match = layout.head_kernel_pattern.match(key)
        if match:
            kernels[int(match.group(1))] = shape
    if kernels:
        info.layers = max(kernels) + 1
        if 0 in kernels:
            info.in_dim, info.hidden_dim = kernels[0]
        info.out_dim = kernels[info.layers - 1][1]
    supervised = shapes.get(layout.supervised_kernel) or shapes.get(EMA_PREFIX + layout.supervised_kernel)
    if supervised:
        info.num_classes = supervised[1]
    return info


def _model_config(model_name: str, small_images: bool, head_layer: int | None, heads: HeadInfo,
                  source: str) -> dict[str, Any]:
    """The contrastive or classifier config the checkpoint's heads call for."""
    hidden = heads.hidden_dim if heads.layers > 1 and heads.hidden_dim != heads.in_dim else None
    if head_layer is None:
        if not heads.layers:
            raise UserError(f"{source} has no projection head (no head_contrastive or _projection_head "
                            "tensors), so it cannot be a contrastive model: import it as a classifier "
                            "with --head-layer 0")
        return contrastive_config(model_name, small_images, head_hidden_dim=hidden,
                                  head_out_dim=heads.out_dim, head_layers=heads.layers,
                                  monitor_classes=heads.num_classes)
    if not heads.num_classes:
        raise UserError(f"{source} has no supervised head, so --head-layer has nothing to classify with: "
                        "it is a pretraining checkpoint; import it without --head-layer, then fine-tune")
    top = max(heads.layers - 1, 0)
    if not 0 <= head_layer <= top:
        raise UserError(f"--head-layer {head_layer} is out of range: the checkpoint's projection head has "
                        f"{heads.layers} layers, so use a head layer from 0 to {top} (1 for the released "
                        "finetuned_1pct/10pct models, 0 for finetuned_100pct)")
    return classifier_config(model_name, heads.num_classes, head_layer=head_layer,
                             small_images=small_images, head_hidden_dim=hidden,
                             head_out_dim=heads.out_dim, head_layers=heads.layers or 3)


def model_entries(model: nn.Module, config: dict[str, Any], layout: Layout) -> list[Entry]:
    """Every TF tensor our model takes, paired with the parameter/buffer it fills."""
    entries = layout.encoder_entries(model.encoder)
    if config["kind"] == "contrastive":
        n = len(model.projection_head.layers)
        for j in range(n):
            entries += layout.head_layer_entries(j, f"projection_head.layers.{j}", last=j == n - 1)
        if model.monitor is not None:
            entries += layout.supervised_entries(_linear_head_path(model.monitor, "monitor"))
    else:
        for j in range(len(model.head_layers)):
            entries += layout.head_layer_entries(j, f"head_layers.{j}", last=False)
        entries += layout.supervised_entries(_linear_head_path(model.classifier, "classifier"))
    return entries


def _linear_head_path(module: nn.Module, prefix: str) -> str:
    """Where the official linear layer goes in our (possibly wrapped) classifier module."""
    for name, sub in module.named_modules():
        if isinstance(sub, LinearHead):
            return f"{prefix}.{name}" if name else prefix
    raise RuntimeError(f"importer bug: no LinearHead in {prefix}")


def _neutral_norms(model: nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
    """Make the monitor's own feature normalisation an identity; the keys it sets.

    Our monitor standardises features with a BN without affine parameters before its linear
    layer; the official one has none. Mean 0 and variance 1 - eps make that BN the identity in
    eval mode, so the imported monitor gives the official logits.
    """
    monitor = getattr(model, "monitor", None)
    if monitor is None:
        return set()
    filled = set()
    for name, sub in monitor.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not sub.affine:
            base = f"monitor.{name}"
            mean, var = state[f"{base}.running_mean"], state[f"{base}.running_var"]
            state[f"{base}.running_mean"] = torch.zeros(mean.shape, dtype=mean.dtype)
            state[f"{base}.running_var"] = torch.full(var.shape, 1.0 - sub.eps, dtype=var.dtype)
            filled |= {f"{base}.running_mean", f"{base}.running_var"}
    return filled


def _tf_shape(kind: str, shape: torch.Size) -> tuple[int, ...]:
    """The TF shape a tensor of ours corresponds to."""
    if kind == "conv":
        out_ch, in_ch, h, w = shape
        return (h, w, in_ch, out_ch)
    if kind == "dense":
        return (shape[1], shape[0])
    return tuple(shape)


def _to_torch(kind: str, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array, copy=True))
    if kind == "conv":
        tensor = tensor.permute(3, 2, 0, 1)
    elif kind == "dense":
        tensor = tensor.t()
    return tensor.to(dtype).contiguous()


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _encoder_shapes(shapes: dict[str, tuple[int, ...]], layout: Layout) -> dict[str, tuple[int, ...]]:
    """The encoder's tensors under their non-EMA names (EMA-only checkpoints included)."""
    plain = {k: s for k, s in shapes.items()
             if k.startswith(layout.encoder_prefix) and layout.ignored_category(k) is None}
    if plain:
        return plain
    return {k[len(EMA_PREFIX):]: s for k, s in shapes.items()
            if k.startswith(EMA_PREFIX + layout.encoder_prefix) and layout.ignored_category(k) is None}


def suggest_model(shapes: dict[str, tuple[int, ...]], layout: Layout) -> str | None:
    """The ``--model`` (and ``--small-images``) whose encoder fits the checkpoint, if any."""
    wanted = _encoder_shapes(shapes, layout)
    for depth in sorted(BLOCKS_PER_GROUP):
        for sk in (True, False):
            for small in (False, True):
                with torch.device("meta"):
                    encoder = ResNet(depth, 1, SK_RATIO if sk else 0.0, small)
                entries = layout.encoder_entries(encoder, "")
                if {e.tf_key for e in entries} != set(wanted):
                    continue
                # The stem's last conv has 64w outputs: that gives the width.
                stem_out = [e for e in entries if e.ours.startswith("stem.convs.")][-1]
                width = wanted[stem_out.tf_key][-1] / 64
                if width <= 0:
                    continue
                name = EncoderSpec(depth, width, sk).name
                with torch.device("meta"):
                    encoder = ResNet(depth, width, SK_RATIO if sk else 0.0, small)
                state = encoder.state_dict()
                if all(_tf_shape(e.kind, state[e.ours].shape) == tuple(wanted[e.tf_key])
                       for e in layout.encoder_entries(encoder, "")):
                    return f"--model {name}" + (" --small-images" if small else "")
    return None


def _hint(shapes: dict[str, tuple[int, ...]], layout: Layout, model_name: str, small: bool) -> str:
    suggestion = suggest_model(shapes, layout)
    current = f"--model {model_name}" + (" --small-images" if small else "")
    if suggestion and suggestion != current:
        return f"; its shapes suggest {suggestion}"
    if suggestion:
        return ""
    return "; is --model right? (`simclrv2 models` lists the names)"


def _sources(entries: list[Entry], shapes: dict[str, tuple[int, ...]], ema: bool) -> tuple[list[str], int]:
    """The checkpoint key each entry reads (its EMA copy with ``ema``) and how many lack one."""
    sources, fallbacks = [], 0
    for entry in entries:
        key = entry.tf_key
        if ema and EMA_PREFIX + key in shapes:
            key = EMA_PREFIX + key
        elif ema and key in shapes:
            # Tensors without an EMA copy (the linear-eval head is trained on the side) are
            # taken as trained, and counted in the report.
            fallbacks += 1
        sources.append(key)
    return sources, fallbacks


def _check_entries(entries: list[Entry], sources: list[str], shapes: dict[str, tuple[int, ...]],
                   state: dict[str, torch.Tensor], layout: Layout, model_name: str, small: bool,
                   source: str) -> None:
    """Every entry exists in the checkpoint with the shape our model expects."""
    missing = [s for s in sources if s not in shapes]
    if missing:
        raise UserError(f"{source} lacks {len(missing)} of the {len(entries)} tensors that {model_name} "
                        f"needs (e.g. {missing[0]}){_hint(shapes, layout, model_name, small)}")
    for entry, key in zip(entries, sources):
        expected = _tf_shape(entry.kind, state[entry.ours].shape)
        if tuple(shapes[key]) != expected:
            raise UserError(f"tensor {key} has shape {_fmt_shape(shapes[key])} but {model_name} expects "
                            f"{_fmt_shape(expected)} there ({entry.ours})"
                            f"{_hint(shapes, layout, model_name, small)}")


def _classify_rest(shapes: dict[str, tuple[int, ...]], used: set[str], layout: Layout, ema: bool,
                   kept_head_layers: int | None) -> tuple[dict[str, int], list[str]]:
    """Counts of the unmapped tensors by category, and the ones that fit no category."""
    ignored: dict[str, int] = {}
    unknown = []
    for key in sorted(shapes):
        if key in used:
            continue
        category = layout.ignored_category(key)
        is_ema = key.startswith(EMA_PREFIX)
        plain = key[len(EMA_PREFIX):] if is_ema else key
        head = layout.head_key_pattern.match(plain)
        if category is None and any(part.startswith("memory") for part in plain.split("/")):
            category = "memory buffer"
        above = head is not None and kept_head_layers is not None and int(head.group(1)) >= kept_head_layers
        if category is None and above:
            category = "projection layers above --head-layer"
        if category is None and is_ema and not ema and plain in used:
            category = "EMA copies (--ema takes them)"
        if category is None and not is_ema and ema and EMA_PREFIX + key in used:
            category = "weights replaced by their EMA copies"
        if category is None:
            unknown.append(key)
        else:
            ignored[category] = ignored.get(category, 0) + 1
    return ignored, unknown


def convert_tf_checkpoint(ckpt_path: str | Path, model_name: str, *, ema: bool = False,
                          head_layer: int | None = None, small_images: bool = False) -> ImportResult:
    """Read an official checkpoint into our model; the checkpoint payload and a report.

    ``model_name`` is the encoder (e.g. ``r50_1x_sk1``; the released folders are named so).
    ``ema`` takes the ``ema_model/`` copies of TF1 checkpoints. ``head_layer`` j builds a
    classifier on projection layer j (see the module docstring for the released models);
    without it the model is contrastive.
    """
    parse_model_name(model_name)
    source = str(ckpt_path)
    reader = open_checkpoint(ckpt_path)
    try:
        shapes = reader.shapes()
        layout = detect_layout(shapes, source)
        if ema and not any(k.startswith(EMA_PREFIX) for k in shapes):
            raise UserError(f"{source} has no EMA copies of its weights (no ema_model/ tensors): "
                            "import it without --ema")
        heads = _head_info(shapes, layout)
        config = _model_config(model_name, small_images, head_layer, heads, source)
        # Built on the meta device: every tensor is replaced below, so a random init is wasted time.
        with torch.device("meta"):
            model = build_model(config)
        state = model.state_dict()
        entries = model_entries(model, config, layout)
        sources, fallbacks = _sources(entries, shapes, ema)
        _check_entries(entries, sources, shapes, state, layout, model_name, small_images, source)
        kept = head_layer if config["kind"] == "classifier" else None
        ignored, unknown = _classify_rest(shapes, set(sources), layout, ema, kept)
        if unknown:
            listed = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
            raise UserError(f"{source} has {len(unknown)} tensors that {model_name} has no place for "
                            f"({listed}){_hint(shapes, layout, model_name, small_images)}")
        filled = _fill_state(state, entries, sources, reader, source)
        neutral = _neutral_norms(model, state)
    finally:
        reader.close()
    defaults = [k for k in state if k not in filled and k not in neutral]
    if any(not k.endswith("num_batches_tracked") for k in defaults):
        raise RuntimeError(f"importer bug: no TF tensor fills {[k for k in defaults][:5]}")
    for key in defaults:
        state[key] = torch.zeros(state[key].shape, dtype=state[key].dtype)
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        raise RuntimeError("importer bug: the model keeps tensors that are not in its state dict")
    kind = "contrastive model" if config["kind"] == "contrastive" else f"classifier on head layer {head_layer}"
    report = ImportReport(source=source, format=layout.name, reader=reader.kind, model=model_name, kind=kind,
                          ema=ema, mapped=len(entries), values=sum(math.prod(shapes[s]) for s in sources),
                          ignored=ignored, ema_fallbacks=fallbacks, defaults=len(defaults),
                          neutral_norms=len(neutral) // 2)
    payload = {
        "stage": "import",
        "model_config": config,
        "model": model.state_dict(),
        "class_names": [str(i) for i in range(heads.num_classes)] if heads.num_classes else None,
        "source": {"path": source, "format": layout.name, "reader": reader.kind, "ema": ema,
                   "report": report.as_dict()},
    }
    return ImportResult(payload, report)


def _fill_state(state: dict[str, torch.Tensor], entries: list[Entry], sources: list[str],
                reader: CheckpointReader, source: str) -> set[str]:
    """Read, transpose and cast every mapped tensor into ``state``; the keys filled."""
    filled = set()
    for entry, key in zip(entries, sources):
        if entry.ours in filled:
            raise RuntimeError(f"importer bug: {entry.ours} is filled twice")
        try:
            array = reader.read(key)
        except BundleFormatError as exc:
            raise UserError(f"checkpoint {source} is damaged ({exc}): download it again") from None
        state[entry.ours] = _to_torch(entry.kind, array, state[entry.ours].dtype)
        filled.add(entry.ours)
    return filled


def _import(ckpt_path: str | Path, model_name: str, out_path: str | Path, *, ema: bool,
            head_layer: int | None, small_images: bool) -> tuple[Path, ImportReport]:
    result = convert_tf_checkpoint(ckpt_path, model_name, ema=ema, head_layer=head_layer,
                                   small_images=small_images)
    out = Path(out_path)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give the file to write, e.g. {out / (model_name + '.pt')}")
    return save_checkpoint(result.payload, out), result.report


def import_tf_checkpoint(ckpt_path: str | Path, model_name: str, out_path: str | Path, *, ema: bool = False,
                         head_layer: int | None = None, small_images: bool = False) -> Path:
    """Convert an official SimCLRv2 checkpoint into a simclrv2 checkpoint at ``out_path``."""
    path, _ = _import(ckpt_path, model_name, out_path, ema=ema, head_layer=head_layer,
                      small_images=small_images)
    return path


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

IMPORT_DESCRIPTION = """\
Convert an official SimCLRv2 TensorFlow checkpoint (google-research/simclr, TF1 or TF2) into a
simclrv2 checkpoint. Every tensor of the checkpoint is either mapped into the model or reported
as ignored (optimizer state, step counters, unused EMA copies, ...); anything else is an error.
TensorFlow is not needed, except for rare files the built-in reader leaves to it
(pip install simclrv2[tf]).

Without --head-layer the result is a contrastive model (encoder + projection head; the
pretrained checkpoints' linear-eval head becomes its monitor), ready for fine-tuning. With
--head-layer J it is a classifier on projection layer J, for fine-tuned checkpoints: the
released finetuned_1pct and finetuned_10pct models use J=1, finetuned_100pct, distilled and
supervised models J=0.

examples:
  simclrv2 import-tf r50_1x_sk1/model.ckpt-250228 --model r50_1x_sk1 --out r50_1x_sk1.pt
  simclrv2 import-tf finetuned_1pct/r50_1x_sk1 --model r50_1x_sk1 --head-layer 1 --out ft1.pt
"""


def cmd_import_tf(args: argparse.Namespace) -> int:
    """Convert an official TensorFlow checkpoint and print what was mapped and ignored."""
    path, report = _import(args.ckpt_path, args.model, args.out, ema=args.ema,
                           head_layer=args.head_layer, small_images=args.small_images)
    print(report.summary(path))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``import-tf`` to the ``simclrv2`` command line."""
    p = subparsers.add_parser(
        "import-tf", help="convert an official SimCLRv2 TensorFlow checkpoint (TF1 or TF2)",
        description=IMPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt_path", metavar="CKPT_PATH",
                   help="checkpoint prefix (e.g. r50_1x_sk1/model.ckpt-250228), its .index file, or "
                        "the folder holding it")
    p.add_argument("--model", required=True, metavar="NAME",
                   help="encoder of the checkpoint, r{depth}_{width}x_sk{0|1} as the released folders "
                        "are named (e.g. r152_3x_sk1)")
    p.add_argument("--out", required=True, metavar="FILE", help="simclrv2 checkpoint to write (.pt)")
    p.add_argument("--ema", action="store_true",
                   help="take the exponential-moving-average weights (TF1 ema_model/ copies) instead "
                        "of the trained ones")
    p.add_argument("--head-layer", type=int, default=None, metavar="J",
                   help="build a classifier on projection-head layer J (0 = encoder output) for "
                        "fine-tuned checkpoints: 1 for finetuned_1pct/10pct, 0 for finetuned_100pct, "
                        "distilled and supervised ones; omit for pretrained checkpoints")
    p.add_argument("--small-images", action="store_true",
                   help="the checkpoint has the CIFAR stem (one 3x3 conv, no max pool; images of "
                        "32 px or less)")
    p.set_defaults(func=cmd_import_tf)
    return p
