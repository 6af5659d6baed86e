"""Networks out of checkpoints: rebuild a saved model, or start a new one from a trained one.

Every checkpoint carries a ``Record`` whose plain-data ``model_config`` rebuilds the network
(``build_model``) without pickled code; weights are loaded strictly. Starting a classifier from a
pretrained (or imported, or fine-tuned) network copies the encoder and the projection-head layers it
keeps; anything that does not fit is an error naming both sides. Every checkpoint is opened through
``read_trained``, which takes an official name (``official:r50_1x_sk1``) wherever it takes a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..errors import UserError
from ..official import resolve_checkpoint
from ..record import Record
from .simclr import Classifier, build_model, classifier_config


@dataclass
class Trained:
    """A checkpoint's record and weights (CPU tensors)."""

    record: Record
    state: dict[str, torch.Tensor]
    path: str


def read_trained(path: str | Path) -> Trained:
    """The record and weights of a simclrv2 checkpoint (or of an official name, fetched into the
    cache first); one-line errors for anything else."""
    payload = load_checkpoint(resolve_checkpoint(path), map_location="cpu")
    return Trained(Record.from_payload(payload, str(path)), payload["model"], str(path))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(path: str | Path, kinds: tuple[str, ...] = ("contrastive", "classifier"),
               purpose: str = "") -> tuple[nn.Module, Record]:
    """The network saved in ``path`` (eval mode, on the CPU) and its record."""
    trained = read_trained(path)
    kind = trained.record.kind
    if kind not in kinds:
        what = f"{kind} model" + (" without a classifier" if kinds == ("classifier",) else
                                  f", not a {' or '.join(kinds)} model")
        raise UserError(f"{path} holds a {what}" + (f": {purpose}" if purpose else ""))
    model = build_model(trained.record.model_config)
    try:
        model.load_state_dict(trained.state, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: its weights do not fit its model_config ({_first_line(exc)}); "
                        "re-create the checkpoint") from None
    return model.eval(), trained.record


def load_classifier(path: str | Path) -> tuple[Classifier, Record]:
    """A fine-tuned classifier or distilled student and its record (eval mode, CPU)."""
    model, record = load_model(path, ("classifier",),
                               "fine-tune it first (this needs a fine-tuned classifier or distilled student)")
    return model, record  # type: ignore[return-value]


def classifier_from(record: Record, head_layer: int, num_classes: int) -> dict:
    """The model_config of a classifier on hiddens[``head_layer``] of ``record``'s network."""
    src = record.model_config
    return classifier_config(src["encoder"], num_classes, head_layer, record.small_images,
                             src.get("head_hidden_dim"), src.get("head_out_dim", 128), record.head_layers)


def transplant(model: Classifier, source: Trained) -> list[str]:
    """Copy the encoder and kept head layers of ``source`` into ``model``.

    The new classifier keeps its fresh initialisation. Returns the names of the copied tensors.
    A source without the head layers the classifier keeps is an error.
    """
    state = source.state
    head_prefix = "projection_head.layers." if source.record.kind == "contrastive" else "head_layers."
    copied: dict[str, torch.Tensor] = {}
    wanted = model.state_dict()
    for name in wanted:
        if name.startswith("classifier."):
            continue
        src_name = head_prefix + name[len("head_layers."):] if name.startswith("head_layers.") else name
        if src_name not in state:
            what = "projection-head layer" if name.startswith("head_layers.") else "tensor"
            raise UserError(f"{source.path} has no {what} {src_name} for --head-layer {model.head_layer}: "
                            "use a smaller head layer or a checkpoint that has it")
        if state[src_name].shape != wanted[name].shape:
            raise UserError(f"{source.path}: {src_name} has shape {tuple(state[src_name].shape)}, the model "
                            f"needs {tuple(wanted[name].shape)}: the checkpoint is of another architecture")
        copied[name] = state[src_name]
    # Every tensor but the new classifier's is copied; load with that one known exception.
    incompatible = model.load_state_dict(copied, strict=False)
    left = [k for k in incompatible.missing_keys if not k.startswith("classifier.")]
    if left or incompatible.unexpected_keys:
        raise RuntimeError(f"transplant left {left or incompatible.unexpected_keys}")
    return sorted(copied)


def continue_from(model: nn.Module, source: Trained) -> list[str]:
    """Copy the encoder and projection head of the contrastive ``source`` into the contrastive ``model``
    (built from the same model_config but for its monitor, which stays freshly initialised): continued
    pretraining. Returns the names of the copied tensors."""
    wanted = {k: v for k, v in source.state.items() if not k.startswith("monitor.")}
    try:
        result = model.load_state_dict(wanted, strict=False)
    except RuntimeError as exc:
        raise UserError(f"{source.path}: its weights do not fit its model_config ({_first_line(exc)}); "
                        "re-create the checkpoint") from None
    left = [k for k in result.missing_keys if not k.startswith("monitor.")]
    if left or result.unexpected_keys:
        raise UserError(f"{source.path}: its weights do not fit its model_config (e.g. "
                        f"{(left or result.unexpected_keys)[0]}); re-create the checkpoint")
    return sorted(wanted)


def check_same_encoder(record: Record, requested: str | None, source_name: str) -> None:
    """A ``--model`` given beside a checkpoint must name the checkpoint's encoder."""
    if requested and requested != record.encoder:
        raise UserError(f"--model {requested} does not match {source_name}, which holds {record.encoder}: "
                        f"leave out --model or pass --model {record.encoder}")
