"""Which items carry labels: held-out splits, 1%/10%/k-per-class subsets and subset files.

SimCLRv2 fine-tunes on a class-balanced 1% or 10% of ImageNet's labels; the official lists
(one train file name per line, ``n04235860_14959.JPEG``, the class being the synset prefix) are
read as they are. For other data a subset is drawn per class with a seeded generator:

- every choice is per class, from a generator keyed by (seed, purpose, class), so a class's
  draw does not depend on the other classes, and for one seed a smaller fraction is a prefix of
  a larger one (the 1% subset lies inside the 10% subset);
- counts round half up, computed exactly from the decimal the user wrote ("0.29" of 50 items
  is 14.5 -> 15, never 14 through float error);
- outputs are sorted index arrays.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..errors import UserError
from .sources import ImageSet

log = logging.getLogger(__name__)

# Purposes keep the holdout draw and the label draw independent for one seed.
_HOLDOUT, _SELECT = 1, 2
_EXAMPLES = 3

_PERCENT = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")
_PER_CLASS = re.compile(r"(\d+)\s*/\s*class", re.IGNORECASE)
_SPEC_HELP = ("use a percentage ('1%', '10%', '0.5%'), a count per class ('5/class'), a subset file or a .csv "
              "of path,label rows")


@dataclass(frozen=True)
class LabelSpec:
    """A parsed label-subset spec: exactly one of fraction, per_class and path is set.

    A ``.csv`` path (or a Label Studio ``.json`` export) is an annotation file (``annotations``): its rows
    give the labels themselves,
    so the data need not have any. Another file is a subset file: it says which images' labels
    (those of the data) are used.
    """

    text: str
    fraction: Fraction | None = None
    per_class: int | None = None
    path: Path | None = None

    @property
    def annotations(self) -> bool:
        return self.path is not None and self.path.suffix.lower() in (".csv", ".json")  # .json: Label Studio


def _examples(names: Sequence[str], limit: int = _EXAMPLES) -> str:
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def _exact(fraction: float | Fraction) -> Fraction:
    # str() of a float is the shortest decimal that round-trips: what the user typed.
    return fraction if isinstance(fraction, Fraction) else Fraction(str(float(fraction)))


def _rng(seed: int, purpose: int, stratum: int) -> np.random.Generator:
    """A generator for one (seed, purpose, class); strata are label + 1 so -1 maps to 0."""
    return np.random.default_rng([purpose, stratum, int(seed) % 2**64])


def _group(labels: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(distinct labels, sorted item indices of each) for ``items`` (sorted) by ``labels``."""
    values, inverse = np.unique(labels[items], return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(values))
    return values, np.split(items[order], np.cumsum(counts)[:-1])


# ---------------------------------------------------------------- held-out split

def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split item indices into (train, holdout), stratified by label (-1 is its own stratum).

    Each stratum of n items holds out round(fraction * n) of them, but at least one and at most
    n - 1 when n >= 2 (both sides see every class), and none when n == 1.
    """
    frac = _exact(fraction)
    if not 0 < frac < 1:
        raise UserError(f"holdout fraction {fraction} is not between 0 and 1: use e.g. 0.1 to hold "
                        "out 10% of each class")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    train, hold = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    values, groups = _group(labels, np.arange(len(labels), dtype=np.int64))
    for value, items in zip(values, groups):
        n = len(items)
        k = min(max(_round_half_up(frac * n), 1), n - 1) if n >= 2 else 0
        order = _rng(seed, _HOLDOUT, int(value) + 1).permutation(n)
        hold.append(items[order[:k]])
        train.append(items[order[k:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(hold))


# ---------------------------------------------------------------- label specs

def parse_label_spec(spec: str) -> LabelSpec:
    """``"1%"``, ``"0.5%"``, ``"5/class"`` or the path of a subset file -> LabelSpec."""
    text = str(spec).strip()
    if match := _PERCENT.fullmatch(text):
        percent = Fraction(match.group(1))
        if not 0 < percent <= 100:
            raise UserError(f"label subset {spec!r}: a percentage must be above 0 and at most 100%: "
                            f"{_SPEC_HELP}")
        return LabelSpec(text, fraction=percent / 100)
    if match := _PER_CLASS.fullmatch(text):
        count = int(match.group(1))
        if count < 1:
            raise UserError(f"label subset {spec!r}: need at least 1 image per class: {_SPEC_HELP}")
        return LabelSpec(text, per_class=count)
    path = Path(text).expanduser()
    if text and path.is_file():
        return LabelSpec(text, path=path)
    if text and path.exists():
        raise UserError(f"label subset {spec!r} is a folder, not a subset file: {_SPEC_HELP}")
    raise UserError(f"label subset {spec!r} is not a percentage, a count per class or an existing "
                    f"file: {_SPEC_HELP}")


def read_subset_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(class, entry) for each line of a subset file, in file order.

    A line is a file name (``n04235860_14959.JPEG``: the class is the prefix before the first
    ``_``), or a path relative to the data folder (class ""), optionally followed by a tab and
    the class name (the format :func:`write_index_list` writes).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"subset file {path} does not exist: {_SPEC_HELP}") from None
    except UnicodeDecodeError:
        raise UserError(f"subset file {path} is not UTF-8 text: save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read subset file {path} ({exc.strerror}): check its permissions") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = [f.strip() for f in line.strip().split("\t")]
        if not fields[0] and len(fields) == 1:
            continue
        if len(fields) > 2 or not fields[0]:
            raise UserError(f"subset file {path}, line {number}: expected a file name or path, "
                            "optionally a tab and its class: fix or remove the line")
        entry = fields[0]
        pairs.append((fields[1] if len(fields) == 2 else _class_prefix(entry), entry))
    if not pairs:
        raise UserError(f"subset file {path} lists no files: write one file name per line")
    return pairs


def _has_folder(entry: str) -> bool:
    return "/" in entry or os.sep in entry


def _class_prefix(entry: str) -> str:
    """ImageNet's class of a bare file name (``n01440764_10026.JPEG`` -> ``n01440764``), else ""."""
    if _has_folder(entry) or "_" not in entry:
        return ""
    return entry.split("_", 1)[0]


# ---------------------------------------------------------------- choosing labeled items

def select_labeled(images: ImageSet, spec: str | LabelSpec, seed: int,
                   pool: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of the items whose labels are used, chosen from ``pool`` class by class.

    ``pool`` defaults to every labeled item (pass the train side of :func:`holdout_split` to
    keep the labeled subset disjoint from the held-out items). A fraction gives each class
    max(1, round(fraction * n_c)) of its n_c pool items; ``k/class`` gives k. A subset file is
    taken as it is.
    """
    parsed = spec if isinstance(spec, LabelSpec) else parse_label_spec(spec)
    if not images.class_names:
        raise UserError(f"data {images.name} has no labels, so no label subset ({parsed.text}) can "
                        "be chosen: use one sub-folder per class, or pass --labels a .csv of path,label rows "
                        "(labels from annotation)")
    candidates = _labeled_pool(images, pool)
    if parsed.path is not None:
        return _select_from_file(images, parsed.path, candidates)
    groups = _groups_per_class(images, candidates, parsed.text)
    chosen = [np.empty(0, np.int64)]
    short = []
    for c, items in enumerate(groups):
        n = len(items)
        if parsed.per_class is not None:
            k = parsed.per_class
            if n < k:
                short.append(f"{images.class_names[c]} ({n})")
                continue
        else:
            k = max(1, _round_half_up(parsed.fraction * n))
        # The full permutation (not a k-sample) makes smaller subsets prefixes of larger ones.
        order = _rng(seed, _SELECT, c + 1).permutation(n)
        chosen.append(items[order[:k]])
    if short:
        raise UserError(f"label subset {parsed.text}: {len(short)} class(es) of {images.name} have "
                        f"fewer than {parsed.per_class} labeled images to choose from "
                        f"({_examples(short)}): use a smaller count per class or a percentage")
    return np.sort(np.concatenate(chosen))


def _labeled_pool(images: ImageSet, pool: np.ndarray | None) -> np.ndarray:
    """The sorted, unique labeled items of ``pool`` (default: all items)."""
    if pool is None:
        items = np.arange(len(images), dtype=np.int64)
    else:
        items = np.unique(np.asarray(pool, dtype=np.int64).reshape(-1))
        if len(items) and (items[0] < 0 or items[-1] >= len(images)):
            raise ValueError(f"pool indices must lie in [0, {len(images)})")
    return items[images.labels[items] >= 0]


def _groups_per_class(images: ImageSet, items: np.ndarray, what: str) -> list[np.ndarray]:
    """Sorted pool items of every class, in class order; a UserError if a class has none."""
    values, groups = _group(images.labels, items)
    by_class = dict(zip(values.tolist(), groups))
    empty = [name for c, name in enumerate(images.class_names) if c not in by_class]
    if empty:
        raise UserError(f"label subset {what}: {len(empty)} class(es) of {images.name} have no "
                        f"labeled image to choose from ({_examples(empty)}): add images of those "
                        "classes, or hold out fewer")
    return [by_class[c] for c in range(len(images.class_names))]


def _select_from_file(images: ImageSet, path: Path, pool: np.ndarray) -> np.ndarray:
    """Indices of the items a subset file lists; errors name unknown classes or missing files."""
    pairs = read_subset_file(path)
    known_classes = set(images.class_names)
    by_name: dict[tuple[str, str], int] | None = None
    by_path: dict[str, int] | None = None
    found, missing, unknown = [], [], {}
    for cls, entry in pairs:
        index = -1
        if cls and not _has_folder(entry):
            by_name = _index_by_class_and_name(images) if by_name is None else by_name
            index = by_name.get((cls, entry), -1)
        if index < 0:
            by_path = _index_by_description(images) if by_path is None else by_path
            index = by_path.get(_resolve(images.root, entry), -1)
        if index >= 0:
            found.append(index)
        elif cls and cls not in known_classes:
            unknown.setdefault(cls, None)
        else:
            missing.append(entry)
    if unknown:
        raise UserError(f"subset file {path} names {len(unknown)} class(es) that data {images.name} "
                        f"does not have ({_examples(list(unknown))}): use data laid out as "
                        "<root>/<class>/<file name> (ImageNet's train folder) or a subset file "
                        "made for this data")
    if missing:
        raise UserError(f"subset file {path} lists {len(missing)} file(s) not found in data "
                        f"{images.name} ({_examples(missing)}): names are matched within their "
                        "class folder, paths relative to the data folder; fix or remove them")
    chosen = np.unique(np.asarray(found, dtype=np.int64))
    _check_chosen(images, path, chosen, pool)
    return chosen


def _check_chosen(images: ImageSet, path: Path, chosen: np.ndarray, pool: np.ndarray) -> None:
    """Listed items must be labeled and inside the pool (not held out)."""
    outside = chosen[~np.isin(chosen, pool)]
    if len(outside):
        unlabeled = outside[images.labels[outside] < 0]
        if len(unlabeled):
            raise UserError(f"subset file {path} lists {len(unlabeled)} file(s) of {images.name} that "
                            f"have no label ({_examples([images.describe(i) for i in unlabeled])}): "
                            "give them labels or remove them from the subset file")
        raise UserError(f"subset file {path} lists {len(outside)} file(s) that are held out for "
                        f"evaluation ({_examples([images.describe(i) for i in outside])}): do not "
                        "hold out part of the data a subset file draws from")
    uncovered = sorted(set(images.class_names) - {images.class_names[c] for c in images.labels[chosen]})
    if uncovered:
        log.warning("subset file %s gives no labeled image to %d class(es) of %s (%s)",
                    path, len(uncovered), images.name, _examples(uncovered))


def _index_by_class_and_name(images: ImageSet) -> dict[tuple[str, str], int]:
    """(class name, file name) -> first item with them; the ImageNet subset files' key."""
    index: dict[tuple[str, str], int] = {}
    if images.paths is None:
        return index
    names = images.class_names
    for i, (p, label) in enumerate(zip(images.paths, images.labels.tolist())):
        if label >= 0:
            index.setdefault((names[label], os.path.basename(p)), i)
    return index


def _index_by_description(images: ImageSet) -> dict[str, int]:
    """Normalised path (or ``name[i]`` in memory) -> first item with it."""
    index: dict[str, int] = {}
    for i in range(len(images)):
        key = images.describe(i)
        index.setdefault(os.path.normpath(key) if images.paths is not None else key, i)
    return index


def _resolve(root: str | None, entry: str) -> str:
    if root is None:
        return entry
    return os.path.normpath(os.path.join(root, os.path.expanduser(entry)))


# ---------------------------------------------------------------- recording the choice

def write_index_list(path: str | os.PathLike, images: ImageSet,
                     indices: Sequence[int] | np.ndarray) -> Path:
    """Record the chosen items, one ``describe(i)<TAB>class name`` line each, atomically.

    The file reads back as a subset file (:func:`read_subset_file`, :func:`select_labeled`).
    """
    path = Path(path)
    lines = []
    for i in np.asarray(indices, dtype=np.int64).reshape(-1).tolist():
        label = int(images.labels[i])
        described = images.describe(i)
        if any(ch in described for ch in "\t\r\n"):
            raise UserError(f"cannot record {described!r} in {path}: its name contains a tab or line "
                            "break; rename the file")
        lines.append(f"{described}\t{images.class_names[label] if label >= 0 else ''}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "".join(lines).encode("utf-8"))
    return path


def locate(images: ImageSet, entries: Sequence[str], listed_in: Path) -> np.ndarray:
    """The item each entry names, or -1: an absolute path, a path relative to the data folder or to
    the listing file's folder (``listed_in``), ``name[i]`` for in-memory data, or a bare file name
    that only one item of the data has (ImageNet's subset lists)."""
    by_path = _index_by_description(images)
    by_name: dict[str, int] | None = None
    found = np.full(len(entries), -1, dtype=np.int64)
    for k, entry in enumerate(entries):
        candidates = [entry] if images.paths is None else [
            _resolve(root, entry) for root in dict.fromkeys([images.root, str(listed_in.parent.resolve())])]
        for key in candidates:
            if key in by_path:
                found[k] = by_path[key]
                break
        else:
            if images.paths is not None and not _has_folder(entry):
                if by_name is None:
                    names = [os.path.basename(p) for p in images.paths]
                    counts: dict[str, int] = {}
                    for name in names:
                        counts[name] = counts.get(name, 0) + 1
                    by_name = {name: i for i, name in enumerate(names) if counts[name] == 1}
                found[k] = by_name.get(entry, -1)
    return found
