"""The report of a run: ``report.md`` and PNG figures, written by ``simclrv2 report RUN_DIR``.

It reads only what the stages wrote (result.json, metrics.jsonl, model.pt of each stage folder). For a
pipeline (``simclrv2 run``): a results table like the paper's (rows: supervised baseline, linear
evaluation, fine-tuned, distilled students; columns: label fractions, held-out top-1), the training
curves, the time of each stage, accuracy against label fraction, the confusion matrix of the best
few-label classifier, the images a label selection chose (when the run had a ``select`` section), and a
t-SNE map of the pretrained features of the held-out images coloured by class. For one stage's folder:
its summary, training curve, and the confusion matrix or t-SNE map of its held-out images.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..engine.summary import duration, summary_text
from ..errors import UserError
from ..results import SELECTION, StageId, read_metrics, read_result, read_results
from ..selection.figures import save_figure
from ..stages import kinds, stage_of_kind

MAX_EMBEDDED = 2000  # images in the embedding plot


def _rows(results: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """Row name -> {label spec: held-out top-1}, in the paper's order (``Kind.rank``: the supervised baseline,
    linear evaluation, fine-tuning, distillation), each kind's rows in the order the pipeline ran them."""
    labels = results["labels"]
    rank = {name: kind.rank for name, kind in kinds().items()}
    rows: dict[str, dict[str, float | None]] = {}
    order: list[tuple[int, int, str]] = []
    for position, stage in enumerate(results["stages"].values()):
        stage_id = StageId.from_result(stage)
        if stage_id.row is None:
            continue
        if stage_id.row not in rows:
            order.append((rank[stage_id.kind], position, stage_id.row))
        target = rows.setdefault(stage_id.row, {})
        # linear evaluation uses every label: the same figure in every column
        for label in (labels if stage_id.every_label else [stage_id.labels]):
            target[label] = stage.get("holdout_top1")
    return labels, {row: rows[row] for _, _, row in sorted(order)}


def results_table(run: Path) -> str:
    """The paper-style table as markdown: held-out top-1 (%) by label fraction."""
    results = read_results(run)
    labels, rows = _rows(results)
    counts: dict[str, Any] = {}
    for stage in results["stages"].values():
        if "labeled_images" in stage and not StageId.from_result(stage).selected:
            counts.setdefault(stage.get("labels"), stage["labeled_images"])
    header = "| method | " + " | ".join(f"{lab} ({counts.get(lab, '?')} labeled)" for lab in labels) + " |"
    lines = [header, "|---|" + "---:|" * len(labels)]
    for name, values in rows.items():
        cells = [f"{100 * values[lab]:.1f}" if values.get(lab) is not None else "-" for lab in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What a panel draws as the training loss, by the keys a stage logs: distillation's KL to the teacher times
# tau^2 (0 when the student matches; the cross-entropy it minimises levels off at the teacher's entropy, and at
# tau 0.1 it is in the hundreds), else the loss the step minimises.
LOSS_KEYS = (("distill_kl_t2", "KL to teacher x tau^2"), ("loss", "training loss"))
SCORE_KEYS = (("holdout_top1", "held-out top-1"), ("knn_top1", "held-out kNN top-1"))


def _curve(records: list[dict[str, Any]], keys) -> tuple[list[float], list[float], str] | None:
    """(epochs, values, label) of the first of ``keys`` every record has; None if none has one."""
    for key, label in keys:
        found = [r for r in records if isinstance(r.get(key), (int, float))]
        if found and len(found) == len(records):
            return [r["epoch"] for r in found], [float(r[key]) for r in found], label
    return None


def _plot_panel(ax, folder: Path, title: str) -> bool:
    """One stage's panel: its training loss (left axis) and held-out accuracy (right axis, %) against epoch;
    False when it logged nothing."""
    loss = _curve(read_metrics(folder, "train"), LOSS_KEYS)
    evaluations = [r for r in read_metrics(folder) if r.get("kind") in ("epoch", "eval")]
    score = _curve(evaluations, SCORE_KEYS)
    if loss is None and score is None:
        return False
    ax.set_title(title, fontsize=9)
    if loss is not None:
        epochs, values, label = loss
        values = [max(v, 1e-6) for v in values] if "KL" in label else values  # a matched KL may round below 0
        ax.plot(epochs, values, color="tab:blue", marker="o", markersize=2 if len(values) > 20 else 4)
        ax.set_ylabel(label, color="tab:blue", fontsize=8)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and max(values) > 20 * min(values):
            ax.set_yscale("log")
    if score is not None:
        epochs, values, label = score
        right = ax.twinx()
        right.plot(epochs, [100 * v for v in values], color="tab:orange", marker="s", markersize=4)
        right.set_ylabel(f"{label} (%)", color="tab:orange", fontsize=8)
    ax.tick_params(labelsize=7)
    return True


def _plot_curves(run: Path, results: dict[str, Any], plt) -> str | None:
    """Small multiples: one panel per stage that trained, its loss and held-out accuracy, a shared epoch axis."""
    folders = [name for name in results["stages"] if read_metrics(run / name)]
    if not folders:
        return None
    columns = min(4, len(folders))
    rows = -(-len(folders) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), sharex=True, squeeze=False)
    for ax, name in zip(axes.flat, folders):
        _plot_panel(ax, run / name, name)
    for ax in axes.flat[len(folders):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle("training loss (blue, left) and held-out accuracy (orange, right) of each stage", fontsize=10)
    fig.tight_layout()
    save_figure(fig, run / "training_curves.png")
    return "training_curves.png"


MARKERS = "osD^vP*Xh<>"


def _plot_label_fractions(run: Path, results: dict[str, Any], plt) -> str:
    labels, rows = _rows(results)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = np.arange(len(labels))
    # each series a little to the side and with its own marker, so that equal values do not hide each other
    offsets = np.linspace(-0.12, 0.12, len(rows)) if len(rows) > 1 else [0.0]
    for k, (name, values) in enumerate(rows.items()):
        y = [100 * values[lab] if values.get(lab) is not None else np.nan for lab in labels]
        ax.plot(x + offsets[k], y, marker=MARKERS[k % len(MARKERS)], label=name,
                linestyle="--" if "linear" in name else "-")
    ax.set_xticks(x, labels)
    ax.set(xlabel="labels used", ylabel="held-out top-1 (%)", title="accuracy against label fraction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, run / "accuracy_vs_labels.png")
    return "accuracy_vs_labels.png"


def _best_classifier(results: dict[str, Any]) -> str | None:
    """The best classifier trained on a label subset (the linear evaluation uses every label); else the best."""
    ids = {name: StageId.from_result(s) for name, s in results["stages"].items()}
    scored = [(s["holdout_top1"], name, not ids[name].every_label and s.get("labels") != "all")
              for name, s in results["stages"].items()
              if ids[name].row is not None and s.get("holdout_top1") is not None]
    few = [x for x in scored if x[2]]
    return max(few or scored)[1] if scored else None


def time_table(results: dict[str, Any]) -> str:
    """Steps and training time of every stage."""
    lines = ["| stage | steps | time |", "|---|---:|---:|"]
    total = 0.0
    for name, stage in results["stages"].items():
        seconds = stage.get("train_seconds", stage.get("seconds"))  # (a selection's: embedding and choosing)
        if seconds is None:
            continue
        total += seconds
        lines.append(f"| {name} | {stage.get('steps', '')} | {duration(seconds)} |")
    lines.append(f"| all stages | | {duration(total)} |")
    return "\n".join(lines)


def _plot_confusion(run: Path, best: str, plt) -> tuple[str, dict[str, Any]]:
    from .evaluate import evaluate

    metrics = evaluate(str(run / best / "model.pt"), out=str(run / best / "evaluation"), device="cpu")["metrics"]
    return _confusion_figure(run, best, metrics, plt), metrics


def _confusion_figure(run: Path, best: str, metrics: dict[str, Any], plt) -> str:
    matrix = np.array(metrics["confusion_matrix"])
    names = metrics["class_names"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(matrix, cmap="Blues")
    if len(names) <= 30:
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 10 else 0)
        ax.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"{best}: top-1 {100 * metrics['top1']:.1f}%")
    fig.tight_layout()
    save_figure(fig, run / "confusion_matrix.png")
    return "confusion_matrix.png"


def _plot_embedding(run: Path, path: Path | None = None) -> str | None:
    """t-SNE of the pretrained features of the held-out images, coloured by class."""
    from ..distributed import single_process
    from .embed import embed_images, feature_fn
    from .evaluate import training_eval_split
    from ..models.checkpoints import load_model
    from ..selection import figures

    if path is None:  # the pipeline's first stage whose model is an encoder with a projection head
        results = read_results(run)
        found = [name for name, entry in results["stages"].items() if entry.get("kind") in kinds()
                 and stage_of_kind(entry["kind"]).produces == "contrastive"]
        path = run / found[0] / "model.pt" if found else None
    if path is None or not path.is_file():
        return None
    model, record = load_model(path)
    try:
        images = training_eval_split(record, str(path))
    except UserError:
        return None
    if len(images) > MAX_EMBEDDED:
        keep = np.random.default_rng(0).choice(len(images), MAX_EMBEDDED, replace=False)
        images = images.subset(np.sort(keep))
    embedding = embed_images(feature_fn(model, 0), images, record.image_size, single_process("cpu").device, 256, 0)
    rows = np.flatnonzero(embedding.ok)
    xy = figures.tsne_2d(embedding.features[rows])
    figures.plot_map(xy, run / "embedding_tsne.png", "pretrained features of the held-out images (t-SNE)",
                     colour=images.labels[rows], colour_names=images.class_names)
    return "embedding_tsne.png"


def _selection_section(run: Path, results: dict[str, Any]) -> list[str]:
    """The map and contact sheet of the first selection, and how each selection compares."""
    chosen = [name for name, stage in results["stages"].items() if stage["kind"] == SELECTION]
    if not chosen:
        return []
    first = results["stages"][chosen[0]]
    lines = ["## Which images were labeled", "",
             f"Rows marked *selected labels* fine-tune on images chosen by `simclrv2 select --method {first['method']}` "
             "from the pretrained features (no label read), as many as the random subset of the same column holds.", ""]
    for name in chosen:
        stage = results["stages"][name]
        lines.append(f"- `{name}`: {stage['budget']} images chosen of {stage['candidates']} "
                     f"(`{name}/selected.txt`, `{name}/selection.csv`)")
    lines += ["", f"![selection map]({chosen[0]}/map.png)", "",
              f"![chosen images]({chosen[0]}/contact_sheet.png)", ""]
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_stage_report(folder: Path) -> Path:
    """FOLDER/report.md of one stage's run folder: its summary, training curve and, where it held images
    out, the confusion matrix (classifiers) or the t-SNE map of the features (pretraining)."""
    from .evaluate import evaluate

    plt = _pyplot()
    result = read_result(folder)
    lines = [f"# {result.get('stage', 'stage')} run report", "", "```", summary_text(result, folder), "```", ""]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if _plot_panel(ax, folder, f"{result.get('stage', folder.name)}: training loss and held-out accuracy"):
        ax.set_xlabel("epoch")
        fig.tight_layout()
        save_figure(fig, folder / "training_curves.png")
        lines += ["## Training curve", "", "![training curve](training_curves.png)", ""]
    else:
        plt.close(fig)
    model = folder / "model.pt"
    if model.is_file() and "holdout_top1" in result:
        metrics = evaluate(str(model), out=str(folder / "evaluation"), device="cpu")["metrics"]
        figure = _confusion_figure(folder, folder.name, metrics, plt)
        lines += ["## Confusion matrix on the held-out images", "",
                  f"Top-1 {100 * metrics['top1']:.1f}%, top-5 {100 * metrics['top5']:.1f}% on {metrics['images']} "
                  "held-out images (per-class figures: `evaluation/evaluation.txt`).", "", f"![confusion matrix]({figure})",
                  ""]
    elif model.is_file() and "knn_top1" in result:
        embedding = _plot_embedding(folder, model)
        if embedding:
            lines += ["## Features of the held-out images", "", f"![embedding]({embedding})", ""]
    path = folder / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def write_report(run: str | Path) -> Path:
    """Write RUN/report.md and its figures: of a pipeline (``simclrv2 run``) or of one stage's folder."""
    run = Path(run)
    if not (run / "results.json").is_file() and (run / "result.json").is_file():
        return write_stage_report(run)
    plt = _pyplot()
    results = read_results(run)
    lines = ["# SimCLRv2 run report", "", f"Run folder: `{run}`", "",
             "## Held-out top-1 accuracy (%)", "", results_table(run), "",
             "Every classifier is scored on the same held-out images (never trained on); the supervised "
             "baseline is the same network trained from random weights on the same labels for the same "
             "number of steps.", ""]
    curves = _plot_curves(run, results, plt)
    if curves:
        lines += ["## Training curves", "", f"![training curves]({curves})", ""]
    lines += ["## Time per stage", "", time_table(results), ""]
    lines += ["## Accuracy against label fraction", "",
              f"![accuracy against labels]({_plot_label_fractions(run, results, plt)})", ""]
    best = _best_classifier(results)
    if best:
        figure, metrics = _plot_confusion(run, best, plt)
        lines += [f"## Confusion matrix of the best few-label classifier ({best})", "",
                  f"Top-1 {100 * metrics['top1']:.1f}%, top-5 {100 * metrics['top5']:.1f}% on "
                  f"{metrics['images']} held-out images (per-class figures: `{best}/evaluation/evaluation.txt`).",
                  "", f"![confusion matrix]({figure})", ""]
    lines += _selection_section(run, results)
    embedding = _plot_embedding(run)
    if embedding:
        lines += ["## Pretrained representation", "", f"![embedding]({embedding})", ""]
    path = run / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def cmd_report(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if not run.is_dir():
        raise UserError(f"{run} is not a folder: pass the --out folder of a training command or of `simclrv2 run`")
    path = write_report(run)
    if (run / "results.json").is_file():
        print(results_table(run))
    else:
        print(summary_text(read_result(run), run))
    print(f"report: {path}")
    return 0
