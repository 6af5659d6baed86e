"""``simclrv2 select``: which images to label, chosen from the pretrained features without any label.

The step between pretraining and fine-tuning: pretrain -> select -> (a person labels the chosen
images) -> fine-tune -> distill. It embeds every image (as ``simclrv2 embed``), chooses ``--budget``
of them (``simclrv2.selection.methods``) and writes to ``--out``:

- ``selected.txt``: the images to fine-tune on (those of ``--labeled`` first, then the new ones), one
  path per line: the subset-file format ``finetune --labels`` reads, when the data carries labels;
- ``selection.csv``: the newly chosen images (path, cluster, score, rank) for an annotation tool; add a
  ``label`` column and pass that file to ``finetune --labels`` when the data has no labels;
- ``contact_sheet.png`` (the chosen images) and ``map.png`` (t-SNE of the features, chosen ones marked);
- ``features.npy`` and ``index.csv`` (the embedding), and ``selection.json`` (what was run).

Labels the data may carry are never read by the selection: they are dropped right after the images are
listed (``--holdout`` alone uses them, to leave out exactly the images fine-tuning will hold out).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write_bytes, written_together
from ..config import option
from ..data import ImageSet, holdout_split, open_images
from ..data.annotations import listed_indices, relabeled
from ..data.label_studio import document_root
from .embed import FEATURES, INDEX, Embedding, check_out_folder, embed_checkpoint, locked_output, write_embedding
from .label_studio import CONFIG, TASKS, LabelStudioOptions, print_rounds, write_tasks
from ..errors import UserError
from ..selection import figures
from ..selection.methods import DEFAULT_METHOD, METHODS, Selection, parse_budget, select

log = logging.getLogger("simclrv2")

SELECTED, SELECTION_CSV, SUMMARY = "selected.txt", "selection.csv", "selection.json"
CONTACT_SHEET, MAP = "contact_sheet.png", "map.png"
# Every file a selection writes: a new one replaces them all (figures it does not draw are removed).
OUTPUTS = (SELECTED, SELECTION_CSV, SUMMARY, CONTACT_SHEET, MAP, FEATURES, INDEX, TASKS, CONFIG)


def without_labels(images: ImageSet) -> ImageSet:
    """The same images with no labels and no class names: what the selection may see."""
    return relabeled(images, np.empty(0, np.int64), np.empty(0, np.int64), [])


def candidate_pool(images: ImageSet, holdout: float, seed: int) -> np.ndarray:
    """Indices of the images that may be chosen: all but the ``holdout`` part fine-tuning holds out
    with the same seed (the data's labels, if any, stratify that split as they do in fine-tuning)."""
    if holdout <= 0:
        return np.arange(len(images))
    train, _ = holdout_split(images.labels, holdout, seed)
    return train


def run_selection(model: str, data: str, budget: str | int, out: str | Path, method: str = DEFAULT_METHOD,
                  labeled: str | None = None, seed: int = 0, layer: int = 0, holdout: float = 0.0,
                  image_size: int | None = None, batch_size: int = 256, workers: int | None = None,
                  device: str = "auto", figures_on: bool = True, overwrite: bool = False,
                  label_studio: LabelStudioOptions | None = None) -> dict[str, Any] | None:
    """Embed, choose and write the outputs (see the module docstring); the summary, on the first process.
    ``out`` is locked while it runs; an earlier selection there is replaced only with ``overwrite``, and
    only once the new one is written (all its files together)."""
    from ..distributed import barrier, is_main_process

    out = check_out_folder(out)
    if (out / SUMMARY).is_file() and not overwrite:
        raise UserError(f"{out} holds a selection already: pass --overwrite to replace it or choose another --out")
    if method not in METHODS:
        raise UserError(f"--method {method!r} is not a selection method: use one of {', '.join(METHODS)}")
    if not 0 <= holdout < 1:
        raise UserError(f"--holdout {holdout} is not a fraction: use the --holdout of your fine-tuning (0 to 0.9)")
    listed = open_images(data, labeled=False)
    pool = candidate_pool(listed, holdout, seed)
    images = without_labels(listed)
    del listed  # nothing below sees a label
    before = listed_indices(images, labeled, "--labeled") if labeled else np.empty(0, np.int64)
    held = np.setdiff1d(before, pool)
    if len(held):
        raise UserError(f"--labeled {labeled} lists {len(held)} image(s) that --holdout {holdout} holds out "
                        f"(e.g. {images.describe(int(held[0]))}): use the --holdout and --seed of that round")
    count = parse_budget(budget, len(np.setdiff1d(pool, before)))
    if label_studio:
        document_root(label_studio.document_root, images)  # image files, under the root: before the work
    started = time.perf_counter()
    with locked_output(out) if is_main_process() else nullcontext():
        summary = _embed_and_choose(model, images, pool, before, out, dict(
            method=method, budget=count, requested=str(budget), seed=seed, layer=layer, data=data, holdout=holdout,
            labeled=labeled), image_size, batch_size, workers, device, figures_on, started, label_studio)
    barrier()  # under torchrun the other processes go on (to fine-tune on the selection) once it is written
    return summary


def _embed_and_choose(model: str, images: ImageSet, pool: np.ndarray, before: np.ndarray, out: Path,
                      asked: dict[str, Any], image_size: int | None, batch_size: int, workers: int | None,
                      device: str, figures_on: bool, started: float,
                      label_studio: LabelStudioOptions | None = None) -> dict[str, Any] | None:
    from ..distributed import is_main_process

    method, count, budget, seed, layer = (asked[k] for k in ("method", "budget", "requested", "seed", "layer"))
    data, holdout, labeled = asked["data"], asked["holdout"], asked["labeled"]
    embedding = embed_checkpoint(model, images, layer, image_size, batch_size, workers, device, progress=True)
    summary = None
    if is_main_process():
        summary = {"method": method, "budget": count, "requested": str(budget), "seed": seed, "layer": layer,
                   "model": str(Path(model).resolve()), "data": data, "holdout": holdout, "images": len(images),
                   "candidates": int(len(pool) - len(before)), "labeled_before": int(len(before)),
                   "selected": int(len(before) + count), "labeled": labeled}
        tasks = None
        if label_studio:
            def tasks(chosen: np.ndarray, into: Path) -> dict[str, Any]:
                return write_tasks(out, images, chosen, data, label_studio, labeled, device, into)
        _choose_and_write(embedding, pool, before, summary, out, figures_on, started, tasks)
    return summary


def _choose_and_write(embedding: Embedding, pool: np.ndarray, before: np.ndarray, summary: dict[str, Any],
                      out: Path, figures_on: bool, started: float, tasks: Any = None) -> None:
    """Choose and write every output; ``selection.json`` (the summary) last, as the mark of a finished run."""
    method, count, seed = summary["method"], summary["budget"], summary["seed"]
    log.info("choosing %d of %d images (%s, seed %d)", count, len(pool) - len(before), method, seed)
    selection = select(embedding.features, count, method, labeled=before, candidates=pool, seed=seed)
    with written_together(out, last=SUMMARY, stale=OUTPUTS) as staging:
        _write_outputs(embedding, selection, before, summary, staging, figures_on, started, tasks)


def _write_outputs(embedding: Embedding, selection: Selection, before: np.ndarray, summary: dict[str, Any],
                   out: Path, figures_on: bool, started: float, tasks: Any = None) -> None:
    images, method, count, seed = embedding.images, summary["method"], summary["budget"], summary["seed"]
    pool_size = summary["candidates"]
    write_embedding(embedding, out)
    write_selected(out / SELECTED, images, before, selection.chosen)
    write_selection_csv(out / SELECTION_CSV, images, selection)
    if figures_on:
        ranks = [f"#{r}" for r in range(1, len(selection.chosen) + 1)]
        figures.contact_sheet(images, selection.chosen, out / CONTACT_SHEET, ranks)
        rows = figures.mapped_sample(len(images), np.concatenate([before, selection.chosen]), seed)
        rows = rows[np.isfinite(embedding.features[rows]).all(1)]
        xy = figures.tsne_2d(embedding.features[rows], seed)
        position = {int(r): k for k, r in enumerate(rows)}
        marked = np.array([position[int(i)] for i in selection.chosen if int(i) in position], dtype=np.int64)
        old = np.array([position[int(i)] for i in before if int(i) in position], dtype=np.int64)
        colour = selection.assignment[rows] if selection.assignment is not None else None
        figures.plot_map(xy, out / MAP, f"{method}: {count} chosen of {pool_size} (t-SNE)",
                         colour=colour, chosen=marked, labeled=old)
    if tasks is not None:  # Label Studio's tasks.json and labeling_config.xml, with the rest
        summary["label_studio"] = tasks(selection.chosen, out)
    summary["seconds"] = time.perf_counter() - started  # embedding, choosing and the figures
    atomic_write_bytes(out / SUMMARY, json.dumps(summary, indent=2).encode())


@dataclasses.dataclass
class SelectOptions:
    """The ``select:`` section of a pipeline config: choose the labeled images instead of drawing them.

    For every label spec the pipeline chooses as many images as the random subset holds, from the
    pretrained features, and fine-tunes (and distills) on them too: the report sets the two side by side.
    """

    method: str = option(DEFAULT_METHOD, "how to choose the images to label", choices=METHODS)
    layer: int = option(0, "features: hiddens[J] of the projection head (0 = the encoder output)", minimum=0)
    distill: bool = option(True, "also distill the teachers fine-tuned on the chosen labels (when distill runs)")


@dataclasses.dataclass
class SelectStage:
    """One selection of a pipeline: as many images as ``match`` (a fine-tuning config) labels."""

    out: str
    model: str
    match: Any  # the fine-tuning config of the random subset of the same label spec
    options: SelectOptions
    workers: int | None = None
    device: str = "auto"

    def run(self) -> dict[str, Any]:
        from ..data.splits import open_labeled_splits

        count = len(open_labeled_splits(self.match, self.match.labels).chosen)
        summary = run_selection(self.model, self.match.data, count, self.out, self.options.method,
                                seed=self.match.seed, layer=self.options.layer,
                                holdout=0.0 if self.match.eval_data else self.match.holdout,
                                workers=self.workers, device=self.device)
        return summary or {}

    @property
    def finished(self) -> bool:
        return (Path(self.out) / SUMMARY).is_file()

    def result(self) -> dict[str, Any]:
        return json.loads((Path(self.out) / SUMMARY).read_text())


def write_selected(path: Path, images: ImageSet, before: np.ndarray, chosen: np.ndarray) -> None:
    """One path per line (the earlier labeled ones, then the chosen ones): a subset file."""
    lines = []
    for i in np.concatenate([before, chosen]).tolist():
        described = images.describe(int(i))
        if any(ch in described for ch in "\t\r\n"):
            raise UserError(f"cannot record {described!r} in {path}: its name contains a tab or line break; "
                            "rename the file")
        lines.append(described + "\n")
    atomic_write_bytes(path, "".join(lines).encode("utf-8", "surrogateescape"))


def write_selection_csv(path: Path, images: ImageSet, selection: Selection) -> None:
    """path, cluster, score, rank of each newly chosen image (rank 1 was chosen first)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "cluster", "score", "rank"])
    for rank, (i, cluster, score) in enumerate(zip(selection.chosen, selection.cluster, selection.score), 1):
        writer.writerow([images.describe(int(i)), "" if cluster < 0 else int(cluster), f"{score:.6g}", rank])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8", "surrogateescape"))


def cmd_select(args: argparse.Namespace) -> int:
    wanted = args.label_studio or args.label_studio_url or args.classifier
    options = LabelStudioOptions(args.classes, args.classifier, args.document_root, args.label_studio_url,
                                 args.project) if wanted else None
    summary = run_selection(args.model, args.data, args.budget, args.out, args.method, args.labeled, args.seed,
                            args.layer, args.holdout, args.image_size, args.batch_size, args.workers, args.device,
                            not args.no_figures, args.overwrite, options)
    if summary is not None:
        print(f"chose {summary['budget']} of {summary['candidates']} images ({summary['method']}): "
              f"{Path(args.out) / SELECTED} lists the {summary['selected']} to label; "
              f"{Path(args.out) / SELECTION_CSV} the new ones with their rank", file=sys.stderr)
        written = summary.get("label_studio")
        if written:
            print_rounds(written.get("rounds", []))
            print(f"Label Studio: {written['tasks']} (round {written['round']}) and {written['labeling_config']}"
                  + (f"; imported {written['project']['imported']} task(s) into {written['project']['url']}"
                     if "project" in written else ""), file=sys.stderr)
    return 0
