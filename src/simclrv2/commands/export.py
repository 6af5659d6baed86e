"""Export fine-tuned classifiers and distilled students for deployment.

Formats: ONNX (dynamic batch axis), TorchScript (traced) and safetensors (the state dict with the
``model_config`` in its metadata, to rebuild with ``simclrv2.models.build_model``). The exported
network takes float32 NCHW RGB images in [0, 1] -- no mean/std normalisation, the SimCLR
convention -- and returns logits. ``<out>.json`` beside the file says how to prepare images
(the SimCLR evaluation crop: centre crop of 87.5% of the shorter side, bicubic resize; no crop
for images of 32 px or less), the class names, the model config and the source checkpoint's
sha256.

ONNX and TorchScript fix the spatial size at export (``image_size``; 224, or 32 for the CIFAR
stem): the TF "SAME" max pool pads differently for even and odd sizes, and tracing records the
padding of the size it sees.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import __version__
from ..checkpoint import atomic_write_bytes, file_sha256
from ..errors import UserError
from ..models.checkpoints import load_classifier
from ..names import FORMATS
from ..official import resolve_checkpoint
from .outputs import check_output_file

CROP_PROPORTION = 0.875
ONNX_OPSET = 17
ONNX_LIMIT_BYTES = 2 * 1024**3  # a single protobuf file cannot hold more
INPUT_NAME, OUTPUT_NAME = "images", "logits"
EXAMPLE_BATCH = 2  # not 1, so that nothing in the trace specialises on a batch of one


def preprocessing(image_size: int) -> dict[str, Any]:
    """The SimCLR evaluation preprocessing, as data for the sidecar file."""
    crop = CROP_PROPORTION if image_size > 32 else 1.0  # the official code skips the crop at <= 32 px
    return {
        "steps": [
            f"centre crop of {crop:g} of the shorter side, aspect ratio kept" if crop < 1 else "no crop",
            f"resize to {image_size}x{image_size} with bicubic interpolation",
            "RGB channels, float32 values in [0, 1], NCHW layout",
        ],
        "center_crop_proportion": crop,
        "resize": [image_size, image_size],
        "interpolation": "bicubic",
        "value_range": [0.0, 1.0],
        "normalization": None,
        "channel_order": "RGB",
        "layout": "NCHW",
    }


def _export_onnx(model: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if size >= ONNX_LIMIT_BYTES:
        raise UserError(f"the model has {size / 1024**3:.1f} GB of weights, more than a single ONNX file "
                        "holds (2 GB): export it as torchscript or safetensors")
    buffer = io.BytesIO()
    # Deprecation and constant-folding notices only: the exported outputs are what tests check.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: the dynamo one needs onnxscript, not a dependency here.
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buffer.getvalue()


def _export_torchscript(model: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Deprecation notices, and tracer warnings about shape arithmetic: the spatial size is
        # fixed on purpose.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, buffer, _extra_files={"simclrv2.json": json.dumps(meta)})
    return buffer.getvalue()


def _export_safetensors(model: nn.Module, example: torch.Tensor, meta: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "simclrv2-classifier",
        "model_config": json.dumps(meta["model_config"]),
        "class_names": json.dumps(meta["class_names"]),
        "image_size": str(meta["image_size"]),
        "preprocessing": json.dumps(meta["preprocessing"]),
        "source_sha256": meta["source_checkpoint"]["sha256"],
    }
    return save(state, metadata)


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, dict[str, Any]], bytes]] = {
    "onnx": _export_onnx, "torchscript": _export_torchscript, "safetensors": _export_safetensors,
}


def export_model(checkpoint_path: str | Path, fmt: str, out_path: str | Path, *,
                 image_size: int | None = None, overwrite: bool = False) -> Path:
    """Export the classifier of ``checkpoint_path`` as ``fmt``; writes ``out_path`` and ``<out_path>.json``
    (neither may be the checkpoint; existing files are replaced only with ``overwrite``)."""
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out_path)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give the file to write, e.g. {out / ('model.' + fmt)}")
    # Every input first (a missing or wrong checkpoint, a bad size), then the outputs, then a missing extra.
    model, record = load_classifier(checkpoint_path)
    config = record.model_config
    size = record.image_size if image_size is None else image_size
    if size <= 0:
        raise UserError(f"--image-size must be positive, got {size}")
    source = resolve_checkpoint(checkpoint_path)  # (an official name: the cached file, which it must not write over)
    check_output_file(out, [source], overwrite)
    check_output_file(out.with_name(out.name + ".json"), [source], True)
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise UserError("--format onnx needs the onnx package: pip install 'simclrv2[onnx]' (or export as "
                        "torchscript or safetensors)")
    example = torch.rand(EXAMPLE_BATCH, 3, size, size)
    names = record.named_classes()
    meta = {
        "format": fmt,
        "file": out.name,
        "inputs": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32",
                   "layout": "NCHW", "value_range": [0.0, 1.0]},
        "outputs": {"name": OUTPUT_NAME, "shape": ["batch", len(names)], "dtype": "float32",
                    "meaning": "logits (softmax gives class probabilities)"},
        "image_size": size,
        "class_names": names,
        "preprocessing": preprocessing(size),
        "model_config": config,
        "source_checkpoint": {"path": str(checkpoint_path), "sha256": file_sha256(source)},
        "simclrv2_version": __version__,
    }
    data = EXPORTERS[fmt](model, example, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    atomic_write_bytes(out.with_name(out.name + ".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return out


def cmd_export(args: argparse.Namespace) -> int:
    """Export a classifier checkpoint and say where the files went."""
    out = export_model(args.model, args.format, args.out, image_size=args.image_size, overwrite=args.overwrite)
    print(f"Exported {args.model} as {args.format} to {out} (preprocessing and class names in {out}.json).")
    return 0
