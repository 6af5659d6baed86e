"""Where images come from: the bundled digits, a folder of images, or a csv/tsv list of files.

``open_images(spec, labeled)`` turns what the user typed into an :class:`ImageSet`, a list of
items with optional integer labels. Nothing is decoded here (a scan of ImageNet must stay a
matter of seconds); a corrupt file surfaces as :class:`BadImage` when the caller loads it.

Accepted specs:

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, classes "0".."9"), in memory.
  (A folder that happens to be called ``digits`` is reached as ``./digits``.)
- a folder. Labeled: one sub-folder per class (sorted names give the indices), images found
  recursively inside each. Unlabeled: every image found recursively; when every image lies in
  a sub-folder the labels are kept anyway, since they cost nothing and let training report
  accuracy.
- a ``.csv`` (comma) or ``.tsv``/``.txt`` (tab) list of ``path[,label]`` rows with an optional
  ``path,label`` header; paths are relative to the list's folder; labels are class names.

Hidden files and folders are skipped and files whose extension is not an image's are ignored.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import UserError
from ..names import IMAGE_EXTENSIONS
from .images import AtLeast, load_rgb

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits",)
LIST_DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
_EXAMPLES = 3  # how many offending names an error message shows

_SPEC_HELP = "pass a folder of images, a .csv/.tsv list of path,label rows, or 'digits'"


@dataclass
class ImageSet:
    """Images with optional labels: file paths on disk, or arrays in memory.

    ``root`` (an addition to the basic fields) is the folder relative names resolve against:
    the data folder, or the folder of the list file; None for in-memory data.
    """

    paths: list[str] | None
    arrays: np.ndarray | None
    labels: np.ndarray
    class_names: list[str]
    name: str
    root: str | None = field(default=None)

    def __post_init__(self) -> None:
        if (self.paths is None) == (self.arrays is None):
            raise ValueError("ImageSet needs exactly one of paths and arrays")
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self):
            raise ValueError(f"ImageSet has {len(self)} items but {len(self.labels)} labels")
        if len(self.labels) and (self.labels.min() < -1 or self.labels.max() >= len(self.class_names)):
            raise ValueError("ImageSet labels must be -1 (no label) or index class_names")

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self.arrays)

    def load(self, i: int, at_least: AtLeast = None) -> np.ndarray:
        """Item ``i`` as a writable uint8 (H, W, 3) array; raises BadImage for a bad file. ``at_least``:
        sides the caller needs (a large JPEG may then decode at a reduced scale, ``load_rgb``), or a
        function of the (height, width) that returns them, called before decoding."""
        if self.arrays is not None:
            if callable(at_least):
                at_least(*self.arrays[i].shape[:2])
            return self.arrays[i].copy()
        return load_rgb(self.paths[i], at_least)

    def describe(self, i: int) -> str:
        """How messages and index lists name item ``i``: its path, or ``name[i]`` in memory."""
        if self.paths is not None:
            return self.paths[i]
        return f"{self.name}[{i}]"

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The items at ``indices`` (in that order), with the same classes."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return ImageSet(
            paths=[self.paths[j] for j in idx] if self.paths is not None else None,
            arrays=self.arrays[idx] if self.arrays is not None else None,
            labels=self.labels[idx],
            class_names=list(self.class_names),
            name=self.name,
            root=self.root,
        )

    @property
    def labeled(self) -> bool:
        """True when every item has a label."""
        return bool(self.class_names) and bool(np.all(self.labels >= 0))


def data_path(spec: str | os.PathLike) -> Path | None:
    """The existing file or folder ``spec`` names (None for the bundled 'digits'); a one-line
    error otherwise. Cheap: lists nothing, so it can check a path long before it is read."""
    spec = os.fspath(spec)
    if spec == "digits":
        return None
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data {spec}: no such file or folder: {_SPEC_HELP}")
    return path


def open_images(spec: str | os.PathLike, labeled: bool) -> ImageSet:
    """Open the images ``spec`` names; ``labeled=True`` requires a label for every item."""
    spec = os.fspath(spec)
    path = data_path(spec)
    if path is None:
        return _open_digits()
    if path.is_dir():
        return _open_folder(spec, path, labeled)
    if path.suffix.lower() in LIST_DELIMITERS:
        return _open_list(spec, path, labeled)
    raise UserError(f"data {spec} is a {path.suffix or 'extension-less'} file, not a folder or "
                    f"a list: {_SPEC_HELP}")


# ---------------------------------------------------------------- bundled digits

def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (images 1797x8x8 in 0..16, labels).

    Read straight from the CSV scikit-learn ships (what ``load_digits`` reads): importing
    ``sklearn.datasets`` costs about 2 s, which every ``simclrv2`` command on digits would pay.
    """
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.int64)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    from sklearn.datasets import load_digits  # a layout we do not know: let scikit-learn find it

    digits = load_digits()
    return digits.images.astype(np.int64), digits.target.astype(np.int64)


def _open_digits() -> ImageSet:
    images, labels = _digits_arrays()
    # Pixel values are 0..16; scale to 0..255 with rounding, gray -> 3 identical channels.
    gray = (images * 255 + 8) // 16
    arrays = np.repeat(gray.astype(np.uint8)[..., None], 3, axis=3)
    return ImageSet(paths=None, arrays=np.ascontiguousarray(arrays), labels=labels,
                    class_names=[str(c) for c in range(10)], name="digits")


# ---------------------------------------------------------------- folders

def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _folder_key(folder: str | os.PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _scan(folder: str, seen: set[tuple[int, int]]) -> list[str]:
    """Image files under ``folder`` (recursively, following symlinks), sorted.

    ``seen`` holds the folders already visited: a symlink back to an ancestor must not loop.
    """
    key = _folder_key(folder)
    if key is None or key in seen:
        return []
    seen.add(key)
    found: list[str] = []
    subfolders: list[str] = []
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as exc:
        raise UserError(f"cannot list folder {folder} ({exc.strerror}): check its permissions") from None
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        if entry.is_dir():
            subfolders.append(entry.path)
        elif _is_image(entry.name) and entry.is_file():
            found.append(entry.path)
    for sub in subfolders:
        found.extend(_scan(sub, seen))
    return sorted(found)


def _top_level(folder: Path) -> tuple[list[str], list[str]]:
    """(image files directly in ``folder``, its visible sub-folder names), both sorted."""
    files, folders = [], []
    with os.scandir(folder) as it:
        entries = list(it)
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        if entry.is_dir():
            folders.append(entry.name)
        elif _is_image(entry.name) and entry.is_file():
            files.append(entry.name)
    return sorted(files), sorted(folders)


def _printable(name: str) -> str:
    """A name for a one-line message: as is, or with escapes when it holds a newline or the like."""
    return name if name.isprintable() else repr(name)[1:-1]


def _examples(names: Sequence[str], limit: int = _EXAMPLES) -> str:
    shown = ", ".join(_printable(str(n)) for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _open_folder(spec: str, path: Path, labeled: bool) -> ImageSet:
    root = os.path.abspath(path)
    try:
        root_files, class_folders = _top_level(path)
    except OSError as exc:
        raise UserError(f"cannot list folder {spec} ({exc.strerror}): check its permissions") from None
    root_key = _folder_key(root)
    seen = {root_key} if root_key else set()
    by_class = {name: _scan(os.path.join(root, name), seen) for name in class_folders}
    n_images = len(root_files) + sum(len(v) for v in by_class.values())
    if n_images == 0:
        raise UserError(f"data folder {spec} contains no images (looked recursively for "
                        f"{' '.join(sorted(IMAGE_EXTENSIONS))}): point at the folder that holds them")
    if labeled:
        _check_class_layout(spec, root_files, by_class)
    elif root_files:
        # Not one folder per class: every image, recursively, without labels.
        paths = sorted([os.path.join(root, f) for f in root_files]
                       + [p for files in by_class.values() for p in files])
        return ImageSet(paths=paths, arrays=None, labels=np.full(len(paths), -1, dtype=np.int64),
                        class_names=[], name=spec, root=root)
    else:
        empty = [name for name, files in by_class.items() if not files]
        if empty:
            log.info("data %s: ignoring %d sub-folders without images (%s)", spec, len(empty),
                     _examples(empty))
        by_class = {name: files for name, files in by_class.items() if files}
    class_names = sorted(by_class)
    paths = [p for name in class_names for p in by_class[name]]
    labels = np.concatenate([np.full(len(by_class[name]), c, dtype=np.int64)
                             for c, name in enumerate(class_names)])
    return ImageSet(paths=paths, arrays=None, labels=labels, class_names=class_names,
                    name=spec, root=root)


def _check_class_layout(spec: str, root_files: list[str], by_class: dict[str, list[str]]) -> None:
    """Labeled folders need one sub-folder per class, each with images, and nothing loose."""
    if not by_class:
        raise UserError(f"data folder {spec} has no class sub-folders, so its images have no "
                        "labels: put each class's images in a sub-folder named after the class, "
                        "or list them in a .csv of path,label rows")
    if root_files:
        raise UserError(f"data folder {spec} has {len(root_files)} image(s) outside the class "
                        f"sub-folders ({_examples(root_files)}): move each into its class's "
                        "sub-folder or remove it")
    empty = [name for name, files in by_class.items() if not files]
    if empty:
        raise UserError(f"data folder {spec}: class folder(s) {_examples(empty)} "
                        f"({len(empty)} in all) contain no images: add images or remove the folder")


# ---------------------------------------------------------------- csv / tsv lists

def _open_list(spec: str, path: Path, labeled: bool) -> ImageSet:
    rows = read_list_rows(spec, path)
    if not rows:
        raise UserError(f"list {spec} names no images: add path,label rows (one per image)")
    base = os.path.abspath(path.parent)
    paths = [os.path.normpath(os.path.join(base, os.path.expanduser(p))) for _, p, _ in rows]
    rows, paths = _each_image_once(spec, rows, paths)
    _check_files_exist(spec, paths)
    names = [label for _, _, label in rows]
    class_names = sorted({n for n in names if n})
    if labeled:
        unlabeled = [line for line, _, label in rows if not label]
        if unlabeled:
            raise UserError(f"list {spec} gives no label for {len(unlabeled)} image(s) (first on line "
                            f"{unlabeled[0]}), but this step needs labels: add a label column "
                            "(path,label) with a class name on every row")
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[n] if n else -1 for n in names], dtype=np.int64)
    return ImageSet(paths=paths, arrays=None, labels=labels, class_names=class_names,
                    name=spec, root=base)


def _each_image_once(spec: str, rows: list[tuple[int, str, str]], paths: list[str]
                     ) -> tuple[list[tuple[int, str, str]], list[str]]:
    """The rows with a repeated image dropped (a warning: it would count twice, and could land in both the
    training and the held-out part); an image given two different labels is an error naming both lines."""
    first: dict[str, tuple[int, str]] = {}
    kept_rows, kept_paths, repeats = [], [], []
    for row, path in zip(rows, paths):
        line, _, label = row
        if path in first:
            line0, label0 = first[path]
            if label0 != label:
                raise UserError(f"list {spec} gives {row[1]} two labels: {label0!r} on line {line0} and {label!r} on "
                                f"line {line}: keep the row with the right label and remove the other")
            repeats.append(line)
            continue
        first[path] = (line, label)
        kept_rows.append(row)
        kept_paths.append(path)
    if repeats:
        log.warning("list %s names %d image(s) again (first on line %d): each image is used once; remove the "
                    "repeated rows", spec, len(repeats), repeats[0])
    return kept_rows, kept_paths


def read_list_rows(spec: str, path: Path) -> list[tuple[int, str, str]]:
    """(line number, path, label or "") for each data row; checks the number of fields.

    Rows are ``path[,label]``, with an optional ``path,label`` header; or any columns under a header
    that names a ``path`` (and a ``label``) column, as ``select``'s selection.csv with a label column
    an annotator added.
    """
    delimiter = LIST_DELIMITERS[path.suffix.lower()]
    sep = "tab" if delimiter == "\t" else "comma"
    # Commas are quoted in CSV; in a tab list every character of a path is literal.
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    rows: list[tuple[int, str, str]] = []
    columns: tuple[int, int | None, int] | None = None  # path column, label column, width
    wide_header = False
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            for fields in reader:
                fields = [x.strip() for x in fields]
                if not any(fields):
                    continue
                if columns is None:
                    names = [x.lower() for x in fields]
                    if "path" in names:  # a header
                        columns = (names.index("path"), names.index("label") if "label" in names else None,
                                   len(fields))
                        wide_header = names not in (["path", "label"], ["path"])
                        continue
                    columns = (0, 1 if len(fields) >= 2 else None, len(fields))
                where, label, width = columns
                if wide_header and len(fields) != width:
                    raise UserError(f"list {spec}, line {reader.line_num}: {len(fields)} fields under a header of "
                                    f"{width}: fix the row")
                if not wide_header and (len(fields) != width or width > 2):
                    raise UserError(f"list {spec}, line {reader.line_num}: {len(fields)} "
                                    f"{sep}-separated fields where {min(width, 2)} were expected: "
                                    "write one path,label row per image")
                if "\x00" in fields[where]:
                    raise UserError(f"list {spec}, line {reader.line_num}: the path holds a NUL byte, "
                                    "which no file name can: save the list as plain UTF-8 text")
                rows.append((reader.line_num, fields[where], fields[label] if label is not None else ""))
    except UnicodeDecodeError:
        raise UserError(f"list {spec} is not UTF-8 text: save it as UTF-8") from None
    except csv.Error as exc:
        raise UserError(f"list {spec} is not a valid {path.suffix} file ({exc}): fix the quoting") from None
    except OSError as exc:
        raise UserError(f"cannot read list {spec} ({exc.strerror}): check its permissions") from None
    return rows


def _check_files_exist(spec: str, paths: Iterable[str]) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f"list {spec} names {len(missing)} file(s) that do not exist "
                        f"({_examples(missing)}): paths are relative to the list's folder; "
                        "fix or remove those rows")
