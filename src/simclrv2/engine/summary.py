"""The few lines every training command prints when it ends (the figures stay in ``OUT/result.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# result.json key -> how the summary names it; rates print as percentages
_SCORES = {
    "holdout_top1": "held-out top-1", "holdout_top5": "held-out top-5", "knn_top1": "held-out kNN top-1",
    "teacher_holdout_top1": "teacher's held-out top-1",
}
_FACTS = {"labeled_images": "labeled images", "head_layer": "head layer", "student": "student",
          "model": "encoder", "skipped_steps": "skipped steps (non-finite loss)",
          "skipped_images": "unreadable images skipped"}


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def summary_text(result: dict[str, Any], folder: str | Path) -> str:
    """A short human summary of a stage's ``result.json``."""
    folder = Path(folder)
    stage = result.get("stage", "run")
    lines = [f"{stage} finished: {result.get('steps', 0)} steps in {duration(result.get('train_seconds', 0.0))}; "
             f"model {folder / 'model.pt'}"]
    width = 32
    scored = False
    for key, name in _SCORES.items():
        if isinstance(result.get(key), (int, float)):
            lines.append(f"  {name:<{width}} {100 * result[key]:.1f}%")
            scored = True
    for key, name in _FACTS.items():
        value = result.get(key)
        if value not in (None, 0) or (key in ("labeled_images", "head_layer") and value is not None):
            lines.append(f"  {name:<{width}} {value}")
    if not scored:
        lines.append("  no held-out images, so no score: pass --holdout F or --eval-data to measure the model")
    lines.append(f"  (every figure: {folder / 'result.json'}; curves: simclrv2 report {folder})")
    return "\n".join(lines)
