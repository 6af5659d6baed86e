"""Where each of our tensors lives in the two official SimCLRv2 layouts (google-research/simclr):

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..models import LinearHead
from ..models.layers import AvgPoolDown2x2, AvgPoolSame2x2, SelectiveKernelConv
from ..models.resnet import Bottleneck, ResNet


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


def tf_shape(kind: str, shape: torch.Size) -> tuple[int, ...]:
    """The TF shape a tensor of ours corresponds to."""
    if kind == "conv":
        out_ch, in_ch, h, w = shape
        return (h, w, in_ch, out_ch)
    if kind == "dense":
        return (shape[1], shape[0])
    return tuple(shape)


def to_torch(kind: str, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array, copy=True))
    if kind == "conv":
        tensor = tensor.permute(3, 2, 0, 1)
    elif kind == "dense":
        tensor = tensor.t()
    return tensor.to(dtype).contiguous()

