"""Files a person or ``simclrv2 select`` writes that name images of the data: which ones are labeled
(``--labeled``: a selected.txt or a .csv) and the labels an annotator gave them (``--labels FILE.csv``).

Entries are matched to the items of the data by ``subsets.locate``; every entry must match one item, and no
item may be named twice.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from . import label_studio
from .sources import ImageSet, read_list_rows
from .subsets import _examples, _resolve, locate, read_subset_file


def _locate_each_once(images: ImageSet, entries: Sequence[str], path: Path, what: str) -> np.ndarray:
    """:func:`locate`, with one-line errors for entries that match nothing and items named twice."""
    found = locate(images, entries, path)
    missing = [e for e, i in zip(entries, found) if i < 0]
    if missing:
        roots = [r for r in (images.root, str(path.parent.resolve())) if r]
        outside = [e for e in missing if images.paths is not None and any(
            os.path.isfile(_resolve(root, e)) for root in roots)]
        if outside:
            raise UserError(f"{what} {path} names {len(outside)} image(s) outside data {images.name} "
                            f"({_examples(outside)}): list only images of --data, or add them to it")
        raise UserError(f"{what} {path} names {len(missing)} file(s) not found in data {images.name} "
                        f"({_examples(missing)}): paths are absolute or relative to the data folder; fix or "
                        "remove them")
    _, first, counts = np.unique(found, return_index=True, return_counts=True)
    if (counts > 1).any():
        twice = [entries[k] for k in first[counts > 1]]
        raise UserError(f"{what} {path} lists {len(twice)} image(s) more than once ({_examples(twice)}): "
                        "keep one row per image")
    return found


def listed_indices(images: ImageSet, path: str | os.PathLike, what: str = "file") -> np.ndarray:
    """The items a subset file, a path[,label] .csv or a Label Studio export lists, in file order (labels
    are not read; of an export, the images annotated or skipped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist: give a selected.txt, a .csv of path,label rows or a "
                        "Label Studio export")
    if label_studio.is_export(path):
        found = label_studio.export_labels(images, path, "latest")
        return np.union1d(found.items, found.skipped)
    if path.suffix.lower() == ".csv":
        entries = [p for _, p, _ in read_list_rows(str(path), path)]
    else:
        entries = [entry for _, entry in read_subset_file(path)]
    return _locate_each_once(images, entries, path, what)


def read_annotations(images: ImageSet, path: str | os.PathLike,
                     conflicts: str = "error") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(items, their labels, class names) from a ``path,label`` CSV a person wrote for ``images``
    (or any CSV whose header names a ``path`` and a ``label`` column), or from a Label Studio export
    (``data.label_studio``; ``conflicts`` settles annotators who disagree).

    The class names are the file's labels, sorted. Every row needs a label; an image listed twice,
    an image not in the data, or fewer than two classes is an error.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"label file {path} does not exist: check the path")
    if label_studio.is_export(path):
        return _classes(label_studio.export_labels(images, path, conflicts), path)
    rows = read_list_rows(str(path), path)
    if not rows:
        raise UserError(f"label file {path} has no rows: write one path,label row per labeled image")
    blank = [line for line, _, label in rows if not label]
    if blank:
        raise UserError(f"label file {path}: {len(blank)} row(s) have no label (first on line {blank[0]}): "
                        "give every row a class name, or remove the unlabeled rows")
    found = _locate_each_once(images, [p for _, p, _ in rows], path, "label file")
    names = sorted({label for _, _, label in rows})
    if len(names) < 2:
        raise UserError(f"label file {path} has a single class ({names[0]}): a classifier needs at least two; "
                        "label images of the other classes too")
    index = {name: c for c, name in enumerate(names)}
    labels = np.array([index[label] for _, _, label in rows], dtype=np.int64)
    order = np.argsort(found, kind="stable")
    return found[order], labels[order], names


def _classes(found: label_studio.ExportLabels, path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(items, labels, class names) of a Label Studio export's annotated images."""
    names = sorted(set(found.labels))
    if len(names) < 2:
        raise UserError(f"Label Studio export {path} has {len(found.items)} annotated image(s) of "
                        f"{len(names)} class(es) ({', '.join(names) or 'none'}): a classifier needs at least two; "
                        "annotate images of the other classes too")
    index = {name: c for c, name in enumerate(names)}
    return found.items, np.array([index[label] for label in found.labels], dtype=np.int64), names


def relabeled(images: ImageSet, items: np.ndarray, labels: np.ndarray, class_names: list[str]) -> ImageSet:
    """``images`` with ``labels`` at ``items``, no label elsewhere, and ``class_names``."""
    full = np.full(len(images), -1, dtype=np.int64)
    full[np.asarray(items, dtype=np.int64)] = labels
    return dataclasses.replace(images, labels=full, class_names=list(class_names))
