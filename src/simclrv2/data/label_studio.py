"""Label Studio files: the tasks and labelling config ``select --label-studio`` writes, and the exports
``finetune --labels`` and ``select --labeled`` read.

Tasks name each image twice: ``data.image`` is the URL Label Studio's local-file serving answers
(``/data/local-files/?d=<path under the document root>``) and ``data.path`` the image as the data names
it. ``data.round`` says which round of selection chose it and ``data.guess`` the model's class, when
there was a model; its guess and score also travel as a Label Studio prediction (a pre-annotation).

Exports (checked against Label Studio 1.23.2): the JSON export (a task per entry, ``annotations`` in
each), JSON-min and CSV (a row per annotation, the image under the object tag's name, ``image``, and the
class under the control's, ``label``). Skipped and cancelled annotations (``was_cancelled``) and tasks
nobody annotated are left out; fields not needed here are ignored. Several annotations of one image
that disagree are an error naming the image unless a rule (:data:`RULES`) settles them.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, quote, urlparse
from xml.sax.saxutils import quoteattr

import numpy as np

from ..errors import UserError
from .sources import ImageSet

IMAGE, CHOICE = "image", "label"  # the object tag and the control of the labelling config
LOCAL_FILES = "/data/local-files/?d="
RULES = ("error", "majority", "latest")
RULES_HELP = ("several annotations of one image that disagree: 'error' (name the image), 'majority' (the "
              "most frequent class; a tie is an error) or 'latest' (the last one updated)")
# Columns of JSON-min and CSV rows that are not the image, our task fields or the class.
_ROW_FIELDS = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "path", "round",
               "guess", "rank", "score", "cluster"}


def labeling_config(class_names: Sequence[str]) -> str:
    """The labelling config: the image and one single-choice control over ``class_names``."""
    if len(class_names) < 2:
        raise UserError("Label Studio needs at least two class names: pass --classes a,b,... (or a model "
                        "that knows its classes)")
    choices = "".join(f"    <Choice value={quoteattr(str(name))}/>\n" for name in class_names)
    return (f'<View>\n  <Image name="{IMAGE}" value="${IMAGE}"/>\n'
            f'  <Choices name="{CHOICE}" toName="{IMAGE}" choice="single" showInline="true">\n'
            f"{choices}  </Choices>\n</View>\n")


def document_root(given: str | None, images: ImageSet) -> Path:
    """Label Studio's ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``: ``given``, else that variable, else
    the folder above the data folder (local storage must be attached to a folder under the root)."""
    if images.paths is None:
        raise UserError(f"data {images.name} is held in memory: Label Studio shows image files; give --data a "
                        "folder or list of image files")
    root = given or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    if root:
        return Path(root).expanduser().resolve()
    return Path(images.root or os.path.commonpath([os.path.dirname(p) for p in images.paths])).resolve().parent


def local_file_url(path: str, root: Path) -> str:
    """The URL Label Studio serves ``path`` at, with local-file serving under document root ``root``."""
    absolute = Path(path).resolve()
    if root not in absolute.parents:
        raise UserError(f"image {path} is not under the Label Studio document root {root}: pass "
                        "--document-root, a folder that holds every image")
    return LOCAL_FILES + quote(absolute.relative_to(root).as_posix())


def prediction(guess: str, score: float, model_version: str) -> dict[str, Any]:
    """A Label Studio prediction (pre-annotation): the model's class for the image, with its probability."""
    return {"model_version": model_version, "score": round(float(score), 6),
            "result": [{"from_name": CHOICE, "to_name": IMAGE, "type": "choices", "value": {"choices": [guess]}}]}


def make_tasks(paths: Sequence[str], root: Path, round_number: int | None = None,
               guesses: Sequence[tuple[str, float]] | None = None, model_version: str = "") -> list[dict[str, Any]]:
    """One task per image, in the given order (Label Studio shows them in import order)."""
    tasks = []
    for k, path in enumerate(paths):
        data: dict[str, Any] = {IMAGE: local_file_url(path, root), "path": path}
        if round_number is not None:
            data["round"] = round_number
        task: dict[str, Any] = {"data": data}
        if guesses is not None:
            data["guess"] = guesses[k][0]
            task["predictions"] = [prediction(guesses[k][0], guesses[k][1], model_version)]
        tasks.append(task)
    return tasks


def is_export(path: str | os.PathLike) -> bool:
    """Whether a --labels/--labeled file is a Label Studio export: any .json, or a .csv with annotation ids."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return True
    if suffix != ".csv" or not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return "annotation_id" in [h.strip() for h in header]


@dataclass(frozen=True)
class Vote:
    """One annotation of one image: its task, how the task names the image, the class and when."""

    task: str
    path: str | None  # data.path: the image as the data names it (tasks written by select)
    image: str  # data.image: the URL (or name) Label Studio shows
    label: str | None  # None: skipped or cancelled
    annotator: str
    updated: str
    annotation: int
    round: int | None = None
    guess: str | None = None


def read_export(path: str | os.PathLike) -> list[Vote]:
    """Every annotation in a Label Studio export (JSON, JSON-min or CSV), skipped ones with label None."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Label Studio export {path} does not exist: check the path")
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                return _rows_votes(list(csv.DictReader(f)), path)
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise UserError(f"Label Studio export {path} is not UTF-8 text: export it again") from None
    except (json.JSONDecodeError, csv.Error) as exc:
        raise UserError(f"Label Studio export {path} is not valid {path.suffix[1:].upper()} ({exc}): "
                        "export it again") from None
    except OSError as exc:
        raise UserError(f"cannot read Label Studio export {path} ({exc.strerror}): check its permissions") from None
    if isinstance(entries, dict) and isinstance(entries.get("tasks"), list):
        entries = entries["tasks"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"Label Studio export {path} is not a list of tasks: export JSON, JSON-min or CSV")
    if any("annotations" in e for e in entries):
        return _task_votes(entries, path)
    return _rows_votes(entries, path)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _task_votes(tasks: list[dict[str, Any]], path: Path) -> list[Vote]:
    """The JSON export: a task per entry, with its annotations (tasks without any give nothing)."""
    votes = []
    for task in tasks:
        data = task.get("data") or {}
        image = _image_field(data, path)
        for a in task.get("annotations") or []:
            if not isinstance(a, dict):
                continue
            label = None if a.get("was_cancelled") else _choice(a.get("result") or [], image, path)
            votes.append(Vote(str(task.get("id")), _text(data.get("path")), image, label,
                              str(a.get("completed_by")), str(a.get("updated_at") or a.get("created_at") or ""),
                              _int(a.get("id")) or 0, _int(data.get("round")), _text(data.get("guess"))))
    return votes


def _image_field(data: dict[str, Any], path: Path) -> str:
    if IMAGE in data:
        return str(data[IMAGE])
    texts = [str(v) for v in data.values() if isinstance(v, str)]
    if not texts:
        raise UserError(f"Label Studio export {path}: a task's data names no image ({sorted(data)[:5]}): "
                        f"import the tasks `select --label-studio` writes (the image under '{IMAGE}')")
    return texts[0]


def _choice(result: list[Any], image: str, path: Path) -> str | None:
    """The class of one annotation's result: the single choice of the choices control (None: no choice)."""
    controls = {}
    for region in result:
        if isinstance(region, dict) and region.get("type") == "choices":
            controls[region.get("from_name")] = (region.get("value") or {}).get("choices") or []
    if not controls:
        return None
    chosen = controls.get(CHOICE, next(iter(controls.values())) if len(controls) == 1 else None)
    if chosen is None:
        raise UserError(f"Label Studio export {path}: {image} has several choice controls ({', '.join(controls)}) "
                        f"and none is called '{CHOICE}': use the labelling config `select --label-studio` writes")
    return _single(chosen, image, path)


def _single(chosen: Any, image: str, path: Path) -> str | None:
    if isinstance(chosen, dict):
        chosen = chosen.get("choices")
    if isinstance(chosen, str) and chosen.startswith("{"):
        try:
            chosen = json.loads(chosen).get("choices")
        except (json.JSONDecodeError, AttributeError):
            pass
    if isinstance(chosen, list):
        if len(chosen) > 1:
            raise UserError(f"Label Studio export {path}: {image} has {len(chosen)} classes in one annotation "
                            f"({', '.join(map(str, chosen))}): give each image one class (choice=\"single\")")
        chosen = chosen[0] if chosen else None
    return _text(chosen)


def _rows_votes(rows: list[dict[str, Any]], path: Path) -> list[Vote]:
    """JSON-min and CSV: a row per (not cancelled) annotation; the class under the control's name."""
    if not rows:
        return []
    keys = list(dict.fromkeys(k for row in rows for k in row))
    image_key = IMAGE if IMAGE in keys else None
    choice_key = CHOICE if CHOICE in keys else None
    rest = [k for k in keys if k not in _ROW_FIELDS and k not in (image_key, choice_key)]
    if image_key is None or choice_key is None:
        if image_key is None and choice_key is None or len(rest) != 1:
            raise UserError(f"Label Studio export {path}: cannot tell the image and the class column apart "
                            f"(columns {', '.join(keys[:8])}): name them '{IMAGE}' and '{CHOICE}' in the "
                            "labelling config, as `select --label-studio` writes it")
        image_key, choice_key = (rest[0], choice_key) if image_key is None else (image_key, rest[0])
    votes = []
    for k, row in enumerate(rows):
        image = str(row.get(image_key) or "")
        votes.append(Vote(str(row.get("id", f"row {k + 1}")), _text(row.get("path")), image,
                          _single(row.get(choice_key), image, path), str(row.get("annotator")),
                          str(row.get("updated_at") or row.get("created_at") or ""),
                          _int(row.get("annotation_id")) or 0, _int(row.get("round")), _text(row.get("guess"))))
    return votes


def locate_votes(images: ImageSet, votes: Sequence[Vote], listed_in: Path) -> np.ndarray:
    """The item of the data each vote's image is, or -1: ``data.path`` as ``--labels FILE.csv`` paths
    are found, else the local-file URL's path (the data's image whose path ends with it), else the name."""
    from .subsets import locate

    found = locate(images, [v.path or "" for v in votes], listed_in) if votes else np.empty(0, np.int64)
    lost = [k for k in range(len(votes)) if found[k] < 0]
    if not lost:
        return found
    by_suffix: dict[str, int] = {}
    if images.paths is not None:
        for i, p in enumerate(Path(q).resolve().as_posix() for q in images.paths):
            parts = p.split("/")
            for n in range(1, len(parts)):
                key = "/".join(parts[-n:])
                by_suffix[key] = -2 if key in by_suffix and by_suffix[key] != i else i
    names = [_served_path(votes[k].image) for k in lost]
    again = locate(images, names, listed_in)
    for k, name, other in zip(lost, names, again):
        hit = by_suffix.get(name.lstrip("/"), -1)
        found[k] = hit if hit >= 0 else other
    return found


def _served_path(image: str) -> str:
    """The file an image reference names: the ``d`` of a local-file URL, else the reference itself."""
    parsed = urlparse(image)
    if parsed.path.rstrip("/").endswith("/data/local-files"):
        return parse_qs(parsed.query).get("d", [""])[0]
    return image


def settle(votes: Sequence[Vote], rule: str, image: str, path: Path) -> str:
    """One class from the (not skipped) annotations of one image, by ``rule``."""
    labels = [v.label for v in votes if v.label is not None]
    if len(set(labels)) == 1:
        return labels[0]
    counts = Counter(labels).most_common()
    described = ", ".join(f"{name} x{n}" for name, n in counts)
    if rule == "majority":
        if counts[0][1] > counts[1][1]:
            return counts[0][0]
        raise UserError(f"Label Studio export {path}: {image} has a tie between annotators ({described}): "
                        "annotate it once more, or pass --label-conflicts latest")
    if rule == "latest":
        return max((v for v in votes if v.label is not None), key=lambda v: (v.updated, v.annotation)).label
    raise UserError(f"Label Studio export {path}: annotators disagree on {image} ({described}): settle it in "
                    "Label Studio, or pass --label-conflicts majority or latest")


@dataclass
class ExportLabels:
    """What an export says: the items of the data annotated, their classes, and the skipped ones."""

    items: np.ndarray
    labels: list[str]
    skipped: np.ndarray
    rounds: list[int | None]
    guesses: list[str | None]


def export_labels(images: ImageSet, path: str | os.PathLike, rule: str = "error") -> ExportLabels:
    """The class of each annotated image of ``images`` in a Label Studio export (see the module docstring)."""
    if rule not in RULES:
        raise UserError(f"--label-conflicts {rule!r} is not a rule: use one of {', '.join(RULES)}")
    path = Path(path).expanduser()
    votes = read_export(path)
    found = locate_votes(images, votes, path)
    missing = [v.path or v.image for v, i in zip(votes, found) if i < 0]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserError(f"Label Studio export {path} names {len(set(missing))} image(s) not found in data "
                        f"{images.name} ({shown}): pass the --data the tasks were made from")
    by_item: dict[int, list[Vote]] = {}
    for vote, item in zip(votes, found.tolist()):
        by_item.setdefault(item, []).append(vote)
    items, labels, skipped, rounds, guesses = [], [], [], [], []
    for item in sorted(by_item):
        group = by_item[item]
        if all(v.label is None for v in group):
            skipped.append(item)
            continue
        items.append(item)
        labels.append(settle(group, rule, images.describe(item), path))
        rounds.append(next((v.round for v in group if v.round is not None), None))
        guesses.append(next((v.guess for v in group if v.guess is not None), None))
    return ExportLabels(np.array(items, np.int64), labels, np.array(skipped, np.int64), rounds, guesses)
