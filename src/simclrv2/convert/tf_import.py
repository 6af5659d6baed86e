"""Import the official SimCLRv2 TensorFlow checkpoints into simclrv2 checkpoints.

``tf_bundle`` reads the checkpoint and ``tf_layouts`` names its tensors; here the model is built
and filled, and what was mapped and ignored is reported (``simclrv2 import-tf``).

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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..errors import UserError
from ..models import build_model, classifier_config, contrastive_config
from ..models.resnet import ResNet
from ..names import BLOCKS_PER_GROUP, SK_RATIO, EncoderSpec, parse_model_name
from ..record import IMPORTED, Record, versions
from .tf_bundle import BundleFormatError, CheckpointReader, open_checkpoint
from .tf_layouts import EMA_PREFIX, Entry, Layout, detect_layout, model_entries, tf_shape, to_torch


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
                if all(tf_shape(e.kind, state[e.ours].shape) == tuple(wanted[e.tf_key])
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
        expected = tf_shape(entry.kind, state[entry.ours].shape)
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
    return ImportResult(imported_payload(config, model, heads.num_classes, report), report)


def imported_payload(config: dict[str, Any], model: nn.Module, num_classes: int,
                     report: ImportReport) -> dict[str, Any]:
    """The checkpoint payload (what ``save_checkpoint`` writes) of an imported model: its record
    (the official image size, 224, or 32 for the CIFAR stem) and how the import read the files."""
    record = Record(IMPORTED, config, 32 if config["small_images"] else 224,
                    [str(i) for i in range(num_classes)] if num_classes else None, str(report.source),
                    config={"format": report.format, "reader": report.reader, "ema": report.ema,
                            "report": report.as_dict()}, versions=versions())
    return {"record": record.to_data(), "model": model.state_dict()}


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
        state[entry.ours] = to_torch(entry.kind, array, state[entry.ours].dtype)
        filled.add(entry.ours)
    return filled


def import_with_report(ckpt_path: str | Path, model_name: str, out_path: str | Path, *, ema: bool,
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
    return import_with_report(ckpt_path, model_name, out_path, ema=ema, head_layer=head_layer,
                   small_images=small_images)[0]
