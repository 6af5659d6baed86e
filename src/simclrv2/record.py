"""How a checkpoint's network was made: one typed record, written and read in one place.

Every simclrv2 checkpoint (training checkpoints, ``model.pt``, imported official weights) carries a
``Record`` under the key ``record``: the stage that made it, the plain-data ``model_config`` that
rebuilds the network (``simclrv2.models.build_model``), the image size it was trained at, its class
names, the checkpoint it learned from, the data it held out, its whole stage config, and the
versions that wrote it. Code that needs any of these reads the record's fields; nothing digs
through the payload dict. Checkpoints of format version 1 (keys at the top level) are read too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import UserError

# The ``stage`` of a checkpoint of official TensorFlow weights (`simclrv2 import-tf`); every other checkpoint's
# is a kind of the stage that trained it (``simclrv2.stages``).
IMPORTED = "import"


@dataclass(frozen=True)
class HeldOut:
    """The images a run trained on and held out, so that ``evaluate`` can find the held-out ones again."""

    data: Optional[str] = None
    eval_data: Optional[str] = None
    holdout: float = 0.0
    seed: int = 0
    annotations: Optional[str] = None  # a --labels .csv: the labels (and held-out part) come from it
    label_conflicts: Optional[str] = None  # how disagreeing annotators of a Label Studio export were settled


@dataclass(frozen=True)
class Record:
    """The typed description of a checkpoint's network and of the run that made it."""

    stage: str  # a kind of a stage of ``simclrv2.stages`` ("supervised", ...) or IMPORTED
    model_config: dict[str, Any]
    image_size: int
    class_names: Optional[list[str]] = None
    source: Optional[str] = None  # the checkpoint it learned from (--from, --teacher, the TF checkpoint)
    held_out: HeldOut = field(default_factory=HeldOut)
    config: dict[str, Any] = field(default_factory=dict)  # the stage's whole config, as plain data
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """"contrastive" (encoder + projection head) or "classifier"."""
        return self.model_config["kind"]

    @property
    def encoder(self) -> str:
        return self.model_config["encoder"]

    @property
    def small_images(self) -> bool:
        """Whether the encoder has the CIFAR stem (3x3/1 conv, no max pool)."""
        return bool(self.model_config.get("small_images", False))

    @property
    def head_layer(self) -> Optional[int]:
        """hiddens[j] that a classifier classifies; None for a contrastive model."""
        return self.model_config.get("head_layer") if self.kind == "classifier" else None

    @property
    def head_layers(self) -> int:
        return int(self.model_config.get("head_layers", 3))

    def named_classes(self) -> list[str]:
        """The class names, or "0".."C-1" where the run had none (a classifier's outputs)."""
        count = self.model_config.get("num_classes", 0)
        if self.class_names is None:
            return [str(i) for i in range(count)]
        if self.kind == "classifier" and len(self.class_names) != count:
            raise UserError(f"the checkpoint names {len(self.class_names)} classes but its classifier has "
                            f"{count} outputs: re-create the checkpoint")
        return list(self.class_names)

    def to_data(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], where: str) -> "Record":
        """The record of a loaded checkpoint (``simclrv2.checkpoint.load_checkpoint``)."""
        data = payload.get("record")
        if data is None:
            data = _from_version_1(payload)
        if not isinstance(data, dict):
            raise UserError(f"checkpoint {where} has a malformed record: re-create it")
        try:
            held = HeldOut(**(data.get("held_out") or {}))
            record = cls(**{**data, "held_out": held})
        except TypeError as exc:
            raise UserError(f"checkpoint {where} has a malformed record ({exc}): re-create it") from None
        if not isinstance(record.model_config, dict) or record.model_config.get("kind") not in (
                "contrastive", "classifier") or not isinstance(record.model_config.get("encoder"), str):
            raise UserError(f"checkpoint {where} has no usable model_config in its record: re-create it")
        if not isinstance(record.image_size, int) or record.image_size <= 0:
            raise UserError(f"checkpoint {where} records image size {record.image_size!r}: re-create it")
        return record


def _from_version_1(payload: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint (record keys at the top level) as record data."""
    model_config = payload.get("model_config")
    config = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    small = isinstance(model_config, dict) and model_config.get("small_images")
    stage = str(payload.get("stage", IMPORTED)).replace("-", "_")
    return {
        "stage": stage, "model_config": model_config,
        "image_size": config.get("image_size") or (32 if small else 224),
        "class_names": payload.get("class_names"),
        "source": payload.get("source") or payload.get("teacher"),
        "held_out": {k: config[k] for k in ("data", "eval_data", "holdout", "seed") if k in config},
        "config": config,
    }


def versions() -> dict[str, str]:
    """The versions of simclrv2 and torch writing a checkpoint now."""
    import torch

    from . import __version__

    return {"simclrv2": str(__version__), "torch": str(torch.__version__)}  # (torch.__version__ is a str subclass)
