"""Label Studio for ``select`` and ``predict``: the chosen images as tasks (``tasks.json``, with the model's
guesses as predictions) and the labelling config (``labeling_config.xml``), optionally sent straight to a
server (``--label-studio-url``); and ``simclrv2 pull-annotations``, a project's export fetched from it.

Tasks come most informative first: with a classifier, the images it is least sure of; without one,
in the order the selection chose them (rank 1 first). See ``simclrv2.data.label_studio`` for the files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..data import ImageSet
from ..data import label_studio as ls
from ..errors import UserError

log = logging.getLogger("simclrv2")

TASKS, CONFIG = "tasks.json", "labeling_config.xml"


@dataclasses.dataclass
class LabelStudioOptions:
    """What ``--label-studio`` and its flags ask for."""

    classes: str | None = None  # comma-separated class names
    classifier: str | None = None  # a fine-tuned model: its guesses become predictions
    document_root: str | None = None
    url: str | None = None
    project: str = "simclrv2"
    conflicts: str = "latest"  # earlier rounds: settles disagreeing annotators


def guesses(classifier: str, paths: Sequence[str], device: str = "auto") -> tuple[list[tuple[str, float]], list[str]]:
    """(class, probability) of each image by ``classifier``, and its class names."""
    from ..models.checkpoints import load_classifier
    from .predict import predict

    names = load_classifier(classifier)[1].named_classes()
    rows = predict(classifier, list(paths), top_k=1, workers=0, device=device)
    out = [(r["classes"][0], float(r["probabilities"][0])) if r["classes"] else ("", 0.0) for r in rows]
    return out, names


def class_names(options: LabelStudioOptions, model_names: list[str] | None, earlier: list[str] | None,
                data: str) -> list[str]:
    """The choices: --classes, else the classifier's, else those of the earlier rounds' labels, else the
    data's class folders."""
    if options.classes:
        names = [n.strip() for n in options.classes.split(",") if n.strip()]
        if len(set(names)) != len(names):
            raise UserError(f"--classes {options.classes} names a class twice: list each once")
        return names
    if model_names:
        return list(model_names)
    if earlier:
        return sorted(set(earlier))
    from ..data import open_images

    try:
        names = open_images(data, labeled=False).class_names or []
    except UserError:
        names = []
    if len(names) < 2:
        raise UserError(f"no class names for Label Studio: pass --classes a,b,... (data {data} has no class "
                        "folders, and no --classifier or labeled export names them)")
    return names


def write_tasks(out: Path, images: ImageSet, chosen: np.ndarray, data: str, options: LabelStudioOptions,
                labeled: str | None, device: str = "auto", into: Path | None = None) -> dict[str, Any]:
    """Write ``tasks.json`` and ``labeling_config.xml`` for the ``chosen`` items (into ``into``, the folder the
    selection's files are written together in, named as in ``out``), send them to the server when asked, and
    report the earlier rounds; what the selection summary records of it."""
    into = into or out
    root = ls.document_root(options.document_root, images)
    paths = [images.describe(int(i)) for i in chosen]
    earlier = ls.export_labels(images, labeled, options.conflicts) if labeled and ls.is_export(labeled) \
        else None
    rounds_before = [r for r in (earlier.rounds if earlier else []) if r is not None]
    round_number = max(rounds_before, default=1 if labeled else 0) + 1
    summary: dict[str, Any] = {"round": round_number}
    guessed, model_names = None, None
    if options.classifier:
        guessed, model_names = guesses(options.classifier, paths, device)
        order = sorted(range(len(paths)), key=lambda k: (guessed[k][1], k))  # least sure first
        paths, guessed = [paths[k] for k in order], [guessed[k] for k in order]
    names = class_names(options, model_names, earlier.labels if earlier else None, data)
    if guessed:
        unknown = sorted({g for g, _ in guessed} - set(names))
        if unknown:
            raise UserError(f"--classifier {options.classifier} guesses classes not in --classes "
                            f"({', '.join(unknown[:3])}): list them too, or leave --classes out")
    version = Path(options.classifier).name if options.classifier else ""
    tasks = ls.make_tasks(paths, root, round_number, guessed, version)
    config = ls.labeling_config(names)
    atomic_write_bytes(into / TASKS, json.dumps(tasks, indent=1).encode())
    atomic_write_bytes(into / CONFIG, config.encode())
    summary.update({"tasks": str(out / TASKS), "labeling_config": str(out / CONFIG), "document_root": str(root),
                    "classes": names})
    if earlier is not None:
        summary["rounds"] = round_report(images, earlier, options.classifier, device)
    if options.url:
        summary["project"] = push(options, config, tasks, paths, root)
    return summary


def round_report(images: ImageSet, earlier: ls.ExportLabels, classifier: str | None,
                 device: str = "auto") -> list[dict[str, Any]]:
    """Per earlier round: labeled images, how often the pre-annotation was right, and the accuracy of
    ``classifier`` (when given) against the labels."""
    predicted = None
    if classifier and len(earlier.items):
        predicted = [g for g, _ in guesses(classifier, [images.describe(int(i)) for i in earlier.items], device)[0]]
    rows = []
    for r in sorted({x if x is not None else 0 for x in earlier.rounds}):
        ks = [k for k, x in enumerate(earlier.rounds) if (x or 0) == r]
        row: dict[str, Any] = {"round": r or None, "labeled": len(ks)}
        guessed = [k for k in ks if earlier.guesses[k]]
        if guessed:
            row["guess_accuracy"] = sum(earlier.guesses[k] == earlier.labels[k] for k in guessed) / len(guessed)
        if predicted is not None:
            row["classifier_accuracy"] = sum(predicted[k] == earlier.labels[k] for k in ks) / len(ks)
        rows.append(row)
    return rows


def print_rounds(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        parts = [f"round {row['round'] or '?'}: {row['labeled']} labeled"]
        if "guess_accuracy" in row:
            parts.append(f"pre-annotations right {100 * row['guess_accuracy']:.1f}%")
        if "classifier_accuracy" in row:
            parts.append(f"--classifier right {100 * row['classifier_accuracy']:.1f}%")
        print(", ".join(parts), file=sys.stderr)


def push(options: LabelStudioOptions, config: str, tasks: list[dict[str, Any]], paths: Sequence[str],
         root: Path) -> dict[str, Any]:
    """Create (or extend) the project on the server, attach the images' folder and import the tasks."""
    from ..data.label_studio_client import Client

    client = Client(options.url)
    project = client.project(options.project, config)
    folder = Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))
    if folder.resolve() == root:
        raise UserError(f"the images lie directly in the document root {root}: Label Studio serves a folder "
                        "under it; pass a --document-root above the images' folder")
    client.attach_local_storage(project["id"], folder)
    count = client.import_tasks(project["id"], tasks)
    return {"id": project["id"], "title": project.get("title"), "imported": count,
            "url": f"{client.url}/projects/{project['id']}"}


def cmd_pull(args: argparse.Namespace) -> int:
    """``simclrv2 pull-annotations``: a project's export, written to --out."""
    from ..data.label_studio_client import Client

    client = Client(args.label_studio_url)
    found = client.find_project(args.project)
    if found is None:
        raise UserError(f"Label Studio {client.url} has no project {args.project!r}: check --project")
    kind = {".csv": "CSV"}.get(Path(args.out).suffix.lower(), "JSON")
    content = client.export(found["id"], kind)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, content)
    print(f"wrote the annotations of project {args.project!r} to {out}", file=sys.stderr)
    return 0
