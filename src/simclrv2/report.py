"""The report of a pipeline run: ``report.md`` and PNG figures, rebuilt by ``simclrv2 report RUN_DIR``.

It reads only what the stages wrote (result.json, metrics.jsonl, model.pt of each stage
folder): a results table like the paper's (rows: supervised baseline, linear evaluation,
fine-tuned, distilled students; columns: label fractions, held-out top-1), the training curves
of each stage, accuracy against label fraction, the confusion matrix of the best classifier,
and a PCA embedding of the pretrained features of the held-out images coloured by class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_write_bytes
from .errors import UserError

MAX_EMBEDDED = 2000  # images in the embedding plot


def _load_results(run: Path) -> dict[str, Any]:
    path = run / "results.json"
    if not path.is_file():
        raise UserError(f"{run} has no results.json: it is not a finished `simclrv2 run` folder (run it first)")
    return json.loads(path.read_text())


def _rows(results: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """Row name -> {label spec: held-out top-1}, in the paper's order."""
    from .pipeline import StageId

    labels = results["labels"]
    rows: dict[str, dict[str, float | None]] = {}
    order = ["supervised baseline", "linear eval (all labels)", "fine-tuned"]
    for stage in results["stages"].values():
        stage_id = StageId(stage["kind"], stage["labels"], stage["student"])
        if stage_id.kind == "pretrain":
            continue
        if stage_id.row not in order:
            order.append(stage_id.row)
        target = rows.setdefault(stage_id.row, {})
        # linear evaluation uses every label: the same figure in every column
        for label in (labels if stage_id.kind == "linear_eval" else [stage_id.labels]):
            target[label] = stage.get("holdout_top1")
    return labels, {r: rows[r] for r in order if r in rows}


def results_table(run: Path) -> str:
    """The paper-style table as markdown: held-out top-1 (%) by label fraction."""
    results = _load_results(run)
    labels, rows = _rows(results)
    counts = {}
    for stage in results["stages"].values():
        if stage["kind"] == "finetune":
            counts[stage["labels"]] = stage.get("labeled_images")
    header = "| method | " + " | ".join(f"{lab} ({counts.get(lab, '?')} labeled)" for lab in labels) + " |"
    lines = [header, "|---|" + "---:|" * len(labels)]
    for name, values in rows.items():
        cells = [f"{100 * values[lab]:.1f}" if values.get(lab) is not None else "-" for lab in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_curves(run: Path, results: dict[str, Any], plt) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in results["stages"]:
        path = run / name / "metrics.jsonl"
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        train = [r for r in records if r.get("kind") == "train" and "loss" in r]
        if not train:
            continue
        ax = axes[0] if name == "pretrain" else axes[1]
        # Distillation: the KL to the teacher (0 when matched), not the cross-entropy, which
        # levels off at the teacher's entropy and would hide the progress on a log axis.
        key = "distill_kl" if all("distill_kl" in r for r in train) else "loss"
        # (a KL of a matched student can round to slightly below 0: floor it for the log axis)
        values = [max(r[key], 1e-6) if key == "distill_kl" else r[key] for r in train]
        ax.plot([r["epoch"] for r in train], values,
                label=name + (" (KL to teacher)" if key == "distill_kl" else ""))
    axes[0].set(title="pretraining (NT-Xent loss)", xlabel="epoch", ylabel="loss")
    axes[1].set(title="fine-tuning, baseline (cross-entropy); distillation (KL)", xlabel="epoch",
                ylabel="loss", yscale="log")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "training_curves.png", dpi=110)
    plt.close(fig)
    return "training_curves.png"


def _plot_label_fractions(run: Path, results: dict[str, Any], plt) -> str:
    labels, rows = _rows(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(labels))
    for name, values in rows.items():
        y = [100 * values[lab] if values.get(lab) is not None else np.nan for lab in labels]
        ax.plot(x, y, marker="o", label=name, linestyle="--" if "linear" in name else "-")
    ax.set_xticks(x, labels)
    ax.set(xlabel="labels used", ylabel="held-out top-1 (%)", title="accuracy against label fraction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run / "accuracy_vs_labels.png", dpi=110)
    plt.close(fig)
    return "accuracy_vs_labels.png"


def _best_classifier(results: dict[str, Any]) -> str | None:
    scored = [(s.get("holdout_top1") or -1, name) for name, s in results["stages"].items()
              if s["kind"] in ("finetune", "distill", "supervised", "linear_eval")]
    scored = [x for x in scored if x[0] >= 0]
    return max(scored)[1] if scored else None


def _plot_confusion(run: Path, best: str, plt) -> tuple[str, dict[str, Any]]:
    from .evaluate import evaluate

    metrics = evaluate(str(run / best / "model.pt"), out=str(run / best / "evaluation"), device="cpu")["metrics"]
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
    fig.savefig(run / "confusion_matrix.png", dpi=110)
    plt.close(fig)
    return "confusion_matrix.png", metrics


def _plot_embedding(run: Path, plt) -> str | None:
    import torch

    from .distributed import single_process
    from .evaluate import training_eval_split
    from .metrics import eval_loader, extract_features
    from .models.checkpoints import load_model

    path = run / "pretrain" / "model.pt"
    if not path.is_file():
        return None
    model, record = load_model(path)
    try:
        images = training_eval_split(record, str(path))
    except UserError:
        return None
    if len(images) > MAX_EMBEDDED:
        keep = np.random.default_rng(0).choice(len(images), MAX_EMBEDDED, replace=False)
        images = images.subset(np.sort(keep))
    runtime = single_process("cpu")
    feats, labels = extract_features(model.encoder, eval_loader(images, record.image_size, runtime, 256, 0))
    feats = feats - feats.mean(0)
    _, _, v = torch.pca_lowrank(feats, q=2, center=False)
    xy = (feats @ v[:, :2]).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels.numpy(), cmap="tab10" if len(images.class_names) <= 10
                         else "tab20", s=6)
    if len(images.class_names) <= 20:
        handles, _ = scatter.legend_elements()
        ax.legend(handles, images.class_names[:len(handles)], fontsize=7, markerscale=0.8, loc="best")
    ax.set(title="pretrained features of held-out images (PCA)", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(run / "embedding_pca.png", dpi=110)
    plt.close(fig)
    return "embedding_pca.png"


def write_report(run: str | Path) -> Path:
    """Write RUN/report.md and its figures from the stage folders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    results = _load_results(run)
    lines = ["# SimCLRv2 run report", "", f"Run folder: `{run}`", "",
             "## Held-out top-1 accuracy (%)", "", results_table(run), "",
             "Every classifier is scored on the same held-out images (never trained on); the supervised "
             "baseline is the same network trained from random weights on the same labels for the same "
             "number of steps.", ""]
    lines += ["## Training curves", "", f"![training curves]({_plot_curves(run, results, plt)})", ""]
    lines += ["## Accuracy against label fraction", "",
              f"![accuracy against labels]({_plot_label_fractions(run, results, plt)})", ""]
    best = _best_classifier(results)
    if best:
        figure, metrics = _plot_confusion(run, best, plt)
        lines += [f"## Confusion matrix of the best classifier ({best})", "",
                  f"Top-1 {100 * metrics['top1']:.1f}%, top-5 {100 * metrics['top5']:.1f}% on "
                  f"{metrics['images']} held-out images (per-class figures: `{best}/evaluation/evaluation.txt`).",
                  "", f"![confusion matrix]({figure})", ""]
    embedding = _plot_embedding(run, plt)
    if embedding:
        lines += ["## Pretrained representation", "", f"![embedding]({embedding})", ""]
    path = run / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def cmd_report(args: argparse.Namespace) -> int:
    path = write_report(args.run)
    print(results_table(Path(args.run)))
    print(f"report: {path}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="rebuild report.md and the figures of a `simclrv2 run` folder",
                       description=__doc__)
    p.add_argument("run", metavar="RUN_DIR", help="the out folder of `simclrv2 run` or `simclrv2 demo`")
    p.set_defaults(func=cmd_report)
