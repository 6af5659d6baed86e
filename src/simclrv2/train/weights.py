"""Networks out of checkpoints: rebuild a saved model, or start a new one from a trained one.

Every checkpoint carries a plain-data ``model_config`` (``simclrv2.models.build_model``), so a
network is rebuilt without pickled code and its weights are loaded strictly. Starting a
classifier from a pretrained (or imported, or fine-tuned) network copies the encoder and the
projection-head layers it keeps; anything that does not fit is an error naming both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..errors import UserError
from ..models import Classifier, build_model, classifier_config


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(path: str | Path, kinds: tuple[str, ...] = ("contrastive", "classifier"),
               purpose: str = "") -> tuple[nn.Module, dict[str, Any]]:
    """The network saved in ``path`` (eval mode, on the CPU) and the checkpoint payload."""
    payload = load_checkpoint(path, map_location="cpu")
    config = payload.get("model_config")
    kind = config.get("kind") if isinstance(config, dict) else None
    if kind not in kinds:
        what = f"{kind} model" if kind else "model of unknown kind"
        if kinds == ("classifier",):
            what += " without a classifier"
        else:
            what += f", not a {' or '.join(kinds)} model"
        raise UserError(f"{path} holds a {what}" + (f": {purpose}" if purpose else ""))
    model = build_model(config)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: its weights do not fit its model_config ({_first_line(exc)}); "
                        "re-create the checkpoint") from None
    return model.eval(), payload


def load_classifier(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """A fine-tuned classifier or distilled student and its payload (eval mode, CPU)."""
    model, payload = load_model(path, ("classifier",),
                                "fine-tune it first (this needs a fine-tuned classifier or distilled student)")
    return model, payload  # type: ignore[return-value]


def class_names(payload: dict[str, Any]) -> list[str]:
    """The checkpoint's class names, or "0".."C-1" where it has none."""
    count = payload["model_config"]["num_classes"]
    names = payload.get("class_names")
    if names is None:
        return [str(i) for i in range(count)]
    if len(names) != count:
        raise UserError(f"the checkpoint names {len(names)} classes but its classifier has {count} outputs: "
                        "re-create the checkpoint")
    return [str(n) for n in names]


def classifier_from(source: dict[str, Any], head_layer: int, num_classes: int) -> dict[str, Any]:
    """The model_config of a classifier on hiddens[``head_layer``] of ``source``'s network."""
    src = source["model_config"]
    return classifier_config(src["encoder"], num_classes, head_layer, src.get("small_images", False),
                             src.get("head_hidden_dim"), src.get("head_out_dim", 128),
                             src.get("head_layers", 3))


def transplant(model: Classifier, source: dict[str, Any], source_name: str) -> list[str]:
    """Copy the encoder and kept head layers of ``source`` (a checkpoint payload) into ``model``.

    The new classifier keeps its fresh initialisation. Returns the names of the copied tensors.
    A source without the head layers the classifier keeps is an error.
    """
    state = source["model"]
    kind = source["model_config"]["kind"]
    head_prefix = "projection_head.layers." if kind == "contrastive" else "head_layers."
    copied: dict[str, torch.Tensor] = {}
    wanted = model.state_dict()
    for name in wanted:
        if name.startswith("classifier."):
            continue
        src_name = head_prefix + name[len("head_layers."):] if name.startswith("head_layers.") else name
        if src_name not in state:
            what = "projection-head layer" if name.startswith("head_layers.") else "tensor"
            raise UserError(f"{source_name} has no {what} {src_name} for --head-layer {model.head_layer}: "
                            "use a smaller head layer or a checkpoint that has it")
        if state[src_name].shape != wanted[name].shape:
            raise UserError(f"{source_name}: {src_name} has shape {tuple(state[src_name].shape)}, the model "
                            f"needs {tuple(wanted[name].shape)}: the checkpoint is of another architecture")
        copied[name] = state[src_name]
    missing = [k for k in wanted if k not in copied and not k.startswith("classifier.")]
    assert not missing, missing
    incompatible = model.load_state_dict(copied, strict=False)
    unexpected_missing = [k for k in incompatible.missing_keys if not k.startswith("classifier.")]
    if unexpected_missing or incompatible.unexpected_keys:
        raise RuntimeError(f"transplant left {unexpected_missing or incompatible.unexpected_keys}")
    return sorted(copied)


def check_same_encoder(source: dict[str, Any], requested: str | None, source_name: str) -> None:
    """A ``--model`` given beside a checkpoint must name the checkpoint's encoder."""
    have = source["model_config"]["encoder"]
    if requested and requested != have:
        raise UserError(f"--model {requested} does not match {source_name}, which holds {have}: "
                        f"leave out --model or pass --model {have}")
