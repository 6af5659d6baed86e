"""What a run saves and how it continues: the training checkpoint (everything needed to continue
exactly: weights, optimizer, the step's state, progress, RNG state and the typed record), the checks
before a checkpoint is resumed (same stage, model, steps and settings), and the final save
(``model.pt``, then ``result.json``, the "finished" marker)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import resumable_changes
from ..errors import UserError
from ..record import Record
from ..results import write_result
from .run_folder import MODEL_FILE, RunFolder

log = logging.getLogger("simclrv2")


@dataclass
class Progress:
    """How far a run is; saved in every checkpoint."""

    step: int = 0
    total_steps: int = 0
    skipped_steps: int = 0
    train_seconds: float = 0.0


def training_payload(record: Record, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     step_state: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """A training checkpoint's contents (tensors still on the device: the writer copies them)."""
    return {"record": record.to_data(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "state": step_state, "progress": dataclasses.asdict(progress), "rng": {"torch": torch.get_rng_state()}}


def check_resumable(path: Path, payload: dict[str, Any], record: Record, progress: Progress, config_class: type) -> None:
    """Refuse (one line) a checkpoint that is not of this very run: same stage, model, steps and settings
    (the runtime settings of ``resumable_changes`` may differ)."""
    saved = Record.from_payload(payload, str(path))
    if saved.stage != record.stage:
        raise UserError(f"checkpoint {path} is from stage '{saved.stage}', not '{record.stage}': "
                        "resume with a checkpoint of this stage")
    if saved.model_config != record.model_config:
        raise UserError(f"checkpoint {path} holds a different model ({saved.encoder}) than this run "
                        f"({record.encoder}): use the same settings to resume")
    if "progress" not in payload:
        raise UserError(f"checkpoint {path} is not a training checkpoint of this simclrv2 version: "
                        "it cannot be resumed; start the run again with --overwrite")
    if payload["progress"]["total_steps"] != progress.total_steps:
        raise UserError(f"checkpoint {path} was for {payload['progress']['total_steps']} steps, this run has "
                        f"{progress.total_steps}: resume with the same --epochs, --batch-size and data")
    free = resumable_changes(config_class)
    changed = [f"{key} {saved.config[key]!r} -> {value!r}" for key, value in record.config.items()
               if key not in free and key in saved.config and saved.config[key] != value]
    if changed:
        raise UserError(f"checkpoint {path} was trained with other settings ({'; '.join(changed)}): resume "
                        "with the checkpoint's settings, or start again with --overwrite")


def resume_checkpoint(folder: RunFolder, resume: str | None) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``--resume`` names, read before anything is built (a bad file fails first)."""
    if not resume:
        return None
    if resume != "auto":
        return Path(resume), load_checkpoint(resume, map_location="cpu")
    found = folder.checkpoints.latest(map_location="cpu")
    if found is None:
        log.info("no checkpoint in %s: starting from the beginning", folder.checkpoints.directory)
    return found


def save_final(folder: RunFolder, record: Record, model: torch.nn.Module, result: dict[str, Any]) -> Path:
    """model.pt (weights and record, no optimizer), then result.json, the 'finished' marker."""
    path = folder.path / MODEL_FILE
    save_checkpoint({"record": record.to_data(), "model": model.state_dict(), "result": result}, path)
    write_result(folder.path, {"stage": record.stage, **result})
    return path
