"""What runs leave behind, read and written in one place: a stage folder's ``result.json`` (its
figures; written last, it marks the run finished) and ``metrics.jsonl`` (a record per logging step
and evaluation), and a pipeline folder's ``results.json`` (every stage's result under its
``StageId``). The engine writes them; the pipeline, the report and the summary read them.

A kill can leave ``metrics.jsonl`` with a partial last line: readers skip a line that is not JSON.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from .checkpoint import atomic_write_bytes
from .errors import UserError

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
SELECTION = "select"  # the kind of a pipeline's label selection (``simclrv2 select``; not a training stage)


def write_result(folder: str | Path, result: dict[str, Any]) -> None:
    atomic_write_bytes(Path(folder) / RESULT_FILE, json.dumps(result, indent=2).encode())


def read_result(folder: str | Path) -> dict[str, Any]:
    """A stage folder's result.json; a one-line error when it is missing or damaged."""
    return _read_json(Path(folder) / RESULT_FILE, "finish or resume the run first (or re-run it with --overwrite)")


def read_metrics(folder: str | Path, kind: Optional[str] = None) -> list[dict[str, Any]]:
    """The records of a stage folder's metrics.jsonl (of ``kind``: "train", "eval", "epoch"), in order;
    [] without the file. Lines that are not JSON objects (a kill's partial last line) are skipped."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return []
    records = [r for r in map(parse_line, path.read_text(errors="replace").splitlines()) if r is not None]
    return [r for r in records if kind is None or r.get("kind") == kind]


def parse_line(line: str) -> Optional[dict[str, Any]]:
    """One metrics.jsonl line as a record; None for a blank, partial or damaged one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _read_json(path: Path, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} does not exist: {fix}")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged (not a JSON object): {fix}")
    return data


# -- a pipeline's stages ----------------------------------------------------------------------

@dataclass(frozen=True)
class StageId:
    """What a pipeline stage is: its kind (a kind of ``simclrv2.stages``, or "select"), label spec and
    student. Its folder, its row in the report and its results entry all come from here (nothing
    parses folder names)."""

    kind: str
    labels: Optional[str] = None
    student: Optional[str] = None  # distill: "self" or the student's encoder
    selected: bool = False  # trained on the images `select` chose (as many as ``labels`` draws)

    @property
    def every_label(self) -> bool:
        """Whether the stage learns from every label whatever the spec (linear evaluation): one figure for
        every column of the report."""
        from .stages import kinds

        kind = kinds().get(self.kind)
        return kind is not None and kind.every_label

    @property
    def folder(self) -> str:
        if self.labels is None or self.every_label:
            return self.kind
        name = f"{self.kind}_{self.student}" if self.student else self.kind
        return f"{name}_{'selected_' if self.selected else ''}{label_slug(self.labels)}"

    @property
    def row(self) -> Optional[str]:
        """The report's row: the paper's name for the method (None: not a row of the results table)."""
        from .stages import kinds

        kind = kinds().get(self.kind)
        if kind is None or kind.row is None:
            return None
        details = [d for d in (self.student, "selected labels" if self.selected else None) if d]
        return f"{kind.row} ({', '.join(details)})" if details else kind.row

    @classmethod
    def from_result(cls, entry: dict[str, Any]) -> "StageId":
        """The id stored in a results.json entry (runs written before ``selected`` existed lack it)."""
        return cls(**{f.name: entry[f.name] for f in dataclasses.fields(cls) if f.name in entry})


def label_slug(label: str) -> str:
    """A folder-name form of a label spec: '1%' -> '1pct', '5/class' -> '5perclass'."""
    text = label.replace("%", "pct").replace("/class", "perclass")
    text = Path(text).stem if ("/" in text or "\\" in text) else text
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def write_results(run: str | Path, stages: Iterable[tuple[StageId, dict[str, Any]]], labels: list[str]) -> dict[str, Any]:
    """RUN/results.json: every stage's result with its id, in run order, and the label specs."""
    summary = {"stages": {sid.folder: {**result, **dataclasses.asdict(sid)} for sid, result in stages},
               "labels": labels}
    atomic_write_bytes(Path(run) / RESULTS_FILE, json.dumps(summary, indent=2, default=float).encode())
    return summary


def read_results(run: str | Path) -> dict[str, Any]:
    """RUN/results.json of a pipeline; a one-line error when it is missing or damaged."""
    run = Path(run)
    if not (run / RESULTS_FILE).is_file() and not (run / RESULT_FILE).is_file():
        raise UserError(f"{run} has neither {RESULTS_FILE} nor {RESULT_FILE}: it is not a finished run folder "
                        "(finish or resume the run first)")
    results = _read_json(run / RESULTS_FILE, "re-run the same `simclrv2 run` command (finished stages are kept)")
    if not isinstance(results.get("stages"), dict) or not isinstance(results.get("labels"), list):
        raise UserError(f"{run / RESULTS_FILE} is damaged (no stages or labels): re-run the same `simclrv2 run` "
                        "command (finished stages are kept)")
    return results
